"""Resumable uploads: the tus 1.0.0 core protocol with creation, expiration, termination.

For our own clients, under ``/filesystem/{system}/uploads``, with the bearer token
like every other call (an upload belongs to its creator; anyone else gets 404).
Every request but OPTIONS carries ``Tus-Resumable: 1.0.0`` (412 otherwise); every
answer does too.

``POST /filesystem/{system}/uploads``
    ``Upload-Length: <bytes>`` and ``Upload-Metadata: path <base64>,sha256 <base64>``
    (tus metadata: comma-separated ``key base64(value)`` pairs). ``path`` is the
    absolute file to create; ``sha256`` the file's SHA-256, base64 of the 32 bytes
    (or of the 64 hex digits). 201 with ``Location`` (the upload's URL),
    ``Upload-Offset: 0`` and ``Upload-Expires``. The path is checked by the path
    policy and the write guard; a private staging directory
    ``.hpcgate-upload-<random>`` holding the staged file (a secret name, the
    announced size; see ``hpcgate.filesystem.staging``) is created beside the target.
``HEAD <upload URL>``
    200 with ``Upload-Offset`` (bytes committed so far) and ``Upload-Length``. If a
    PATCH of the upload is still being wound up, HEAD waits for it (bounded), so the
    offset it gives is where to resume.
``PATCH <upload URL>``
    ``Content-Type: application/offset+octet-stream``, ``Upload-Offset`` equal to the
    committed offset (409 otherwise), the next bytes as the body. The staged file is
    reopened and checked first (409 if another user swapped the staging directory:
    nothing is written). Bytes are written
    over SFTP at the offset in order and committed as each write is acknowledged; if
    the connection breaks, every byte received up to then is written and committed.
    204 with the new ``Upload-Offset``. When the offset reaches ``Upload-Length`` the
    SHA-256 of the bytes (hashed as they were committed) is compared with the one
    given at creation: equal, the file is renamed over the target (keeping an existing
    target's mode) and the answer is 204; different, the staged file is removed,
    the upload ends, and the answer is 460 Checksum Mismatch.
``DELETE <upload URL>``
    Termination: the staged file and its directory are removed; 204.
``OPTIONS /filesystem/{system}/uploads``
    204 with ``Tus-Version``, ``Tus-Extension`` and ``Tus-Max-Size``.

Uploads are kept in the transfer store (``hpcgate.transfer.store``: SQLite, or Redis
shared by replicas) until ``transfer.url_ttl_seconds`` after their creation. The
offset and the running SHA-256 (``sha256state``) are recorded together as each block
is acknowledged by the cluster, never before: after a restart, or on another
replica, ``HEAD`` gives the offset whose bytes are on the cluster filesystem and the
upload goes on from there. One PATCH at a time holds the upload's ``patch`` claim.

Example with curl (``$B`` the base URL, ``$H`` the Authorization header)::

    curl -i -X POST "$B/filesystem/hpcsite/uploads" -H "$H" -H 'Tus-Resumable: 1.0.0' \\
      -H "Upload-Length: $(stat -c %s big.bin)" \\
      -H "Upload-Metadata: path $(printf %s /home/u/big.bin | base64 -w0),sha256 \\
    $(sha256sum big.bin | cut -c1-64 | xxd -r -p | base64 -w0)"
    curl -I "$LOCATION" -H "$H" -H 'Tus-Resumable: 1.0.0'      # Upload-Offset: N
    tail -c +$((N + 1)) big.bin | curl -X PATCH "$LOCATION" -H "$H" \\
      -H 'Tus-Resumable: 1.0.0' -H "Upload-Offset: $N" \\
      -H 'Content-Type: application/offset+octet-stream' --data-binary @-
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from email.utils import formatdate

from hpcgate.errors import ApiError, BadRequest, Conflict, NotFound, PayloadTooLarge, RequestTimeout
from hpcgate.transfer.batching import batches
from hpcgate.transfer.service import TransferService, UserSide
from hpcgate.transfer.store import ResumableUpload, new_id

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,expiration,termination"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
MAX_METADATA = 8 * 1024
_LOCK_WAIT_SECONDS = 30.0
_SETTLE_SECONDS = 2.0
_KEY = re.compile(r"[^\s,]{1,128}")


class PreconditionFailed(ApiError):
    """The client speaks another tus version (or none)."""

    status_code = 412


class UnsupportedMediaType(ApiError):
    status_code = 415


class ChecksumMismatch(ApiError):
    """tus' 460: the bytes received do not have the announced checksum."""

    status_code = 460


def tus_headers(**extra: str) -> dict[str, str]:
    return {"Tus-Resumable": TUS_VERSION, **extra}


def require_tus(header: str | None) -> None:
    if header != TUS_VERSION:
        raise PreconditionFailed(
            f"Send Tus-Resumable: {TUS_VERSION}",
            headers=tus_headers(**{"Tus-Version": TUS_VERSION}),
        )


def parse_metadata(header: str | None) -> dict[str, bytes]:
    """tus ``Upload-Metadata``: ``key base64,key base64`` (a value may be absent)."""
    if not header:
        return {}
    if len(header) > MAX_METADATA:
        raise BadRequest(f"Upload-Metadata is longer than {MAX_METADATA} characters")
    found: dict[str, bytes] = {}
    for item in header.split(","):
        words = item.strip().split(" ")
        if len(words) > 2 or not _KEY.fullmatch(words[0]):
            raise BadRequest("Upload-Metadata must be comma-separated 'key base64' pairs")
        try:
            found[words[0]] = base64.b64decode(words[1] if len(words) == 2 else "", validate=True)
        except binascii.Error:
            raise BadRequest(f"Upload-Metadata {words[0]!r} is not base64") from None
    return found


def target_and_digest(metadata: dict[str, bytes]) -> tuple[str, bytes]:
    """The ``path`` (UTF-8) and ``sha256`` (32 bytes, or 64 hex digits) of the metadata."""
    try:
        path = metadata["path"].decode("utf-8")
    except KeyError:
        raise BadRequest("Upload-Metadata must give path (base64 of the target path)") from None
    except UnicodeDecodeError:
        raise BadRequest("The path in Upload-Metadata is not UTF-8") from None
    value = metadata.get("sha256")
    if value is None:
        raise BadRequest("Upload-Metadata must give sha256 (base64 of the file's SHA-256)")
    if len(value) == 32:
        return path, value
    if re.fullmatch(rb"[0-9a-fA-F]{64}", value):
        return path, bytes.fromhex(value.decode("ascii"))
    raise BadRequest("sha256 must be base64 of the 32-byte digest or of its 64 hex digits")


def parse_length(header: str | None, name: str) -> int:
    if header is None or not header.isdigit() or len(header) > 19:
        raise BadRequest(f"{name} must be a non-negative integer")
    return int(header)


def http_date(epoch: float) -> str:
    return formatdate(epoch, usegmt=True)


# -- operations -----------------------------------------------------------------------


async def create(
    side: UserSide, length_header: str | None, metadata_header: str | None
) -> ResumableUpload:
    """Check the target, create the temporary file, remember the upload."""
    service, config = side.service, side.config
    length = parse_length(length_header, "Upload-Length")
    if length > config.max_file_size:
        raise PayloadTooLarge(
            f"Upload-Length is over the limit of {config.max_file_size} bytes",
            headers=tus_headers(),
        )
    path, digest = target_and_digest(parse_metadata(metadata_header))
    target = side.fs.policy.check(path)
    upload = ResumableUpload(
        id=new_id(),
        system=side.system.name,
        user=side.username,
        target=target,
        size=length,
        expires_at=service.clock() + config.url_ttl_seconds,
        sha256=digest,
    )
    await service.store.add(upload)
    try:
        upload.target, upload.staged = await side.prepare_upload(target, length)
        upload.state = "open"
        await service.store.save(upload, "target", "staged", "state")
    except BaseException:
        # a kill before this leaves the record "creating": the reaper cleans it up
        with contextlib.suppress(Exception):
            await asyncio.shield(service.store.remove(upload.id))
        if upload.staged is not None:
            service.spawn(side.abandon(upload.staged, None, "not started"))
        raise
    if length == 0:
        await _finish(side, upload)
    return upload


@contextlib.contextmanager
def _tus_answer() -> Iterator[None]:
    """A refusal from the staging (409: the staged file was swapped) or a timeout of
    the cluster (408) as a tus answer."""
    try:
        yield
    except Conflict as exc:
        raise Conflict(exc.message, headers=tus_headers()) from None
    except RequestTimeout as exc:
        raise RequestTimeout(exc.message, headers=tus_headers()) from None


@contextlib.asynccontextmanager
async def _locked(
    service: TransferService, upload: ResumableUpload, wait: float = _LOCK_WAIT_SECONDS
) -> AsyncIterator[ResumableUpload]:
    """The upload's ``patch`` claim, waiting (bounded) for a PATCH that is winding up
    (here or on another replica); yields the upload as recorded once it is held."""
    try:
        async with service.store.claimed(upload, "patch", blockers=("patch",), wait=wait):
            yield await service.store.reload(upload)
    except Conflict as exc:
        if exc.message.startswith("busy:"):
            raise Conflict(
                "Another PATCH of this upload is in progress", headers=tus_headers()
            ) from None
        raise
    except NotFound:
        raise NotFound("The upload has ended", headers=tus_headers()) from None


async def settled_offset(service: TransferService, upload: ResumableUpload) -> int:
    """The committed offset, after a PATCH that is winding up (a broken connection's)
    has finished; during a long PATCH, the offset committed so far."""
    try:
        async with _locked(service, upload, _SETTLE_SECONDS) as current:
            return current.offset
    except Conflict:
        return (await service.store.reload(upload)).offset


async def append(
    service: TransferService,
    upload: ResumableUpload,
    offset_header: str | None,
    body: AsyncIterable[bytes],
    *,
    disconnect: type[BaseException],
) -> int:
    """Write the body at the committed offset; return the new offset.

    ``disconnect`` is the exception the body raises when the client goes away: the
    bytes before it are written and committed, and the call returns normally.
    """
    offset = parse_length(offset_header, "Upload-Offset")
    async with _locked(service, upload) as upload:
        if upload.state != "open":
            if upload.state == "completed" and offset == upload.size:
                return upload.offset
            raise NotFound("The upload has ended", headers=tus_headers())
        if offset != upload.offset:
            raise Conflict(
                f"Upload-Offset {offset} is not the committed offset {upload.offset}",
                headers=tus_headers(**{"Upload-Offset": str(upload.offset)}),
            )
        side = service.side_of(upload)
        await _write(side, upload, body, disconnect)
        if upload.offset == upload.size:
            await _finish(side, upload)
        return upload.offset


async def _write(
    side: UserSide,
    upload: ResumableUpload,
    body: AsyncIterable[bytes],
    disconnect: type[BaseException],
) -> None:
    """Append ``body`` at the committed offset: one block in flight, committed in order.

    The filesystem writes the staged file (reopened and checked first) and reports
    each acknowledged block, which is hashed and committed then; bytes that arrived
    before the client went away are written too.
    """
    staged = upload.staged
    assert staged is not None, "an open upload has its staged file"
    room = upload.size - upload.offset
    overflow = False

    async def received() -> AsyncIterator[bytes]:
        nonlocal room, overflow
        try:
            async for chunk in body:
                if len(chunk) > room:
                    overflow = True
                    return
                room -= len(chunk)
                yield chunk
        except disconnect:
            pass  # keep what arrived before the client went away

    async def committed(data: bytes, position: int) -> None:
        await asyncio.to_thread(upload.hasher.update, data)
        upload.offset = position + len(data)
        # offset and hash state together, once the cluster acknowledged the bytes
        await side.service.store.save(upload, "offset", "hasher")

    with _tus_answer():
        await side.fs.write_staged(
            staged,
            batches(received()),  # written as views of each batch: one copy, not two
            offset=upload.offset,
            max_size=upload.size - upload.offset,
            on_written=committed,
        )
    if overflow:
        raise BadRequest(
            f"The body goes past Upload-Length ({upload.size} bytes); the bytes before "
            "that were kept",
            headers=tus_headers(**{"Upload-Offset": str(upload.offset)}),
        )


async def _finish(side: UserSide, upload: ResumableUpload) -> None:
    """Verify the SHA-256 and rename into place; on a mismatch, end the upload."""
    store = side.service.store
    if not hmac.compare_digest(upload.hasher.digest(), upload.sha256):
        upload.state = "failed"
        await store.remove(upload.id)
        await side.abandon(upload.staged, None, "checksum mismatch")
        raise ChecksumMismatch(
            "Checksum Mismatch: the SHA-256 of the uploaded bytes is not the one "
            "given at creation; the upload was discarded",
            headers=tus_headers(),
        )
    assert upload.staged is not None, "an open upload has its staged file"
    with _tus_answer():
        await side.put_in_place(upload.staged, upload.target)
    upload.state = "completed"
    await store.save(upload, "state")


async def terminate(service: TransferService, upload: ResumableUpload) -> None:
    async with _locked(service, upload) as upload:
        await service.store.remove(upload.id)
        if upload.state == "open":
            upload.state = "failed"
            await service.side_of(upload).abandon(upload.staged, None, "terminated")
