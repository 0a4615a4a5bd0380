"""transfer/upload and transfer/download: pyfirecrest's "s3" flow, served by this server.

Upload
    ``POST transfer/upload`` checks the target, creates a private staging directory
    ``.hpcgate-upload-<random>`` beside it holding the staged file (a secret name,
    the announced size; see ``hpcgate.filesystem.staging``) and submits the transfer
    job. It answers with one signed ``PUT`` URL per part (``partsUploadUrls``, parts
    of ``maxPartSize`` bytes, the last one shorter) and a signed
    ``completeUploadUrl``. Each part's body is streamed over SFTP straight into the
    staged file at offset ``(partNumber - 1) * maxPartSize``, after the reopened file
    checks out (409 if another user swapped the staging directory); the answer's
    ``ETag`` is the quoted MD5 of the part, as S3 gives. ``POST completeUploadUrl``
    with S3's CompleteMultipartUpload XML checks that every part is listed once, in
    order, with its ETag, then renames the staged file over the target (a failed or
    abandoned upload never leaves a partial target) and writes the job's completion
    marker.

    The job (``scripts.await_upload``) polls for that marker every
    ``transfer.job_poll_seconds`` until the transfer's deadline; then it checks the
    target's size and logs "Multipart file upload successfully completed", or fails.
    A marker survives the job being queued, so a busy partition only delays the job.

Download
    ``POST transfer/download`` checks the file is readable, submits a job that
    checks it again on the cluster and logs "File was successfully made ready for
    download", and answers with a signed ``downloadUrl`` bound to the file as an
    opened handle saw it (size, mtime, owner, group, mode). ``GET downloadUrl``
    opens the file again and streams it over SFTP with its Content-Length only if
    it is still that file, and the path is not a symlink where it was a regular
    file (409 otherwise: another user swapped it, or it changed); a single
    ``Range`` is answered with 206.

The data crosses the cluster filesystem once: no staging copy, no S3.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import math
import posixpath
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable

from hpcgate.errors import ApiError, BadRequest, Conflict, PayloadTooLarge
from hpcgate.filesystem.base import ReadStream
from hpcgate.filesystem.paths import shown
from hpcgate.transfer import s3xml, scripts
from hpcgate.transfer.batching import batches
from hpcgate.transfer.models import (
    DownloadRequest,
    S3TransferResponse,
    TransferResponse,
    UploadRequest,
)
from hpcgate.transfer.service import TransferService, UserSide, part_size_for
from hpcgate.transfer.store import Download, MultipartUpload, Part, Transfer, new_id

PART_PATH = "/transfer-urls/{transfer_id}/parts/{part_number}"
COMPLETE_PATH = "/transfer-urls/{transfer_id}/complete"
DOWNLOAD_PATH = "/transfer-urls/{transfer_id}/download"

_JOB_MARGIN_MINUTES = 5
_COMPLETE_WAIT_SECONDS = 30.0


class RangeNotSatisfiable(ApiError):
    status_code = 416


def _only_s3(method: str) -> None:
    if method != "s3":
        raise BadRequest(
            f"transferMethod {method!r} is not offered: this server serves 's3' "
            "(its own signed URLs)"
        )


def signed_url(
    service: TransferService,
    base_url: str,
    template: str,
    method: str,
    transfer: Transfer,
    part: int = 0,
) -> str:
    path = template.format(transfer_id=transfer.id, part_number=part)
    query = service.signer.query(
        method, path, transfer.binding, expires=transfer.expires, part=part
    )
    return f"{base_url}{path}?{query}"


# -- upload ---------------------------------------------------------------------------


async def _forget(side: UserSide, upload: MultipartUpload) -> None:
    """Undo a creation that failed: the record, the staged file, the job."""
    service = side.service
    with contextlib.suppress(Exception):
        await service.store.remove(upload.id)
    if upload.staged is not None:
        service.spawn(side.abandon(upload.staged, None, "not started"))
    if upload.job_id:
        scheduler = service.schedulers[upload.system]
        service.spawn(_cancel(scheduler.cancel(side.runner, upload.job_id)))


async def _cancel(cancelling: Awaitable[None]) -> None:
    with contextlib.suppress(Exception):
        await cancelling


async def start_upload(side: UserSide, body: UploadRequest, base_url: str) -> TransferResponse:
    """Create the temporary file and the job; hand out the signed part URLs."""
    _only_s3(body.transfer_directives.transfer_method)
    service, config = side.service, side.config
    size = body.size
    if size > config.max_file_size:
        raise PayloadTooLarge(f"The file is larger than the limit of {config.max_file_size} bytes")
    raw = body.source_path
    if body.file_name:  # pyfirecrest before API 2.4: a directory and a file name
        raw = posixpath.join(raw, body.file_name)
    target = side.fs.policy.check(raw)
    transfer_id = new_id()
    upload = MultipartUpload(
        id=transfer_id,
        system=side.system.name,
        user=side.username,
        target=target,
        size=size,
        expires_at=service.clock() + config.url_ttl_seconds,
        part_size=part_size_for(config, size),
    )
    await service.store.add(upload)
    try:
        target, upload.staged = await side.prepare_upload(target, size)
        await service.store.save(upload, "staged")
        directory = await side.job_directory()
        upload.marker = posixpath.join(directory, f"upload-{transfer_id}.done")
        script = scripts.await_upload(
            target, upload.marker, size, upload.expires, config.job_poll_seconds
        )
        job = await side.submit(
            "upload",
            script,
            transfer_id=transfer_id,
            account=body.account,
            time_limit_minutes=math.ceil(config.url_ttl_seconds / 60) + _JOB_MARGIN_MINUTES,
        )
        upload.job_id = job.job_id
        await service.store.save(upload, "job_id", "marker")
        upload.state = "open"
        await service.store.save(upload, "state")
    except BaseException:
        # a kill before this leaves the record "creating": the reaper cleans it up
        await asyncio.shield(_forget(side, upload))
        raise
    urls = [
        signed_url(service, base_url, PART_PATH, "PUT", upload, number)
        for number in range(1, upload.part_count + 1)
    ]
    return TransferResponse(
        transfer_job=job,
        transfer_directives=S3TransferResponse(
            parts_upload_urls=urls,
            complete_upload_url=signed_url(service, base_url, COMPLETE_PATH, "POST", upload),
            max_part_size=upload.part_size,
        ),
    )


async def write_part(
    service: TransferService,
    upload: MultipartUpload,
    number: int,
    body: AsyncIterable[bytes],
    declared_length: int | None,
    content_md5: str | None = None,
) -> str:
    """Stream one part into place at its offset; return its (unquoted) MD5 ETag.

    A ``Content-MD5`` header (base64, as S3 takes it) is checked: on a mismatch the
    part does not count (400).
    """
    if upload.state != "open":  # checked again, atomically, by the claim
        raise Conflict("The upload is completed or being completed")
    if not 1 <= number <= upload.part_count:
        raise BadRequest(f"Part numbers of this upload are 1 to {upload.part_count}")
    offset, length = upload.part_range(number)
    if declared_length is not None and declared_length != length:
        raise BadRequest(f"Part {number} must be exactly {length} bytes, not {declared_length}")
    assert upload.staged is not None, "an open upload has its staged file"
    digest = hashlib.md5(usedforsecurity=False)
    try:
        claim = service.store.claimed(
            upload, f"part:{number}", blockers=(f"part:{number}", "complete"), open_only=True
        )
        async with claim:
            side = service.side_of(upload)
            written = await side.fs.write_staged(
                upload.staged,
                _hashed(body, digest, length, number),
                offset=offset,
                max_size=length,
            )
            if written != length:
                raise BadRequest(f"Part {number} has {written} bytes; it must have {length}")
            if (
                content_md5 is not None
                and base64.b64encode(digest.digest()).decode() != content_md5
            ):
                raise BadRequest(f"BadDigest: part {number} does not have the Content-MD5 given")
            etag = digest.hexdigest()
            # recorded while the claim is held: a completion sees it, or waits for it
            await service.store.set_part(upload, number, Part(size=length, etag=etag))
    except Conflict as exc:
        if exc.message == f"busy:part:{number}":
            raise Conflict(f"Part {number} is being uploaded already") from None
        if exc.message in ("closed", "busy:complete"):
            raise Conflict("The upload is completed or being completed") from None
        raise
    return etag


async def _hashed(
    body: AsyncIterable[bytes], digest: hashlib._Hash, limit: int, number: int
) -> AsyncIterator[bytes]:
    """The body, at most ``limit`` bytes, in ``batches`` hashed in a thread: one batch
    hashing while the next arrives and is written (hashlib releases the GIL).

    One ``update`` per ~1 MiB batch: the thread takes the GIL back once per batch, not
    once per HTTP chunk, each time waiting for the busy event loop to let go of it; and
    the batch it hashes is the one written, joined once for both.
    """

    async def bounded() -> AsyncIterator[bytes]:
        total = 0
        async for chunk in body:
            total += len(chunk)
            if total > limit:
                raise BadRequest(f"Part {number} is longer than its {limit} bytes")
            yield chunk

    hashing: asyncio.Future[None] | None = None
    try:
        async for batch in batches(bounded()):
            if hashing is not None:
                await hashing  # in order: one batch at a time
            hashing = asyncio.ensure_future(asyncio.to_thread(digest.update, batch))
            yield batch
        if hashing is not None:
            await hashing
            hashing = None
    finally:
        if hashing is not None:  # abandoned: let the thread finish with the digest
            with contextlib.suppress(BaseException):
                await asyncio.shield(hashing)


async def complete(service: TransferService, upload: MultipartUpload, body: bytes) -> str:
    """Check the parts against the CompleteMultipartUpload body, rename into place.

    Completing a completed upload again answers the same (a retry after a lost answer).
    """
    listed = s3xml.parse_complete(body)
    expected = list(range(1, upload.part_count + 1))
    if [number for number, _ in listed] != expected:
        raise BadRequest(
            f"The body must list parts 1 to {upload.part_count}, each once and in order"
        )
    store = service.store
    try:
        claim = store.claimed(
            upload, "complete", blockers=("part:", "complete"), wait=_COMPLETE_WAIT_SECONDS
        )
        async with claim:
            upload = await store.reload(upload)  # the parts of every replica, as of now
            return await _complete(service, upload, listed, expected)
    except Conflict as exc:
        if exc.message.startswith("busy:part:"):
            raise Conflict("Parts are still being uploaded") from None
        if exc.message == "busy:complete":
            raise Conflict("The upload is being completed") from None
        raise


async def _complete(
    service: TransferService,
    upload: MultipartUpload,
    listed: list[tuple[int, str]],
    expected: list[int],
) -> str:
    for number, etag in listed:
        part = upload.parts.get(number)
        if part is None:
            raise BadRequest(f"Part {number} was not uploaded")
        if part.etag != etag:
            raise BadRequest(f"The ETag of part {number} does not match the uploaded part")
    etag = s3xml.multipart_etag([upload.parts[number].etag for number in expected])
    result = s3xml.complete_result(upload.target, upload.target.lstrip("/"), etag)
    side = service.side_of(upload)
    if upload.state == "open":
        assert upload.staged is not None, "an open upload has its staged file"
        # every part was written whole (checked per part) into a file of the
        # announced size (given at creation, checked on every reopen)
        await side.put_in_place(upload.staged, upload.target)
        upload.state = "completed"
        await service.store.save(upload, "state")
    if not upload.marked:
        await side.write_marker(upload.marker, "ok")
        upload.marked = True
        await service.store.save(upload, "marked")
    return result


# -- download -------------------------------------------------------------------------


async def start_download(side: UserSide, body: DownloadRequest, base_url: str) -> TransferResponse:
    """Check the file, submit the job that says it is ready, hand out the signed URL."""
    _only_s3(body.transfer_directives.transfer_method)
    service = side.service
    path, identity = await side.regular_file(body.source_path)
    download = Download(
        id=new_id(),
        system=side.system.name,
        user=side.username,
        target=path,
        size=identity.size,
        expires_at=service.clock() + service.config.url_ttl_seconds,
        identity=identity,
    )
    await service.store.add(download)
    try:
        job = await side.submit(
            "download",
            scripts.download_ready(path),
            transfer_id=download.id,
            account=body.account,
        )
        download.job_id = job.job_id
        download.state = "open"
        await service.store.save(download, "job_id", "state")
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.shield(service.store.remove(download.id))
        raise
    url = signed_url(service, base_url, DOWNLOAD_PATH, "GET", download)
    return TransferResponse(
        transfer_job=job, transfer_directives=S3TransferResponse(download_url=url)
    )


_RANGE = re.compile(r"bytes=(\d{0,20})-(\d{0,20})")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(offset, length) of a single ``bytes=`` range, None for the whole file.

    Several ranges or an unparsable header: the whole file (RFC 9110 lets a server
    ignore Range). A range past the end: ``RangeNotSatisfiable``.
    """
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        length = min(int(last), size)
        if length == 0:
            raise RangeNotSatisfiable(f"Range not satisfiable: {header[:100]}")
        return size - length, length
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise RangeNotSatisfiable(
            f"Range not satisfiable: {header[:100]}", headers={"Content-Range": f"bytes */{size}"}
        )
    return start, end - start + 1


async def open_download(
    service: TransferService, download: Download, range_header: str | None
) -> tuple[ReadStream, tuple[int, int] | None]:
    """The file opened for streaming (the whole of it, or the requested range), if it
    is still the file the URL was issued for (409 otherwise)."""
    fs = service.side_of(download).fs
    wanted = parse_range(range_header, download.size) if range_header else None
    if wanted is None:
        return await fs.open_read(download.target, bound=download.identity), None
    offset, length = wanted
    stream = await fs.open_read(
        download.target, offset=offset, length=length, bound=download.identity
    )
    if stream.length != length:
        await stream.aclose()
        raise RangeNotSatisfiable(f"The file changed size: {shown(download.target)}")
    return stream, wanted


async def download_size(service: TransferService, download: Download) -> int:
    """The file's size for HEAD, after the same check as GET (no size of another file)."""
    stream = await service.side_of(download).fs.open_read(
        download.target, length=0, bound=download.identity
    )
    await stream.aclose()
    return stream.file_size
