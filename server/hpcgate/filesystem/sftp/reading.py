"""Reading: head, tail, ranges, checksums, and streamed reads bound to a file's identity."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import asyncssh

from hpcgate.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    PayloadTooLarge,
    RequestTimeout,
)
from hpcgate.filesystem import content
from hpcgate.filesystem.base import ReadStream
from hpcgate.filesystem.entries import (
    is_dir,
    is_link,
    is_regular,
)
from hpcgate.filesystem.identity import FileIdentity
from hpcgate.filesystem.models import FileChecksum, FileContent
from hpcgate.filesystem.paths import shown
from hpcgate.filesystem.sftp.pipeline import block_size
from hpcgate.filesystem.sftp.session import SftpSession
from hpcgate.filesystem.sftp.streams import SftpReadStream
from hpcgate.filesystem.sftp_errors import changed, sftp_errors


class ReadingOps(SftpSession):
    """head, tail, view, read_range, open_read, identify, checksum, file_type."""

    @asynccontextmanager
    async def _open_regular(
        self, sftp: asyncssh.SFTPClient, path: str, *, block_size: int = -1
    ) -> AsyncIterator[tuple[asyncssh.SFTPClientFile, int]]:
        """An open regular file and its size (FIFOs and devices would block the session).

        ``block_size=0``: every read is one request (streams pipeline them themselves).
        """
        attrs = await self._stat(sftp, path)
        if is_dir(attrs):
            raise BadRequest(f"Is a directory: {shown(path)}")
        if not is_regular(attrs):
            raise BadRequest(f"Not a regular file: {shown(path)}")
        with sftp_errors(path):
            handle = await sftp.open(path, "rb", encoding=None, block_size=block_size)
        try:
            yield handle, attrs.size or 0
        finally:
            with contextlib.suppress(asyncssh.Error, OSError):
                await handle.close()

    @staticmethod
    def _reader(handle: asyncssh.SFTPClientFile) -> content.Reader:
        async def read(offset: int, length: int) -> bytes:
            try:
                data: object = await handle.read(length, offset)
            except asyncssh.SFTPEOFError:
                return b""
            assert isinstance(data, bytes)
            return data

        return read

    async def head(
        self,
        path: str,
        *,
        bytes_: int | None = None,
        lines: int | None = None,
        skip_trailing: bool = False,
    ) -> FileContent:
        _check_counts(bytes_, lines)
        path = self._check(path)
        async with self._session() as sftp, self._open_regular(sftp, path) as (handle, size):
            with sftp_errors(path):
                data = await content.head(
                    self._reader(handle),
                    size,
                    bytes_=bytes_,
                    lines=lines,
                    skip_trailing=skip_trailing,
                    limit=self.limits.max_content_size,
                )
        count = bytes_ if bytes_ is not None else (10 if lines is None else lines)
        return FileContent(
            content=data.decode("utf-8", errors="replace"),
            content_type="bytes" if bytes_ is not None else "lines",
            start_position=0,
            end_position=-count if skip_trailing else count,
        )

    async def tail(
        self,
        path: str,
        *,
        bytes_: int | None = None,
        lines: int | None = None,
        skip_heading: bool = False,
    ) -> FileContent:
        _check_counts(bytes_, lines)
        path = self._check(path)
        async with self._session() as sftp, self._open_regular(sftp, path) as (handle, size):
            with sftp_errors(path):
                data = await content.tail(
                    self._reader(handle),
                    size,
                    bytes_=bytes_,
                    lines=lines,
                    skip_heading=skip_heading,
                    limit=self.limits.max_content_size,
                )
        count = bytes_ if bytes_ is not None else (10 if lines is None else lines)
        return FileContent(
            content=data.decode("utf-8", errors="replace"),
            content_type="bytes" if bytes_ is not None else "lines",
            start_position=count if skip_heading else -count,
            end_position=-1,
        )

    async def read_range(self, path: str, offset: int, length: int) -> bytes:
        if offset < 0:
            raise BadRequest("`offset` value must be an integer value equal or greater than 0")
        if length < 0:
            raise BadRequest("`size` value must be an integer value greater than 0")
        if length > self.limits.max_content_size:
            raise BadRequest(f"`size` value must be at most {self.limits.max_content_size} bytes")
        path = self._check(path)
        async with self._session() as sftp, self._open_regular(sftp, path) as (handle, size):
            end = min(size, offset + length)
            if end <= offset:
                return b""
            with sftp_errors(path):
                return await self._reader(handle)(offset, end - offset)

    async def view(self, path: str, *, offset: int = 0, size: int | None = None) -> str:
        if size is not None and size <= 0:
            raise BadRequest("`size` value must be an integer value greater than 0")
        length = self.limits.max_content_size if size is None else size
        data = await self.read_range(path, offset, length)
        return data.decode("utf-8", errors="replace")

    @asynccontextmanager
    async def _open_checked(
        self, sftp: asyncssh.SFTPClient, path: str, *, block_size: int = -1
    ) -> AsyncIterator[tuple[asyncssh.SFTPClientFile, asyncssh.SFTPAttrs]]:
        """An open regular file and what ``fstat`` of the handle says: the file opened,
        not whatever the path names a moment later."""
        async with self._open_regular(sftp, path, block_size=block_size) as (handle, _):
            with sftp_errors(path):
                attrs = await handle.stat()
            if not is_regular(attrs):
                raise BadRequest(f"Not a regular file: {shown(path)}")
            yield handle, attrs

    async def identify(self, path: str) -> FileIdentity:
        """The regular file at ``path`` as an opened handle sees it, to bind a URL to.

        Refused: a symlink at ``path`` owned by another user than the caller, root or
        the file's owner (403: a group member's link would make the caller hand out a
        file of their own), and a file that changed between lookup and open (409).
        """
        path = self._check(path)
        async with self._session() as sftp:
            before = await self._lstat(sftp, path)
            async with self._open_checked(sftp, path) as (_, attrs):
                pass
            if is_link(before):
                caller = await self._stat(sftp, ".")  # the home directory: the caller's
                if before.uid not in (0, attrs.uid, caller.uid):
                    raise Forbidden(
                        f"{shown(path)} is a symbolic link owned by another user; "
                        "give the path it leads to"
                    )
                return FileIdentity.of(attrs, link=True)
        identity = FileIdentity.of(attrs)
        if not identity.same_file(before):
            raise Conflict(f"The file changed while it was being opened: {shown(path)}")
        return identity

    async def open_read(
        self,
        path: str,
        *,
        offset: int = 0,
        length: int | None = None,
        bound: FileIdentity | None = None,
    ) -> ReadStream:
        """``bound``: only the file ``identify`` saw (409 for another one at ``path``).

        The stream holds one of the user's stream slots (``StreamQuota``: 429 when none
        is free) until it is closed, iterated to the end or not.
        """
        path = self._check(path)
        if offset < 0 or (length is not None and length < 0):
            raise BadRequest("The range to read must not be negative")
        stack = AsyncExitStack()
        stack.enter_context(self._streams.hold(self._username))
        try:
            sftp = await stack.enter_async_context(
                self._pool.sftp(self._system.name, self._username)
            )
            async with asyncio.timeout(self._timeout):
                if bound is not None:
                    await self._check_bound_path(sftp, path, bound)
                handle, attrs = await stack.enter_async_context(
                    self._open_checked(sftp, path, block_size=0)
                )
                if bound is not None and not bound.same_file(attrs):
                    raise changed(path)
        except TimeoutError:
            await stack.aclose()
            raise RequestTimeout("Opening the file on the cluster timed out") from None
        except BaseException:
            await stack.aclose()
            raise
        size = attrs.size or 0
        if size > self.limits.max_ops_file_size:
            await stack.aclose()
            raise PayloadTooLarge(
                f"The file is larger than the direct download limit of "
                f"{self.limits.max_ops_file_size} bytes; use transfer/download"
            )
        start = min(offset, size)
        available = size - start
        return SftpReadStream(
            stack,
            handle,
            offset=start,
            length=available if length is None else min(length, available),
            file_size=size,
            block=block_size(sftp),
            timeout=self._timeout,
        )

    async def _check_bound_path(
        self, sftp: asyncssh.SFTPClient, path: str, bound: FileIdentity
    ) -> None:
        """A path bound as a regular file must still be that file, not a symlink."""
        if bound.link:
            return  # the link was the caller's choice; the handle's fstat decides
        attrs = await self._lstat(sftp, path)
        if is_link(attrs):
            raise Conflict(
                f"{shown(path)} is now a symbolic link; it was a regular file when the "
                "download URL was issued"
            )
        if not bound.same_file(attrs):
            raise changed(path)

    async def checksum(self, path: str) -> FileChecksum:
        path = self._check(path)
        async with self._session() as sftp:
            attrs = await self._stat(sftp, path)
        if is_dir(attrs):
            raise BadRequest(f"Is a directory: {shown(path)}")
        if not is_regular(attrs):
            raise BadRequest(f"Not a regular file: {shown(path)}")
        result = await self._run(["sha256sum", "--", path])
        digest = result.stdout.split(maxsplit=1)[0].lstrip("\\") if result.stdout else ""
        if len(digest) != 64:
            raise BadRequest(f"sha256sum gave no checksum for {shown(path)}")
        return FileChecksum(algorithm="SHA256", checksum=digest)

    async def file_type(self, path: str) -> str:
        path = self._check(path)
        async with self._session() as sftp:
            await self._lstat(sftp, path)
        result = await self._run(["file", "-b", "--", path])
        return result.stdout.strip()


def _check_counts(bytes_: int | None, lines: int | None) -> None:
    if bytes_ is not None and lines is not None:
        raise BadRequest("Only one of `bytes` or `lines` can be specified.")
    for name, value in (("bytes", bytes_), ("lines", lines)):
        if value is not None and value < 0:
            raise BadRequest(f"`{name}` must not be negative")
