"""A group member attacking a shared project directory, for the write and download tests.

The site's project directory is 2770 root:project1 (no sticky bit): hpcuser1 (the
victim) and hpcuser2 (the attacker) may both create, rename and replace entries in
it. The attacker's moves run as hpcuser2 for real (``runuser`` + the system's
python), so the kernel checks their permissions exactly as it would for a shell of
hpcuser2; only the observations of the test (reading the victim's private file,
simulating a lost race by reading a name) are made as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.security.hostile import hostile_files

STAGING_PREFIX = ".hpcgate-upload-"
ATTACKER = "hpcuser2"
VICTIM = "hpcuser1"
_PYTHON = "/usr/bin/python3"

# a tiny interpreter of filesystem moves, run as the attacker
_MOVES = r"""
import json, os, sys
for op, *args in json.loads(sys.argv[1]):
    if op == "rename":
        os.rename(args[0], args[1])
    elif op == "symlink":
        os.symlink(args[0], args[1])
    elif op == "unlink":
        os.unlink(args[0])
    elif op == "mkdir":
        os.mkdir(args[0], args[1])
        os.chmod(args[0], args[1])
    elif op == "write":
        with open(args[0], "w") as handle:
            handle.write(args[1])
    elif op == "listdir":
        print(json.dumps(sorted(os.listdir(args[0]))))
    else:
        raise SystemExit("unknown move " + op)
"""

# swaps ``target`` ``count`` times: a symlink to ``link_to`` in, then (odd turns) the
# original back, every move an atomic rename(2) of the attacker's own entries
_TOGGLE = r"""
import os, sys, time
target, link_to, count, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
directory = os.path.dirname(target)
aside = os.path.join(directory, ".attacker-original")
swaps = 0
for turn in range(count):
    temporary = os.path.join(directory, ".attacker-%d" % turn)
    try:
        if turn % 2 == 0:
            os.symlink(link_to, temporary)
            try:
                os.rename(target, aside)
            except FileNotFoundError:
                pass
            os.rename(temporary, target)
        elif os.path.lexists(aside):
            os.rename(aside, target)
        else:
            with open(temporary, "w") as handle:
                handle.write("attacker's file %d" % turn)
            os.rename(temporary, target)
        swaps += 1
    except OSError:
        pass
    time.sleep(pause)
print(swaps)
"""


def _attacker_argv(code: str, *args: str) -> list[str]:
    return ["runuser", "-u", ATTACKER, "--", _PYTHON, "-c", code, *args]


def attack(*moves: list[object]) -> str:
    """Run ``moves`` (``["rename", a, b]``, ``["symlink", to, link]``, ...) as the attacker."""
    result = subprocess.run(
        _attacker_argv(_MOVES, json.dumps(list(moves))),
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        raise AssertionError(f"the attacker's move failed: {result.stderr.strip()}")
    return result.stdout


async def attack_async(*moves: list[object]) -> str:
    return await asyncio.to_thread(attack, *moves)


def attacker_lists(directory: str) -> list[str]:
    return json.loads(attack(["listdir", directory]))


@contextlib.contextmanager
def toggling(
    target: str, link_to: str, count: int, pause: float = 0.004
) -> Iterator[subprocess.Popen[str]]:
    """The attacker swapping ``target`` for a symlink to ``link_to`` ``count`` times."""
    process = subprocess.Popen(
        _attacker_argv(_TOGGLE, target, link_to, str(count), str(pause)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=60)
        if process.poll() is None:
            process.kill()
            process.wait()


def swaps_done(process: subprocess.Popen[str]) -> int:
    """How many swaps a finished ``toggling`` process made."""
    stdout, _ = process.communicate(timeout=60)
    return int(stdout.strip() or 0)


@contextlib.contextmanager
def shared_directory(project_dir: str) -> Iterator[str]:
    """A fresh directory like the project directory (2770 root:project1), removed after."""
    path = Path(project_dir) / f"writes-{secrets.token_hex(4)}"
    path.mkdir()
    os.chown(path, 0, grp.getgrnam("project1").gr_gid)
    path.chmod(0o2770)
    try:
        yield str(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Secret:
    """The victim's private file (0600 in their 0700 home) and what it held."""

    path: str
    data: bytes
    mtime_ns: int

    def unchanged(self) -> bool:
        path = Path(self.path)
        return path.read_bytes() == self.data and path.stat().st_mtime_ns == self.mtime_ns


@contextlib.contextmanager
def victim_secret() -> Iterator[Secret]:
    """A private file of the victim for the block (planted under the home's lock)."""
    name = f"secret-{secrets.token_hex(4)}.txt"
    text = f"TOP-SECRET-{secrets.token_hex(16)}\n"
    with hostile_files(VICTIM, {name: text}, modes={name: 0o600}) as home:
        path = home / name
        os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
        yield Secret(str(path), text.encode(), path.stat().st_mtime_ns)


def victim_file(path: str, data: bytes, mode: int = 0o640) -> None:
    """A file of the victim's in the shared directory (as if they had written it)."""
    Path(path).write_bytes(data)
    os.chown(path, pwd.getpwnam(VICTIM).pw_uid, grp.getgrnam("project1").gr_gid)
    os.chmod(path, mode)


def staging_entries(directory: str) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.startswith(STAGING_PREFIX))


def home_listing() -> set[str]:
    return set(os.listdir(pwd.getpwnam(VICTIM).pw_dir))
