"""Changing the tree: mkdir, rm, rename, chmod/chown (lsetstat), symlink, cp, tar."""

from __future__ import annotations

import posixpath

import asyncssh

from hpcgate.errors import (
    BadRequest,
    Forbidden,
)
from hpcgate.filesystem import shellops
from hpcgate.filesystem.entries import (
    is_dir,
    is_link,
    is_regular,
    mode_of,
)
from hpcgate.filesystem.models import CompressionType, File
from hpcgate.filesystem.modes import Mode
from hpcgate.filesystem.names import valid_name
from hpcgate.filesystem.paths import parent, shown
from hpcgate.filesystem.sftp.listing import ListingOps
from hpcgate.filesystem.sftp_errors import sftp_errors


class ChangeOps(ListingOps):
    """mkdir, remove, rename, chmod, chown, symlink, copy, compress, extract."""

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
            with sftp_errors(path):
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
        with sftp_errors(path):
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
            with sftp_errors(target):
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
        with sftp_errors(path):
            await self._guard.refuse_foreign_links(sftp, path, include_final=False)

    async def _set_attrs(
        self, sftp: asyncssh.SFTPClient, path: str, attrs: asyncssh.SFTPAttrs, what: str
    ) -> None:
        """``lsetstat@openssh.com``: never follows a symlink at ``path``."""
        try:
            with sftp_errors(path):
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
                with sftp_errors(link):
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


def _refuse_link(attrs: asyncssh.SFTPAttrs, path: str, what: str) -> None:
    if is_link(attrs):
        raise BadRequest(
            f"Refusing to {what} a symbolic link: {shown(path)} (name the file it points to)"
        )
