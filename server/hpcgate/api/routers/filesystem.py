"""/filesystem/{system}/ops: direct file operations as the user, FirecREST v2 shapes.

Thin routes over ``hpcgate.filesystem``: the path policy, the SFTP work and the
error mapping all live there. ops/download and ops/upload stream: bytes flow
between the HTTP connection and the cluster file a chunk at a time.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import AliasChoices, BeforeValidator, Field
from starlette.responses import StreamingResponse

from hpcgate.api.dependencies import FilesystemDep
from hpcgate.api.edge import MULTIPART_OVERHEAD
from hpcgate.api.routers.params import QueryBool, QueryInt
from hpcgate.api.streaming import FileStreamResponse
from hpcgate.errors import PayloadTooLarge
from hpcgate.filesystem.models import CompressionType, File, FileChecksum, FileContent, FileStat
from hpcgate.filesystem.multipart import MultipartFile, boundary_of
from hpcgate.filesystem.paths import join, validate_filename
from hpcgate.wire import WireModel

router = APIRouter(prefix="/filesystem/{system_name}/ops", tags=["filesystem"])


# -- query parameters: pyfirecrest sends unset values as empty strings -------------


PathQuery = Annotated[str, Query(description="An absolute path on the system")]


# -- bodies -----------------------------------------------------------------------


def _mode_text(value: object) -> object:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class _PathBody(WireModel):
    path: str = Field(
        validation_alias=AliasChoices("path", "sourcePath", "source_path"),
        description="an absolute path (also accepted as sourcePath / source_path)",
    )


class ChmodRequest(_PathBody):
    mode: Annotated[str, BeforeValidator(_mode_text)] = Field(
        description="octal (755) or symbolic (u+x,go-w) mode"
    )


class ChownRequest(_PathBody):
    owner: str = ""
    group: str = ""


class MkdirRequest(_PathBody):
    parent: bool = Field(False, description="create missing parent directories")


class SymlinkRequest(_PathBody):
    link_path: str = Field(description="the symlink to create; `path` is where it points")


class CompressRequest(_PathBody):
    target_path: str
    match_pattern: str | None = Field(None, description="find -regex over ./<name>/...")
    dereference: bool = False
    compression: CompressionType = "gzip"


class ExtractRequest(_PathBody):
    target_path: str = Field(description="the directory to extract into")
    compression: CompressionType = "gzip"


class FilesResponse(WireModel):
    output: list[File] | None


class FileResponse(WireModel):
    output: File | None


class ContentResponse(WireModel):
    output: FileContent | None


class TextResponse(WireModel):
    output: str | None


class ChecksumResponse(WireModel):
    output: FileChecksum | None


class StatResponse(WireModel):
    output: FileStat | None


# -- reading ----------------------------------------------------------------------


@router.get("/ls", response_model=FilesResponse)
async def list_directory(
    fs: FilesystemDep,
    path: PathQuery,
    show_hidden: Annotated[QueryBool, Query(alias="showHidden")] = False,
    numeric_uid: Annotated[QueryBool, Query(alias="numericUid")] = False,
    recursive: QueryBool = False,
    dereference: QueryBool = False,
) -> FilesResponse:
    """List a directory (`ls -l`), or describe a file."""
    files = await fs.ls(
        path,
        show_hidden=show_hidden,
        numeric_uid=numeric_uid,
        recursive=recursive,
        dereference=dereference,
    )
    return FilesResponse(output=files)


@router.get("/head", response_model=ContentResponse)
async def head(
    fs: FilesystemDep,
    path: PathQuery,
    bytes_: Annotated[QueryInt, Query(alias="bytes")] = None,
    lines: QueryInt = None,
    skip_trailing: Annotated[QueryBool, Query(alias="skipTrailing")] = False,
) -> ContentResponse:
    """The first lines or bytes of a file (all but the last ones with `skipTrailing`)."""
    output = await fs.head(path, bytes_=bytes_, lines=lines, skip_trailing=skip_trailing)
    return ContentResponse(output=output)


@router.get("/tail", response_model=ContentResponse)
async def tail(
    fs: FilesystemDep,
    path: PathQuery,
    bytes_: Annotated[QueryInt, Query(alias="bytes")] = None,
    lines: QueryInt = None,
    skip_heading: Annotated[QueryBool, Query(alias="skipHeading")] = False,
) -> ContentResponse:
    """The last lines or bytes of a file (from line/byte N on with `skipHeading`)."""
    output = await fs.tail(path, bytes_=bytes_, lines=lines, skip_heading=skip_heading)
    return ContentResponse(output=output)


@router.get("/view", response_model=TextResponse)
async def view(
    fs: FilesystemDep, path: PathQuery, size: QueryInt = None, offset: QueryInt = None
) -> TextResponse:
    """A file's content as text: `size` bytes (default: the content cap) from `offset`."""
    return TextResponse(output=await fs.view(path, offset=offset or 0, size=size))


@router.get("/checksum", response_model=ChecksumResponse)
async def checksum(fs: FilesystemDep, path: PathQuery) -> ChecksumResponse:
    """The SHA-256 of a file."""
    return ChecksumResponse(output=await fs.checksum(path))


@router.get("/file", response_model=TextResponse)
async def file_type(fs: FilesystemDep, path: PathQuery) -> TextResponse:
    """What `file -b` says about a path."""
    return TextResponse(output=await fs.file_type(path))


@router.get("/stat", response_model=StatResponse)
async def stat(fs: FilesystemDep, path: PathQuery, dereference: QueryBool = False) -> StatResponse:
    """`lstat` of a path (`stat` with `dereference`)."""
    return StatResponse(output=await fs.stat(path, dereference=dereference))


@router.get(
    "/download",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def download(fs: FilesystemDep, path: PathQuery) -> Response:
    """A file's bytes, streamed from the cluster (413 over the direct-transfer cap)."""
    stream = await fs.open_read(path)
    return FileStreamResponse(stream, path.rsplit("/", 1)[-1])


# -- writing ----------------------------------------------------------------------


@router.put("/chmod", response_model=FileResponse)
async def chmod(fs: FilesystemDep, body: ChmodRequest) -> FileResponse:
    """Change a file's mode (octal or symbolic)."""
    return FileResponse(output=await fs.chmod(body.path, body.mode))


@router.put("/chown", response_model=FileResponse)
async def chown(fs: FilesystemDep, body: ChownRequest) -> FileResponse:
    """Change a file's owner and/or group (names or numeric ids)."""
    return FileResponse(output=await fs.chown(body.path, body.owner, body.group))


@router.post("/mkdir", status_code=status.HTTP_201_CREATED, response_model=FileResponse)
async def mkdir(fs: FilesystemDep, body: MkdirRequest) -> FileResponse:
    """Create a directory (and its parents with `parent`)."""
    return FileResponse(output=await fs.mkdir(body.path, parents=body.parent))


@router.post("/symlink", status_code=status.HTTP_201_CREATED, response_model=FileResponse)
async def symlink(fs: FilesystemDep, body: SymlinkRequest) -> FileResponse:
    """Create symlink `linkPath` pointing at `path`."""
    return FileResponse(output=await fs.symlink(body.path, body.link_path))


@router.delete("/rm", status_code=status.HTTP_204_NO_CONTENT)
async def remove(fs: FilesystemDep, path: PathQuery) -> Response:
    """Remove a file, a symlink or a directory tree."""
    await fs.remove(path)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "the file; it is written to `path`/<its filename>",
                        }
                    },
                }
            }
        },
    }
}


@router.post("/upload", status_code=status.HTTP_204_NO_CONTENT, openapi_extra=_UPLOAD_BODY)
async def upload(fs: FilesystemDep, request: Request, path: PathQuery) -> Response:
    """Write the multipart field `file` to `path`/<filename>, streamed to the cluster."""
    directory = fs.policy.check(path)
    cap = fs.limits.max_ops_file_size
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap + MULTIPART_OVERHEAD:
        raise PayloadTooLarge(
            f"The upload exceeds the direct upload limit of {cap} bytes; use transfer/upload"
        )
    body = MultipartFile(request.stream(), boundary_of(request.headers.get("content-type")))
    filename = validate_filename(await body.find())
    await fs.write_stream(join(directory, filename), body.data(), max_size=cap)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/compress", status_code=status.HTTP_204_NO_CONTENT)
async def compress(fs: FilesystemDep, body: CompressRequest) -> Response:
    """Archive a file or directory with tar (408 if it takes too long: use transfer/)."""
    await fs.compress(
        body.path,
        body.target_path,
        match_pattern=body.match_pattern or None,
        dereference=body.dereference,
        compression=body.compression,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/extract", status_code=status.HTTP_204_NO_CONTENT)
async def extract(fs: FilesystemDep, body: ExtractRequest) -> Response:
    """Unpack a tar archive into a directory (408 if it takes too long: use transfer/)."""
    await fs.extract(body.path, body.target_path, compression=body.compression)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
