"""Writes into directories other users can change: private staging, then ``rename(2)``.

SFTP version 3 (OpenSSH's server) names files by path only: no ``openat``, no
``O_NOFOLLOW``, no inode in the attributes. In a directory that a group can write
(a project directory, 2770, no sticky bit) any member may replace any entry at any
moment, between two requests or between a check and the use that follows it, with
a symlink to a file only the uploader can reach. So every write goes through here:

* **Nothing existing is opened for writing.** Data goes into a file created with
  ``O_CREAT|O_EXCL`` (which never follows a symlink, not even a dangling one); an
  existing target is replaced by ``rename(2)``, which replaces the directory entry
  and never follows a symlink there. The new file keeps the permission bits of the
  regular file it replaces (not its owner, group or ACL: it is the uploader's file).
* **A private staging directory with a secret name inside.** ``create`` makes
  ``.hpcgate-upload-<random>`` beside the target with ``mkdir`` (fails if the name
  exists) and mode 0700, and the data file inside it under a second random name of
  128 bits. Later requests of a transfer (parts, tus PATCHes) ``reopen``
  ``<staging>/<secret>`` *without* ``O_CREAT``: group members can rename or replace
  the staging directory (its parent is theirs to write) but cannot list it, so they
  cannot learn the secret name nor make a file of that name exist where the uploader
  would look; a redirected reopen fails (no such file) instead of writing through.
* **Every reopen checks the handle before a byte is written.** The staged file has
  a marker mode (0200) and, for transfers, its final size from the start (sparse);
  ``fstat`` of the reopened handle must show that file (regular, owner, group, mode,
  size). A stolen secret (say, a race won while the file was being created through a
  swapped directory) therefore still leads nowhere: any file of the uploader's that
  a planted link names differs, and opening it for writing (no ``O_TRUNC``) changes
  nothing. ``create`` also checks the directory and file it made, and fails if they
  were swapped meanwhile.
* ``commit`` gives the staged file its final mode through the (re)opened handle
  (``fchmod``, never ``chmod`` by path: that follows a planted link), renames it over
  the target and removes the staging directory. ``discard`` removes both.
* Handles are opened with ``block_size=0``: each write is one SFTP request of at
  most the server's message size (``sftp.pipeline`` keeps many in flight).

The secret name lives only in the server's record of a transfer (``Staged``; its
``repr`` leaves it out): never in a URL, a log line or an error message, which name
the staging directory instead.

Residual risks, which SFTP by path cannot close: each path lookup resolves the
*intermediate* directories afresh, so a member who can replace one of them (a
directory of theirs, or one in a group-writable parent) between two lookups can make
``commit`` rename the upload into another directory the uploader can write (the
bytes are the uploader's own; an existing file of the same name there is replaced);
and a swap between the reopen check and the ``rename`` of ``commit`` can make the
target an entry of the attacker's choosing, which they could have put there
themselves anyway. A planted FIFO of the secret name (after a won creation race)
would block the uploader's SFTP session until the operation timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass, field

import asyncssh

from hpcgate.errors import BadRequest, Conflict
from hpcgate.filesystem.entries import is_dir, is_link, is_regular, mode_of
from hpcgate.filesystem.paths import join, parent, shown
from hpcgate.filesystem.sftp_errors import sftp_errors

PREFIX = ".hpcgate-upload-"
DIRECTORY_MODE = 0o700
#: the staged file's mode until commit: owner write only, so nothing else matches it
STAGED_MODE = 0o200
_WRITE = asyncssh.FXF_WRITE


@dataclass(frozen=True, slots=True)
class Staged:
    """A staged file: where it is and what it must look like when reopened."""

    directory: str
    secret: str = field(repr=False)
    uid: int
    gid: int
    #: the size it was given at creation (None: written once through its first handle)
    size: int | None
    #: the permission bits a new file gets in that directory (the server's umask)
    default_mode: int

    @property
    def path(self) -> str:
        """The data file. Never show it: the name inside is the secret."""
        return join(self.directory, self.secret)

    def matches(self, attrs: asyncssh.SFTPAttrs) -> bool:
        """Whether ``attrs`` (fstat of a reopened handle) are this staged file's."""
        return (
            is_regular(attrs)
            and attrs.uid == self.uid
            and attrs.gid == self.gid
            and mode_of(attrs) & 0o7777 == STAGED_MODE
            and (self.size is None or attrs.size == self.size)
        )


def _tampered(staged: Staged) -> Conflict:
    return _moved(staged.directory)


def _moved(directory: str) -> Conflict:
    return Conflict(
        f"The upload's staging directory {shown(directory)} was moved or replaced "
        "(another user of the directory?); nothing was written through it. "
        "Start the upload again"
    )


async def check_replaceable(sftp: asyncssh.SFTPClient, target: str) -> None:
    """Refuse (400) a target that is a directory (or a link to one) or a special file.

    A symlink at the target is replaced by the new file, never written through.
    """
    with sftp_errors(target):
        try:
            found = await sftp.lstat(target)
        except asyncssh.SFTPNoSuchFile:
            return
    if is_link(found):
        try:
            found = await sftp.stat(target)
        except asyncssh.SFTPError:
            return  # dangling or unreadable: the link itself is replaced
    if is_dir(found):
        raise BadRequest(f"Is a directory: {shown(target)}")
    if not is_regular(found):
        raise BadRequest(f"Not a regular file: {shown(target)}")


async def create(
    sftp: asyncssh.SFTPClient, target: str, *, size: int | None = None
) -> tuple[Staged, asyncssh.SFTPClientFile]:
    """A new staged file for ``target`` and a handle open for writing it.

    ``size``: give the file its final size now (sparse), for transfers whose parts
    reopen it; None for a file written once through this handle.
    """
    directory = join(parent(target), PREFIX + secrets.token_hex(16))
    with sftp_errors(parent(target)):
        await sftp.mkdir(directory, asyncssh.SFTPAttrs(permissions=DIRECTORY_MODE))
    secret = secrets.token_hex(16)
    handle: asyncssh.SFTPClientFile | None = None
    try:
        try:  # in the directory just made: missing or not ours means it was swapped
            handle = await sftp.open(
                join(directory, secret),
                _WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_EXCL,
                encoding=None,
                block_size=0,
            )
        except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPPermissionDenied):
            raise _moved(directory) from None
        with sftp_errors(directory):
            created = await handle.stat()
            staged = Staged(
                directory=directory,
                secret=secret,
                uid=created.uid if created.uid is not None else -1,
                gid=created.gid if created.gid is not None else -1,
                size=size,
                default_mode=mode_of(created) & 0o777,
            )
            await handle.setstat(asyncssh.SFTPAttrs(size=size, permissions=STAGED_MODE))
        await _check_created(sftp, staged)
    except BaseException:
        if handle is not None:
            with contextlib.suppress(Exception):
                await handle.close()
        await asyncio.shield(_remove(sftp, directory, secret))
        raise
    return staged, handle


async def _check_created(sftp: asyncssh.SFTPClient, staged: Staged) -> None:
    """The directory and file ``create`` made are where it made them (or 409)."""
    try:  # both requests in flight at once: one round trip, the narrowest window
        directory, data = await asyncio.gather(
            sftp.lstat(staged.directory), sftp.lstat(staged.path)
        )
    except (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection):
        raise
    except asyncssh.SFTPError:
        raise _tampered(staged) from None
    private = is_dir(directory) and mode_of(directory) & 0o077 == 0
    if not private or directory.uid != staged.uid or not staged.matches(data):
        raise _tampered(staged)


async def reopen(sftp: asyncssh.SFTPClient, staged: Staged) -> asyncssh.SFTPClientFile:
    """The staged file opened for writing, after checking the handle is that file (409)."""
    try:
        handle = await sftp.open(staged.path, _WRITE, encoding=None, block_size=0)
    except (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection):
        raise
    except asyncssh.SFTPError:
        raise _tampered(staged) from None
    try:
        with sftp_errors(staged.directory):
            attrs = await handle.stat()
        if not staged.matches(attrs):
            raise _tampered(staged)
    except BaseException:
        with contextlib.suppress(Exception):
            await handle.close()
        raise
    return handle


async def commit(
    sftp: asyncssh.SFTPClient,
    staged: Staged,
    target: str,
    *,
    handle: asyncssh.SFTPClientFile | None = None,
) -> None:
    """Rename the staged file over ``target`` with its final mode; remove the staging.

    ``handle``: the handle ``create`` gave (it is closed here); otherwise the file is
    reopened and checked. The mode is the replaced regular file's, else the default
    for a new file there.
    """
    opened = handle if handle is not None else await reopen(sftp, staged)
    try:
        with sftp_errors(target):
            try:
                existing: asyncssh.SFTPAttrs | None = await sftp.lstat(target)
            except asyncssh.SFTPNoSuchFile:
                existing = None
        mode = staged.default_mode
        if existing is not None and is_regular(existing):
            mode = mode_of(existing) & 0o777
        with sftp_errors(staged.directory):
            await opened.setstat(asyncssh.SFTPAttrs(permissions=mode))
    except BaseException:
        with contextlib.suppress(Exception):
            await opened.close()
        raise
    with sftp_errors(staged.directory):
        await opened.close()  # a late write error (quota, NFS) shows up here
    with sftp_errors(target):
        try:
            await sftp.posix_rename(staged.path, target)
        except asyncssh.SFTPNoSuchFile:  # the staging directory went since the check
            raise _tampered(staged) from None
    with contextlib.suppress(asyncssh.SFTPError):
        await sftp.rmdir(staged.directory)


async def discard(sftp: asyncssh.SFTPClient, staged: Staged) -> None:
    """Best effort: remove the staged file and its directory."""
    await _remove(sftp, staged.directory, staged.secret)


async def _remove(sftp: asyncssh.SFTPClient, directory: str, secret: str) -> None:
    """``unlink`` never follows a link, ``rmdir`` refuses one: neither reaches elsewhere."""
    with contextlib.suppress(asyncssh.SFTPError):
        await sftp.remove(join(directory, secret))
    with contextlib.suppress(asyncssh.SFTPError):
        await sftp.rmdir(directory)
