"""Writing files: every write goes through a private staged file renamed into place."""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager

import asyncssh

from hpcgate.errors import (
    BadRequest,
    PayloadTooLarge,
    RequestTimeout,
)
from hpcgate.filesystem import staging
from hpcgate.filesystem.entries import (
    is_dir,
)
from hpcgate.filesystem.paths import parent, shown, validate_filename
from hpcgate.filesystem.sftp.pipeline import (
    COMMIT_BYTES,
    WRITE_WINDOW,
    WritePipeline,
    Written,
    block_size,
)
from hpcgate.filesystem.sftp.session import SftpSession
from hpcgate.filesystem.sftp_errors import sftp_errors

#: writes in flight for a whole-file upload (ops/upload): 16 x 255 KiB = 4 MiB, twice
#: sshd's channel window, so writes are queued when sshd opens it again (A/B, 512 MiB:
#: 412 vs 354 MB/s, 2.02 vs 2.20 server CPU s/GiB). Parts and tus keep ``WRITE_WINDOW``:
#: four parts at 16 each grew the server by 58 MiB (4 GiB; 36 at 8) for no speed
WHOLE_FILE_WINDOW = 2 * WRITE_WINDOW


class WritingOps(SftpSession):
    """write_stream, and the staged files of transfers: stage, write_staged,
    commit_staged, discard_staged; publish for small files put in place whole."""

    async def write_stream(
        self,
        path: str,
        chunks: AsyncIterable[bytes],
        *,
        offset: int = 0,
        truncate: bool = True,
        max_size: int | None = None,
        keep_partial: bool = False,
    ) -> int:
        """Replace ``path`` with ``chunks``; never opens an existing file for writing.

        The bytes go into a new private file beside ``path`` (``staging``), renamed
        over it at the end, so a symlink swapped in by another user of the directory
        is replaced, never written through, and a failed upload leaves the target as
        it was. Hence only whole-file writes (``offset`` 0, ``truncate``);
        ``keep_partial`` has nothing to keep (transfers write parts with
        ``write_staged``).
        """
        path = self._check(path)
        if offset != 0 or not truncate:
            raise BadRequest("Only whole files are written: an upload replaces the file")
        limit = self.limits.max_ops_file_size if max_size is None else max_size
        async with self._streamed_sftp() as sftp:
            try:
                async with asyncio.timeout(self._timeout):
                    staged, handle = await self._open_for_write(sftp, path)
            except TimeoutError:
                raise RequestTimeout("Opening the file on the cluster timed out") from None
            try:
                written = await self._write_chunks(
                    sftp, handle, chunks, path, 0, limit, window=WHOLE_FILE_WINDOW
                )
                async with asyncio.timeout(self._timeout):
                    await self._guard_write(sftp, path, follow_final=False)
                    await staging.commit(sftp, staged, path, handle=handle)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await handle.close()
                with contextlib.suppress(Exception):
                    await asyncio.shield(staging.discard(sftp, staged))
                if isinstance(exc, TimeoutError):
                    raise RequestTimeout("Writing to the cluster timed out") from None
                raise
        return written

    @asynccontextmanager
    async def _streamed_sftp(self) -> AsyncIterator[asyncssh.SFTPClient]:
        """The user's SFTP session for one streamed write, holding one of the user's
        stream slots throughout (``StreamQuota``: 429 before opening when none is free)."""
        with self._streams.hold(self._username):
            async with self._pool.sftp(self._system.name, self._username) as sftp:
                yield sftp

    async def _open_for_write(
        self, sftp: asyncssh.SFTPClient, path: str
    ) -> tuple[staging.Staged, asyncssh.SFTPClientFile]:
        """A staged file for ``path`` (whose parents the write guard checked)."""
        await self._guard_write(sftp, path, follow_final=False)
        await staging.check_replaceable(sftp, path)
        return await staging.create(sftp, path)

    async def write_staged(
        self,
        staged: staging.Staged,
        chunks: AsyncIterable[bytes],
        *,
        offset: int,
        max_size: int,
        on_written: Written | None = None,
    ) -> int:
        """Write ``chunks`` at ``offset`` into a transfer's staged file (a part).

        The file is reopened by its secret path without ``O_CREAT`` and checked
        before anything is written (409 if it was swapped). ``on_written(data,
        offset)`` runs as acknowledged bytes add up to 4 MiB (at least ``chunk_size``), in order.
        """
        shown_path = staged.directory
        async with self._streamed_sftp() as sftp:
            try:
                async with asyncio.timeout(self._timeout):
                    handle = await staging.reopen(sftp, staged)
            except TimeoutError:
                raise RequestTimeout("Opening the file on the cluster timed out") from None
            try:
                written = await self._write_chunks(
                    sftp, handle, chunks, shown_path, offset, max_size, on_written
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    await handle.close()
                raise
            with sftp_errors(shown_path):
                await handle.close()
        return written

    async def _write_chunks(
        self,
        sftp: asyncssh.SFTPClient,
        handle: asyncssh.SFTPClientFile,
        chunks: AsyncIterable[bytes],
        path: str,
        offset: int,
        limit: int,
        on_written: Written | None = None,
        *,
        window: int = WRITE_WINDOW,
    ) -> int:
        """Write ``chunks`` at ``offset``, ``window`` requests in flight (``WritePipeline``);
        ``PayloadTooLarge`` past ``limit`` bytes."""
        pipeline = WritePipeline(
            handle,
            offset=offset,
            block=block_size(sftp),
            timeout=self._timeout,
            commit_size=max(COMMIT_BYTES, self.limits.chunk_size),
            on_written=on_written,
            window=window,
        )
        with sftp_errors(path):
            return await pipeline.write_all(_bounded(chunks, limit))

    # -- staged files of transfers ---------------------------------------------------

    async def check_writable(self, path: str, *, follow_final: bool, what: str = "path") -> str:
        path = self._check(path, what)
        async with self._session() as sftp:
            await self._guard_write(sftp, path, follow_final=follow_final)
        return path

    async def stage(self, path: str, size: int) -> tuple[str, staging.Staged]:
        """Checks, then the private staging directory and file beside ``path``."""
        target = self._check(path)
        directory, name = parent(target), posixpath.basename(target)
        validate_filename(name)
        async with self._pool.sftp(self._system.name, self._username) as sftp:
            await self._guard_write(sftp, target, follow_final=False)
            if not is_dir(await self._stat(sftp, directory)):
                raise BadRequest(f"Not a directory: {shown(directory)}")
            await staging.check_replaceable(sftp, target)
            staged, handle = await staging.create(sftp, target, size=size)
            with sftp_errors(directory):
                await handle.close()
        return target, staged

    async def commit_staged(self, staged: staging.Staged, target: str) -> None:
        target = self._check(target)
        async with self._pool.sftp(self._system.name, self._username) as sftp:
            await self._guard_write(sftp, target, follow_final=False)
            await staging.commit(sftp, staged, target)

    async def discard_staged(self, staged: staging.Staged) -> None:
        async with self._pool.sftp(self._system.name, self._username) as sftp:
            await staging.discard(sftp, staged)

    async def publish(self, path: str, data: bytes) -> None:
        """Written aside into a new file (``O_EXCL``, a random name), then renamed over
        ``path``: never half-read, and nothing existing is opened for writing."""
        path = self._check(path)
        aside = f"{path}.{secrets.token_hex(8)}.new"
        flags = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_EXCL
        async with self._pool.sftp(self._system.name, self._username) as sftp:
            with sftp_errors(path):
                async with sftp.open(aside, flags, encoding=None) as handle:
                    await handle.write(data)
                await sftp.posix_rename(aside, path)


async def _bounded(chunks: AsyncIterable[bytes], limit: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(
                f"The upload exceeds the direct upload limit of {limit} bytes; use transfer/upload"
            )
        yield chunk
