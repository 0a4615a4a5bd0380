"""What one user's session tells the filesystem code never serves another user; hostile
sizes (ids, depths, entry counts, XML) get a clear 4xx.

* ``getent`` runs through the caller's login shell: hpcuser2's ``.bashrc`` forges its
  answers (project1 is hpcuser1's private group, or gid 0, or a 20-digit gid); then
  hpcuser1's chgrp to project1 still lands on project1's real gid.
* the write guard's real paths of the roots, and the user's uid, are kept per SFTP
  session: a session that lies (internal-sftp runs no shell, so here a fake session)
  widens nothing for another.
* chown with a 20-digit id, ``ls -R`` of a 1000-level tree or of too many entries: 400
  naming the limit. (rm of such a tree: tests/security/test_delete_races.py.)
* the S3 completion body: a UTF-16 DTD/entity bomb is a 400, an oversize body a 413,
  and a valid completion still completes.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncssh
import httpx
import pytest
import yaml
from firecrest.utilities import part_checksum_xml

from hpcgate.cluster.remote import CommandResult
from hpcgate.config import ConfigError, load_settings
from hpcgate.errors import BadRequest, Forbidden
from hpcgate.filesystem.names import MAX_ID, IdNames
from hpcgate.filesystem.paths import PathPolicy, WriteGuard
from tests.security.hostile import hostile_bashrc
from tests.security.victim_trees import deep_tree, victim_ids
from tests.server import ApiServer, start_server
from tests.site import SiteEnv, scratch_dirs

SITE = pytest.mark.site
MAX_ENTRIES = 500
PROJECT1 = grp.getgrnam("project1").gr_gid
VICTIM_GROUP = grp.getgrnam("hpcuser1").gr_gid


# -- through the real server -------------------------------------------------------------


@pytest.fixture(scope="module")
def server(site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    api = start_server(
        site_env,
        tmp_path_factory.mktemp("fs-trust"),
        overrides={"filesystem_limits": {"max_listing_entries": MAX_ENTRIES}},
        settings_overrides={"transfer": {"part_size": 1024 * 1024}},
    )
    yield api
    api.stop()


@pytest.fixture
async def dirs(site_env: SiteEnv, sftp_as: Any) -> AsyncIterator[dict[str, str]]:
    async with scratch_dirs(site_env, sftp_as, ("hpcuser1", "hpcuser2"), "trust") as paths:
        yield paths


def ops(server: ApiServer, user: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"{server.url}/filesystem/{server.system}/ops",
        headers=server.headers(user),
        timeout=120,
    )


def own_file(directory: str, user: str) -> str:
    path = f"{directory}/f-{secrets.token_hex(3)}"
    Path(path).write_text("x")
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


FORGED_GETENT = """
getent() {{
    case "$1" in
        group) printf '%s:x:{gid}:\\n' "${{@: -1}}" ;;
        passwd) printf '%s:x:{uid}:{uid}::/:/bin/sh\\n' "${{@: -1}}" ;;
    esac
}}
"""


@SITE
async def test_a_forged_getent_of_one_user_never_reaches_another(
    server: ApiServer, dirs: dict[str, str]
) -> None:
    attacker_file = own_file(dirs["hpcuser2"], "hpcuser2")
    victim_file = own_file(dirs["hpcuser1"], "hpcuser1")
    async with ops(server, "hpcuser2") as attacker, ops(server, "hpcuser1") as victim:
        # (hpcuser2 keeps each answer of their own shell for a while: one name a case)
        cases = [
            ("project1", VICTIM_GROUP, "hpcuser1", 0, 403),  # hpcuser1's group, root
            ("hpcuser1", 0, "root", 0, 403),
            ("users", "9" * 20, "nobody", "9" * 20, 400),  # ids of 20 digits
        ]
        for group, gid, owner, uid, status in cases:
            with hostile_bashrc("hpcuser2", FORGED_GETENT.format(gid=gid, uid=uid)):
                response = await attacker.put(
                    "/chown", json={"path": attacker_file, "group": group}
                )
                assert response.status_code == status, response.text
                response = await attacker.put(
                    "/chown", json={"path": attacker_file, "owner": owner}
                )
                assert response.status_code == status, response.text
            # the forged answers stay with hpcuser2: hpcuser1's chgrp lands on project1
            response = await victim.put("/chown", json={"path": victim_file, "group": "project1"})
            assert response.status_code == 200, response.text
            assert response.json()["output"]["group"] == "project1"
            assert os.stat(victim_file).st_gid == PROJECT1
            os.chown(victim_file, -1, VICTIM_GROUP)
    assert os.stat(attacker_file).st_gid == grp.getgrnam("hpcuser2").gr_gid


@SITE
async def test_chown_with_huge_ids_is_a_clear_400(server: ApiServer, dirs: dict[str, str]) -> None:
    path = own_file(dirs["hpcuser1"], "hpcuser1")
    async with ops(server, "hpcuser1") as victim:
        for body in (
            {"owner": "1" * 20},
            {"group": "9" * 20},
            {"owner": str(2**32)},
            {"group": str(2**32 - 1)},
            {"owner": "hpcuser1", "group": "18446744073709551616"},
        ):
            response = await victim.put("/chown", json={"path": path, **body})
            assert response.status_code == 400, (body, response.text)
            assert "id" in response.json()["message"]
        # the largest real id is sent, and the cluster refuses it
        response = await victim.put("/chown", json={"path": path, "group": str(MAX_ID)})
        assert response.status_code == 403, response.text
    assert os.stat(path).st_gid == VICTIM_GROUP


@SITE
async def test_ls_of_a_1000_level_tree_names_the_depth_cap(
    server: ApiServer, dirs: dict[str, str]
) -> None:
    top = Path(dirs["hpcuser1"]) / "deep"
    deep_tree(top, 1000)
    try:
        async with ops(server, "hpcuser1") as victim:
            response = await victim.get("/ls", params={"path": str(top), "recursive": "true"})
            assert response.status_code == 400, response.text
            assert "filesystem_limits.max_recursion_depth (64 levels)" in response.text
            shallow = await victim.get("/ls", params={"path": str(top)})
            assert shallow.status_code == 200 and [f["name"] for f in shallow.json()["output"]] == [
                "d"
            ]
    finally:
        subprocess.run(["rm", "-rf", "--", str(top)], check=True)


@SITE
async def test_listings_are_bounded_in_entries(server: ApiServer, dirs: dict[str, str]) -> None:
    base = Path(dirs["hpcuser1"])
    uid, gid = victim_ids()
    wide = base / "wide"
    wide.mkdir()
    for i in range(MAX_ENTRIES + 1):
        (wide / f"e{i}").touch()
    tree = base / "tree"
    for part in ("a", "b"):
        (tree / part).mkdir(parents=True)
        for i in range(MAX_ENTRIES // 2):
            (tree / part / f"e{i}").touch()
    for directory in (wide, tree):
        subprocess.run(["chown", "-R", f"{uid}:{gid}", "--", str(directory)], check=True)
    async with ops(server, "hpcuser1") as victim:
        for path, recursive in ((wide, "false"), (tree, "true")):
            response = await victim.get("/ls", params={"path": str(path), "recursive": recursive})
            assert response.status_code == 400, response.text
            assert f"filesystem_limits.max_listing_entries ({MAX_ENTRIES})" in response.text
        response = await victim.get("/ls", params={"path": str(tree / "a")})
        assert response.status_code == 200 and len(response.json()["output"]) == MAX_ENTRIES // 2


@SITE
async def test_the_completion_body_is_parsed_by_a_hardened_parser(
    server: ApiServer, dirs: dict[str, str]
) -> None:
    target = f"{dirs['hpcuser1']}/uploaded.dat"
    data = os.urandom(1000)
    async with httpx.AsyncClient(
        base_url=server.url, headers=server.headers("hpcuser1"), timeout=60
    ) as victim:
        response = await victim.post(
            f"/filesystem/{server.system}/transfer/upload",
            json={
                "path": target,
                "transferDirectives": {"fileSize": len(data), "transferMethod": "s3"},
            },
        )
        assert response.status_code == 201, response.text
        directives = response.json()["transferDirectives"]
    complete = directives["completeUploadUrl"]
    async with httpx.AsyncClient(timeout=60) as anonymous:
        put = await anonymous.put(directives["partsUploadUrls"][0], content=data)
        assert put.status_code == 200, put.text
        etag = put.headers["ETag"]
        bomb = (
            '<?xml version="1.0" encoding="UTF-16"?>'
            '<!DOCTYPE a [<!ENTITY b "bbbbbbbbbbbbbbbb">'
            '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">'
            '<!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>'
            f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&d;{etag}</ETag>"
            "</Part></CompleteMultipartUpload>"
        )
        for body in (bomb.encode("utf-16"), bomb.encode("utf-16-le")):
            refused = await anonymous.post(complete, content=body)
            assert refused.status_code == 400, refused.text
            assert "DTD" in refused.text
        assert await declared_oversize(complete, 3 * 1024 * 1024) == 413
        valid = part_checksum_xml([{"ETag": etag, "PartNumber": 1}]).encode()
        completed = await anonymous.post(complete, content=valid)
        assert completed.status_code == 200, completed.text
    assert Path(target).read_bytes() == data


async def declared_oversize(url: str, length: int) -> int:
    """The status answered to a POST that declares ``length`` bytes and sends none."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        writer.write(
            f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/xml\r\nContent-Length: {length}\r\n\r\n".encode()
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
        return int(status_line.split()[1])
    finally:
        writer.close()


# -- units: per-session and per-user state -------------------------------------------------


class Session:
    """An SFTP session as the write guard sees it (internal-sftp runs no shell, so a
    lying session cannot be made on the real site; this one lies on purpose)."""

    def __init__(self, real: dict[str, str], owners: dict[str, int], home: str) -> None:
        self.real, self.owners, self.home = real, owners, home

    async def realpath(self, path: str) -> str:
        if path == ".":
            return self.home
        for prefix, target in sorted(self.real.items(), key=lambda kv: -len(kv[0])):
            if path == prefix or path.startswith(prefix + "/"):
                return target + path[len(prefix) :]
        return path

    async def lstat(self, path: str) -> asyncssh.SFTPAttrs:
        kind = (
            asyncssh.FILEXFER_TYPE_SYMLINK
            if path in self.real
            else asyncssh.FILEXFER_TYPE_DIRECTORY
        )
        return asyncssh.SFTPAttrs(type=kind, uid=self.owners.get(path, 1001))


async def test_real_roots_learned_by_one_session_never_widen_another() -> None:
    guard = WriteGuard(PathPolicy("c", ["/home", "/scratch"]))
    # B's session claims /scratch really is "/": every path would be inside
    liar = Session({"/scratch": "/", "/home/b/out": "/etc"}, {}, "/home/b")
    await guard.check(liar, "/home/b/out/x", follow_final=False)
    honest = Session({"/scratch": "/gpfs/scratch", "/home/a/out": "/etc"}, {}, "/home/a")
    with pytest.raises(Forbidden):
        await guard.check(honest, "/home/a/out/x", follow_final=False)
    await guard.check(honest, "/scratch/a/x", follow_final=True)  # its own real root


async def test_foreign_links_are_judged_by_the_sessions_own_user() -> None:
    guard = WriteGuard(PathPolicy("c", ["/project"]))
    links = {"/project/p/run": "/home/a/private", "/project/p/mine": "/scratch/a/data"}
    owners = {"/home/a": 1001, "/project/p/run": 1002, "/project/p/mine": 1001}
    a = Session(links, owners, "/home/a")
    with pytest.raises(Forbidden) as refused:
        await guard.refuse_foreign_links(a, "/project/p/run/file", include_final=False)
    assert "belongs to another user" in refused.value.message
    await guard.refuse_foreign_links(a, "/project/p/run", include_final=False)  # the link
    await guard.refuse_foreign_links(a, "/project/p/mine/file", include_final=False)
    # for user b (uid 1002, another session) the same link is their own
    b = Session(links, {**owners, "/home/b": 1002}, "/home/b")
    await guard.refuse_foreign_links(b, "/project/p/run/file", include_final=False)
    with pytest.raises(Forbidden):
        await guard.refuse_foreign_links(b, "/project/p/mine/file", include_final=False)


class ForgingRunner:
    """A runner whose ``getent`` prints what a hostile login shell would."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.calls = 0
        self.username = "u"

    async def run(
        self, argv: Sequence[str], *, stdin: Any = None, timeout: Any = None, max_output: Any = None
    ) -> CommandResult:
        self.calls += 1
        return CommandResult(0, self.output, "")


async def test_id_names_keep_only_what_was_asked_and_refuse_huge_ids() -> None:
    flood = "".join(f"user{i}:x:{i}:{i}::/:/bin/sh\n" for i in range(5000))
    names = IdNames(max_entries=100)
    await names.resolve(ForgingRunner(flood), [7, 8], [])
    assert names.user(7) == "user7" and names.user(8) == "user8"
    assert names.user(9) == "9"  # printed but not asked for: not kept
    assert await IdNames().id_of(ForgingRunner("project1:x:1001:\n"), "group", "project1") == 1001
    with pytest.raises(BadRequest):
        await IdNames().id_of(ForgingRunner("project1:x:4294967295:\n"), "group", "project1")
    with pytest.raises(BadRequest):
        await IdNames().id_of(ForgingRunner(""), "passwd", "99999999999999999999")
    # bounded: a flood of asked ids keeps at most max_entries answers
    await names.resolve(ForgingRunner(flood), range(5000), [])
    assert sum(names.user(i) != str(i) for i in range(5000)) <= 100


def test_id_names_are_per_user() -> None:
    from hpcgate.filesystem.sftp import SystemState

    settings = load_settings_for_tests()
    state = SystemState(settings.systems[0])
    assert state.names("hpcuser1") is state.names("hpcuser1")
    assert state.names("hpcuser1") is not state.names("hpcuser2")


# -- units: the new settings ----------------------------------------------------------------


BASE: dict[str, Any] = {
    "auth": {"issuer": "https://idp.example", "audience": "hpc", "jwks_url": "https://idp/jwks"},
    "systems": [
        {
            "name": "cluster",
            "ssh": {"host": "login", "known_hosts": "/etc/ssh/known_hosts"},
            "credentials": {"kind": "ca", "ca_key": "/etc/hpcgate/ca"},
            "filesystems": [{"path": "/home"}],
        }
    ],
}


def load_settings_for_tests(limits: dict[str, Any] | None = None, tmp: Path | None = None) -> Any:
    directory = tmp or Path(f"/tmp/hpcgate-fs-trust-{secrets.token_hex(4)}")
    directory.mkdir(exist_ok=True)
    config = {**BASE, "systems": [{**BASE["systems"][0], "filesystem_limits": limits or {}}]}
    path = directory / "hpcgate.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        return load_settings(path)
    finally:
        path.unlink()
        if tmp is None:
            directory.rmdir()


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"max_recursion_depth": 0}, "filesystem_limits.max_recursion_depth"),
        ({"max_recursion_depth": 5000}, "filesystem_limits.max_recursion_depth"),
        ({"max_listing_entries": 0}, "filesystem_limits.max_listing_entries"),
        ({"max_listing_entries": 10**9}, "filesystem_limits.max_listing_entries"),
    ],
)
def test_listing_limits_name_their_field(
    tmp_path: Path, limits: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings_for_tests(limits, tmp_path)
    assert field in str(error.value)


def test_listing_limits_defaults() -> None:
    limits = load_settings_for_tests().systems[0].filesystem_limits
    assert limits.max_recursion_depth == 64
    assert limits.max_listing_entries == 100_000
