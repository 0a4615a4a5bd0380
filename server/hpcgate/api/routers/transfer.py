"""Transfers: /filesystem/{system}/transfer/*, the signed transfer URLs, resumable uploads.

Thin routes over ``hpcgate.transfer`` (see its modules for the protocols):

* ``/filesystem/{system}/transfer/{mv,cp,rm,compress,extract}``: checked, then a
  Slurm job on the transfer partition as the user (201; rm 200);
* ``/filesystem/{system}/transfer/{upload,download}``: pyfirecrest's "s3" flow with
  this server's own signed URLs (``hpcgate.transfer.multipart``);
* ``/transfer-urls/{id}/...``: those URLs; no bearer token, the signature is the
  credential (403 when it is wrong or expired, 404 when the transfer is unknown);
* ``/filesystem/{system}/uploads``: resumable uploads, tus 1.0 core
  (``hpcgate.transfer.resumable``).
"""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status
from starlette.requests import ClientDisconnect

from hpcgate.api.dependencies import SystemDep, TransfersDep, get_services
from hpcgate.api.streaming import FileStreamResponse
from hpcgate.compute.scheduler.models import SlurmName
from hpcgate.errors import BadRequest, NotFound
from hpcgate.transfer import multipart, operations, resumable
from hpcgate.transfer.models import (
    CompressRequest,
    CopyRequest,
    DownloadRequest,
    ExtractRequest,
    MoveRequest,
    TransferJobResponse,
    TransferResponse,
    UploadRequest,
)
from hpcgate.transfer.resumable import tus_headers
from hpcgate.transfer.s3xml import MAX_COMPLETE_BODY
from hpcgate.transfer.service import TransferService, UserSide
from hpcgate.transfer.store import Download, MultipartUpload, ResumableUpload, Transfer


async def get_side(ctx: SystemDep, service: TransfersDep) -> UserSide:
    """The caller's transfer view of the system (503 while its filesystems are unhealthy)."""
    ctx.ensure_healthy("filesystem")
    return service.user(ctx.name, ctx.username)


SideDep = Annotated[UserSide, Depends(get_side)]


def base_url(service: TransferService, request: Request) -> str:
    """Where clients reach this server: ``transfer.public_url``, else the request's URL."""
    return service.config.public_url or str(request.base_url).rstrip("/")


# -- /filesystem/{system}/transfer ------------------------------------------------------

jobs = APIRouter(prefix="/filesystem/{system_name}/transfer", tags=["transfer"])


@jobs.post("/mv", status_code=status.HTTP_201_CREATED, response_model=TransferJobResponse)
async def move(side: SideDep, body: MoveRequest) -> TransferJobResponse:
    """Move or rename a file or directory in a job (`mv`)."""
    return TransferJobResponse(transfer_job=await operations.move(side, body))


@jobs.post("/cp", status_code=status.HTTP_201_CREATED, response_model=TransferJobResponse)
async def copy(side: SideDep, body: CopyRequest) -> TransferJobResponse:
    """Copy a file or directory tree in a job (`cp -R`)."""
    return TransferJobResponse(transfer_job=await operations.copy(side, body))


@jobs.delete("/rm", status_code=status.HTTP_200_OK, response_model=TransferJobResponse)
async def remove(
    side: SideDep,
    path: Annotated[str, Query(description="The path to delete")],
    account: Annotated[SlurmName | None, Query()] = None,
) -> TransferJobResponse:
    """Remove a file or directory tree in a job (`rm -r`)."""
    return TransferJobResponse(transfer_job=await operations.remove(side, path, account or None))


@jobs.post("/compress", status_code=status.HTTP_201_CREATED, response_model=TransferJobResponse)
async def compress(side: SideDep, body: CompressRequest) -> TransferJobResponse:
    """Archive a file or directory in a job (`tar`)."""
    return TransferJobResponse(transfer_job=await operations.compress(side, body))


@jobs.post("/extract", status_code=status.HTTP_201_CREATED, response_model=TransferJobResponse)
async def extract(side: SideDep, body: ExtractRequest) -> TransferJobResponse:
    """Unpack an archive into a directory in a job (`tar -x`)."""
    return TransferJobResponse(transfer_job=await operations.extract(side, body))


@jobs.post("/upload", status_code=status.HTTP_201_CREATED, response_model=TransferResponse)
async def upload(
    side: SideDep, service: TransfersDep, request: Request, body: UploadRequest
) -> TransferResponse:
    """Start a multipart upload: signed part URLs, a complete URL and the waiting job."""
    return await multipart.start_upload(side, body, base_url(service, request))


@jobs.post("/download", status_code=status.HTTP_201_CREATED, response_model=TransferResponse)
async def download(
    side: SideDep, service: TransfersDep, request: Request, body: DownloadRequest
) -> TransferResponse:
    """Start a download: a job that checks the file, and a signed download URL."""
    return await multipart.start_download(side, body, base_url(service, request))


# -- /transfer-urls: signed, no bearer token ----------------------------------------------

signed = APIRouter(tags=["transfer URLs"])

TransferId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="the transfer's id")]
T = TypeVar("T", bound=Transfer)


async def _verified(
    service: TransferService,
    request: Request,
    transfer_id: str,
    kind: type[T],
    method: str,
    template: str,
    part: int = 0,
) -> T:
    """The transfer a signed URL names, once its expiry and signature check out."""
    expires = service.signer.check_expiry(request.query_params.get("expires"))
    transfer = await service.store.get(transfer_id)
    if not isinstance(transfer, kind):
        raise NotFound("No such transfer: it expired, or never existed")
    path = template.format(transfer_id=transfer_id, part_number=part)
    service.signer.verify(
        method,
        path,
        transfer.binding,
        expires=expires,
        signature=request.query_params.get("signature"),
        part=part,
    )
    request.state.user = transfer.user
    request.state.system = transfer.system
    get_services(request).health.ensure_healthy(transfer.system, "filesystem")
    return transfer


def _length(request: Request) -> int | None:
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isdigit() else None


@signed.put(multipart.PART_PATH, responses={200: {"headers": {"ETag": {"type": "string"}}}})
async def put_part(
    service: TransfersDep,
    request: Request,
    transfer_id: TransferId,
    part_number: Annotated[int, Path(ge=1, le=100_000)],
    content_md5: Annotated[str | None, Header(alias="content-md5")] = None,
) -> Response:
    """Upload one part (its bytes as the body); the answer's ETag goes into the completion."""
    upload = await _verified(
        service, request, transfer_id, MultipartUpload, "PUT", multipart.PART_PATH, part_number
    )
    try:
        etag = await multipart.write_part(
            service, upload, part_number, request.stream(), _length(request), content_md5
        )
    except ClientDisconnect:
        return Response(status_code=status.HTTP_400_BAD_REQUEST)  # nobody to tell
    return Response(status_code=status.HTTP_200_OK, headers={"ETag": f'"{etag}"'})


@signed.post(multipart.COMPLETE_PATH, response_class=Response)
async def complete_upload(
    service: TransfersDep, request: Request, transfer_id: TransferId
) -> Response:
    """Complete the upload with S3's CompleteMultipartUpload XML (parts and ETags)."""
    upload = await _verified(
        service, request, transfer_id, MultipartUpload, "POST", multipart.COMPLETE_PATH
    )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_COMPLETE_BODY:
            raise BadRequest("The CompleteMultipartUpload body is too large")
    result = await multipart.complete(service, upload, bytes(body))
    return Response(result, media_type="application/xml")


@signed.get(multipart.DOWNLOAD_PATH, response_class=Response)
async def get_download(
    service: TransfersDep,
    request: Request,
    transfer_id: TransferId,
    range_header: Annotated[str | None, Header(alias="range")] = None,
) -> Response:
    """The file's bytes, streamed from the cluster; one `Range` is answered with 206."""
    transfer = await _verified(
        service, request, transfer_id, Download, "GET", multipart.DOWNLOAD_PATH
    )
    stream, wanted = await multipart.open_download(service, transfer, range_header)
    response = FileStreamResponse(stream, transfer.target.rsplit("/", 1)[-1])
    response.headers["Accept-Ranges"] = "bytes"
    if wanted is not None:
        offset, length = wanted
        response.status_code = status.HTTP_206_PARTIAL_CONTENT
        response.headers["Content-Range"] = (
            f"bytes {offset}-{offset + length - 1}/{stream.file_size}"
        )
    return response


@signed.head(multipart.DOWNLOAD_PATH, response_class=Response)
async def head_download(
    service: TransfersDep, request: Request, transfer_id: TransferId
) -> Response:
    """The file's size (the GET URL's signature is good for HEAD too)."""
    transfer = await _verified(
        service, request, transfer_id, Download, "GET", multipart.DOWNLOAD_PATH
    )
    size = await multipart.download_size(service, transfer)
    headers = {"Content-Length": str(size), "Accept-Ranges": "bytes"}
    return Response(status_code=status.HTTP_200_OK, headers=headers)


# -- /filesystem/{system}/uploads: tus 1.0 -------------------------------------------------

uploads = APIRouter(prefix="/filesystem/{system_name}/uploads", tags=["resumable uploads"])

TusHeader = Annotated[str | None, Header(alias="tus-resumable")]
UploadId = Annotated[str, Path(description="the upload's id")]


def _upload_url(service: TransferService, request: Request, system: str, upload_id: str) -> str:
    return f"{base_url(service, request)}/filesystem/{system}/uploads/{upload_id}"


def _state_headers(upload: ResumableUpload, offset: int) -> dict[str, str]:
    return tus_headers(
        **{
            "Upload-Offset": str(offset),
            "Upload-Length": str(upload.size),
            "Upload-Expires": resumable.http_date(upload.expires_at),
            "Cache-Control": "no-store",
        }
    )


@uploads.options("")
async def tus_options(side: SideDep) -> Response:
    """What the server speaks: tus versions, extensions, largest upload."""
    headers = tus_headers(
        **{
            "Tus-Version": resumable.TUS_VERSION,
            "Tus-Extension": resumable.TUS_EXTENSIONS,
            "Tus-Max-Size": str(side.config.max_file_size),
        }
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=headers)


@uploads.post("", status_code=status.HTTP_201_CREATED, response_class=Response)
async def tus_create(
    side: SideDep,
    service: TransfersDep,
    request: Request,
    tus: TusHeader = None,
    upload_length: Annotated[str | None, Header(alias="upload-length")] = None,
    upload_metadata: Annotated[str | None, Header(alias="upload-metadata")] = None,
) -> Response:
    """Create an upload: `Upload-Length`, `Upload-Metadata: path <b64>,sha256 <b64>`."""
    resumable.require_tus(tus)
    upload = await resumable.create(side, upload_length, upload_metadata)
    headers = _state_headers(upload, upload.offset)
    headers["Location"] = _upload_url(service, request, side.system.name, upload.id)
    return Response(status_code=status.HTTP_201_CREATED, headers=headers)


async def _owned(side: UserSide, upload_id: str) -> ResumableUpload:
    store = side.service.store
    return await store.owned(upload_id, ResumableUpload, side.system.name, side.username)


@uploads.head("/{upload_id}", response_class=Response)
async def tus_head(side: SideDep, upload_id: UploadId, tus: TusHeader = None) -> Response:
    """The committed offset (where to resume)."""
    resumable.require_tus(tus)
    upload = await _owned(side, upload_id)
    offset = await resumable.settled_offset(side.service, upload)
    return Response(status_code=status.HTTP_200_OK, headers=_state_headers(upload, offset))


@uploads.patch("/{upload_id}", response_class=Response)
async def tus_patch(
    side: SideDep,
    request: Request,
    upload_id: UploadId,
    tus: TusHeader = None,
    upload_offset: Annotated[str | None, Header(alias="upload-offset")] = None,
    content_type: Annotated[str | None, Header(alias="content-type")] = None,
) -> Response:
    """Append bytes at `Upload-Offset`; the last bytes verify the SHA-256 and finish."""
    resumable.require_tus(tus)
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != resumable.OFFSET_CONTENT_TYPE:
        raise resumable.UnsupportedMediaType(
            f"Content-Type must be {resumable.OFFSET_CONTENT_TYPE}", headers=tus_headers()
        )
    upload = await _owned(side, upload_id)
    offset = await resumable.append(
        side.service, upload, upload_offset, request.stream(), disconnect=ClientDisconnect
    )
    headers = tus_headers(
        **{
            "Upload-Offset": str(offset),
            "Upload-Expires": resumable.http_date(upload.expires_at),
        }
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=headers)


@uploads.delete("/{upload_id}", response_class=Response)
async def tus_delete(side: SideDep, upload_id: UploadId, tus: TusHeader = None) -> Response:
    """Terminate the upload: its temporary file is removed."""
    resumable.require_tus(tus)
    await resumable.terminate(side.service, await _owned(side, upload_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=tus_headers())


router = APIRouter()
router.include_router(jobs)
router.include_router(signed)
router.include_router(uploads)
