"""The HTTP flows behind :class:`~.filesystem.HpcFileSystem` that the hook does not have.

* **Resumable upload** (tus 1.0, ``/filesystem/{system}/uploads``): large files of
  known size and SHA-256; a broken PATCH resumes from the server's committed offset,
  and the server compares the SHA-256 before the file replaces the target.
* **Signed download** (``transfer/download``): a URL that serves ranges, so a large
  read can resume where a broken stream stopped and seek without reading from the
  start. The URL's signature is a credential: it is sent without the client's logging
  (httpx logs request URLs) and never logged here.
* **Streaming write** (``ops/upload``, chunked): bytes of unknown length from a
  writer thread through a bounded queue, so memory stays flat whatever the size.

Every request authenticated with the bearer token goes through the hook's client (its
auth flow and retry layer); a streamed body is sent once and never replayed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

import httpx

from airflow_provider_hpc.exceptions import HpcApiError, HpcChecksumError, HpcConnectionError
from airflow_provider_hpc.hooks import api
from airflow_provider_hpc.hooks.hpc import HpcHook
from airflow_provider_hpc.hooks.models import WireModel
from airflow_provider_hpc.hooks.retry import IDEMPOTENT

TUS = {"Tus-Resumable": "1.0.0"}
CHUNK = 1 << 20
#: A PATCH or a ranged GET that breaks is resumed this many times in a row.
RESUMES = 5


# --------------------------------------------------------------------------- resumable upload


def tus_upload(
    hook: HpcHook,
    system: str,
    remote_path: str,
    source: IO[bytes],
    size: int,
    sha256_hex: str,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """Upload ``size`` bytes of seekable ``source`` (from its position 0) to ``remote_path``.

    The server checks the SHA-256 of what it received before renaming the file into
    place (460 otherwise: :class:`HpcChecksumError`, nothing left behind).
    """
    client = hook.get_conn()
    digest = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
    path64 = base64.b64encode(remote_path.encode()).decode()
    headers = {
        **TUS,
        "Upload-Length": str(size),
        "Upload-Metadata": f"path {path64},sha256 {digest}",
    }
    created = _send(
        client,
        client.build_request(
            "POST",
            f"/filesystem/{api._seg(system)}/uploads",
            headers=headers,
            extensions={IDEMPOTENT: False},
        ),
    )
    location = created.headers.get("location")
    if not location:
        raise HpcApiError(created.status_code, "the upload was created without a Location")
    offset, failures = 0, 0
    try:
        while True:
            try:
                offset = _patch(client, location, source, offset, size)
            except (HpcConnectionError, httpx.TransportError, _Resumable) as exc:
                failures += 1
                if failures > RESUMES:
                    raise
                hook.log.warning(
                    "Upload of %s broke at %d bytes (%s); resuming", remote_path, offset, exc
                )
                offset = int(
                    _send(client, _tus_request(client, "HEAD", location)).headers["upload-offset"]
                )
                continue
            failures = 0
            if on_progress is not None:
                on_progress(offset)
            if offset >= size:
                return
    except BaseException:
        try:
            _send(client, _tus_request(client, "DELETE", location)).close()
        except Exception:
            hook.log.debug("could not terminate upload %s", location, exc_info=True)
        raise


class _Resumable(Exception):
    """A PATCH answer that asks to ask for the offset again (409, 5xx)."""


def _tus_request(client: httpx.Client, method: str, location: str, **kwargs: Any) -> httpx.Request:
    return client.build_request(
        method, location, headers={**TUS, **kwargs.pop("headers", {})}, **kwargs
    )


def _patch(client: httpx.Client, location: str, source: IO[bytes], offset: int, size: int) -> int:
    def body() -> Iterator[bytes]:
        source.seek(offset)
        left = size - offset
        while left > 0:
            chunk = source.read(min(CHUNK, left))
            if not chunk:
                raise OSError("the source ended before its announced size")
            left -= len(chunk)
            yield chunk

    request = _tus_request(
        client,
        "PATCH",
        location,
        headers={
            "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream",
            "Content-Length": str(size - offset),
        },
        content=body(),
        extensions={IDEMPOTENT: False},
    )
    try:
        response = client.send(request)
    except httpx.StreamConsumed as exc:  # a retry of a consumed body: ask for the offset
        raise _Resumable(str(exc)) from exc
    if response.status_code == 460:
        raise HpcChecksumError(f"the server's SHA-256 of the upload differs: {response.text[:200]}")
    if response.status_code == 409 or response.status_code >= 500:
        raise _Resumable(f"{response.status_code} {response.text[:200]}")
    api.raise_for_error(response)
    return int(response.headers["upload-offset"])


def _send(client: httpx.Client, request: httpx.Request) -> httpx.Response:
    try:
        response = client.send(request)
    except httpx.TransportError as exc:
        raise HpcConnectionError(f"{request.method} {request.url.path}: {exc!r}") from exc
    api.raise_for_error(response)
    return response


# --------------------------------------------------------------------------- signed download


class _DownloadDirectives(WireModel):
    download_url: str


class _DownloadResponse(WireModel):
    transfer_directives: _DownloadDirectives


def signed_download_url(hook: HpcHook, system: str, remote_path: str) -> str:
    """``transfer/download``: a signed URL for ``remote_path`` (ranges, no bearer token)."""
    call = api.ApiCall(
        "POST",
        f"/filesystem/{api._seg(system)}/transfer/download",
        lambda r: _DownloadResponse.model_validate(r.json()).transfer_directives.download_url,
        json={"sourcePath": remote_path, "transferDirectives": {"transferMethod": "s3"}},
        idempotent=False,
    )
    url: str = hook._run(call)
    return url


class RangeSource:
    """Opens streamed reads of a file at an offset.

    ``signed_url``: ranged GETs of a signed download URL, sent straight through a
    transport (so no client logs the URL). Otherwise ``ops/download`` through the hook,
    which streams from the start: an offset is reached by skipping.
    """

    def __init__(self, hook: HpcHook, system: str, path: str, signed_url: str | None) -> None:
        self.hook, self.system, self.path, self.signed_url = hook, system, path, signed_url
        self._transport: httpx.HTTPTransport | None = None

    def open(self, offset: int) -> tuple[httpx.Response, int]:
        """A streamed response and the offset its first byte has (``<= offset``)."""
        if self.signed_url is None:
            call = api.download(self.system, self.path)
            return self.hook._send(call, stream=True), 0
        if self._transport is None:
            verify = self.hook._verify(self.hook.config)
            self._transport = httpx.HTTPTransport(verify=verify)
        timeout = httpx.Timeout(self.hook.config.timeout, connect=10.0)
        request = httpx.Request(
            "GET",
            self.signed_url,
            headers={"Range": f"bytes={offset}-"},
            extensions={"timeout": timeout.as_dict()},
        )
        try:
            response = self._transport.handle_request(request)
        except httpx.TransportError as exc:
            raise HpcConnectionError(f"GET {request.url.path}: {exc!r}") from exc
        if response.status_code not in (200, 206):
            response.read()
            response.close()
            api.raise_for_error(response)
        start = offset if response.status_code == 206 else 0
        return response, start

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class StreamReader:
    """Sequential reads over :class:`RangeSource` streams: a read where the last one
    ended continues the open stream; any other reopens; a broken stream resumes."""

    def __init__(self, source: RangeSource) -> None:
        self.source = source
        self._response: httpx.Response | None = None
        self._chunks: Iterator[bytes] | None = None
        self._pending = b""
        self._position = 0

    def read(self, start: int, length: int) -> bytes:
        pieces: list[bytes] = []
        got = failures = 0
        while got < length:
            try:
                if self._chunks is None or self._position != start + got:
                    self._reopen(start + got)
                piece = self._take(length - got)
            except (httpx.TransportError, HpcConnectionError) as exc:
                failures += 1
                self._drop()
                if failures > RESUMES:
                    raise HpcConnectionError(f"reading {self.source.path}: {exc!r}") from exc
                continue
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _take(self, wanted: int) -> bytes:
        assert self._chunks is not None
        if not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return b""
        if len(self._pending) <= wanted:
            piece, self._pending = self._pending, b""
        else:
            piece, self._pending = self._pending[:wanted], self._pending[wanted:]
        self._position += len(piece)
        return piece

    def _reopen(self, offset: int) -> None:
        if self._chunks is not None and self._position < offset and self.source.signed_url is None:
            self._skip(offset)  # ops/download cannot start anywhere: read on
            return
        self._drop()
        self._response, self._position = self.source.open(offset)
        self._chunks = self._response.iter_bytes(CHUNK)
        self._skip(offset)

    def _skip(self, offset: int) -> None:
        while self._position < offset:
            if not self._take(offset - self._position):
                break

    def _drop(self) -> None:
        if self._response is not None:
            self._response.close()
        self._response, self._chunks, self._pending = None, None, b""

    def close(self) -> None:
        self._drop()
        self.source.close()


# --------------------------------------------------------------------------- streaming write


_END = object()
_ABORT = object()


class Pipe:
    """A file-like body for httpx fed by another thread through a bounded queue.

    httpx rewinds a file before sending it (``seek(0)``): a second send of a pipe that
    has already given bytes raises, so a retry never sends a truncated file.
    """

    def __init__(self, depth: int = 4) -> None:
        self._queue: queue.Queue[object] = queue.Queue(depth)
        self._given = False
        self._done = False

    # the sending side (httpx, in the upload thread)
    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if self._given:
            raise OSError("a streamed upload cannot be sent twice")
        return 0

    def read(self, size: int = -1) -> bytes:
        if self._done:
            return b""
        item = self._queue.get()
        if item is _END:
            self._done = True
            return b""
        if item is _ABORT:
            self._done = True
            raise OSError("the upload was abandoned")
        self._given = True
        assert isinstance(item, bytes)
        return item

    # the writing side
    def put(self, data: bytes | object, alive: Callable[[], bool]) -> None:
        while True:
            try:
                self._queue.put(data, timeout=0.5)
                return
            except queue.Full:
                if not alive():
                    raise BrokenPipeError("the upload ended before all bytes were sent") from None

    def finish(self, alive: Callable[[], bool]) -> None:
        self.put(_END, alive)

    def abort(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        try:
            self._queue.put_nowait(_ABORT)
        except queue.Full:
            pass


class StreamingUpload:
    """``ops/upload`` of ``remote_path`` from bytes written by the caller, in a thread."""

    def __init__(self, hook: HpcHook, system: str, remote_path: str) -> None:
        directory, _, filename = remote_path.rstrip("/").rpartition("/")
        self.pipe = Pipe()
        self.error: BaseException | None = None
        call = api.upload(system, directory or "/")

        def send() -> None:
            try:
                files = {"file": (filename, self.pipe, "application/octet-stream")}
                hook._send(call, files=lambda: files).close()
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=send, name=f"hpc-upload-{filename}", daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            try:
                self.pipe.put(bytes(view[start : start + CHUNK]), self.alive)
            except BrokenPipeError:
                self.raise_error()
                raise

    def finish(self) -> None:
        try:
            self.pipe.finish(self.alive)
        except BrokenPipeError:
            pass
        self.thread.join()
        self.raise_error()

    def abort(self) -> None:
        self.pipe.abort()
        self.thread.join(timeout=60)

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


def sha256_of(source: IO[bytes]) -> str:
    """Hex SHA-256 of a seekable ``source`` from its start (streamed)."""
    source.seek(0)
    digest = hashlib.sha256()
    while chunk := source.read(CHUNK):
        digest.update(chunk)
    source.seek(0)
    return digest.hexdigest()
