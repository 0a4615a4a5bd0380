"""The victim's trees in a shared directory, made directly by the tests (as root, then
owned by hpcuser1 and group project1, group-writable like a project's directories)."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

from tests.security.shared_dirs import VICTIM


def victim_ids() -> tuple[int, int]:
    return pwd.getpwnam(VICTIM).pw_uid, grp.getgrnam("project1").gr_gid


def as_victim(path: Path, *, directory: bool) -> None:
    os.chown(path, *victim_ids(), follow_symlinks=False)
    path.chmod(0o2770 if directory else 0o660)


def victim_tree(root: Path, subdirectories: int, files_each: int) -> None:
    """``root/sub``, ``root/sub1``... each with ``files_each`` files ``f0``, ``f1``..."""
    uid, gid = victim_ids()
    root.mkdir()
    as_victim(root, directory=True)
    for d in range(subdirectories):
        sub = root / ("sub" if d == 0 else f"sub{d}")
        sub.mkdir()
        as_victim(sub, directory=True)
        for i in range(files_each):
            fd = os.open(sub / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660)
            try:
                os.write(fd, f"tree file {d}/{i}\n".encode())
                os.fchown(fd, uid, gid)
                os.fchmod(fd, 0o660)
            finally:
                os.close(fd)


def deep_tree(top: Path, levels: int) -> None:
    """``top/d/d/.../d`` (``levels`` deep), made through directory fds (no long paths)."""
    uid, gid = victim_ids()
    top.mkdir()
    as_victim(top, directory=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir("d", 0o2770, dir_fd=fd)
            os.chown("d", uid, gid, dir_fd=fd, follow_symlinks=False)
            deeper = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = deeper
    finally:
        os.close(fd)
