"""The scheduler side of multi-tenant safety, tried as a hostile co-tenant would.

hpcuser2 (the attacker) controls their own login shell: a ``~/.bashrc`` and programs
in ``~/bin`` that shadow ``sbatch``, ``squeue`` and ``sacct``. Nothing they make the
gateway learn may reach hpcuser1 (the victim): no tool path, no cached accounting,
no job record. Jobs are visible per ``scheduler.job_visibility``; listings, script
directives and idempotency keys are bounded. Real server processes, the real site.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import stat
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from hpcgate import errors
from hpcgate.cluster.remote import CommandResult
from hpcgate.compute.idempotency import KeyQuota, KeyScope, SqliteIdempotencyStore
from hpcgate.compute.scheduler.models import JobDescription
from hpcgate.compute.scheduler.slurm import SlurmScheduler
from hpcgate.compute.scheduler.slurm.fields import FIELD_SEP
from hpcgate.compute.scheduler.slurm.job_records import SACCT_FIELDS, SQUEUE_FIELDS
from hpcgate.config import ConfigError, load_settings
from tests.api.helpers import wait_state
from tests.security.hostile import home_of, hostile_files, rss_kib
from tests.server import ApiServer, start_server
from tests.site import SiteEnv

VICTIM, ATTACKER = "hpcuser1", "hpcuser2"
TRUE = "#!/bin/bash\ntrue\n"


def scheduler_overrides(site_env: SiteEnv, **scheduler: Any) -> dict[str, Any]:
    base = {"type": "slurm", "transfer_partition": site_env["HPC_SITE_XFER_PARTITION"]}
    return {"scheduler": {**base, "extra_sbatch_options": ["hold"], **scheduler}}


@pytest.fixture(scope="module")
def own_server(site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """The default visibility (own), a small listing cap and a small key quota."""
    server = start_server(
        site_env,
        tmp_path_factory.mktemp("sched-own"),
        overrides=scheduler_overrides(site_env, max_list_jobs=2),
        settings_overrides={"idempotency": {"max_keys_per_user": 3}},
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slurm_server(
    site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """A site that follows Slurm's own visibility (``job_visibility: scheduler``)."""
    server = start_server(
        site_env,
        tmp_path_factory.mktemp("sched-slurm"),
        overrides=scheduler_overrides(site_env, job_visibility="scheduler"),
    )
    yield server
    server.stop()


def job(site_env: SiteEnv, user: str, **fields: Any) -> dict[str, Any]:
    fields.setdefault("script", TRUE)
    fields.setdefault("standardOutput", "/dev/null")
    return {"job": {"workingDirectory": site_env.scratch(user), **fields}}


def post(server: ApiServer, user: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    with server.client(user) as client:
        return client.post(f"/compute/{server.system}/jobs", json=body, headers=headers)


async def shell(ssh_as: Any, user: str, *argv: str) -> str:
    """``argv`` run on the site as ``user`` (their own shell); its stdout."""
    result = await (await ssh_as(user)).run(shlex.join(argv), check=True)
    return str(result.stdout)


@contextlib.asynccontextmanager
async def held_job(ssh_as: Any, user: str) -> AsyncIterator[str]:
    """A real job of ``user``, held (PENDING) for the block, cancelled after."""
    out = await shell(
        ssh_as, user, "sbatch", "--parsable", "--hold", "--output=/dev/null", "--wrap=true"
    )
    job_id = out.strip().split(";")[0]
    try:
        yield job_id
    finally:
        await shell(ssh_as, user, "scancel", job_id)


@contextlib.contextmanager
def site_homes(plants: dict[str, dict[str, str]] | None = None) -> Iterator[None]:
    """Both users' homes for the block, with ``plants`` (none: each user's shell as it
    is, without another suite's planting meanwhile); locked victim first."""
    with contextlib.ExitStack() as stack:
        for user in (VICTIM, ATTACKER):
            stack.enter_context(hostile_files(user, (plants or {}).get(user, {})))
        yield


@contextlib.contextmanager
def traversable_home(user: str) -> Iterator[None]:
    """The attacker opens their home to others (o+x), as they may; restored after."""
    home = home_of(user)
    before = stat.S_IMODE(home.stat().st_mode)
    home.chmod(before | 0o011)
    try:
        yield
    finally:
        home.chmod(before)


# ====================================================================== tool paths


@pytest.mark.site
def test_a_planted_sbatch_never_runs_as_another_user(
    own_server: ApiServer, site_env: SiteEnv, tmp_path: Path
) -> None:
    """hpcuser2 shadows sbatch in their own shell and submits with ``env.PATH`` first
    (any per-system learning happens in their session); hpcuser1's submissions with
    ``env.PATH`` then never run hpcuser2's program."""
    markers = Path(f"/tmp/hpcgate-sbatch-marker-{uuid.uuid4().hex[:8]}")
    markers.mkdir(mode=0o1777)
    markers.chmod(0o1777)
    wrapper = f'#!/bin/sh\nid -un >> {markers}/"$(id -un)"\nexec /usr/bin/sbatch "$@"\n'
    plant = {"bin/sbatch": wrapper, ".bashrc": 'export PATH="$HOME/bin:$PATH"\n'}
    try:
        with site_homes({ATTACKER: plant}), traversable_home(ATTACKER):
            path = {"PATH": "/usr/local/bin:/usr/bin:/bin", "FLAG": "x"}
            first = post(own_server, ATTACKER, job(site_env, ATTACKER, env=path))
            assert first.status_code == 201, first.text
            # the plant works: the attacker's own plain sbatch is the wrapper
            own = post(own_server, ATTACKER, job(site_env, ATTACKER))
            assert own.status_code == 201, own.text
            assert ATTACKER in (markers / ATTACKER).read_text().split()
            for _ in range(2):
                victim = post(own_server, VICTIM, job(site_env, VICTIM, env=path))
                assert victim.status_code == 201, victim.text
        assert not (markers / VICTIM).exists(), "the attacker's sbatch ran as the victim"
        assert sorted(p.name for p in markers.iterdir()) == [ATTACKER]
    finally:
        for entry in markers.iterdir():
            entry.unlink()
        markers.rmdir()


# ====================================================================== forged output


def _record(fields: Sequence[str], values: dict[str, str]) -> str:
    return "".join(values.get(name, "") + FIELD_SEP for name in fields)


def forged_programs(job_ids: Sequence[str]) -> dict[str, str]:
    """``bin/squeue`` and ``bin/sacct`` that answer for ``job_ids`` (the victim's) with
    a forged ended job, owned by the attacker, with a forged failed step."""
    now = int(time.time())
    squeue = "\n".join(
        _record(
            SQUEUE_FIELDS,
            {
                "JobID": job_id,
                "ArrayJobID": job_id,
                "ArrayTaskID": "N/A",
                "Name": "forged",
                "State": "COMPLETED",
                "exit_code": "0",
                "TimeUsed": "0:01",
                "StartTime": str(now - 5),
                "EndTime": str(now - 4),
                "TimeLimit": "1",
                "Account": "project1",
                "NumNodes": "1",
                "Cluster": "forged-cluster",
                "GroupName": "project1",
                "NodeList": "vm",
                "Partition": "compute",
                "UserName": ATTACKER,
                "WorkDir": "/tmp",
                "PriorityLong": "1",
            },
        )
        for job_id in job_ids
    )
    common = {
        "Start": str(now - 5),
        "End": str(now - 4),
        "Suspended": "00:00:00",
        "ElapsedRaw": "1",
        "TimelimitRaw": "1",
        "Account": "project1",
        "NNodes": "1",
        "Cluster": "forged-cluster",
        "Group": "project1",
        "NodeList": "vm",
        "Partition": "compute",
        "User": ATTACKER,
        "UID": "1002",
        "WorkDir": "/tmp",
        "Priority": "1",
    }
    sacct = "\n".join(
        row
        for job_id in job_ids
        for row in (
            _record(
                SACCT_FIELDS,
                {**common, "JobID": job_id, "JobName": "forged", "State": "COMPLETED"}
                | {"ExitCode": "0:0"},
            ),
            _record(
                SACCT_FIELDS,
                {**common, "JobID": f"{job_id}.batch", "JobName": "forged-step"}
                | {"State": "FAILED", "ExitCode": "66:0"},
            ),
        )
    )

    def program(real: str, text: str) -> str:
        printed = text.replace("\\", "\\\\").replace("%", "%%").replace(FIELD_SEP, "\\037")
        ids = "|".join(job_ids)
        return (
            "#!/bin/bash\n"
            f"if [[ \" $* \" =~ ({ids}) ]]; then printf '{printed}\\n'; exit 0; fi\n"
            f'exec {real} "$@"\n'
        )

    return {
        "bin/squeue": program("/usr/bin/squeue", squeue),
        "bin/sacct": program("/usr/bin/sacct", sacct),
        ".bashrc": 'export PATH="$HOME/bin:$PATH"\n',
    }


async def _ended(ssh_as: Any, user: str) -> str:
    """A job of ``user`` that ran ``true`` and that the controller shows COMPLETED."""
    out = await shell(ssh_as, user, "sbatch", "--parsable", "--output=/dev/null", "--wrap=true")
    job_id = out.strip().split(";")[0]
    for _ in range(150):
        state = await shell(ssh_as, user, "squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T")
        if state.strip() == "COMPLETED":
            return job_id
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} did not complete")


@pytest.mark.site
async def test_forged_accounting_never_reaches_the_owner(
    own_server: ApiServer, site_env: SiteEnv, ssh_as: Any
) -> None:
    """hpcuser2's shell forges squeue and sacct for hpcuser1's real jobs (a held one,
    an ended one): COMPLETED, owned by hpcuser2, with a failed step. hpcuser2 GETs
    and lists them (any shared cache or view would take the forgery); hpcuser1 still
    sees the truth."""
    with hostile_files(VICTIM, {}):  # the victim's own shell, as it is
        await _forge_and_look(own_server, ssh_as)


async def _forge_and_look(own_server: ApiServer, ssh_as: Any) -> None:
    ended = await _ended(ssh_as, VICTIM)
    async with held_job(ssh_as, VICTIM) as held:
        with hostile_files(ATTACKER, forged_programs([held, ended])):
            with own_server.client(ATTACKER) as attacker:
                for job_id in (held, ended):
                    for _ in range(2):  # a repeat would be answered from a cache
                        seen = attacker.get(f"/compute/{own_server.system}/jobs/{job_id}")
                        assert seen.status_code == 200, seen.text  # their own forgery
                        assert seen.json()["jobs"][0]["status"]["state"] == "COMPLETED"
            with own_server.client(VICTIM) as victim:
                base = f"/compute/{own_server.system}/jobs"
                truth = victim.get(f"{base}/{held}").json()["jobs"][0]
                assert truth["status"]["state"] == "PENDING", truth
                assert truth["user"] == VICTIM and truth["cluster"] != "forged-cluster"
                done = victim.get(f"{base}/{ended}").json()["jobs"][0]
                assert done["status"]["state"] == "COMPLETED", done
                assert done["user"] == VICTIM and done["name"] == "wrap"
                assert all(task["name"] != "forged-step" for task in done.get("tasks") or [])
                assert all(task["status"].get("exitCode") != 66 for task in done["tasks"] or [])


async def test_one_users_output_is_never_kept_for_another() -> None:
    """The scheduler's own memory, with two users' runners whose shells print what
    they like: an ended job's settled accounting and the cluster name are per user."""

    class Shell:
        def __init__(self, username: str, answers: dict[str, str]) -> None:
            self.username = username
            self.answers = answers
            self.calls: list[str] = []

        async def run(self, argv: Sequence[str], **_: object) -> CommandResult:
            command = next(a for a in argv if a in ("squeue", "sacct", "sbatch", "id"))
            self.calls.append(command)
            return CommandResult(0, self.answers.get(command, ""), "")

    values = {"JobID": "77", "ArrayJobID": "77", "ArrayTaskID": "N/A", "Name": "n"}
    values |= {"State": "COMPLETED", "exit_code": "0", "UserName": "b", "Cluster": "evil"}
    squeue = _record(SQUEUE_FIELDS, values) + "\n"
    sacct = _record(
        SACCT_FIELDS,
        {"JobID": "77", "JobName": "n", "State": "COMPLETED", "ExitCode": "0:0", "User": "b"}
        | {"Cluster": "evil"},
    )
    scheduler = SlurmScheduler()
    forger = Shell("b", {"squeue": squeue, "sacct": sacct + "\n", "id": "a\n"})
    await scheduler.job(forger, "77")
    await scheduler.job(forger, "77")
    assert forger.calls == ["squeue", "sacct", "squeue"]  # b's own cache works
    victim = Shell("a", {"squeue": squeue, "sbatch": "78\n"})
    await scheduler.submit(victim, JobDescription(working_directory="/w", script=TRUE))
    record = scheduler.recent.get(("a", "78"))
    assert record is not None and record.cluster != "evil"  # b's squeue named "evil"
    assert [job.job_id for job in scheduler.recent.of_user("a")] == ["78"]
    await scheduler.job(victim, "77")
    assert victim.calls == ["sbatch", "squeue", "sacct"]  # b's cached accounting is not a's
    assert "id" not in forger.calls + victim.calls  # nobody's shell is asked who it is


# ====================================================================== visibility


def _not_found_like_unknown(response: httpx.Response, job_id: str) -> None:
    assert response.status_code == 404, response.text
    assert response.json()["message"] == f"Job not found: {job_id}", response.text


@pytest.mark.site
async def test_other_users_jobs_are_invisible_by_default(
    own_server: ApiServer, site_env: SiteEnv, ssh_as: Any
) -> None:
    """own: hpcuser2's GET, metadata, attach, cancel and listing of hpcuser1's job all
    answer as for an unknown id; allusers=true changes nothing."""
    with site_homes():
        await _look_as_attacker(own_server, ssh_as)


async def _look_as_attacker(own_server: ApiServer, ssh_as: Any) -> None:
    system = own_server.system
    async with held_job(ssh_as, VICTIM) as job_id:
        with own_server.client(ATTACKER) as attacker, own_server.client(VICTIM) as victim:
            base = f"/compute/{system}/jobs"
            unknown = attacker.get(f"{base}/999999999")
            _not_found_like_unknown(unknown, "999999999")
            _not_found_like_unknown(attacker.get(f"{base}/{job_id}"), job_id)
            _not_found_like_unknown(attacker.get(f"{base}/{job_id}/metadata"), job_id)
            attach = attacker.put(f"{base}/{job_id}/attach", json={"command": "id"})
            _not_found_like_unknown(attach, job_id)
            _not_found_like_unknown(attacker.delete(f"{base}/{job_id}"), job_id)
            for allusers in ("true", "false"):
                listed = attacker.get(base, params={"allusers": allusers, "time_window": "1h"})
                assert listed.status_code == 200, listed.text
                ids = {j["jobId"] for j in listed.json()["jobs"] or []}
                assert job_id not in ids
                assert all(j["user"] == ATTACKER for j in listed.json()["jobs"] or [])
            mine = victim.get(f"{base}/{job_id}")
            assert mine.status_code == 200 and mine.json()["jobs"][0]["status"]["state"] == (
                "PENDING"
            )
            assert victim.get(f"{base}/{job_id}/metadata").status_code == 200


@pytest.mark.site
async def test_scheduler_visibility_follows_slurm(
    slurm_server: ApiServer, site_env: SiteEnv, ssh_as: Any
) -> None:
    """scheduler: hpcuser2 sees what Slurm shows them (the site has no PrivateData),
    and still cannot cancel, attach to or read the script of hpcuser1's job."""
    with site_homes():
        await _look_with_slurm_visibility(slurm_server, ssh_as)


async def _look_with_slurm_visibility(slurm_server: ApiServer, ssh_as: Any) -> None:
    system = slurm_server.system
    async with held_job(ssh_as, VICTIM) as job_id:
        with slurm_server.client(ATTACKER) as attacker:
            base = f"/compute/{system}/jobs"
            seen = attacker.get(f"{base}/{job_id}")
            assert seen.status_code == 200, seen.text
            assert seen.json()["jobs"][0]["user"] == VICTIM
            listed = attacker.get(base, params={"allusers": "true", "time_window": "1h"})
            assert job_id in {j["jobId"] for j in listed.json()["jobs"] or []}
            assert attacker.delete(f"{base}/{job_id}").status_code == 403
            metadata = attacker.get(f"{base}/{job_id}/metadata")
            assert metadata.status_code == 403 and "--wrap" not in metadata.text
            attach = attacker.put(f"{base}/{job_id}/attach", json={"command": "id"})
            assert attach.status_code in (400, 403), attach.text  # held: not running
        state = await shell(ssh_as, VICTIM, "squeue", "-h", "-j", job_id, "-o", "%T")
        assert state.strip() == "PENDING"


# ====================================================================== attach output


@pytest.mark.site
def test_attach_output_never_crosses_ssh(own_server: ApiServer, site_env: SiteEnv) -> None:
    """attach answers no output, so the command's stdout stays in the job: 300 MB of
    it costs the server nothing; its stderr still explains a failure."""
    system = own_server.system
    marker = f"{site_env.scratch(VICTIM)}/attach-{uuid.uuid4().hex[:6]}"
    with site_homes(), own_server.client(VICTIM) as victim:
        created = post(own_server, VICTIM, job(site_env, VICTIM, script="#!/bin/bash\nsleep 120\n"))
        assert created.status_code == 201, created.text
        job_id = created.json()["jobId"]
        try:
            wait_state(victim, system, job_id, "RUNNING")
            before, _ = rss_kib(own_server.process.pid)
            flood = f"head -c 300000000 /dev/zero; echo done > {shlex.quote(marker)}"
            started = time.monotonic()
            answer = victim.put(f"/compute/{system}/jobs/{job_id}/attach", json={"command": flood})
            assert answer.status_code == 204, answer.text
            elapsed = time.monotonic() - started
            after, _ = rss_kib(own_server.process.pid)
            assert Path(marker).read_text() == "done\n"
            assert after - before < 50 * 1024, (before, after)  # KiB
            print(f"attach of 300 MB: {elapsed:.1f} s, server RSS {before} -> {after} KiB")
            failing = {"command": "echo the-reason >&2; exit 3"}
            failed = victim.put(f"/compute/{system}/jobs/{job_id}/attach", json=failing)
            assert failed.status_code == 400 and "the-reason" in failed.json()["message"]
        finally:
            victim.delete(f"/compute/{system}/jobs/{job_id}")
            Path(marker).unlink(missing_ok=True)


# ====================================================================== listings


@pytest.mark.site
def test_listing_bounds(own_server: ApiServer, site_env: SiteEnv) -> None:
    system = own_server.system
    with site_homes(), own_server.client(VICTIM) as victim:
        base = f"/compute/{system}/jobs"
        for window in ("9999d", "8d"):
            wide = victim.get(base, params={"allusers": "true", "time_window": window})
            assert wide.status_code == 400, wide.text
            assert "maximum of 7d" in wide.json()["message"]
        name = f"cap-{uuid.uuid4().hex[:6]}"
        ids = []
        for _ in range(3):
            created = post(own_server, VICTIM, job(site_env, VICTIM, name=name))
            assert created.status_code == 201, created.text
            ids.append(created.json()["jobId"])
        listed = victim.get(base, params={"name": name, "time_window": "1h"})
        assert listed.status_code == 200, listed.text
        assert [j["jobId"] for j in listed.json()["jobs"]] == ids[1:]  # the newest
        assert listed.headers["X-Hpcgate-Jobs-Truncated"] == "3"
        one = victim.get(base, params={"name": f"none-{uuid.uuid4().hex[:6]}"})
        assert one.status_code == 200 and "X-Hpcgate-Jobs-Truncated" not in one.headers


# ====================================================================== script directives


@pytest.mark.site
async def test_test_only_and_wait_directives_are_clear_400s(
    own_server: ApiServer, site_env: SiteEnv, ssh_as: Any
) -> None:
    with site_homes():
        await _directives(own_server, site_env, ssh_as)


async def _directives(own_server: ApiServer, site_env: SiteEnv, ssh_as: Any) -> None:
    scripts = {
        "#!/bin/bash\n#SBATCH --test-only\ntrue\n": "--test-only",
        "#!/bin/bash\n#SBATCH --time=1 --te\ntrue\n": "--test-only",
        '#!/bin/bash\n#SLURM "--test-only"\ntrue\n': "--test-only",
        "#!/bin/bash\n#SBATCH -vW\nsleep 60\n": "--wait",
    }
    for script, option in scripts.items():
        answer = post(own_server, VICTIM, job(site_env, VICTIM, script=script))
        assert answer.status_code == 400, answer.text
        assert "is not allowed" in answer.json()["message"] and option in answer.json()["message"]
    smuggled = post(own_server, VICTIM, job(site_env, VICTIM, extraOptions={"test-only": None}))
    assert smuggled.status_code == 400 and "not allowed" in smuggled.json()["message"]
    # a script file on the cluster is read by sbatch alone: its answer is classified
    path = f"{site_env.scratch(VICTIM)}/test-only-{uuid.uuid4().hex[:6]}.sh"
    conn = await ssh_as(VICTIM)
    await conn.run(
        f"cat > {shlex.quote(path)}", input="#!/bin/bash\n#SBATCH --test-only\ntrue\n", check=True
    )
    try:
        body = job(site_env, VICTIM, scriptPath=path, script=None)
        del body["job"]["script"]
        answer = post(own_server, VICTIM, body)
        assert answer.status_code == 400, answer.text
        assert "only tested the job" in answer.json()["message"]
    finally:
        await conn.run(f"rm -f {shlex.quote(path)}")
    # --help, --usage, --version and --wrap are ignored in a script: the job is made
    harmless = "#!/bin/bash\n#SBATCH --help\n#SBATCH --version --usage\n#SBATCH --hold\ntrue\n"
    made = post(own_server, VICTIM, job(site_env, VICTIM, script=harmless))
    assert made.status_code == 201, made.text
    await shell(ssh_as, VICTIM, "scancel", made.json()["jobId"])


# ====================================================================== idempotency keys


@pytest.mark.site
def test_idempotency_keys_per_user_are_capped(own_server: ApiServer, site_env: SiteEnv) -> None:
    """hpcuser2 fills their quota of keys (3 here): a 4th key is a 429 with
    Retry-After; a known key still replays, and hpcuser1 still submits."""
    with site_homes():
        _fill_quota(own_server, site_env)


def _fill_quota(own_server: ApiServer, site_env: SiteEnv) -> None:
    body = job(site_env, ATTACKER)
    keys = [f"cap-{uuid.uuid4()}" for _ in range(4)]
    first = [post(own_server, ATTACKER, body, **{"Idempotency-Key": k}) for k in keys[:3]]
    assert [r.status_code for r in first] == [201, 201, 201], [r.text for r in first]
    over = post(own_server, ATTACKER, body, **{"Idempotency-Key": keys[3]})
    assert over.status_code == 429, over.text
    assert "max_keys_per_user" in over.json()["message"]
    retry_after = int(over.headers["Retry-After"])
    assert 0 < retry_after <= 7 * 24 * 3600
    again = post(own_server, ATTACKER, body, **{"Idempotency-Key": keys[0]})
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["jobId"] == first[0].json()["jobId"]
    victim = post(own_server, VICTIM, job(site_env, VICTIM), **{"Idempotency-Key": keys[3]})
    assert victim.status_code == 201, victim.text
    assert post(own_server, ATTACKER, body).status_code == 201  # keyless is not counted


async def test_sqlite_key_quota(tmp_path: Path) -> None:
    store = SqliteIdempotencyStore(tmp_path / "keys.sqlite3")
    await store.open()
    try:
        quota = KeyQuota(max_keys=2, ttl=100.0)
        a1, a2, a3 = (KeyScope("c", "alice", f"k{i}") for i in range(3))
        assert (await store.claim(a1, "h", 1000.0, quota)).new
        assert (await store.claim(a2, "h", 1010.0, quota)).new
        with pytest.raises(errors.TooManyRequests) as caught:
            await store.claim(a3, "h", 1020.0, quota)
        assert caught.value.headers["Retry-After"] == "80"  # a1 expires at 1100
        assert (await store.claim(a1, "h", 1030.0, quota)).created == 1000.0  # known: fine
        assert (await store.claim(KeyScope("c", "bob", "k"), "h", 1030.0, quota)).new
        assert (await store.claim(KeyScope("d", "alice", "k"), "h", 1030.0, quota)).new
        await store.release(a2)  # a pending key forgotten frees its place
        assert (await store.claim(a3, "h", 1040.0, quota)).new
        # expired keys do not count
        assert (await store.claim(KeyScope("c", "alice", "k9"), "h", 1105.0, quota)).new
    finally:
        await store.close()


# ====================================================================== configuration


def test_new_settings_are_validated_by_name(tmp_path: Path) -> None:
    base = {
        "auth": {"issuer": "https://i", "audience": "a", "jwks_url": "https://i/jwks"},
        "systems": [
            {
                "name": "c",
                "ssh": {"host": "h", "known_hosts": "/k"},
                "credentials": {"kind": "static_keys", "key_path": "/k/{username}"},
            }
        ],
    }
    path = tmp_path / "hpcgate.yaml"
    cases: list[tuple[dict[str, Any], dict[str, Any], str]] = [
        ({"sbatch_path": "sbatch"}, {}, "scheduler.sbatch_path"),
        ({"sbatch_path": "/usr/bin/sbatch --test-only"}, {}, "scheduler.sbatch_path"),
        ({"max_list_window": 60}, {}, "scheduler.max_list_window"),
        ({"max_list_jobs": 0}, {}, "scheduler.max_list_jobs"),
        ({"job_visibility": "everyone"}, {}, "scheduler.job_visibility"),
        ({}, {"max_keys_per_user": 0}, "idempotency.max_keys_per_user"),
    ]
    for scheduler, idempotency, field in cases:
        config = {**base, "idempotency": idempotency}
        config["systems"] = [{**base["systems"][0], "scheduler": scheduler}]
        path.write_text(yaml.safe_dump(config))
        with pytest.raises(ConfigError) as failure:
            load_settings(path)
        assert field in str(failure.value), str(failure.value)
    path.write_text(yaml.safe_dump(base))
    settings = load_settings(path)
    assert settings.systems[0].scheduler.sbatch_path == "/usr/bin/sbatch"
    assert settings.systems[0].scheduler.max_list_window == 7 * 86400
    assert settings.idempotency.max_keys_per_user == 10_000
    assert os.path.isabs(settings.systems[0].scheduler.sbatch_path)
