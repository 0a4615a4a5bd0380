"""FirecREST v2 wire shapes of filesystem results (camelCase out)."""

from __future__ import annotations

from typing import Literal

from hpcgate.wire import WireModel

CompressionType = Literal["none", "bzip2", "gzip", "xz"]


class File(WireModel):
    """One entry of a listing, as ``ls -l`` describes it.

    ``type`` is ``ls``'s first letter (``-``, ``d``, ``l``, ``c``, ``b``, ``p``, ``s``),
    ``permissions`` the nine letters after it (``rwxr-xr-x``, with ``s``/``t``),
    ``lastModified`` the local time as ``YYYY-MM-DDTHH:MM:SS``, ``size`` a decimal string.
    """

    name: str
    type: str
    link_target: str | None = None
    user: str
    group: str
    permissions: str
    last_modified: str
    size: str


class FileStat(WireModel):
    """``os.stat_result``'s integer fields; ``mode`` holds the file type bits too.

    SFTP (version 3, what OpenSSH speaks) carries mode, uid, gid, size, atime and
    mtime; it has no inode, device, link count or ctime. Those read ``ino=0``,
    ``dev=0``, ``nlink=1`` and ``ctime=mtime``.
    """

    mode: int
    ino: int
    dev: int
    nlink: int
    uid: int
    gid: int
    size: int
    atime: int
    mtime: int
    ctime: int


class FileContent(WireModel):
    """A slice of a file from head or tail; positions follow FirecREST's convention."""

    content: str
    content_type: Literal["lines", "bytes"]
    start_position: int
    end_position: int


class FileChecksum(WireModel):
    algorithm: str = "SHA256"
    checksum: str
