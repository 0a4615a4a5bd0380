"""The path policy: pure checks, and the write guard against a fake SFTP session."""

from __future__ import annotations

import asyncssh
import pytest

from hpcgate.errors import BadRequest, Conflict, Forbidden
from hpcgate.filesystem.paths import (
    MAX_PATH_BYTES,
    PathPolicy,
    WriteGuard,
    is_within,
    normalise,
    validate_filename,
)

POLICY = PathPolicy("cluster", ["/home", "/scratch/", "/project/p1"])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/home/u", "/home/u"),
        ("/home/u/", "/home/u"),
        ("//home///u//", "/home/u"),
        ("/home/./u/.", "/home/u"),
        ("/", "/"),
        ("/home/u/a b/'q'/$(touch x)", "/home/u/a b/'q'/$(touch x)"),
        ("/home/u/..hidden/x..", "/home/u/..hidden/x.."),
    ],
)
def test_normalise_accepts_and_normalises(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("home/u", "absolute"),
        ("./x", "absolute"),
        ("~/x", "absolute"),
        ("/home/u/../v", "'..'"),
        ("/home/..", "'..'"),
        ("/..", "'..'"),
        ("/home/u/\x00x", "NUL"),
        ("/home/u/a\nb", "newline"),
        ("/home/u/a\rb", "carriage return"),
        ("/home/" + "x" * 256, "255 bytes"),
        ("/home/" + "é" * 128, "255 bytes"),
        ("/home/" + "a/" * (MAX_PATH_BYTES // 2), "4096 bytes"),
        ("/home/\udcff", "UTF-8"),
    ],
)
def test_normalise_refuses_malformed(raw: str, reason: str) -> None:
    with pytest.raises(BadRequest) as caught:
        normalise(raw)
    assert reason in caught.value.message


def test_ten_kib_path_message_is_short() -> None:
    with pytest.raises(BadRequest) as caught:
        normalise("/home/" + "a" * 10240)
    assert len(caught.value.message) < 300


def test_is_within_is_component_wise() -> None:
    assert is_within("/home", "/home")
    assert is_within("/home/u/x", "/home")
    assert not is_within("/homework", "/home")
    assert not is_within("/", "/home")
    assert is_within("/anything", "/")


@pytest.mark.parametrize("raw", ["/home", "/home/u/f", "/scratch/u", "/project/p1/data"])
def test_policy_admits_inside(raw: str) -> None:
    assert POLICY.check(raw) == raw


@pytest.mark.parametrize("raw", ["/", "/etc/passwd", "/homework", "/project", "/project/p2"])
def test_policy_forbids_outside(raw: str) -> None:
    with pytest.raises(Forbidden) as caught:
        POLICY.check(raw)
    assert "outside the filesystems" in caught.value.message


def test_policy_checks_form_before_place() -> None:
    with pytest.raises(BadRequest):
        POLICY.check("/etc/../home")


def test_policy_without_filesystems_forbids_everything() -> None:
    with pytest.raises(Forbidden, match="no filesystems"):
        PathPolicy("bare", []).check("/home/u")


def test_root_of_picks_the_longest() -> None:
    policy = PathPolicy("c", ["/data", "/data/shared"])
    assert policy.root_of("/data/shared/x") == "/data/shared"
    assert policy.root_of("/data/x") == "/data"
    assert policy.root_of("/other") is None


@pytest.mark.parametrize("name", ["f.txt", "a b", "it's", "$(touch x)", "..x", "é"])
def test_filename_accepts(name: str) -> None:
    assert validate_filename(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/", "a\x00", "a\nb", "x" * 256])
def test_filename_refuses(name: str) -> None:
    with pytest.raises(BadRequest):
        validate_filename(name)


class FakeSftp:
    """realpath/lstat over a dict of symlinks; other listed paths are plain."""

    def __init__(self, existing: set[str], links: dict[str, str]) -> None:
        self.existing = existing
        self.links = links
        self.calls: list[str] = []

    def _resolve(self, path: str, depth: int = 0) -> str | None:
        parts = [p for p in path.split("/") if p]
        current = ""
        for index, part in enumerate(parts):
            candidate = f"{current}/{part}"
            if candidate in self.links:
                if depth > 10:
                    return None
                target = self.links[candidate]
                rest = "/".join(parts[index + 1 :])
                return self._resolve(target + ("/" + rest if rest else ""), depth + 1)
            if candidate not in self.existing:
                return None
            current = candidate
        return current or "/"

    async def realpath(self, path: str) -> str:
        self.calls.append(f"realpath {path}")
        resolved = self._resolve(path)
        if resolved is None:
            raise asyncssh.SFTPNoSuchFile("No such file")
        return resolved

    async def lstat(self, path: str) -> asyncssh.SFTPAttrs:
        self.calls.append(f"lstat {path}")
        if path in self.links:
            return asyncssh.SFTPAttrs(type=asyncssh.FILEXFER_TYPE_SYMLINK)
        if path in self.existing:
            return asyncssh.SFTPAttrs(type=asyncssh.FILEXFER_TYPE_REGULAR)
        raise asyncssh.SFTPNoSuchFile("No such file")


EXISTING = {"/home", "/home/u", "/home/u/d", "/home/u/f", "/tmp", "/tmp/x", "/scratch", "/data"}
LINKS = {
    "/home/u/out": "/tmp",
    "/home/u/outfile": "/tmp/x",
    "/home/u/in": "/home/u/d",
    "/home/u/dangling": "/tmp/nothere",
    "/home/u/chain": "/home/u/out",
    "/scratch": "/data",
}


@pytest.fixture
def guard() -> WriteGuard:
    return WriteGuard(PathPolicy("c", ["/home", "/scratch"]))


@pytest.mark.parametrize(
    ("path", "follow"),
    [
        ("/home/u/f", True),
        ("/home/u/new", True),
        ("/home/u/d/new/deeper", False),
        ("/home/u/in/new", True),
        ("/home/u/in", True),
        ("/home/u/out", False),  # removing the link itself is fine
        ("/home/u/dangling", False),
        ("/scratch/x", True),  # the root itself is a symlink: its target is admitted
    ],
)
async def test_guard_admits(guard: WriteGuard, path: str, follow: bool) -> None:
    await guard.check(FakeSftp(EXISTING, LINKS), path, follow_final=follow)


@pytest.mark.parametrize(
    ("path", "follow"),
    [
        ("/home/u/out/new", False),
        ("/home/u/out/new/deeper", True),
        ("/home/u/out", True),
        ("/home/u/outfile", True),
        ("/home/u/chain", True),
        ("/home/u/chain/x", False),
        ("/home/u/dangling", True),
        ("/home/u/dangling/x", False),
    ],
)
async def test_guard_refuses_escapes(guard: WriteGuard, path: str, follow: bool) -> None:
    with pytest.raises(Forbidden):
        await guard.check(FakeSftp(EXISTING, LINKS), path, follow_final=follow)


async def test_guard_learns_real_roots_once(guard: WriteGuard) -> None:
    sftp = FakeSftp(EXISTING, LINKS)
    await guard.check(sftp, "/home/u/f", follow_final=True)
    await guard.check(sftp, "/home/u/f", follow_final=True)
    assert sum(call == "realpath /scratch" for call in sftp.calls) == 1


class SwappedSftp(FakeSftp):
    """What OpenSSH's sftp-server answers when an entry is swapped while it resolves
    it: lstat saw a link, readlink found a directory (EINVAL, "Bad message")."""

    async def realpath(self, path: str) -> str:
        self.calls.append(f"realpath {path}")
        raise asyncssh.SFTPBadMessage("Bad message")


async def test_guard_calls_an_entry_swapped_during_resolution_a_conflict(
    guard: WriteGuard,
) -> None:
    with pytest.raises(Conflict, match="changed during the request"):
        await guard.check(SwappedSftp(EXISTING, LINKS), "/home/u/d/f", follow_final=False)


class LinkedMidwaySftp(FakeSftp):
    """A parent that was missing when the cluster first resolved it and is a working
    link when looked at again (a group member swapping it)."""

    async def realpath(self, path: str) -> str:
        if not any(call == f"realpath {path}" for call in self.calls):
            self.calls.append(f"realpath {path}")
            raise asyncssh.SFTPNoSuchFile("No such file")
        return await super().realpath(path)


async def test_guard_calls_a_link_that_appeared_midway_a_conflict_not_dangling(
    guard: WriteGuard,
) -> None:
    sftp = LinkedMidwaySftp(EXISTING, LINKS)
    with pytest.raises(Conflict, match="changed during the request: /home/u/in"):
        await guard.check(sftp, "/home/u/in/f", follow_final=False)
    assert sftp.calls.count("realpath /home/u/in") == 2


async def test_guard_calls_a_link_that_still_leads_nowhere_dangling(guard: WriteGuard) -> None:
    sftp = FakeSftp(EXISTING, LINKS)
    with pytest.raises(Forbidden, match="dangling symlink: /home/u/dangling"):
        await guard.check(sftp, "/home/u/dangling/x", follow_final=False)
    assert sftp.calls.count("realpath /home/u/dangling") == 2
