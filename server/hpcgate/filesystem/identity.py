"""What a file is, as far as SFTP version 3 can tell: for binding a URL to one file.

SFTP v3 gives no inode number. The next best thing is what ``fstat`` of an opened
handle says: type, size, modification time, owner, group and mode. A file swapped in
by someone else differs in at least one of them (another owner, another size or
mtime), and nobody but the owner can set the mtime of a file to an arbitrary value.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncssh

from hpcgate.filesystem.entries import mode_of


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """A regular file as an opened handle saw it; ``link``: its path was a symlink."""

    size: int
    mtime: int
    uid: int
    gid: int
    mode: int
    link: bool = False

    @classmethod
    def of(cls, attrs: asyncssh.SFTPAttrs, *, link: bool = False) -> FileIdentity:
        return cls(
            size=attrs.size or 0,
            mtime=int(attrs.mtime or 0),
            uid=attrs.uid if attrs.uid is not None else -1,
            gid=attrs.gid if attrs.gid is not None else -1,
            mode=mode_of(attrs),
            link=link,
        )

    def same_file(self, attrs: asyncssh.SFTPAttrs) -> bool:
        """Whether ``attrs`` (fstat of a handle, or lstat of a path) describe this file."""
        other = FileIdentity.of(attrs)
        return (self.size, self.mtime, self.uid, self.gid, self.mode) == (
            other.size,
            other.mtime,
            other.uid,
            other.gid,
            other.mode,
        )

    @property
    def fingerprint(self) -> str:
        """A stable text form, for the signature of a URL bound to the file."""
        return f"{self.size}:{self.mtime}:{self.uid}:{self.gid}:{self.mode:o}:{int(self.link)}"
