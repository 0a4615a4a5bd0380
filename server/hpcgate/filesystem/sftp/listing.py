"""Listing and describing entries: ls, ls -R, stat, readlink (bounded listings)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator, Sequence
from typing import cast

import asyncssh
from pydantic import TypeAdapter

from hpcgate.errors import (
    BadRequest,
)
from hpcgate.filesystem.entries import (
    is_dir,
    is_link,
    mode_of,
    owner_columns,
    permission_letters,
    timestamp,
    type_letter,
)
from hpcgate.filesystem.models import File, FileStat
from hpcgate.filesystem.paths import shown
from hpcgate.filesystem.sftp.session import Row, SftpSession
from hpcgate.filesystem.sftp_errors import sftp_errors

# pure functions of an entry's mode and mtime, which repeat across a listing
# (bench/README.md: 3.5 of 29 µs per entry); bounded
_timestamp = functools.lru_cache(maxsize=4096)(timestamp)
_permission_letters = functools.lru_cache(maxsize=1024)(permission_letters)
_FILES = TypeAdapter(list[File])


class ListingOps(SftpSession):
    """ls, describe, stat, readlink."""

    # -- describing entries ---------------------------------------------------------

    async def _entries(
        self,
        sftp: asyncssh.SFTPClient,
        rows: Sequence[Row],
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
            # an owner and group pair is learned once per listing: the longname's
            # columns are split for its first entry only
            learned: set[tuple[int | None, int | None]] = set()
            for (_, _, original, longname), attrs in zip(rows, attrs_list, strict=True):
                ids = (attrs.uid, attrs.gid)
                if longname and attrs is original and ids not in learned:
                    owners = owner_columns(longname, attrs)
                    if owners is not None:
                        learned.add(ids)
                        self._names.learn(attrs.uid, owners[0], attrs.gid, owners[1])
            await self._names.resolve(
                self._runner,
                {a.uid for a in attrs_list if a.uid is not None},
                {a.gid for a in attrs_list if a.gid is not None},
            )
        # the names of this listing's owners, looked up once each; the entries as
        # plain dicts by alias validated in one go (pydantic-core; half File(...)'s cost)
        users: dict[int, str] = {}
        groups: dict[int, str] = {}
        entries = []
        for (name, _, _, _), attrs, target in zip(rows, attrs_list, targets, strict=True):
            mode = mode_of(attrs)
            uid, gid = attrs.uid or 0, attrs.gid or 0
            if numeric_uid:
                user, group = str(uid), str(gid)
            else:
                if (user_name := users.get(uid)) is None:
                    user_name = users[uid] = self._names.user(uid)
                if (group_name := groups.get(gid)) is None:
                    group_name = groups[gid] = self._names.group(gid)
                user, group = user_name, group_name
            entries.append(
                {
                    "name": name,
                    "type": type_letter(mode),
                    "linkTarget": target,
                    "user": user,
                    "group": group,
                    "permissions": _permission_letters(mode),
                    "lastModified": _timestamp(attrs.mtime),
                    "size": str(attrs.size or 0),
                }
            )
        return _FILES.validate_python(entries)

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
            [(path, raw_path(path), attrs, None)],
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
        top = raw_path(path)
        async with self._session() as sftp:
            # the directory is read while its lstat is in flight (one round trip, not
            # two); the read is used only if the lstat says ``path`` is a directory
            unused = asyncio.Event()
            listing = asyncio.ensure_future(
                self._read_directory(
                    sftp, top, "", show_hidden, self.limits.max_listing_entries, unused
                )
            )
            listing.add_done_callback(_retrieved)
            try:
                attrs = await self._lstat(sftp, path)
                first: list[Row] | None = None
                if is_dir(attrs):
                    first = await listing
                else:
                    unused.set()
                    if is_link(attrs) and dereference:
                        attrs = await self._followed(sftp, path, attrs)
                    if not is_dir(attrs):
                        return await self._entries(
                            sftp,
                            [(path, top, attrs, None)],
                            numeric_uid=numeric_uid,
                            dereference=False,
                        )
                return await self._list_tree(
                    sftp,
                    top,
                    show_hidden=show_hidden,
                    numeric_uid=numeric_uid,
                    recursive=recursive,
                    dereference=dereference,
                    first=first,
                )
            finally:
                await _settled(listing, unused)

    async def _list_tree(
        self,
        sftp: asyncssh.SFTPClient,
        top: bytes,
        *,
        show_hidden: bool,
        numeric_uid: bool,
        recursive: bool,
        dereference: bool,
        first: list[Row] | None = None,
    ) -> list[File]:
        """``top``'s entries, then (recursive) each subdirectory's, in ``ls -R`` order.

        ``first``: ``top``'s rows, when already read. Bounded: at most
        ``max_listing_entries`` entries in all and (recursive) ``max_recursion_depth``
        levels below ``top``; past either, 400 naming the setting. Iterative, so no
        depth reaches Python's recursion limit; symlinks to directories are listed,
        never descended into.
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
            if first is not None:
                rows, first = first, None
            else:
                rows = await self._read_directory(
                    sftp,
                    directory,
                    prefix,
                    show_hidden,
                    self.limits.max_listing_entries - len(files),
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
        unused: asyncio.Event | None = None,
    ) -> list[Row]:
        """The rows of one directory, sorted; 400 once more than ``room`` are read.

        Once ``unused`` is set the read stops (its handle closed) and what it
        returns is incomplete: only for a read nobody will use.
        """
        rows: list[Row] = []
        parent = directory.rstrip(b"/") + b"/"
        with sftp_errors(_shown_raw(directory)):
            scan = cast(AsyncGenerator[asyncssh.SFTPName, None], sftp.scandir(directory))
            async with contextlib.aclosing(scan) as entries:
                async for entry in entries:
                    if unused is not None and unused.is_set():
                        break
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
                    rows.append((prefix + _shown_raw(raw), parent + raw, entry.attrs, text))
        rows.sort(key=lambda row: row[1])
        return rows

    async def home(self) -> str:
        async with self._session() as sftp:
            with sftp_errors("~"):
                home = await sftp.realpath(".")
        assert isinstance(home, str)
        return home

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
            with sftp_errors(path):
                target = await sftp.readlink(path)
        assert isinstance(target, str)
        return target


async def _settled(listing: asyncio.Future[list[Row]], unused: asyncio.Event) -> None:
    """Wait for ``listing`` to finish; an unused one stops at its next entry.

    It is not cancelled, unless this operation is (its timeout, the client gone), as
    any SFTP call is then: an opendir cancelled in flight would leave its handle
    open on the cluster for the life of the session.
    """
    unused.set()
    if listing.done():
        return
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        listing.cancel()
        return
    try:
        await asyncio.wait([listing])
    except asyncio.CancelledError:
        listing.cancel()
        raise


def _retrieved(task: asyncio.Future[list[Row]]) -> None:
    """An unused read's error is not logged as never retrieved."""
    if not task.cancelled():
        task.exception()


def raw_path(path: str) -> bytes:
    return path.encode("utf-8")


def _shown_raw(path: bytes) -> str:
    """A path or name from the cluster as text (undecodable bytes replaced)."""
    return path.decode("utf-8", errors="replace")
