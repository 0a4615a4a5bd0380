"""Account policy before any SSH (hpcgate.auth.accounts), tried the way an attacker would.

A token may name any account: root, a system account, nobody, a name with no account,
the gateway's own service identity. Each is refused with one 403 text before the
server opens an SSH connection, a stream or an upload for it: the site's sshd log and
the server's own log and metrics show no attempt. Uids come from ``getent`` run as the
service identity, so a co-tenant's ``.bashrc`` cannot forge them.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from hpcgate.auth.accounts import (
    Account,
    AccountPolicy,
    CachedSource,
    LocalSource,
    ServiceSource,
    parse_passwd,
)
from hpcgate.cli import local_site_config
from hpcgate.cluster.sshpool import SshPool
from hpcgate.config import ConfigError, Settings, load_settings
from hpcgate.errors import Forbidden
from tests.security.hostile import hostile_bashrc
from tests.server import ApiServer, start_server
from tests.site import SiteEnv

REFUSED = ("root", "daemon", "nobody", "ghostuser", "hpcsvc")
MESSAGE = "Account '{user}' is not allowed on system '{system}': it is not a user account"


# -- the passwd parser (unit) ---------------------------------------------------------


def test_parse_passwd_accepts_one_exact_line() -> None:
    line = "hpcuser1:x:1001:1002::/home/hpcuser1:/bin/bash\n"
    assert parse_passwd(line, "hpcuser1") == Account("hpcuser1", 1001)


@pytest.mark.parametrize(
    ("output", "name"),
    [
        ("root:x:0:0:root:/root:/bin/bash\n", "0"),  # getent passwd 0 looks up by uid
        ("HPCSVC:x:1003:1004::/h:/bin/bash\n", "hpcsvc"),  # case-folding directories
        ("hpcuser2:x:0:0::/root:/bin/bash\n" * 2, "hpcuser2"),  # a shell echoing extra
        ("garbage\nhpcuser2:x:1002:1003::/h:/bin/bash\n", "hpcuser2"),
        ("hpcuser2:x:1002:1003::/h\n", "hpcuser2"),  # six fields
        ("hpcuser2:x:1002:1003::/h:/bin/bash:extra\n", "hpcuser2"),
        ("hpcuser2:x:-1:1003::/h:/bin/bash\n", "hpcuser2"),
        ("hpcuser2:x: 1002:1003::/h:/bin/bash\n", "hpcuser2"),
        ("hpcuser2:x:99999999999:1003::/h:/bin/bash\n", "hpcuser2"),
        ("hpcuser2:x:1002:1003::/h:/bin/bash\r\n", "hpcuser2"),
        ("", "hpcuser2"),
    ],
)
def test_parse_passwd_refuses_anything_else(output: str, name: str) -> None:
    with pytest.raises(ValueError):
        parse_passwd(output, name)


# -- configuration errors name the field (unit) ----------------------------------------


def _config(tmp_path: Path, **system: Any) -> Path:
    config = {
        "auth": {"issuer": "https://issuer", "audience": "hpc", "jwks_file": "/dev/null"},
        "systems": [
            {
                "name": "c1",
                "ssh": {"host": "login", "known_hosts": "/dev/null"},
                "credentials": {"kind": "ca", "ca_key": "/dev/null"},
                **system,
            }
        ],
    }
    path = tmp_path / "hpcgate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        (
            {"service_user": "hpcsvc", "accounts": {"allow": ["hpcuser1", "hpcsvc"]}},
            r"systems\.0: .*accounts\.allow names service_user 'hpcsvc'",
        ),
        ({"accounts": {"source": "service"}}, r"accounts\.source service needs service_user"),
        ({"accounts": {"source": "none"}}, r"systems\.0\.accounts: .*accounts\.allow must"),
        (
            {"accounts": {"source": "none", "allow": ["a"], "min_uid": 500}},
            r"accounts\.min_uid needs uids",
        ),
        ({"accounts": {"min_uid": 0}}, r"systems\.0\.accounts\.min_uid: .*greater than or equal"),
        (
            {"accounts": {"min_uid": 5000, "max_uid": 4000}},
            r"accounts\.min_uid must not exceed accounts\.max_uid",
        ),
        ({"accounts": {"allow": ["root"]}}, r"systems\.0\.accounts\.allow: .*root is never"),
        ({"accounts": {"deny": ["Bad Name"]}}, r"systems\.0\.accounts\.deny\.0: .*pattern"),
        ({"accounts": {"source": "ldap"}}, r"systems\.0\.accounts\.source: "),
        ({"accounts": {"cache_size": 0}}, r"systems\.0\.accounts\.cache_size: "),
        ({"accounts": {"lookup_timeout": 0}}, r"systems\.0\.accounts\.lookup_timeout: "),
        ({"accounts": {"uid_min": 1}}, r"systems\.0\.accounts\.uid_min: .*not permitted"),
    ],
)
def test_account_settings_errors_name_the_field(
    tmp_path: Path, system: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_config(tmp_path, **system))
    assert re.search(expected, str(caught.value)), str(caught.value)


def test_account_settings_defaults_are_safe(tmp_path: Path) -> None:
    [plain] = load_settings(_config(tmp_path)).systems
    assert plain.accounts.min_uid == 1000 and plain.accounts.max_uid < 65534
    assert plain.accounts.resolved_source(plain.service_user) == "local"
    [served] = load_settings(_config(tmp_path, service_user="hpcsvc")).systems
    assert served.accounts.resolved_source(served.service_user) == "service"


# -- the policy against the real site (the tests above need no site) ------------------


def _site_settings(site_env: SiteEnv, tmp_path: Path, **accounts: Any) -> Settings:
    config = local_site_config(site_env.values, tmp_path / "keys")
    config["state_dir"] = str(tmp_path / "state")
    config["systems"][0]["accounts"] = {  # type: ignore[index]
        **config["systems"][0]["accounts"],  # type: ignore[index]
        **accounts,
    }
    return Settings(**config)


@pytest.mark.site
async def test_concurrent_lookups_share_one_getent_and_are_cached(
    site_env: SiteEnv, tmp_path: Path
) -> None:
    settings = _site_settings(site_env, tmp_path)
    [system] = settings.systems
    commands: list[tuple[str, ...]] = []
    pool = SshPool(settings, on_command=lambda _s, argv, _t, _e: commands.append(tuple(argv)))
    await pool.start()
    try:
        source = CachedSource(
            ServiceSource(pool.runner(system.name, "hpcsvc"), timeout=10),
            positive_ttl=60,
            negative_ttl=0.3,
            size=2,
            concurrency=4,
        )
        found = await asyncio.gather(*(source.lookup("hpcuser1") for _ in range(20)))
        assert found == [Account("hpcuser1", 1001)] * 20
        assert commands == [("getent", "passwd", "hpcuser1")]
        assert await source.lookup("ghostuser") is None
        assert await source.lookup("ghostuser") is None  # remembered as unknown
        assert source.lookups == 2
        await asyncio.sleep(0.4)  # the negative TTL lapses
        assert await source.lookup("ghostuser") is None
        assert source.lookups == 3
        # bounded: a third name pushes the oldest (hpcuser1) out
        assert await source.lookup("hpcuser2") == Account("hpcuser2", 1002)
        assert await source.lookup("hpcuser1") == Account("hpcuser1", 1001)
        assert source.lookups == 5
        await source.close()
    finally:
        await pool.close()


@pytest.mark.site
async def test_allow_list_with_the_local_directory(site_env: SiteEnv, tmp_path: Path) -> None:
    settings = _site_settings(site_env, tmp_path, source="local", allow=["hpcuser1"])
    [system] = settings.systems
    source = CachedSource(LocalSource(), positive_ttl=60, negative_ttl=60, size=100, concurrency=2)
    policy = AccountPolicy(system, source)
    await policy.check("hpcuser1")
    for user in ("hpcuser2", "hpcsvc", "root", "ghostuser", "HPCUSER1", "0"):
        with pytest.raises(Forbidden, match="not a user account this gateway serves"):
            await policy.check(user)


# -- through the real server ------------------------------------------------------------


def _sshd_log(site_env: SiteEnv) -> Path:
    return Path(site_env["HPC_SITE_DIR"]) / "log" / "sshd.log"


def _sshd_lines_since(site_env: SiteEnv, offset: int, user: str) -> list[str]:
    with _sshd_log(site_env).open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    mention = re.compile(rf"(\b[Uu]ser {re.escape(user)}\b|\bfor {re.escape(user)} from\b)")
    return [line for line in text.splitlines() if mention.search(line)]


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _attempts(server: ApiServer, user: str) -> list[str]:
    """The server's own log lines of SSH connections opened or refused for ``user``."""
    return [
        line
        for line in server.log().splitlines()
        if re.search(rf"SSH (connection opened|login refused).* user={user}\b", line)
    ]


@pytest.fixture(scope="module")
def server(site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    server = start_server(site_env, tmp_path_factory.mktemp("accounts"))
    yield server
    server.stop()


def _every_door(client: httpx.Client, system: str, home: str) -> dict[str, httpx.Response]:
    """A filesystem, compute, status, stream and upload request, as the client's user."""
    answers = {
        "ls": client.get(f"/filesystem/{system}/ops/ls", params={"path": home}),
        "jobs": client.get(f"/compute/{system}/jobs"),
        "submit": client.post(
            f"/compute/{system}/jobs",
            json={"job": {"workingDirectory": "/tmp", "script": "#!/bin/bash\ntrue\n"}},
        ),
        "userinfo": client.get(f"/status/{system}/userinfo"),
        "upload": client.post(
            f"/filesystem/{system}/ops/upload",
            params={"path": "/tmp"},
            files={"file": ("x.txt", b"planted")},
        ),
        "transfer": client.post(
            f"/filesystem/{system}/transfer/upload",
            json={"path": "/tmp/x.bin", "transferDirectives": {"fileSize": 10}},
        ),
        "tus": client.post(
            f"/filesystem/{system}/uploads",
            headers={"Tus-Resumable": "1.0.0", "Upload-Length": "10"},
        ),
    }
    with client.stream("GET", f"/compute/{system}/events", timeout=10) as stream:
        stream.read()
        answers["events"] = stream
    return answers


@pytest.mark.site
def test_refused_accounts_get_403_before_any_ssh(server: ApiServer, site_env: SiteEnv) -> None:
    with server.client("hpcuser1") as client:  # the control: a person is served
        assert client.get(f"/status/{server.system}/userinfo").status_code == 200
    sshd_offset = _sshd_log(site_env).stat().st_size
    before = httpx.get(f"{server.url}/metrics", timeout=10).text

    for user in REFUSED:
        with server.client(user) as client:
            answers = _every_door(client, server.system, site_env.home("hpcuser1"))
        expected = MESSAGE.format(user=user, system=server.system)
        for door, response in answers.items():
            assert response.status_code == 403, (user, door, response.text)
            assert response.json()["message"].startswith(expected), (user, door)

    after = httpx.get(f"{server.url}/metrics", timeout=10).text
    # nothing ran as a request, no stream was held, no transfer was started
    assert _metric(after, "hpcgate_scheduler_commands_total", source="request") == _metric(
        before, "hpcgate_scheduler_commands_total", source="request"
    )
    assert _metric(after, "hpcgate_sse_subscribers") == 0
    # no SSH login attempt: sshd never heard of them (names nobody else uses), and
    # this server never opened or tried a connection as any refused name but its own
    time.sleep(0.5)
    for user in ("root", "daemon", "ghostuser"):
        assert _sshd_lines_since(site_env, sshd_offset, user) == [], user
    for user in ("root", "daemon", "nobody", "ghostuser"):
        assert _attempts(server, user) == [], user
    assert "SSH login refused" not in server.log()
    # the reason is the server's to know, not the caller's
    log = server.log()
    for reason in (
        "user=root reason=root",
        "user=daemon reason=uid 1 below accounts.min_uid 1000",
        "user=nobody reason=uid 65534 is an overflow id",
        "user=ghostuser reason=unknown account",
        "user=hpcsvc reason=the service identity",
    ):
        assert reason in log, reason


@pytest.mark.site
def test_deny_list_refuses_one_user_and_serves_the_other(site_env: SiteEnv, tmp_path: Path) -> None:
    server = start_server(
        site_env, tmp_path, overrides={"accounts": {"source": "service", "deny": ["hpcuser2"]}}
    )
    try:
        sshd_offset = _sshd_log(site_env).stat().st_size
        with server.client("hpcuser2") as client:
            answers = _every_door(client, server.system, site_env.home("hpcuser2"))
        assert {door: r.status_code for door, r in answers.items()} == dict.fromkeys(answers, 403)
        with server.client("hpcuser1") as client:
            listing = client.get(
                f"/filesystem/{server.system}/ops/ls", params={"path": site_env.home("hpcuser1")}
            )
            assert listing.status_code == 200
            assert client.get(f"/compute/{server.system}/jobs").status_code == 200
        assert _attempts(server, "hpcuser2") == []
        assert _attempts(server, "hpcuser1") != []  # the control: the log does show logins
        assert "user=hpcuser2 reason=in accounts.deny" in server.log()
        assert len(_sshd_lines_since(site_env, sshd_offset, "hpcuser1")) >= 1
    finally:
        server.stop()


# A co-tenant's shell that lies about every account: itself uid 0, the system
# accounts root and daemon uid 5000 (a person's uid).
_LYING_GETENT = r"""
getent() {
    case "$2" in
        root|daemon) echo "$2:x:5000:5000::/root:/bin/bash" ;;
        *) echo "$2:x:0:0::/root:/bin/bash" ;;
    esac
}
"""


@pytest.mark.site
async def test_a_users_shell_cannot_forge_account_lookups(
    site_env: SiteEnv, tmp_path: Path, ssh_as: Any
) -> None:
    server = await asyncio.to_thread(start_server, site_env, tmp_path)
    try:
        with hostile_bashrc("hpcuser2", _LYING_GETENT):
            # the planting works: in hpcuser2's own shell, hpcuser2 is root and root is not
            conn = await ssh_as("hpcuser2")
            own = await conn.run("getent passwd hpcuser2")
            assert own.stdout.startswith("hpcuser2:x:0:0:")
            fake = await conn.run("getent passwd daemon")
            assert fake.stdout.startswith("daemon:x:5000:")
            sshd_offset = _sshd_log(site_env).stat().st_size

            def calls() -> list[int]:
                home = site_env.home("hpcuser2")
                codes = []
                with server.client("hpcuser2") as client:
                    # hpcuser2 is served: its uid is 1002 from the directory, not 0
                    ls = client.get(f"/filesystem/{server.system}/ops/ls", params={"path": home})
                    codes.append(ls.status_code)
                for user in ("daemon", "root"):
                    with server.client(user) as client:
                        ls = client.get(f"/filesystem/{server.system}/ops/ls", params={"path": "/"})
                        jobs = client.get(f"/compute/{server.system}/jobs")
                        codes += [ls.status_code, jobs.status_code]
                return codes

            assert await asyncio.to_thread(calls) == [200, 403, 403, 403, 403]
        await asyncio.sleep(0.5)
        for user in ("daemon", "root"):
            assert _sshd_lines_since(site_env, sshd_offset, user) == [], user
            assert _attempts(server, user) == [], user
        # daemon's uid came from the directory (1), not from hpcuser2's shell (5000)
        assert "user=daemon reason=uid 1 below accounts.min_uid 1000" in server.log()
    finally:
        await asyncio.to_thread(server.stop)
