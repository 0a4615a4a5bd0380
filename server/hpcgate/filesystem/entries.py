"""SFTP attributes as ``ls -l`` shows them: type letter, permission letters, times."""

from __future__ import annotations

import stat as stat_module
from datetime import datetime

import asyncssh

_TYPE_LETTERS = {
    stat_module.S_IFDIR: "d",
    stat_module.S_IFLNK: "l",
    stat_module.S_IFREG: "-",
    stat_module.S_IFCHR: "c",
    stat_module.S_IFBLK: "b",
    stat_module.S_IFIFO: "p",
    stat_module.S_IFSOCK: "s",
}
_SFTP_TYPES = {
    asyncssh.FILEXFER_TYPE_DIRECTORY: stat_module.S_IFDIR,
    asyncssh.FILEXFER_TYPE_SYMLINK: stat_module.S_IFLNK,
    asyncssh.FILEXFER_TYPE_REGULAR: stat_module.S_IFREG,
    asyncssh.FILEXFER_TYPE_CHAR_DEVICE: stat_module.S_IFCHR,
    asyncssh.FILEXFER_TYPE_BLOCK_DEVICE: stat_module.S_IFBLK,
    asyncssh.FILEXFER_TYPE_FIFO: stat_module.S_IFIFO,
    asyncssh.FILEXFER_TYPE_SOCKET: stat_module.S_IFSOCK,
}


def mode_of(attrs: asyncssh.SFTPAttrs) -> int:
    """st_mode, type bits included (OpenSSH sends them; derive them otherwise)."""
    mode = attrs.permissions or 0
    if not stat_module.S_IFMT(mode):
        mode |= _SFTP_TYPES.get(attrs.type, 0)
    return mode


def is_dir(attrs: asyncssh.SFTPAttrs) -> bool:
    return stat_module.S_ISDIR(mode_of(attrs))


def is_link(attrs: asyncssh.SFTPAttrs) -> bool:
    return stat_module.S_ISLNK(mode_of(attrs))


def is_regular(attrs: asyncssh.SFTPAttrs) -> bool:
    return stat_module.S_ISREG(mode_of(attrs))


def permission_letters(mode: int) -> str:
    """``rwxr-xr-x`` for ``mode``, with ``s``/``S`` and ``t``/``T`` as ``ls`` shows them."""
    letters = []
    for shift, special, special_letter in ((6, 0o4000, "s"), (3, 0o2000, "s"), (0, 0o1000, "t")):
        bits = (mode >> shift) & 0o7
        letters.append("r" if bits & 4 else "-")
        letters.append("w" if bits & 2 else "-")
        if mode & special:
            letters.append(special_letter if bits & 1 else special_letter.upper())
        else:
            letters.append("x" if bits & 1 else "-")
    return "".join(letters)


def type_letter(mode: int) -> str:
    return _TYPE_LETTERS.get(stat_module.S_IFMT(mode), "?")


def timestamp(seconds: int | None) -> str:
    """Local time as ``YYYY-MM-DDTHH:MM:SS`` (``ls --time-style=+%Y-%m-%dT%H:%M:%S``)."""
    return datetime.fromtimestamp(seconds or 0).strftime("%Y-%m-%dT%H:%M:%S")


def owner_columns(longname: str, attrs: asyncssh.SFTPAttrs) -> tuple[str, str] | None:
    """User and group from an ``ls -l`` style longname, when it looks like one."""
    fields = longname.split(None, 8)
    if len(fields) < 9 or not fields[1].isdigit():
        return None
    if attrs.size is not None and fields[4] != str(attrs.size):
        return None
    return fields[2], fields[3]
