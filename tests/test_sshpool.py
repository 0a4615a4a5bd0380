"""SshPool and the SSH identity providers against the real local site."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from hpcgate import errors
from hpcgate.config import (
    CertificateAuthorityCredentials,
    SshSettings,
    StaticKeyCredentials,
    SystemSettings,
)
from hpcgate.credentials import (
    CertificateAuthorityIdentities,
    StaticKeyIdentities,
    identity_provider_for,
    validate_username,
)
from hpcgate.sshpool import SshPool
from tests.site import SiteEnv

pytestmark = pytest.mark.site

NAME = "hpcsite"


def system_for(
    site_env: SiteEnv,
    *,
    credentials: CertificateAuthorityCredentials | StaticKeyCredentials | None = None,
    **ssh: Any,
) -> SystemSettings:
    """SystemSettings for the local site (CA credentials unless told otherwise)."""
    ssh.setdefault("known_hosts", site_env.known_hosts)
    return SystemSettings(
        name=NAME,
        ssh=SshSettings(host=site_env.ssh_host, port=site_env.ssh_port, **ssh),
        credentials=credentials or CertificateAuthorityCredentials(ca_key=site_env.ca_key),
    )


def static_keys(site_env: SiteEnv) -> StaticKeyCredentials:
    return StaticKeyCredentials(key_path=f"{site_env['HPC_SITE_KEYS_DIR']}/{{username}}")


@pytest.fixture
async def pool(site_env: SiteEnv) -> AsyncIterator[SshPool]:
    pool = SshPool([system_for(site_env)])
    await pool.start()
    yield pool
    await pool.close()


def entry(pool: SshPool, user: str) -> Any:
    return pool._connections[(NAME, user)]


async def test_certificate_identity_logs_in_as_the_user(pool: SshPool) -> None:
    result = await pool.runner(NAME, "hpcuser1").run(["id", "-un"])
    assert result.ok and result.stdout == "hpcuser1\n" and result.stderr == ""
    identity = entry(pool, "hpcuser1").identity
    assert identity.certificate is not None
    assert identity.certificate.principals == ["hpcuser1"]
    assert identity.expires_at is not None and identity.expires_at > time.time() + 500


async def test_concurrent_identity_requests_share_one_signing(site_env: SiteEnv) -> None:
    provider = CertificateAuthorityIdentities(
        CertificateAuthorityCredentials(ca_key=site_env.ca_key)
    )
    identities = await asyncio.gather(*(provider.identity("hpcuser2") for _ in range(20)))
    assert all(identity is identities[0] for identity in identities)


@pytest.mark.parametrize(
    "name", ["", "Root", "a b", "../etc", "x;id", "hpcuser1\n", "a" * 33, "1abc"]
)
async def test_invalid_usernames_are_refused_before_signing(site_env: SiteEnv, name: str) -> None:
    provider = identity_provider_for(CertificateAuthorityCredentials(ca_key=site_env.ca_key))
    with pytest.raises(errors.Forbidden):
        await provider.identity(name)
    with pytest.raises(errors.Forbidden):
        validate_username(name)


async def test_static_key_identity(site_env: SiteEnv) -> None:
    pool = SshPool([system_for(site_env, credentials=static_keys(site_env))])
    try:
        result = await pool.runner(NAME, "hpcuser2").run(["id", "-un"])
        assert result.stdout == "hpcuser2\n"
        assert entry(pool, "hpcuser2").identity.certificate is None
        with pytest.raises(errors.Forbidden, match="No SSH credentials for user nokeyuser"):
            await pool.runner(NAME, "nokeyuser").run(["true"])
    finally:
        await pool.close()
    assert isinstance(identity_provider_for(static_keys(site_env)), StaticKeyIdentities)


async def test_user_unknown_to_the_cluster_is_forbidden(pool: SshPool) -> None:
    with pytest.raises(errors.Forbidden, match="refused the SSH login of user nosuchuser"):
        await pool.runner(NAME, "nosuchuser").run(["true"])


async def test_unknown_system_and_bad_username(pool: SshPool) -> None:
    with pytest.raises(errors.NotFound):
        pool.runner("elsewhere", "hpcuser1")
    with pytest.raises(errors.Forbidden):
        pool.runner(NAME, "hpcuser1; id")


async def test_fifty_concurrent_runs_share_one_connection(site_env: SiteEnv) -> None:
    pool = SshPool([system_for(site_env, max_channels_per_connection=8)])
    runner = pool.runner(NAME, "hpcuser1")
    peak = 0
    done = False

    async def watch() -> None:
        nonlocal peak
        while not done:
            peak = max(peak, pool.stats()[NAME]["channels_in_use"])
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(
            *(runner.run(["sh", "-c", "sleep 0.05; echo $0", str(i)]) for i in range(50))
        )
        done = True
        await watcher
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(50)]
        stats = pool.stats()[NAME]
        assert stats["connections"] == 1 and stats["connects_total"] == 1
        assert stats["channels_in_use"] == 0
        assert 1 < peak <= 8
    finally:
        await pool.close()


async def test_arguments_are_passed_literally(pool: SshPool) -> None:
    marker = f"/tmp/pwned-{uuid.uuid4().hex}"
    args = [
        "a;b",
        f"$(touch {marker})",
        f"`touch {marker}`",
        'it\'s "quoted"',
        "line1\nline2",
        "  two  spaces  ",
        "",
        "*",
        "~",
        "back\\slash",
        f"; touch {marker} #",
        "$HOME",
        "ünïcödé",
    ]
    result = await pool.runner(NAME, "hpcuser1").run(["printf", "%s\\0", *args])
    assert result.ok
    assert result.stdout == "".join(f"{arg}\0" for arg in args)
    assert not os.path.exists(marker)


async def test_stdin_is_delivered(pool: SshPool) -> None:
    runner = pool.runner(NAME, "hpcuser1")
    text = "hello\n$(world) `x`\n"
    assert (await runner.run(["cat"], stdin=text)).stdout == text
    assert (await runner.run(["wc", "-c"], stdin=b"\x00\x01\xff")).stdout.strip() == "3"
    # without stdin the command sees EOF rather than hanging
    assert (await runner.run(["cat"], timeout=5)).stdout == ""
    assert (await runner.run(["cat"], stdin="", timeout=5)).stdout == ""


async def test_nonzero_exit_is_returned(pool: SshPool) -> None:
    result = await pool.runner(NAME, "hpcuser1").run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.exit_status, result.stdout, result.stderr, result.ok) == (
        3,
        "out\n",
        "err\n",
        False,
    )
    killed = await pool.runner(NAME, "hpcuser1").run(["sh", "-c", "kill -TERM $$"])
    assert killed.exit_status == 128 + signal.SIGTERM


async def test_timeout_kills_the_remote_command(pool: SshPool) -> None:
    runner = pool.runner(NAME, "hpcuser1")
    tag = f"{uuid.uuid4().int % 10**6}.{os.getpid()}"
    started = time.monotonic()
    with pytest.raises(errors.RequestTimeout, match=r"timed out after 0\.5 s"):
        await runner.run(["sh", "-c", f"sleep {tag}; echo never"], timeout=0.5)
    assert time.monotonic() - started < 1.5
    for _ in range(40):
        check = await runner.run(["pgrep", "-u", "hpcuser1", "-f", f"sleep {tag}"])
        if check.exit_status == 1 and pool.stats()[NAME]["channels_in_use"] == 0:
            break
        await asyncio.sleep(0.05)
    assert check.exit_status == 1, f"sleep still running: {check.stdout}"
    assert pool.stats()[NAME]["channels_in_use"] == 0


async def test_wrong_host_key_never_connects(site_env: SiteEnv, tmp_path: Path) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{site_env.ssh_host}]:{site_env.ssh_port} {other}")
    pool = SshPool([system_for(site_env, known_hosts=known_hosts)])
    try:
        with pytest.raises(errors.ClusterUnreachable, match="host key not verifiable") as info:
            await pool.runner(NAME, "hpcuser1").run(["touch", "/tmp/should-not-happen"])
        assert info.value.status_code == 424 and "Retry-After" in info.value.headers
        assert pool.stats()[NAME]["connects_total"] == 0
    finally:
        await pool.close()


async def test_unreachable_port(site_env: SiteEnv) -> None:
    system = system_for(site_env)
    system = system.model_copy(update={"ssh": system.ssh.model_copy(update={"port": 1})})
    pool = SshPool([system])
    try:
        with pytest.raises(errors.ClusterUnreachable, match=f"Cannot reach system {NAME} over SSH"):
            await pool.runner(NAME, "hpcuser1").run(["true"])
    finally:
        await pool.close()


async def test_connection_closed_under_the_pool_is_replaced(pool: SshPool) -> None:
    runner = pool.runner(NAME, "hpcuser1")
    assert (await runner.run(["true"])).ok
    entry(pool, "hpcuser1").conn.close()  # the pool has not noticed yet
    assert (await runner.run(["id", "-un"])).stdout == "hpcuser1\n"
    assert pool.stats()[NAME]["connects_total"] == 2


async def test_killed_sshd_session_is_replaced(pool: SshPool) -> None:
    runner = pool.runner(NAME, "hpcuser2")
    session_pid = int((await runner.run(["sh", "-c", "echo $PPID"])).stdout)
    os.kill(session_pid, signal.SIGKILL)  # the sshd child serving this connection
    assert (await runner.run(["id", "-un"])).stdout == "hpcuser2\n"
    assert pool.stats()[NAME]["connects_total"] == 2


async def test_started_command_is_not_rerun_when_the_connection_drops(
    pool: SshPool, site_env: SiteEnv
) -> None:
    runner = pool.runner(NAME, "hpcuser1")
    tally = f"{site_env.scratch('hpcuser1')}/tally-{uuid.uuid4().hex}"
    with pytest.raises(errors.ClusterUnreachable, match="lost while the command ran"):
        await runner.run(["sh", "-c", f"echo x >> {tally}; kill -9 $PPID; sleep 1"])
    assert (await runner.run(["cat", tally])).stdout == "x\n"
    await runner.run(["rm", "-f", tally])


async def test_certificate_renewal(site_env: SiteEnv) -> None:
    offset = 0.0
    provider = CertificateAuthorityIdentities(
        CertificateAuthorityCredentials(
            ca_key=site_env.ca_key, certificate_minutes=1, renew_before_seconds=59
        ),
        clock=lambda: time.time() + offset,
    )
    first = await provider.identity("hpcuser1")
    assert await provider.identity("hpcuser1") is first
    pool = SshPool([system_for(site_env)], {NAME: provider})
    runner = pool.runner(NAME, "hpcuser1")
    try:
        assert (await runner.run(["true"])).ok
        assert entry(pool, "hpcuser1").identity is first
        offset = 1.5  # under 59 s of validity left: the next call mints
        renewed = await provider.identity("hpcuser1")
        assert renewed is not first and renewed.expires_at > first.expires_at
        assert renewed.key.public_data != first.key.public_data
        # the open connection keeps working; a new one logs in with the new certificate
        assert (await runner.run(["true"])).ok
        assert pool.stats()[NAME]["connects_total"] == 1
        entry(pool, "hpcuser1").conn.close()
        assert (await runner.run(["id", "-un"])).stdout == "hpcuser1\n"
        assert entry(pool, "hpcuser1").identity is renewed
    finally:
        await pool.close()


async def test_idle_reaper_closes_idle_connections(site_env: SiteEnv) -> None:
    pool = SshPool([system_for(site_env, idle_timeout=0.3)])
    await pool.start()
    try:
        runner = pool.runner(NAME, "hpcuser1")
        assert (await runner.run(["true"])).ok
        assert pool.stats()[NAME]["connections"] == 1
        await asyncio.sleep(0.6)
        assert pool.stats()[NAME]["connections"] == 0
        assert (await runner.run(["true"])).ok
        assert pool.stats()[NAME]["connects_total"] == 2
    finally:
        await pool.close()
    assert pool.stats()[NAME]["connections"] == 0
    with pytest.raises(errors.ServiceUnavailable):
        await runner.run(["true"])


async def test_sftp_write_then_read(pool: SshPool, site_env: SiteEnv) -> None:
    path = f"{site_env.scratch('hpcuser1')}/sftp-{uuid.uuid4().hex}.txt"
    async with pool.sftp(NAME, "hpcuser1") as sftp:
        async with sftp.open(path, "wb") as handle:
            await handle.write(b"written over sftp\n")
        first = sftp
    async with pool.sftp(NAME, "hpcuser1") as sftp:
        assert sftp is first  # one SFTP session per connection, reused
        async with sftp.open(path, "rb") as handle:
            assert await handle.read() == b"written over sftp\n"
        assert (await sftp.stat(path)).uid == int(
            (await pool.runner(NAME, "hpcuser1").run(["id", "-u"])).stdout
        )
        await sftp.remove(path)
    stats = pool.stats()[NAME]
    assert stats["sftp_sessions"] == 1 and stats["connections"] == 1


async def test_sftp_cannot_read_another_users_scratch(pool: SshPool, site_env: SiteEnv) -> None:
    path = f"{site_env.scratch('hpcuser1')}/private-{uuid.uuid4().hex}"
    async with pool.sftp(NAME, "hpcuser1") as sftp:
        async with sftp.open(path, "wb") as handle:
            await handle.write(b"secret")
    try:
        async with pool.sftp(NAME, "hpcuser2") as sftp:
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                async with sftp.open(path, "rb") as handle:
                    await handle.read()
    finally:
        async with pool.sftp(NAME, "hpcuser1") as sftp:
            await sftp.remove(path)


async def test_sftp_session_reopens_after_loss(pool: SshPool, site_env: SiteEnv) -> None:
    scratch = site_env.scratch("hpcuser1")
    async with pool.sftp(NAME, "hpcuser1") as sftp:
        await sftp.listdir(scratch)
        first = sftp
    first.exit()  # only the SFTP channel goes: the next use opens a new one
    await first.wait_closed()
    await asyncio.sleep(0)
    async with pool.sftp(NAME, "hpcuser1") as sftp:
        assert sftp is not first
        await sftp.listdir(scratch)
    assert pool.stats()[NAME]["connects_total"] == 1
    # the whole connection goes: the pool notices and the next use reconnects
    entry(pool, "hpcuser1").conn.close()
    await asyncio.sleep(0.05)
    async with pool.sftp(NAME, "hpcuser1") as sftp:
        await sftp.listdir(scratch)
    assert pool.stats()[NAME]["connects_total"] == 2
