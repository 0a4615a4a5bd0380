"""ls -l letters from modes, checked against the standard library's stat.filemode."""

from __future__ import annotations

import stat

import asyncssh

from hpcgate.filesystem.entries import mode_of, owner_columns, permission_letters, type_letter


def test_letters_match_filemode_for_every_permission_and_type() -> None:
    for kind in (
        stat.S_IFREG,
        stat.S_IFDIR,
        stat.S_IFLNK,
        stat.S_IFIFO,
        stat.S_IFSOCK,
        stat.S_IFCHR,
        stat.S_IFBLK,
    ):
        for bits in range(0o10000):
            mode = kind | bits
            expected = stat.filemode(mode)
            assert type_letter(mode) + permission_letters(mode) == expected, oct(mode)


def test_mode_from_sftp_type_when_permissions_lack_it() -> None:
    attrs = asyncssh.SFTPAttrs(type=asyncssh.FILEXFER_TYPE_DIRECTORY, permissions=0o755)
    assert mode_of(attrs) == stat.S_IFDIR | 0o755


def test_owner_columns_from_openssh_longnames() -> None:
    attrs = asyncssh.SFTPAttrs(size=42)
    line = "-rw-r--r--    1 hpcuser1 project1       42 Nov 25 20:48 a name with spaces"
    assert owner_columns(line, attrs) == ("hpcuser1", "project1")
    assert owner_columns("-rw-r--r-- 1 u g 41 Nov 25 20:48 x", attrs) is None
    assert owner_columns("garbage", attrs) is None
