"""Job events across tenants, tried the way a hostile co-tenant would.

hpcuser2 (the attacker) controls everything his own commands print: his ``.bashrc``
puts his own ``squeue``/``sacct`` first in PATH, printing records in the exact format
the server parses that claim hpcuser1's (the victim's) running job has COMPLETED.
He then asks for that job every way the API allows (plain GETs, long-polls, job
streams, multi-job streams) before and while the victim follows it. The victim's
stream and long-poll must see only what the scheduler says, as the service identity
(service mode) or as the victim (per-user mode), until the job really ends.

Budgets: one user's streams and long-polls cannot take the system's, a rejected or
closed stream gives its place back, and an events request naming many unknown ids
costs one batched lookup (or a 400 before any command).
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hpcgate.compute.scheduler.slurm.fields import FIELD_SEP, format_fields
from hpcgate.compute.scheduler.slurm.job_records import (
    SACCT_FIELDS,
    SQUEUE_FIELDS,
    parse_sacct,
    parse_squeue,
)
from tests.events.conftest import events_config
from tests.events.helpers import SseEvent, metric_values, scrape, sse_events
from tests.security.hostile import home_of, hostile_files
from tests.server import ApiServer, start_server
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e]

VICTIM, ATTACKER = "hpcuser1", "hpcuser2"
UNKNOWN = [str(900_000_000 + n) for n in range(200)]


# -- servers ---------------------------------------------------------------------------


def _server(site_env: SiteEnv, workdir: Path, **watcher: Any) -> ApiServer:
    config = events_config()
    overrides: dict[str, Any] = dict(config["overrides"])  # type: ignore[arg-type]
    service_user = watcher.pop("service_user", "default")
    overrides["watcher"] = {**overrides["watcher"], **watcher}
    if service_user != "default":
        overrides["service_user"] = service_user
        if service_user is None:  # uids from the host's NSS (the site's users are local)
            overrides["accounts"] = {"source": "local", "min_uid": 1000, "max_uid": 60000}
    return start_server(
        site_env,
        workdir,
        overrides=overrides,
        settings_overrides=config["settings_overrides"],  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def service_server(
    site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """The local site's default: the watcher polls as the service identity (hpcsvc)."""
    server = _server(site_env, tmp_path_factory.mktemp("ev-service"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def per_user_server(
    site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """No service identity: the watcher polls as each user, in each user's scope."""
    server = _server(site_env, tmp_path_factory.mktemp("ev-per-user"), service_user=None)
    yield server
    server.stop()


def client(server: ApiServer, user: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers=server.headers(user), timeout=60)


async def submit(c: httpx.AsyncClient, server: ApiServer, site_env: SiteEnv, seconds: int) -> str:
    body = {
        "job": {
            "name": f"ev-trust-{uuid.uuid4().hex[:6]}",
            "workingDirectory": site_env.scratch(VICTIM),
            "script": f"#!/bin/bash\nsleep {seconds}\n",
            "standardOutput": "/dev/null",
        }
    }
    answer = await c.post(f"/compute/{server.system}/jobs", json=body)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["jobId"])


async def events(response: httpx.Response) -> AsyncIterator[SseEvent]:
    async for event in sse_events(response.aiter_lines()):
        if event.event != "comment":
            yield event


# -- the forgery -----------------------------------------------------------------------


def forged_squeue(job_id: str, owner: str) -> str:
    now = int(time.time())
    values = [job_id, job_id, "N/A", "forged", "COMPLETED", "None", "0", "0:05"]
    values += [str(now - 10), str(now - 5), "UNLIMITED", "project1", "1", "hpcsite", owner]
    values += ["vm", "compute", owner, "/tmp", "1"]
    assert len(values) == len(SQUEUE_FIELDS)
    return "".join(f"{value}{FIELD_SEP}" for value in values) + "\n"


def forged_sacct(job_id: str, owner: str, uid: int) -> str:
    now = int(time.time())
    job = [job_id, "forged", "COMPLETED", "0:0", "None", "5", str(now - 10), str(now - 5)]
    job += ["00:00:00", "UNLIMITED", "project1", "1", "hpcsite", owner, "vm", "compute"]
    job += [owner, str(uid), "/tmp", "1"]
    step = [f"{job_id}.batch", "batch", "COMPLETED", "0:0", "", "5", str(now - 10)]
    step += [str(now - 5), "00:00:00", "", "project1", "1", "hpcsite", owner, "vm", ""]
    step += [owner, str(uid), "", ""]
    assert len(job) == len(step) == len(SACCT_FIELDS)
    return "".join("".join(f"{v}{FIELD_SEP}" for v in row) + "\n" for row in (job, step))


BASHRC = """\
export PATH="$HOME/bin:$PATH"
squeue() { cat "$HOME/forged-squeue.out"; }
sacct() { cat "$HOME/forged-sacct.out"; }
"""


@contextlib.contextmanager
def forging(job_id: str, owner: str) -> Iterator[Path]:
    """The attacker's shell prints ``job_id`` COMPLETED, owned by ``owner``, to every
    squeue and sacct (functions for direct calls, programs first in PATH for ``env``)."""
    files = {
        ".bashrc": BASHRC,
        "bin/squeue": '#!/bin/sh\ncat "$HOME/forged-squeue.out"\n',
        "bin/sacct": '#!/bin/sh\ncat "$HOME/forged-sacct.out"\n',
        "forged-squeue.out": forged_squeue(job_id, owner),
        "forged-sacct.out": forged_sacct(job_id, owner, 1001),
    }
    with hostile_files(ATTACKER, files) as home:
        yield home


def reforge(owner: str, job_id: str) -> None:
    """Switch the forged owner while the planting is live (the files stay the attacker's)."""
    home = home_of(ATTACKER)
    (home / "forged-squeue.out").write_text(forged_squeue(job_id, owner))
    (home / "forged-sacct.out").write_text(forged_sacct(job_id, owner, 1001))


async def the_forgery_is_live(ssh_as, job_id: str) -> None:
    """The attacker's own squeue and sacct, as the server runs them, say COMPLETED."""
    conn = await ssh_as(ATTACKER)
    squeue = ["env", "SLURM_TIME_FORMAT=%s", "squeue", "-h", "-r", "-t", "all", "-j", job_id]
    out = await conn.run(shlex.join([*squeue, "-O", format_fields(SQUEUE_FIELDS)]), check=True)
    [listed] = parse_squeue(str(out.stdout))
    assert (listed.job.job_id, listed.job.status.state) == (job_id, "COMPLETED")
    sacct = ["env", "SLURM_TIME_FORMAT=%s", "sacct", "-n", "-p", f"--delimiter={FIELD_SEP}"]
    out = await conn.run(shlex.join([*sacct, "-o", ",".join(SACCT_FIELDS), "-j", job_id]))
    [accounted] = parse_sacct(str(out.stdout))
    assert accounted.status.state == "COMPLETED" and accounted.tasks


async def attack(server: ApiServer, job_id: str, rounds: int = 1) -> list[int]:
    """Every way the attacker can ask for the victim's job; the statuses he got."""
    base = f"/compute/{server.system}"
    statuses: list[int] = []
    async with client(server, ATTACKER) as c:
        for _ in range(rounds):
            for owner in (VICTIM, ATTACKER):
                reforge(owner, job_id)
                statuses.append((await c.get(f"{base}/jobs/{job_id}")).status_code)
                waits = ({"waitFor": "terminal", "timeout": 1}, {"waitFor": "change", "timeout": 2})
                for params in waits:
                    got = await c.get(f"{base}/jobs/{job_id}", params=params)
                    statuses.append(got.status_code)
                for url, params in (
                    (f"{base}/jobs/{job_id}/events", None),
                    (f"{base}/events", {"jobs": f"{job_id},{UNKNOWN[0]},{UNKNOWN[1]}"}),
                ):
                    async with c.stream("GET", url, params=params) as response:
                        statuses.append(response.status_code)
                        if response.status_code == 200:
                            with contextlib.suppress(TimeoutError):
                                async with asyncio.timeout(3):
                                    _ = [e async for e in events(response)]
    assert not [status for status in statuses if status >= 500], statuses
    return statuses


class Follower:
    """The victim following the job: one SSE stream and one long-poll, in the background."""

    def __init__(self, server: ApiServer, job_id: str) -> None:
        self.server, self.job_id = server, job_id
        self.streamed: list[SseEvent] = []
        self.polled: httpx.Response | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Follower:
        self.client = client(self.server, VICTIM)
        self.tasks = [asyncio.create_task(self._stream()), asyncio.create_task(self._poll())]
        await asyncio.sleep(1.5)  # both are open
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.aclose()

    async def _stream(self) -> None:
        url = f"/compute/{self.server.system}/jobs/{self.job_id}/events"
        async with self.client.stream("GET", url) as response:
            assert response.status_code == 200
            async for event in events(response):
                self.streamed.append(event)

    async def _poll(self) -> None:
        url = f"/compute/{self.server.system}/jobs/{self.job_id}"
        params = {"waitFor": "terminal", "timeout": 60}
        self.polled = await self.client.get(url, params=params)

    def states(self) -> list[str]:
        return [e.state for e in self.streamed if e.event in ("job", "terminal")]

    async def ended(self) -> None:
        await asyncio.wait_for(asyncio.gather(*self.tasks), 30)


async def victim_is_not_fooled(server: ApiServer, site_env: SiteEnv, ssh_as) -> None:
    async with client(server, VICTIM) as victim:
        job_id = await submit(victim, server, site_env, 120)
        try:
            with forging(job_id, VICTIM):
                await the_forgery_is_live(ssh_as, job_id)
                # before the victim follows the job: a forged record would be final
                await attack(server, job_id)
                async with Follower(server, job_id) as follower:
                    await attack(server, job_id, rounds=2)  # while the victim follows it
                    assert follower.polled is None, follower.polled.text  # still waiting
                    states = follower.states()
                    assert states and "COMPLETED" not in states, states
                    assert not any(e.event == "terminal" for e in follower.streamed)
                    plain = await victim.get(f"/compute/{server.system}/jobs/{job_id}")
                    assert plain.json()["jobs"][0]["status"]["state"] != "COMPLETED"
                    assert (
                        await victim.delete(f"/compute/{server.system}/jobs/{job_id}")
                    ).status_code == 204
                    await follower.ended()
            # the real end reaches the victim: CANCELLED, never the forged COMPLETED
            assert follower.streamed[-1].event == "terminal"
            assert follower.streamed[-1].state == "CANCELLED"
            assert "COMPLETED" not in follower.states()
            assert follower.polled is not None and follower.polled.status_code == 200
            assert follower.polled.headers["X-Hpcgate-Wait"] == "terminal"
            assert follower.polled.json()["jobs"][0]["status"]["state"] == "CANCELLED"
        finally:
            await victim.delete(f"/compute/{server.system}/jobs/{job_id}")


# -- forged state ----------------------------------------------------------------------


async def test_forged_state_never_reaches_the_victim_service_mode(
    service_server: ApiServer, site_env: SiteEnv, ssh_as
) -> None:
    await victim_is_not_fooled(service_server, site_env, ssh_as)


async def test_forged_state_never_reaches_the_victim_per_user_mode(
    per_user_server: ApiServer, site_env: SiteEnv, ssh_as
) -> None:
    await victim_is_not_fooled(per_user_server, site_env, ssh_as)


async def test_attacker_fools_only_himself_per_user_mode(
    per_user_server: ApiServer, site_env: SiteEnv, ssh_as
) -> None:
    """Per user, the attacker's scope takes his forgery (so the attack did land), and
    the victim's scope, fed by the victim's commands alone, does not."""
    server = per_user_server
    async with client(server, VICTIM) as victim, client(server, ATTACKER) as attacker:
        job_id = await submit(victim, server, site_env, 120)
        try:
            with forging(job_id, ATTACKER):
                await the_forgery_is_live(ssh_as, job_id)
                url = f"/compute/{server.system}/jobs/{job_id}/events"
                async with attacker.stream("GET", url) as response:
                    assert response.status_code == 200
                    fooled = [e async for e in events(response)]
                assert fooled[-1].event == "terminal" and fooled[-1].state == "COMPLETED"
                async with victim.stream("GET", url) as response:
                    assert response.status_code == 200
                    async with asyncio.timeout(5):
                        first = await anext(events(response))
                assert first.event == "job" and first.state in ("PENDING", "RUNNING")
                assert first.json()["user"] == VICTIM
        finally:
            await victim.delete(f"/compute/{server.system}/jobs/{job_id}")


async def test_service_mode_attacker_stream_of_victims_job_is_404(
    service_server: ApiServer, site_env: SiteEnv, ssh_as
) -> None:
    """Service mode: the attacker's own claim to own the job changes nothing; the
    service identity's record says whose it is (visibility ``own``: 404, no owner)."""
    server = service_server
    async with client(server, VICTIM) as victim, client(server, ATTACKER) as attacker:
        job_id = await submit(victim, server, site_env, 120)
        try:
            with forging(job_id, ATTACKER):
                await the_forgery_is_live(ssh_as, job_id)
                base = f"/compute/{server.system}/jobs/{job_id}"
                streamed = await attacker.get(f"{base}/events")
                assert streamed.status_code == 404, streamed.text
                assert VICTIM not in streamed.text
                waited = await attacker.get(base, params={"waitFor": "change", "timeout": 1})
                assert waited.status_code == 404
                listed = await attacker.get(
                    f"/compute/{server.system}/events", params={"jobs": job_id}
                )
                errors = [e.json() for e in parse_sse(listed.text) if e.event == "error"]
                assert errors == [
                    {"jobId": job_id, "status": 404, "message": f"Job not found: {job_id}"}
                ]
                # and an unknown id answers exactly alike: ids cannot be probed
                unknown = await attacker.get(f"/compute/{server.system}/jobs/{UNKNOWN[5]}/events")
                assert unknown.status_code == 404
                assert unknown.json()["message"] == f"Job not found: {UNKNOWN[5]}"
                assert streamed.json()["message"] == f"Job not found: {job_id}"
        finally:
            await victim.delete(f"/compute/{server.system}/jobs/{job_id}")


def parse_sse(text: str) -> list[SseEvent]:
    """The events of a whole SSE body (comments left out)."""
    found: list[SseEvent] = []
    for block in text.split("\n\n"):
        event, data = SseEvent(), []
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event.event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                event.id = value
        if data:
            event.data = "\n".join(data)
            found.append(event)
    return found


# -- budgets ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quota_server(
    site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    server = _server(
        site_env,
        tmp_path_factory.mktemp("ev-quota"),
        max_subscribers_per_user=3,
        max_unknown_ids_per_request=200,
    )
    yield server
    server.stop()


@contextlib.asynccontextmanager
async def open_stream(
    c: httpx.AsyncClient, url: str, **params: str
) -> AsyncIterator[httpx.Response]:
    """A stream held open (its status is read; its body is left unread)."""
    async with c.stream("GET", url, params=params or None) as response:
        yield response


async def wait_until_accepted(c: httpx.AsyncClient, url: str, seconds: float = 10) -> None:
    """The server notices a client gone within moments: a new stream is taken again."""
    deadline = time.monotonic() + seconds
    while True:
        async with c.stream("GET", url) as response:
            if response.status_code == 200:
                return
            assert response.status_code == 429
        assert time.monotonic() < deadline, "the closed stream's place was not given back"
        await asyncio.sleep(0.2)


async def test_one_user_cannot_take_anothers_streams(quota_server: ApiServer) -> None:
    server = quota_server
    events_url = f"/compute/{server.system}/events"
    async with (
        client(server, ATTACKER) as attacker,
        client(server, VICTIM) as victim,
        contextlib.AsyncExitStack() as held,
    ):
        # rejected requests hold nothing: unknown jobs, bad ids, 400s
        for _ in range(5):
            gone = await attacker.get(f"/compute/{server.system}/jobs/{UNKNOWN[7]}/events")
            assert gone.status_code == 404
            waited = await attacker.get(
                f"/compute/{server.system}/jobs/{UNKNOWN[7]}", params={"waitFor": "terminal"}
            )
            assert waited.status_code == 404
            bad = await attacker.get(f"/compute/{server.system}/jobs/nope/events")
            assert bad.status_code == 400
        streams = [
            await held.enter_async_context(open_stream(attacker, events_url)) for _ in range(3)
        ]
        assert [s.status_code for s in streams] == [200, 200, 200]
        # the 4th stream and any long-poll: 429 with Retry-After, for the attacker only
        async with attacker.stream("GET", events_url) as fourth:
            assert fourth.status_code == 429
            assert int(fourth.headers["Retry-After"]) > 0
            assert "3 open event streams" in (await fourth.aread()).decode()
        poll = await attacker.get(
            f"/compute/{server.system}/jobs/{UNKNOWN[8]}", params={"waitFor": "terminal"}
        )
        assert poll.status_code == 429 and "Retry-After" in poll.headers
        for _ in range(3):
            mine = await held.enter_async_context(open_stream(victim, events_url))
            assert mine.status_code == 200
        # a client that goes away gives its place back
        await streams[0].aclose()
        await wait_until_accepted(attacker, events_url)


async def test_streams_the_server_ends_give_their_place_back(quota_server: ApiServer) -> None:
    server = quota_server
    events_url = f"/compute/{server.system}/events"
    async with client(server, ATTACKER) as attacker, contextlib.AsyncExitStack() as held:
        for _ in range(2):
            assert (
                await held.enter_async_context(open_stream(attacker, events_url))
            ).status_code == 200
        # the server ends these itself: a jobs= stream whose jobs cannot be followed,
        # and long-polls that time out or find nothing
        for _ in range(4):
            ended = await attacker.get(events_url, params={"jobs": ",".join(UNKNOWN[:3])})
            assert ended.status_code == 200
            assert {e.json()["status"] for e in parse_sse(ended.text)} == {404}
            polled = await attacker.get(
                f"/compute/{server.system}/jobs/{UNKNOWN[9]}",
                params={"waitFor": "change", "timeout": 1},
            )
            assert polled.status_code == 404
        third = await held.enter_async_context(open_stream(attacker, events_url))
        assert third.status_code == 200
        async with attacker.stream("GET", events_url) as fourth:
            assert fourth.status_code == 429


def commands_run(text: str) -> float:
    return metric_values(text, "hpcgate_scheduler_commands_total")


async def test_unknown_ids_cost_one_batched_lookup(quota_server: ApiServer) -> None:
    """200 ids no one knows (a cap of 200 on this server) cost one squeue and one sacct
    as the service identity, not two commands per id (401 before)."""
    server = quota_server
    async with client(server, ATTACKER) as attacker:
        await asyncio.sleep(2)  # rounds for earlier tests' interest are over
        before = await scrape(attacker, server.url)
        started = time.monotonic()
        answer = await attacker.get(
            f"/compute/{server.system}/events", params={"jobs": ",".join(UNKNOWN)}
        )
        elapsed = time.monotonic() - started
        after = await scrape(attacker, server.url)
    assert answer.status_code == 200
    failed = [e.json() for e in parse_sse(answer.text) if e.event == "error"]
    assert sorted(e["jobId"] for e in failed) == sorted(UNKNOWN)
    assert {e["status"] for e in failed} == {404}
    spent = commands_run(after) - commands_run(before)
    squeue = metric_values(after, "hpcgate_scheduler_commands_total", command="squeue")
    squeue -= metric_values(before, "hpcgate_scheduler_commands_total", command="squeue")
    print(f"200 unknown ids: {spent:.0f} scheduler commands ({squeue:.0f} squeue), {elapsed:.2f} s")
    assert 1 <= spent <= 3, spent
    request_made = metric_values(
        after, "hpcgate_scheduler_commands_total", source="request"
    ) - metric_values(before, "hpcgate_scheduler_commands_total", source="request")
    assert request_made == 0  # all as the service identity, none in the caller's shell


async def test_too_many_unknown_ids_are_refused_before_any_command(
    service_server: ApiServer,
) -> None:
    """The default cap (20): 200 unknown ids are a 400 naming the cap, at no cost."""
    server = service_server
    async with client(server, ATTACKER) as attacker:
        await asyncio.sleep(2)
        before = await scrape(attacker, server.url)
        answer = await attacker.get(
            f"/compute/{server.system}/events", params={"jobs": ",".join(UNKNOWN)}
        )
        after = await scrape(attacker, server.url)
        within = await attacker.get(
            f"/compute/{server.system}/events", params={"jobs": ",".join(UNKNOWN[:20])}
        )
    assert answer.status_code == 400
    assert "At most 20 job ids" in answer.json()["message"]
    assert commands_run(after) == commands_run(before)
    assert within.status_code == 200
    assert len([e for e in parse_sse(within.text) if e.event == "error"]) == 20


async def test_one_users_leases_stay_bounded(site_env: SiteEnv, tmp_path: Path, ssh_as) -> None:
    """Following many real jobs, then letting go, leaves at most max_leases_per_user of
    them watched and at most that many more kept for resume."""
    cap = 5
    server = _server(site_env, tmp_path, max_leases_per_user=cap, max_unknown_ids_per_request=1000)
    try:
        conn = await ssh_as(VICTIM)
        listed = await conn.run("sacct -n -X -S 2020-01-01 -o JobID,State --parsable2", check=True)
        ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")  # no job of another suite
        rows = [line.split("|") for line in str(listed.stdout).splitlines() if "|" in line]
        ids = [row[0] for row in rows if row[0].isdigit() and row[1].startswith(ended)][-60:]
        assert len(ids) > 3 * cap, ids
        async with client(server, VICTIM) as victim:
            answer = await victim.get(
                f"/compute/{server.system}/events", params={"jobs": ",".join(ids)}
            )
            assert answer.status_code == 200
            shown = {e.json()["jobId"] for e in parse_sse(answer.text) if e.event == "terminal"}
            assert len(shown) > 3 * cap  # they were all followed
            await asyncio.sleep(2)  # a round and its expiry
            text = await scrape(victim, server.url)
        watched = metric_values(text, "hpcgate_watcher_jobs_watched")
        tracked = metric_values(text, "hpcgate_watcher_jobs_tracked")
        print(f"{len(shown)} jobs followed; after: {watched:.0f} watched, {tracked:.0f} kept")
        assert watched <= cap
        assert tracked <= 2 * cap
    finally:
        server.stop()
