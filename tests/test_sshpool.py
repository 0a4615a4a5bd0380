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
from hpcgate.cluster.credentials import (
    CertificateAuthorityIdentities,
    StaticKeyIdentities,
    identity_provider_for,
    validate_username,
)
from hpcgate.cluster.remote import CommandResult
from hpcgate.cluster.sshpool import SshPool
from hpcgate.config import (
    CertificateAuthorityCredentials,
    SshSettings,
    StaticKeyCredentials,
    SystemSettings,
)
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


# -- bounded output ------------------------------------------------------------------
# A command's output is the user's to choose (their login shell prints into it): the
# pool reads it in chunks under caps and stops the command past them. Small caps here.

CAP = 256 * 1024
STDERR_KEPT = 8 * 1024


@pytest.fixture
async def capped(site_env: SiteEnv) -> AsyncIterator[SshPool]:
    system = system_for(
        site_env,
        max_output_bytes=CAP,
        max_stderr_bytes=STDERR_KEPT,
        max_output_bytes_per_user=CAP + STDERR_KEPT,
    )
    pool = SshPool([system])
    await pool.start()
    yield pool
    await pool.close()


def fill(size: int, char: str = "x", *, to_stderr: bool = False) -> str:
    """Shell text printing ``size`` copies of the one-byte ``char``."""
    return f"head -c {size} /dev/zero | tr '\\0' {char}" + (" >&2" if to_stderr else "")


async def gone(pool: SshPool, user: str, pattern: str, *, seconds: float = 5.0) -> bool:
    """Whether no process of ``user`` matches ``pattern`` (and no channel is held)
    within ``seconds``."""
    runner = pool.runner(NAME, user)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check = await runner.run(["pgrep", "-u", user, "-f", pattern])
        if check.exit_status == 1 and pool.stats()[NAME]["channels_in_use"] == 0:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_output_up_to_the_cap_is_returned_whole(capped: SshPool) -> None:
    result = await capped.runner(NAME, "hpcuser1").run(["sh", "-c", fill(CAP)])
    assert result.ok and result.stdout == "x" * CAP


async def test_output_over_the_cap_stops_the_command(capped: SshPool) -> None:
    tag = uuid.uuid4().hex[:12]
    started = time.monotonic()
    with pytest.raises(errors.OutputTooLarge) as raised:
        await capped.runner(NAME, "hpcuser1").run(["bash", "-c", f"exec yes {tag}"])
    assert time.monotonic() - started < 5
    error = raised.value
    assert error.status_code == 502 and error.limit == CAP
    assert error.setting == "ssh.max_output_bytes"
    assert f"exceeded {CAP} bytes (256 KiB) (ssh.max_output_bytes)" in error.message
    assert "Retry-After" not in error.headers
    assert await gone(capped, "hpcuser1", f"^yes {tag}"), "the flooding command still runs"
    assert entry(capped, "hpcuser1").output_budget.held == 0


async def test_decoded_size_counts_against_the_cap(capped: SshPool) -> None:
    """One 4-byte character makes CPython store every character in 4 bytes: a third
    of the cap in bytes would be over it once decoded."""
    runner = capped.runner(NAME, "hpcuser1")
    with pytest.raises(errors.OutputTooLarge, match=r"ssh\.max_output_bytes"):
        await runner.run(["sh", "-c", f"printf '\\360\\237\\230\\200'; {fill(CAP // 3)}"])
    # two-byte characters split across reads are decoded right; ASCII-range widths fit
    latin = await runner.run(["sh", "-c", f"{fill(CAP // 2)} | sed 's/x/\\xc3\\xa9/g'"])
    assert latin.ok and latin.stdout == "é" * (CAP // 2)
    broken = await runner.run(["printf", "a\\377b"])
    assert broken.stdout == "a\ufffdb"


async def test_per_call_cap_overrides_the_setting(capped: SshPool) -> None:
    runner = capped.runner(NAME, "hpcuser1")
    bigger = await runner.run(["sh", "-c", fill(CAP + 1000)], max_output=CAP + 1000)
    assert len(bigger.stdout) == CAP + 1000
    with pytest.raises(errors.OutputTooLarge, match=r"exceeded 100 bytes \(this command's cap\)"):
        await runner.run(["sh", "-c", fill(101)], max_output=100)
    with pytest.raises(ValueError, match="max_output"):
        await runner.run(["true"], max_output=0)


async def test_stderr_keeps_head_and_tail(capped: SshPool) -> None:
    script = f"{fill(100_000, 'A', to_stderr=True)}; {fill(100_000, 'B', to_stderr=True)}; exit 3"
    result = await capped.runner(NAME, "hpcuser1").run(["sh", "-c", script])
    assert result.exit_status == 3 and result.stdout == ""
    half = STDERR_KEPT // 2
    omitted = 200_000 - STDERR_KEPT
    assert result.stderr == (
        "A" * half + f"\n[... {omitted} bytes of stderr omitted ...]\n" + "B" * half
    )


async def test_stderr_flood_stops_the_command(capped: SshPool) -> None:
    tag = uuid.uuid4().hex[:12]
    with pytest.raises(errors.OutputTooLarge, match=r"error output exceeded .*max_output_bytes"):
        await capped.runner(NAME, "hpcuser1").run(["bash", "-c", f"exec yes {tag} >&2"])
    assert await gone(capped, "hpcuser1", f"^yes {tag}"), "the flooding command still runs"


async def test_concurrent_outputs_of_one_user_share_a_budget(capped: SshPool) -> None:
    """Two commands under the cap each, over the user's budget together: one is
    stopped; another user is not affected."""
    script = f"{fill(200_000)}; sleep 1"
    runner = capped.runner(NAME, "hpcuser1")
    results = await asyncio.gather(
        runner.run(["sh", "-c", script]),
        runner.run(["sh", "-c", script]),
        capped.runner(NAME, "hpcuser2").run(["sh", "-c", script]),
        return_exceptions=True,
    )
    failed = [r for r in results[:2] if isinstance(r, errors.OutputTooLarge)]
    assert len(failed) == 1, results
    assert failed[0].setting == "ssh.max_output_bytes_per_user"
    assert "this user's running commands" in failed[0].message
    assert all(
        isinstance(r, CommandResult) and len(r.stdout) == 200_000
        for r in results
        if r not in failed
    )
    assert entry(capped, "hpcuser1").output_budget.held == 0
    assert entry(capped, "hpcuser2").output_budget.held == 0


async def test_stopped_attach_step_does_not_survive(capped: SshPool, site_env: SiteEnv) -> None:
    """srun is stopped with SIGTERM first, which it forwards: the job step's flooding
    processes end with it, not seconds later."""
    runner = capped.runner(NAME, "hpcuser2")
    submitted = await runner.run(
        ["sbatch", "--parsable", "-t", "2", f"--chdir={site_env.scratch('hpcuser2')}",
         "--output=/dev/null", "--wrap", "sleep 100"]
    )  # fmt: skip
    assert submitted.ok, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    tag = uuid.uuid4().hex[:12]
    try:
        deadline = time.monotonic() + 180  # the node is shared: backfill may take a while
        while time.monotonic() < deadline:
            state = await runner.run(["squeue", "-h", "-j", job_id, "-o", "%T"])
            if state.stdout.strip() == "RUNNING":
                break
            await asyncio.sleep(0.5)
        assert state.stdout.strip() == "RUNNING", f"job {job_id} never ran"
        argv = ["srun", "--overlap", f"--jobid={job_id}", "--nodes=1", "--ntasks=1"]
        with pytest.raises(errors.OutputTooLarge):
            await runner.run([*argv, "bash", "-c", f"exec yes {tag}"])
        assert await gone(capped, "hpcuser2", f"^yes {tag}", seconds=2.0)
    finally:
        await runner.run(["scancel", job_id])


def test_output_settings_are_validated(site_env: SiteEnv) -> None:
    from pydantic import ValidationError

    def ssh(**fields: Any) -> SshSettings:
        return SshSettings(host="h", known_hosts=site_env.known_hosts, **fields)

    defaults = ssh()
    assert (defaults.max_output_bytes, defaults.max_stderr_bytes) == (64 * 1024**2, 1024**2)
    assert defaults.max_output_bytes_per_user == 128 * 1024**2
    with pytest.raises(ValidationError, match=r"max_output_bytes\n.*greater than or equal"):
        ssh(max_output_bytes=1000)
    with pytest.raises(ValidationError, match="max_stderr_bytes must not exceed"):
        ssh(max_output_bytes=128 * 1024, max_stderr_bytes=256 * 1024)
    with pytest.raises(ValidationError, match="max_output_bytes_per_user must be at least"):
        ssh(max_output_bytes_per_user=64 * 1024**2)
