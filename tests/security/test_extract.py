"""extract into a shared directory never writes or exposes anything outside the target.

hpcuser1 (the victim) extracts archives into ``dest``, a group-writable directory of
theirs in the shared project directory; hpcuser2 (the attacker, same group) plants
symlinks to hpcuser1's 0700 home in ``dest``, swaps ``dest`` itself or the archive,
or supplies the archive (absolute names, ``..``, a symlink then a file through it,
hard links to the victim's secret). Both routes run the same code: ops/extract (a
command as the user) and transfer/extract (the job's script, run as the user). The victim's
home must be unchanged (names, ``.bashrc`` bytes, the secret's bytes and link count)
and nothing of it may appear in ``dest``.
"""

from __future__ import annotations

import asyncio
import grp
import io
import os
import pwd
import secrets
import tarfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from hpcgate.transfer import scripts
from tests.conftest import SshConnect
from tests.security.hostile import hostile_files
from tests.security.shared_dirs import VICTIM, attack, shared_directory
from tests.security.swapper import swapping
from tests.server import ApiServer, start_server
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e]

PRIVATE = "extract-private"


@pytest.fixture(scope="module")
def server(site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    api = start_server(
        site_env,
        tmp_path_factory.mktemp("extract"),
        settings_overrides={"transfer": {"job_poll_seconds": 0.2}},
    )
    yield api
    api.stop()


@pytest.fixture
async def victim(server: ApiServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=server.url, headers=server.headers(VICTIM), timeout=120
    ) as client:
        yield client


@dataclass
class Home:
    """The victim's home, held (no other test plants in it meanwhile), and its state."""

    path: Path
    names: list[str]
    bashrc: bytes | None
    secret: Path
    secret_data: bytes

    def unchanged(self) -> bool:
        bashrc = self.path / ".bashrc"
        return (
            sorted(os.listdir(self.path)) == self.names
            and (bashrc.read_bytes() if bashrc.exists() else None) == self.bashrc
            and self.secret.read_bytes() == self.secret_data
            and self.secret.stat().st_nlink == 1
        )


@pytest.fixture
def home() -> Iterator[Home]:
    secret = f"secret-{secrets.token_hex(4)}"
    files = {secret: f"TOP-SECRET {secrets.token_hex(8)}\n", f"{PRIVATE}/data": "private\n"}
    with hostile_files(VICTIM, files, modes=dict.fromkeys(files, 0o600)) as path:
        (path / PRIVATE).chmod(0o700)
        bashrc = path / ".bashrc"
        yield Home(
            path=path,
            names=sorted(os.listdir(path)),
            bashrc=bashrc.read_bytes() if bashrc.exists() else None,
            secret=path / secret,
            secret_data=(path / secret).read_bytes(),
        )


@dataclass
class Scene:
    shared: str
    dest: Path

    def dest_names(self) -> list[str]:
        return sorted(os.listdir(self.dest))


@pytest.fixture
def scene(site_env: SiteEnv) -> Iterator[Scene]:
    with shared_directory(site_env["HPC_SITE_PROJECT_DIR"]) as shared:
        dest = Path(shared) / "dest"
        dest.mkdir()
        _as_victim(dest, 0o2770)
        yield Scene(shared, dest)


def _as_victim(path: Path, mode: int) -> None:
    os.chown(path, pwd.getpwnam(VICTIM).pw_uid, grp.getgrnam("project1").gr_gid)
    path.chmod(mode)


def archive(members: list[tuple[str, str, str | bytes]]) -> bytes:
    """A .tar.gz of (name, kind "file"/"dir"/"symlink"/"hardlink", data or link target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o755 if kind == "dir" else 0o644
            if kind == "file":
                data = value.encode() if isinstance(value, str) else value
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}.get(
                kind, tarfile.LNKTYPE
            )
            info.linkname = str(value) if kind != "dir" else ""
            tar.addfile(info)
    return buffer.getvalue()


def put_archive(scene: Scene, data: bytes) -> str:
    path = Path(scene.shared) / f"in-{secrets.token_hex(3)}.tar.gz"
    path.write_bytes(data)
    _as_victim(path, 0o640)
    return str(path)


async def ops_extract(
    client: httpx.AsyncClient, server: ApiServer, source: str, target: Path
) -> httpx.Response:
    return await client.post(
        f"/filesystem/{server.system}/ops/extract",
        json={"sourcePath": source, "targetPath": str(target)},
    )


async def job_script(ssh_as: SshConnect, source: str, target: Path) -> tuple[str, str]:
    """(state, stderr) of the transfer/extract job's script, run as the victim over SSH
    rather than queued (the exact script ``transfer/extract`` submits; the site's queue
    is shared with other suites: ``tests/transfer/test_jobs.py`` runs it as a job)."""
    connection = await ssh_as(VICTIM)
    done = await connection.run("bash -s", input=scripts.extract(source, str(target)))
    return ("COMPLETED" if done.exit_status == 0 else "FAILED"), str(done.stderr)


def no_private_directory_left(directory: Path) -> bool:
    return not [name for name in os.listdir(directory) if name.startswith(".hpcgate-")]


# -- a planted symlink in the target ----------------------------------------------------


async def test_a_symlink_planted_in_the_target_is_never_written_through(
    server: ApiServer, victim: httpx.AsyncClient, scene: Scene, home: Home, ssh_as: SshConnect
) -> None:
    attack(["symlink", str(home.path), str(scene.dest / "sub")])
    source = put_archive(
        scene,
        archive([("sub/.bashrc", "file", "echo pwned\n"), ("sub/planted", "file", "pwned")]),
    )
    response = await ops_extract(victim, server, source, scene.dest)
    assert response.status_code == 409, response.text
    assert "sub already exists" in response.json()["message"]
    state, errors = await job_script(ssh_as, source, scene.dest)
    assert state == "FAILED" and "sub already exists" in errors
    assert home.unchanged()
    assert scene.dest_names() == ["sub"] and (scene.dest / "sub").is_symlink()


async def test_an_ordinary_extract_still_works_and_replaces_nothing(
    server: ApiServer, victim: httpx.AsyncClient, scene: Scene, home: Home, ssh_as: SshConnect
) -> None:
    source = put_archive(
        scene,
        archive(
            [("top", "dir", ""), ("top/a.txt", "file", "alpha"), ("top/l", "symlink", "a.txt")]
        ),
    )
    other = scene.dest / "other"
    other.mkdir()
    response = await ops_extract(victim, server, source, scene.dest)
    assert response.status_code == 204, response.text
    assert (scene.dest / "top" / "a.txt").read_text() == "alpha"
    assert os.readlink(scene.dest / "top" / "l") == "a.txt"
    assert (scene.dest / "top").stat().st_uid == pwd.getpwnam(VICTIM).pw_uid
    # again: top exists, nothing is replaced or merged
    (scene.dest / "top" / "a.txt").write_text("edited")
    again = await ops_extract(victim, server, source, scene.dest)
    assert again.status_code == 409, again.text
    assert (scene.dest / "top" / "a.txt").read_text() == "edited"
    assert scene.dest_names() == ["other", "top"]
    # the job does the same
    (scene.dest / "fresh").mkdir()
    _as_victim(scene.dest / "fresh", 0o2770)
    state, errors = await job_script(ssh_as, source, scene.dest / "fresh")
    assert state == "COMPLETED", errors
    assert (scene.dest / "fresh" / "top" / "a.txt").read_text() == "alpha"
    assert no_private_directory_left(scene.dest / "fresh")
    assert home.unchanged()


# -- malicious archives -------------------------------------------------------------------


def _malicious(home: Home, outside: Path) -> dict[str, list[tuple[str, str, str | bytes]]]:
    return {
        "dotdot": [("../escaped", "file", "pwned"), ("../../escaped", "file", "pwned")],
        "symlink then a file through it": [
            ("l", "symlink", str(home.path)),
            ("l/planted", "file", "pwned"),
        ],
        "relative symlink out": [
            ("l", "symlink", "../../../../../../../../.." + str(outside)),
            ("l/planted", "file", "pwned"),
        ],
        "hard link to the secret": [("h", "hardlink", str(home.secret))],
        "hard link through a symlink": [
            ("l", "symlink", str(home.path)),
            ("h", "hardlink", f"l/{home.secret.name}"),
        ],
        "symlink chain": [
            ("a", "symlink", "."),
            ("b", "symlink", "a/../.."),
            ("b/planted", "file", "pwned"),
        ],
    }


async def test_malicious_archives_write_and_expose_nothing_outside(
    server: ApiServer, victim: httpx.AsyncClient, scene: Scene, home: Home, ssh_as: SshConnect
) -> None:
    outside = Path(scene.shared)  # the directory holding dest: must not gain entries
    before_outside = sorted(os.listdir(outside))
    jobs = []
    for name, members in _malicious(home, outside).items():
        source = put_archive(scene, archive(members))
        before_outside.append(Path(source).name)
        response = await ops_extract(victim, server, source, scene.dest)
        assert response.status_code == 400, (name, response.text)
        assert scene.dest_names() == [], name  # failed: nothing moved, nothing left
        jobs.append(job_script(ssh_as, source, scene.dest))
    for state, errors in await asyncio.gather(*jobs):
        assert state == "FAILED", errors
    assert scene.dest_names() == []
    assert sorted(os.listdir(outside)) == sorted(before_outside)
    assert not (home.path / "planted").exists()
    assert home.unchanged()


async def test_absolute_member_names_land_inside_the_target(
    server: ApiServer, victim: httpx.AsyncClient, scene: Scene, home: Home
) -> None:
    absolute = home.path / "planted-absolute"
    source = put_archive(scene, archive([(str(absolute), "file", "pwned")]))
    response = await ops_extract(victim, server, source, scene.dest)
    assert response.status_code == 204, response.text
    inside = scene.dest / str(absolute).lstrip("/")
    assert inside.read_text() == "pwned"
    assert not absolute.exists()
    assert home.unchanged()


# -- the target or the archive swapped --------------------------------------------------


async def test_a_target_swapped_for_a_co_tenants_link_is_refused(
    server: ApiServer, victim: httpx.AsyncClient, scene: Scene, home: Home, ssh_as: SshConnect
) -> None:
    source = put_archive(scene, archive([("planted", "file", "pwned")]))
    attack(["rename", str(scene.dest), f"{scene.shared}/aside"])
    attack(["symlink", str(home.path), str(scene.dest)])
    response = await ops_extract(victim, server, source, scene.dest)
    assert response.status_code == 403, response.text
    assert "belongs to another user" in response.json()["message"]
    state, errors = await job_script(ssh_as, source, scene.dest)
    assert state == "FAILED" and "belongs to another user" in errors
    assert not (home.path / "planted").exists()
    assert home.unchanged()


async def test_an_archive_swapped_for_a_link_to_a_private_archive_is_refused(
    server: ApiServer, victim: httpx.AsyncClient, scene: Scene, home: Home, ssh_as: SshConnect
) -> None:
    # the victim's private archive, in the 0700 home
    private_archive = home.path / PRIVATE / "private.tar.gz"
    private_archive.write_bytes(archive([("exposed", "file", home.secret_data)]))
    _as_victim(private_archive, 0o600)
    source = put_archive(scene, archive([("public", "file", "public data")]))
    attack(["unlink", source], ["symlink", str(private_archive), source])
    response = await ops_extract(victim, server, source, scene.dest)
    assert response.status_code == 403, response.text
    state, errors = await job_script(ssh_as, source, scene.dest)
    assert state == "FAILED" and "belongs to another user" in errors
    assert scene.dest_names() == []


async def test_extract_while_the_target_keeps_being_swapped(
    server: ApiServer, victim: httpx.AsyncClient, scene: Scene, home: Home
) -> None:
    outcomes: set[int] = set()
    with swapping(str(scene.dest), str(home.path), seconds=4) as swaps:
        for round_ in range(8):
            source = put_archive(scene, archive([(f"planted-{round_}", "file", "pwned")]))
            response = await ops_extract(victim, server, source, scene.dest)
            outcomes.add(response.status_code)
    assert swaps.count > 0
    assert outcomes <= {204, 403, 404, 409}, outcomes
    assert not list(home.path.glob("planted-*"))
    assert not list(home.path.glob(".hpcgate-*"))
    assert home.unchanged()


# -- compress: the archive written never goes through a planted link ---------------------


async def test_compress_replaces_a_planted_link_instead_of_writing_through(
    server: ApiServer, victim: httpx.AsyncClient, scene: Scene, home: Home, ssh_as: SshConnect
) -> None:
    source = scene.dest / "results"
    source.mkdir()
    (source / "a.txt").write_text("results")
    _as_victim(source / "a.txt", 0o640)
    _as_victim(source, 0o2770)
    target = Path(scene.shared) / "results.tar.gz"
    attack(["symlink", str(home.secret), str(target)])
    response = await victim.post(
        f"/filesystem/{server.system}/ops/compress",
        json={"sourcePath": str(source), "targetPath": str(target)},
    )
    assert response.status_code == 204, response.text
    assert not target.is_symlink()
    with tarfile.open(target) as tar:
        assert tar.getnames() == ["results", "results/a.txt"]
    assert home.unchanged()
    # the job's script does the same
    target.unlink()
    attack(["symlink", str(home.secret), str(target)])
    connection = await ssh_as(VICTIM)
    done = await connection.run("bash -s", input=scripts.compress(str(source), str(target)))
    assert done.exit_status == 0, done.stderr
    assert not target.is_symlink() and tarfile.is_tarfile(target)
    assert home.unchanged()
    assert not [name for name in os.listdir(scene.shared) if name.startswith(".hpcgate-")]
