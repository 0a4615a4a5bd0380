"""The attacker's toolkit for the multi-tenant tests: a co-tenant's own shell files,
planted programs and the server's memory, as a hostile user of the site would use them.

The site's homes are on this machine, so the tests (running as root) write a user's
files directly, owned by that user, exactly as the user could through the API. Every
planting is undone on exit; plantings in one home are serialised across test
processes (an flock), because other suites use the same site users meanwhile.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
from collections.abc import Iterator
from pathlib import Path

_LOCK_DIR = Path("/tmp/hpcgate-test-locks")


@contextlib.contextmanager
def _home_lock(user: str) -> Iterator[None]:
    _LOCK_DIR.mkdir(mode=0o1777, exist_ok=True)
    with open(_LOCK_DIR / f"{user}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def home_of(user: str) -> Path:
    return Path(pwd.getpwnam(user).pw_dir)


def _write_as(user: str, path: Path, text: str, mode: int) -> None:
    entry = pwd.getpwnam(user)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chown(path.parent, entry.pw_uid, entry.pw_gid)
    path.write_text(text)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(mode)


@contextlib.contextmanager
def hostile_files(
    user: str, files: dict[str, str], *, modes: dict[str, int] | None = None
) -> Iterator[Path]:
    """Plant ``files`` (paths relative to ``user``'s home: ``.bashrc``, ``bin/sbatch``...)
    owned by ``user`` for the duration of the block; restore what was there before.

    Yields the home directory. Only files the user could write themselves.
    """
    home = home_of(user)
    modes = modes or {}
    with _home_lock(user):
        saved: dict[Path, bytes | None] = {}
        made_dirs: list[Path] = []
        try:
            for relative, text in files.items():
                path = home / relative
                saved[path] = path.read_bytes() if path.exists() else None
                for directory in reversed(path.relative_to(home).parents[:-1]):
                    if not (home / directory).exists():
                        made_dirs.append(home / directory)
                _write_as(
                    user, path, text, modes.get(relative, 0o755 if "bin/" in relative else 0o644)
                )
            yield home
        finally:
            for path, before in saved.items():
                if before is None:
                    path.unlink(missing_ok=True)
                else:
                    path.write_bytes(before)
            for directory in reversed(made_dirs):
                with contextlib.suppress(OSError):
                    directory.rmdir()


@contextlib.contextmanager
def hostile_bashrc(user: str, script: str) -> Iterator[Path]:
    """``user``'s ``~/.bashrc`` is ``script`` for the block: sshd runs every command of
    that user (exec channels; the SFTP subsystem where it is an external program)
    through it."""
    with hostile_files(user, {".bashrc": script}) as home:
        yield home


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process in KiB, from /proc."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]
