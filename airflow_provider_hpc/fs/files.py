"""Open files of :class:`~.filesystem.HpcFileSystem`: streamed both ways, bounded memory.

Reading holds at most one block (``block_size``) of fsspec's read-ahead cache plus one
network chunk; writing holds one block plus a four-chunk queue to the upload thread.
A file read from start to end, and every file written, is compared with the server's
checksum (``verify``): a mismatch raises :class:`HpcChecksumError`.
"""

from __future__ import annotations

import hashlib
import io
from typing import TYPE_CHECKING, Any

from fsspec.spec import AbstractBufferedFile  # type: ignore[import-untyped]

from airflow_provider_hpc.exceptions import HpcChecksumError
from airflow_provider_hpc.fs.transfer import RangeSource, StreamingUpload, StreamReader

if TYPE_CHECKING:
    from airflow_provider_hpc.fs.filesystem import HpcFileSystem


class HpcFile(AbstractBufferedFile):  # type: ignore[misc]
    """``rb``: streamed reads (ranged for large files); ``wb``: a streamed upload."""

    closed: bool

    def __init__(
        self,
        fs: HpcFileSystem,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        *,
        verify: bool = True,
        **kwargs: Any,
    ) -> None:
        if mode not in ("rb", "wb"):
            raise ValueError(f"mode {mode!r}: hpc files open as 'rb' or 'wb'")
        self.system, self.remote = fs.split_path(path)
        self.verify = verify
        self._hasher = hashlib.sha256()
        self._hashed = 0
        self._reader: StreamReader | None = None
        self._upload: StreamingUpload | None = None
        kwargs.setdefault("cache_type", "readahead")
        super().__init__(fs, path, mode, block_size=block_size or fs.block_size, **kwargs)

    # ------------------------------------------------------------------ reading

    def _fetch_range(self, start: int, end: int) -> bytes:
        if self._reader is None:
            large = self.size >= self.fs.large_file_size
            url = self.fs.signed_url(self.system, self.remote) if large else None
            self._reader = StreamReader(RangeSource(self.fs.hook, self.system, self.remote, url))
        data = self._reader.read(start, end - start)
        if start == self._hashed and data:
            self._hasher.update(data)
            self._hashed += len(data)
            if self._hashed == self.size and self.verify:
                self.fs.verify(self.path, self._hasher.hexdigest(), self.size)
        return data

    # ------------------------------------------------------------------ writing

    def _initiate_upload(self) -> None:
        """Nothing yet: a file that fits in one block goes up in one request at close."""

    def _upload_chunk(self, final: bool = False) -> bool:
        data = self.buffer.getvalue()
        self._hasher.update(data)
        self._hashed += len(data)
        if self._upload is None and final:
            self.fs.hook.upload(self.remote, io.BytesIO(data), system=self.system)
        else:
            if self._upload is None:
                self._upload = StreamingUpload(self.fs.hook, self.system, self.remote)
            self._upload.write(data)
            if final:
                self._upload.finish()
        if final and self.verify:
            self.fs.verify(self.path, self._hasher.hexdigest(), self._hashed)
        if final:
            self.fs.invalidate_cache(self.path)
        return True

    def discard(self) -> None:
        """Abandon the write: the server discards what it received (the target stays)."""
        if self._upload is not None:
            self._upload.abort()
            self._upload = None
        self.buffer = io.BytesIO()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and self.mode == "wb" and not self.closed:
            self.discard()
            self.closed = True
            return
        self.close()

    def close(self) -> None:
        try:
            super().close()
        except BaseException:
            if self.mode == "wb":
                self.discard()
            raise
        finally:
            if self._reader is not None:
                self._reader.close()
                self._reader = None


__all__ = ["HpcChecksumError", "HpcFile"]
