"""The filesystem interface over the pooled SSH connection's SFTP session.

Listing, stat, readlink, reads, writes, mkdir, rename, chmod, chown and symlink
are SFTP requests on the user's one shared SFTP channel: no remote process per
operation. Remote commands (as the user, argv quoted by the runner) only where
SFTP cannot do the work: ``sha256sum``, ``file``, ``cp``, rm, extract and compress
(``shellops``: they must not be redirected by a symlink swapped into a shared
directory while they run) and, for names no directory listing supplied, ``getent``.
chmod and chown never follow a symlink (lsetstat); listings are bounded
(``filesystem_limits``).

Each operation runs under the system's ``ssh.command_timeout`` (408 past it);
streamed reads and writes apply it to every chunk instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncssh

from hpcgate.cluster.remote import CommandResult, CommandRunner
from hpcgate.cluster.sshpool import SshPool
from hpcgate.config import SystemSettings
from hpcgate.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
)
from hpcgate.filesystem import content, shellops, staging
from hpcgate.filesystem.base import Filesystem, ReadStream
from hpcgate.filesystem.entries import (
    is_dir,
    is_link,
    is_regular,
    mode_of,
    owner_columns,
    permission_letters,
    timestamp,
    type_letter,
)
from hpcgate.filesystem.identity import FileIdentity
from hpcgate.filesystem.models import CompressionType, File, FileChecksum, FileContent, FileStat
from hpcgate.filesystem.modes import Mode
from hpcgate.filesystem.names import IdNames, valid_name
from hpcgate.filesystem.paths import PathPolicy, WriteGuard, parent, shown

# (name shown in the listing, full path as the cluster spells it, lstat attrs, longname)
_Row = tuple[str, bytes, asyncssh.SFTPAttrs, str | None]


# -- per-system state: the policy is shared, what a session tells is per user -----


_MAX_USERS = 4096


class _SystemState:
    """What one system's requests share: the path policy (configuration) and, per user,
    what was learned through that user's own sessions.

    Nothing learned as one user serves another: ``getent`` runs through the user's
    login shell, which that user controls, so each user has their own ``IdNames``
    (least recently used users are forgotten beyond ``_MAX_USERS``). The write
    guard keeps the roots' real paths per SFTP session (see ``WriteGuard``).
    """

    def __init__(self, system: SystemSettings) -> None:
        self.policy = PathPolicy(system.name, (fs.path for fs in system.filesystems))
        self.guard = WriteGuard(self.policy)
        self._names: OrderedDict[str, IdNames] = OrderedDict()

    def names(self, username: str) -> IdNames:
        found = self._names.pop(username, None) or IdNames()
        self._names[username] = found
        while len(self._names) > _MAX_USERS:
            self._names.popitem(last=False)
        return found


_STATE: weakref.WeakKeyDictionary[SshPool, dict[str, _SystemState]] = weakref.WeakKeyDictionary()


def _state(pool: SshPool, system: SystemSettings) -> _SystemState:
    systems = _STATE.setdefault(pool, {})
    found = systems.get(system.name)
    if found is None:
        found = systems[system.name] = _SystemState(system)
    return found


# -- errors -----------------------------------------------------------------------


@contextlib.contextmanager
def _errors(path: str) -> Iterator[None]:
    """Turn SFTP errors about ``path`` into the API's errors."""
    try:
        yield
    except asyncssh.SFTPNoSuchFile:
        raise NotFound(f"No such file or directory: {shown(path)}") from None
    except asyncssh.SFTPPermissionDenied:
        raise Forbidden(f"Permission denied: {shown(path)}") from None
    except asyncssh.SFTPOpUnsupported as exc:
        raise BadRequest(f"Not supported by the cluster's SFTP server: {exc.reason}") from None
    except (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection):
        raise
    except asyncssh.SFTPError as exc:
        reason = exc.reason if exc.reason and exc.reason != "Failure" else "operation failed"
        raise BadRequest(f"{reason}: {shown(path)}") from None


def _changed(path: str) -> Conflict:
    return Conflict(
        f"The file changed since the download URL was issued: {shown(path)}; ask for a new URL"
    )


def _command_error(result: CommandResult, command: str) -> ApiError:
    """The API error for a failed remote command, from what it printed."""
    text = (result.stderr.strip() or result.stdout.strip())[-2000:]
    message = text or f"{command} failed with exit status {result.exit_status}"
    if "No such file or directory" in text:
        return NotFound(message)
    if "Permission denied" in text or "Operation not permitted" in text:
        return Forbidden(message)
    return BadRequest(message)


# -- streams ----------------------------------------------------------------------


class _SftpReadStream(ReadStream):
    """Reads ``length`` bytes in chunks, fetching the next chunk while one is sent."""

    def __init__(
        self,
        stack: AsyncExitStack,
        handle: asyncssh.SFTPClientFile,
        *,
        offset: int,
        length: int,
        file_size: int,
        chunk_size: int,
        timeout: float,
    ) -> None:
        self._stack = stack
        self._handle = handle
        self.offset = offset
        self.length = length
        self.file_size = file_size
        self._chunk_size = chunk_size
        self._timeout = timeout
        self._closed = False

    async def _read(self, offset: int, size: int) -> bytes:
        async with asyncio.timeout(self._timeout):
            try:
                data = await self._handle.read(size, offset)
            except asyncssh.SFTPEOFError:
                return b""
        assert isinstance(data, bytes)
        return data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        position, end = self.offset, self.offset + self.length
        ahead: asyncio.Task[bytes] | None = None
        try:
            while position < end:
                if ahead is None:
                    ahead = asyncio.ensure_future(
                        self._read(position, min(self._chunk_size, end - position))
                    )
                try:
                    chunk = await ahead
                except TimeoutError:
                    raise RequestTimeout("Reading from the cluster timed out") from None
                ahead = None
                if not chunk:
                    break
                position += len(chunk)
                if position < end:
                    ahead = asyncio.ensure_future(
                        self._read(position, min(self._chunk_size, end - position))
                    )
                yield chunk
        finally:
            if ahead is not None:
                ahead.cancel()
                with contextlib.suppress(BaseException):
                    await ahead
            await self.aclose()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                await self._stack.aclose()


# -- the implementation -----------------------------------------------------------


class SftpFilesystem(Filesystem):
    """``Filesystem`` for one user on one system, over the SSH pool.

    Cheap to create: make one per request.
    """

    def __init__(
        self, pool: SshPool, system: SystemSettings, username: str, runner: CommandRunner
    ) -> None:
        self._pool = pool
        self._system = system
        self._username = username
        self._runner = runner
        state = _state(pool, system)
        self.policy = state.policy
        self._guard = state.guard
        self._names = state.names(username)
        self.limits = system.filesystem_limits
        self._timeout = system.ssh.command_timeout

    # -- plumbing -----------------------------------------------------------------

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[asyncssh.SFTPClient]:
        """The user's SFTP session, for one operation under the operation timeout."""
        try:
            async with asyncio.timeout(self._timeout):
                async with self._pool.sftp(self._system.name, self._username) as sftp:
                    yield sftp
        except TimeoutError:
            raise RequestTimeout(
                f"The filesystem operation did not finish within {self._timeout:g} s"
            ) from None

    async def _run(self, argv: Sequence[str], *, stdin: str | None = None) -> CommandResult:
        result = await self._runner.run(argv, stdin=stdin)
        if not result.ok:
            raise _command_error(result, argv[0])
        return result

    def _check(self, path: str, what: str = "path") -> str:
        return self.policy.check(path, what=what)

    async def _lstat(self, sftp: asyncssh.SFTPClient, path: str) -> asyncssh.SFTPAttrs:
        with _errors(path):
            return await sftp.lstat(path)

    async def _stat(self, sftp: asyncssh.SFTPClient, path: str) -> asyncssh.SFTPAttrs:
        with _errors(path):
            return await sftp.stat(path)

    async def _exists(self, sftp: asyncssh.SFTPClient, path: str) -> asyncssh.SFTPAttrs | None:
        try:
            return await sftp.lstat(path)
        except asyncssh.SFTPNoSuchFile:
            return None

    async def _guard_write(
        self, sftp: asyncssh.SFTPClient, path: str, *, follow_final: bool
    ) -> None:
        with _errors(path):
            await self._guard.check(sftp, path, follow_final=follow_final)

    # -- describing entries ---------------------------------------------------------

    async def _entries(
        self,
        sftp: asyncssh.SFTPClient,
        rows: Sequence[_Row],
        *,
        numeric_uid: bool,
        dereference: bool,
    ) -> list[File]:
        """Files for (shown name, full path as bytes, lstat attrs, longname) rows."""
        attrs_list = [attrs for _, _, attrs, _ in rows]
        links = [index for index, attrs in enumerate(attrs_list) if is_link(attrs)]
        if dereference and links:
            followed = await asyncio.gather(
                *(self._followed(sftp, rows[i][1], attrs_list[i]) for i in links)
            )
            for index, attrs in zip(links, followed, strict=True):
                attrs_list[index] = attrs
            links = [index for index in links if is_link(attrs_list[index])]
        targets: list[str | None] = [None] * len(rows)
        if links:
            found = await asyncio.gather(*(self._link_target(sftp, rows[i][1]) for i in links))
            for index, target in zip(links, found, strict=True):
                targets[index] = target
        if not numeric_uid:
            for (_, _, original, longname), attrs in zip(rows, attrs_list, strict=True):
                if longname and attrs is original:
                    owners = owner_columns(longname, attrs)
                    if owners is not None:
                        self._names.learn(attrs.uid, owners[0], attrs.gid, owners[1])
            await self._names.resolve(
                self._runner,
                {a.uid for a in attrs_list if a.uid is not None},
                {a.gid for a in attrs_list if a.gid is not None},
            )
        files = []
        for (name, _, _, _), attrs, target in zip(rows, attrs_list, targets, strict=True):
            mode = mode_of(attrs)
            uid, gid = attrs.uid or 0, attrs.gid or 0
            files.append(
                File(
                    name=name,
                    type=type_letter(mode),
                    link_target=target,
                    user=str(uid) if numeric_uid else self._names.user(uid),
                    group=str(gid) if numeric_uid else self._names.group(gid),
                    permissions=permission_letters(mode),
                    last_modified=timestamp(attrs.mtime),
                    size=str(attrs.size or 0),
                )
            )
        return files

    async def _followed(
        self, sftp: asyncssh.SFTPClient, path: str | bytes, attrs: asyncssh.SFTPAttrs
    ) -> asyncssh.SFTPAttrs:
        """The attributes of a symlink's target; the link's own if it dangles."""
        try:
            return await sftp.stat(path)
        except asyncssh.SFTPError:
            return attrs

    async def _link_target(self, sftp: asyncssh.SFTPClient, path: bytes) -> str | None:
        try:
            target = await sftp.readlink(path)
        except asyncssh.SFTPError:
            return None
        return target.decode("utf-8", errors="replace") if isinstance(target, bytes) else target

    async def _describe(
        self, sftp: asyncssh.SFTPClient, path: str, *, numeric_uid: bool, dereference: bool
    ) -> File:
        attrs = await self._lstat(sftp, path)
        [entry] = await self._entries(
            sftp,
            [(path, _raw(path), attrs, None)],
            numeric_uid=numeric_uid,
            dereference=dereference,
        )
        return entry

    # -- reading ------------------------------------------------------------------

    async def ls(
        self,
        path: str,
        *,
        show_hidden: bool = False,
        numeric_uid: bool = False,
        recursive: bool = False,
        dereference: bool = False,
    ) -> list[File]:
        path = self._check(path)
        async with self._session() as sftp:
            attrs = await self._lstat(sftp, path)
            if is_link(attrs) and dereference:
                attrs = await self._followed(sftp, path, attrs)
            if not is_dir(attrs):
                return await self._entries(
                    sftp,
                    [(path, _raw(path), attrs, None)],
                    numeric_uid=numeric_uid,
                    dereference=False,
                )
            return await self._list_tree(
                sftp,
                _raw(path),
                show_hidden=show_hidden,
                numeric_uid=numeric_uid,
                recursive=recursive,
                dereference=dereference,
            )

    async def _list_tree(
        self,
        sftp: asyncssh.SFTPClient,
        top: bytes,
        *,
        show_hidden: bool,
        numeric_uid: bool,
        recursive: bool,
        dereference: bool,
    ) -> list[File]:
        """``top``'s entries, then (recursive) each subdirectory's, in ``ls -R`` order.

        Bounded: at most ``max_listing_entries`` entries in all and (recursive)
        ``max_recursion_depth`` levels below ``top``; past either, 400 naming the
        setting. Iterative, so no depth reaches Python's recursion limit; symlinks
        to directories are listed, never descended into.
        """
        files: list[File] = []
        pending: list[tuple[bytes, str, int]] = [(top, "", 0)]  # a stack: next on top
        while pending:
            directory, prefix, depth = pending.pop()
            if depth > self.limits.max_recursion_depth:
                raise BadRequest(
                    f"The directory tree is deeper than filesystem_limits.max_recursion_depth "
                    f"({self.limits.max_recursion_depth} levels): {shown(prefix)}"
                )
            rows = await self._read_directory(
                sftp, directory, prefix, show_hidden, self.limits.max_listing_entries - len(files)
            )
            listed = await self._entries(
                sftp, rows, numeric_uid=numeric_uid, dereference=dereference
            )
            files.extend(listed)
            if recursive:
                subdirectories = [
                    (full, name + "/", depth + 1)
                    for (name, full, attrs, _), entry in zip(rows, listed, strict=True)
                    if entry.type == "d" and not is_link(attrs)
                ]
                pending.extend(reversed(subdirectories))
        return files

    async def _read_directory(
        self,
        sftp: asyncssh.SFTPClient,
        directory: bytes,
        prefix: str,
        show_hidden: bool,
        room: int,
    ) -> list[_Row]:
        """The rows of one directory, sorted; 400 once more than ``room`` are read."""
        rows: list[_Row] = []
        with _errors(_shown_raw(directory)):
            async with contextlib.aclosing(sftp.scandir(directory)) as entries:
                async for entry in entries:
                    raw = entry.filename
                    assert isinstance(raw, bytes)
                    if raw in (b".", b"..") or (raw.startswith(b".") and not show_hidden):
                        continue
                    if len(rows) >= room:
                        raise BadRequest(
                            "The listing has more entries than filesystem_limits."
                            f"max_listing_entries ({self.limits.max_listing_entries})"
                        )
                    longname = entry.longname
                    text = (
                        longname.decode("utf-8", "replace")
                        if isinstance(longname, bytes)
                        else longname
                    )
                    rows.append(
                        (prefix + _shown_raw(raw), _child(directory, raw), entry.attrs, text)
                    )
        rows.sort(key=lambda row: row[1])
        return rows

    async def describe(
        self, path: str, *, numeric_uid: bool = False, dereference: bool = False
    ) -> File:
        path = self._check(path)
        async with self._session() as sftp:
            return await self._describe(
                sftp, path, numeric_uid=numeric_uid, dereference=dereference
            )

    async def stat(self, path: str, *, dereference: bool = False) -> FileStat:
        path = self._check(path)
        async with self._session() as sftp:
            attrs = await (self._stat if dereference else self._lstat)(sftp, path)
        mtime = attrs.mtime or 0
        return FileStat(
            mode=mode_of(attrs),
            ino=0,
            dev=0,
            nlink=attrs.nlink or 1,
            uid=attrs.uid or 0,
            gid=attrs.gid or 0,
            size=attrs.size or 0,
            atime=attrs.atime or 0,
            mtime=mtime,
            ctime=attrs.ctime or mtime,
        )

    async def readlink(self, path: str) -> str:
        path = self._check(path)
        async with self._session() as sftp:
            attrs = await self._lstat(sftp, path)
            if not is_link(attrs):
                raise BadRequest(f"Not a symbolic link: {shown(path)}")
            with _errors(path):
                target = await sftp.readlink(path)
        assert isinstance(target, str)
        return target

    @asynccontextmanager
    async def _open_regular(
        self, sftp: asyncssh.SFTPClient, path: str
    ) -> AsyncIterator[tuple[asyncssh.SFTPClientFile, int]]:
        """An open regular file and its size (FIFOs and devices would block the session)."""
        attrs = await self._stat(sftp, path)
        if is_dir(attrs):
            raise BadRequest(f"Is a directory: {shown(path)}")
        if not is_regular(attrs):
            raise BadRequest(f"Not a regular file: {shown(path)}")
        with _errors(path):
            handle = await sftp.open(path, "rb", encoding=None)
        try:
            yield handle, attrs.size or 0
        finally:
            with contextlib.suppress(asyncssh.Error, OSError):
                await handle.close()

    @staticmethod
    def _reader(handle: asyncssh.SFTPClientFile) -> content.Reader:
        async def read(offset: int, length: int) -> bytes:
            try:
                data = await handle.read(length, offset)
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
            with _errors(path):
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
            with _errors(path):
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
            with _errors(path):
                return await self._reader(handle)(offset, end - offset)

    async def view(self, path: str, *, offset: int = 0, size: int | None = None) -> str:
        if size is not None and size <= 0:
            raise BadRequest("`size` value must be an integer value greater than 0")
        length = self.limits.max_content_size if size is None else size
        data = await self.read_range(path, offset, length)
        return data.decode("utf-8", errors="replace")

    @asynccontextmanager
    async def _open_checked(
        self, sftp: asyncssh.SFTPClient, path: str
    ) -> AsyncIterator[tuple[asyncssh.SFTPClientFile, asyncssh.SFTPAttrs]]:
        """An open regular file and what ``fstat`` of the handle says: the file opened,
        not whatever the path names a moment later."""
        async with self._open_regular(sftp, path) as (handle, _):
            with _errors(path):
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
        """``bound``: only the file ``identify`` saw (409 for another one at ``path``)."""
        path = self._check(path)
        if offset < 0 or (length is not None and length < 0):
            raise BadRequest("The range to read must not be negative")
        stack = AsyncExitStack()
        try:
            sftp = await stack.enter_async_context(
                self._pool.sftp(self._system.name, self._username)
            )
            async with asyncio.timeout(self._timeout):
                if bound is not None:
                    await self._check_bound_path(sftp, path, bound)
                handle, attrs = await stack.enter_async_context(self._open_checked(sftp, path))
                if bound is not None and not bound.same_file(attrs):
                    raise _changed(path)
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
        return _SftpReadStream(
            stack,
            handle,
            offset=start,
            length=available if length is None else min(length, available),
            file_size=size,
            chunk_size=self.limits.chunk_size,
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
            raise _changed(path)

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

    # -- writing ------------------------------------------------------------------

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
        async with self._pool.sftp(self._system.name, self._username) as sftp:
            try:
                async with asyncio.timeout(self._timeout):
                    staged, handle = await self._open_for_write(sftp, path)
            except TimeoutError:
                raise RequestTimeout("Opening the file on the cluster timed out") from None
            try:
                written = await self._write_chunks(handle, chunks, path, 0, limit)
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
    ) -> int:
        """Write ``chunks`` at ``offset`` into a transfer's staged file (a part).

        The file is reopened by its secret path without ``O_CREAT`` and checked
        before anything is written (409 if it was swapped).
        """
        shown_path = staged.directory
        async with self._pool.sftp(self._system.name, self._username) as sftp:
            try:
                async with asyncio.timeout(self._timeout):
                    handle = await staging.reopen(sftp, staged)
            except TimeoutError:
                raise RequestTimeout("Opening the file on the cluster timed out") from None
            try:
                written = await self._write_chunks(handle, chunks, shown_path, offset, max_size)
            except BaseException:
                with contextlib.suppress(Exception):
                    await handle.close()
                raise
            with _errors(shown_path):
                await handle.close()
        return written

    async def _write_chunks(
        self,
        handle: asyncssh.SFTPClientFile,
        chunks: AsyncIterable[bytes],
        path: str,
        offset: int,
        limit: int,
    ) -> int:
        """Write in ``chunk_size`` blocks, one block in flight while the next arrives."""
        block = self.limits.chunk_size
        pieces: list[bytes] = []
        buffered = 0
        position = offset
        total = 0
        pending: asyncio.Task[Any] | None = None

        async def flush() -> None:
            nonlocal pending, position, buffered
            data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            pieces.clear()
            buffered = 0
            if pending is not None:
                await self._await_write(pending, path)
            pending = asyncio.ensure_future(handle.write(data, position))
            position += len(data)

        try:
            async for chunk in chunks:
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLarge(
                        f"The upload exceeds the direct upload limit of {limit} bytes; "
                        "use transfer/upload"
                    )
                pieces.append(chunk)
                buffered += len(chunk)
                if buffered >= block:
                    await flush()
            if pieces:
                await flush()
            if pending is not None:
                await self._await_write(pending, path)
                pending = None
        finally:
            if pending is not None:  # failed or abandoned: stop it and collect its outcome
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
        return total

    async def _await_write(self, task: asyncio.Task[Any], path: str) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                with _errors(path):
                    await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            raise RequestTimeout("Writing to the cluster timed out") from None

    async def mkdir(self, path: str, *, parents: bool = False) -> File:
        path = self._check(path)
        async with self._session() as sftp:
            await self._guard_write(sftp, path, follow_final=False)
            if parents:
                await self._make_parents(sftp, path)
            else:
                await self._make_one(sftp, path)
            return await self._describe(sftp, path, numeric_uid=False, dereference=False)

    async def _make_one(self, sftp: asyncssh.SFTPClient, path: str) -> None:
        try:
            with _errors(path):
                await sftp.mkdir(path)
        except BadRequest:
            if await self._exists(sftp, path) is not None:
                raise BadRequest(f"cannot create directory '{shown(path)}': File exists") from None
            raise

    async def _make_parents(self, sftp: asyncssh.SFTPClient, path: str) -> None:
        """mkdir -p: create the missing directories from the deepest existing one."""
        missing: list[str] = []
        current = path
        root = self.policy.root_of(path)
        while True:
            found = await self._exists_followed(sftp, current)
            if found is not None:
                if not is_dir(found):
                    raise BadRequest(f"Not a directory: {shown(current)}")
                break
            missing.append(current)
            if current == root or current == "/":
                break
            current = parent(current)
        for directory in reversed(missing):
            try:
                await self._make_one(sftp, directory)
            except BadRequest:
                found = await self._exists_followed(sftp, directory)
                if found is None or not is_dir(found):
                    raise

    async def _exists_followed(
        self, sftp: asyncssh.SFTPClient, path: str
    ) -> asyncssh.SFTPAttrs | None:
        with _errors(path):
            try:
                return await sftp.stat(path)
            except asyncssh.SFTPNoSuchFile:
                return None

    async def remove(self, path: str) -> None:
        """rm -r that a co-tenant cannot redirect.

        Checked first over SFTP (policy, write guard, no co-tenant's symlink on the
        way, exists: 404), then one GNU ``rm -r --one-file-system -- ./name`` as the
        user in the parent directory, reached component by component and checked
        (``shellops``): a parent swapped after these checks makes it refuse (409),
        never follow. The final component is never followed (a symlink is removed
        as a link), and rm walks a tree with fts (openat, O_NOFOLLOW, device/inode
        checks), so a subdirectory swapped for a symlink mid-walk is removed as a
        link; it has no depth limit. Not SFTP remove/rmdir: those take a path whose
        parents the cluster resolves again at use, a swapped parent included.
        """
        path = self._check(path)
        if path in self.policy.roots or path == "/":
            raise Forbidden(f"Refusing to remove a filesystem root: {shown(path)}")
        async with self._session() as sftp:
            await self._guard_write(sftp, path, follow_final=False)
            await self._refuse_foreign_links(sftp, path)
            await self._lstat(sftp, path)
        result = await self._runner.run(
            shellops.argv(shellops.remove_call(parent(path), posixpath.basename(path)))
        )
        if not result.ok:
            raise shellops.error_for(result, "remove", path)

    async def rename(self, source: str, target: str) -> None:
        source = self._check(source, "source path")
        target = self._check(target, "target path")
        async with self._session() as sftp:
            await self._guard_write(sftp, source, follow_final=False)
            await self._guard_write(sftp, target, follow_final=False)
            await self._lstat(sftp, source)
            with _errors(target):
                try:
                    await sftp.posix_rename(source, target)  # replaces an existing target
                except asyncssh.SFTPOpUnsupported:
                    await sftp.rename(source, target)

    async def chmod(self, path: str, mode: str) -> File:
        """chmod that never follows a symlink: a symlink is refused (400), and the
        change is an ``lsetstat`` (fchmodat with AT_SYMLINK_NOFOLLOW), so a link
        swapped in after the check fails the call instead of being followed."""
        parsed = Mode.parse(mode)
        path = self._check(path)
        async with self._session() as sftp:
            await self._guard_write(sftp, path, follow_final=False)
            await self._refuse_foreign_links(sftp, path)
            current = await self._lstat(sftp, path)
            _refuse_link(current, path, "change the mode of")
            new_mode = parsed.apply(mode_of(current), is_dir=is_dir(current))
            await self._set_attrs(
                sftp, path, asyncssh.SFTPAttrs(permissions=new_mode), "change the mode of"
            )
            return await self._describe(sftp, path, numeric_uid=False, dereference=False)

    async def chown(self, path: str, owner: str = "", group: str = "") -> File:
        """chown/chgrp that never follows a symlink (refused with 400, like chmod).

        Names resolve with this user's own ``getent`` (their cache, never another
        user's); numeric ids beyond 2^32-2 are refused (400).
        """
        if not owner and not group:
            raise BadRequest("Give an owner, a group or both")
        if owner:
            valid_name(owner, "user")
        if group:
            valid_name(group, "group")
        path = self._check(path)
        uid = await self._names.id_of(self._runner, "passwd", owner) if owner else None
        if owner and uid is None:
            raise BadRequest(f"No such user on system {self._system.name}: {owner!r}")
        gid = await self._names.id_of(self._runner, "group", group) if group else None
        if group and gid is None:
            raise BadRequest(f"No such group on system {self._system.name}: {group!r}")
        async with self._session() as sftp:
            await self._guard_write(sftp, path, follow_final=False)
            await self._refuse_foreign_links(sftp, path)
            current = await self._lstat(sftp, path)
            _refuse_link(current, path, "change the owner of")
            attrs = asyncssh.SFTPAttrs(
                uid=current.uid if uid is None else uid,
                gid=current.gid if gid is None else gid,
            )
            await self._set_attrs(sftp, path, attrs, "change the owner of")
            return await self._describe(sftp, path, numeric_uid=False, dereference=False)

    async def _refuse_foreign_links(self, sftp: asyncssh.SFTPClient, path: str) -> None:
        """403 if ``path``'s parents pass through a co-tenant's symlink (``WriteGuard``)."""
        with _errors(path):
            await self._guard.refuse_foreign_links(sftp, path, include_final=False)

    async def _set_attrs(
        self, sftp: asyncssh.SFTPClient, path: str, attrs: asyncssh.SFTPAttrs, what: str
    ) -> None:
        """``lsetstat@openssh.com``: never follows a symlink at ``path``."""
        try:
            with _errors(path):
                await sftp.setstat(path, attrs, follow_symlinks=False)
        except BadRequest:
            now = await self._exists(sftp, path)
            if now is not None and is_link(now):
                raise BadRequest(
                    f"Refusing to {what} {shown(path)}: it became a symbolic link"
                ) from None
            raise

    async def symlink(self, target: str, link: str) -> File:
        target = self._check(target, "source path")
        link = self._check(link, "link path")
        async with self._session() as sftp:
            await self._guard_write(sftp, link, follow_final=False)
            try:
                with _errors(link):
                    await sftp.symlink(target, link)
            except BadRequest:
                if await self._exists(sftp, link) is not None:
                    raise BadRequest(
                        f"cannot create symbolic link '{shown(link)}': File exists"
                    ) from None
                raise
            return await self._describe(sftp, link, numeric_uid=False, dereference=False)

    async def copy(self, source: str, target: str) -> None:
        source = self._check(source, "source path")
        target = self._check(target, "target path")
        async with self._session() as sftp:
            await self._guard_write(sftp, target, follow_final=True)
            await self._lstat(sftp, source)
        await self._run(["cp", "-R", "-P", "--preserve=mode,timestamps", "--", source, target])

    async def compress(
        self,
        source: str,
        target: str,
        *,
        match_pattern: str | None = None,
        dereference: bool = False,
        compression: CompressionType = "gzip",
    ) -> None:
        """tar ``source`` into ``target`` through a fresh temporary file renamed over it.

        A symlink planted at ``target`` is replaced, never written through; both
        directories are reached component by component (``shellops``).
        """
        source = self._check(source, "source path")
        target = self._check(target, "target path")
        if source in ("/",):
            raise BadRequest("Cannot archive the root directory")
        if target in self.policy.roots:
            raise BadRequest(f"Is a directory: {shown(target)}")
        async with self._session() as sftp:
            await self._guard_write(sftp, target, follow_final=False)
            await self._lstat(sftp, source)
        argv = shellops.compress_call(
            source,
            target,
            match_pattern=match_pattern,
            dereference=dereference,
            compression=compression,
        )
        result = await self._runner.run(shellops.argv(argv))
        if not result.ok:
            raise shellops.error_for(result, "compress into", target)

    async def extract(
        self, source: str, target: str, *, compression: CompressionType = "gzip"
    ) -> None:
        """GNU tar into a private directory, then its entries renamed into ``target``.

        Nothing is written through a symlink, whether planted in the target or made
        by the archive, and nothing existing is replaced (409); see ``shellops``.
        """
        source = self._check(source, "source path")
        target = self._check(target, "target path")
        async with self._session() as sftp:
            await self._guard_write(sftp, target, follow_final=True)
            attrs = await self._stat(sftp, source)
            if not is_regular(attrs):
                raise BadRequest(f"Not a regular file: {shown(source)}")
            if not is_dir(await self._stat(sftp, target)):
                raise BadRequest(f"Not a directory: {shown(target)}")
        call = shellops.extract_call(target, source, compression)
        result = await self._runner.run(shellops.argv(call))
        if not result.ok:
            raise shellops.error_for(result, "extract into", target)


def _raw(path: str) -> bytes:
    return path.encode("utf-8")


def _child(directory: bytes, name: bytes) -> bytes:
    return directory.rstrip(b"/") + b"/" + name


def _shown_raw(path: bytes) -> str:
    """A path or name from the cluster as text (undecodable bytes replaced)."""
    return path.decode("utf-8", errors="replace")


def _refuse_link(attrs: asyncssh.SFTPAttrs, path: str, what: str) -> None:
    if is_link(attrs):
        raise BadRequest(
            f"Refusing to {what} a symbolic link: {shown(path)} (name the file it points to)"
        )


def _check_counts(bytes_: int | None, lines: int | None) -> None:
    if bytes_ is not None and lines is not None:
        raise BadRequest("Only one of `bytes` or `lines` can be specified.")
    for name, value in (("bytes", bytes_), ("lines", lines)):
        if value is not None and value < 0:
            raise BadRequest(f"`{name}` must not be negative")
