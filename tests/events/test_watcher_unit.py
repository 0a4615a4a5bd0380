"""The watcher, event streams and idempotency logic against a scripted scheduler."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hpcgate import errors
from hpcgate.api.events import job_events, parse_event_id
from hpcgate.compute.idempotency import (
    IdempotentSubmitter,
    KeyScope,
    SqliteIdempotencyStore,
    body_hash,
    stamp,
)
from hpcgate.compute.scheduler.models import JobSubmitRequest
from hpcgate.compute.watcher import QUEUE_LIMIT, JobEvent, JobWatcher, Subscription
from hpcgate.config import (
    ConfigError,
    IdempotencySettings,
    SystemSettings,
    WatcherSettings,
    load_settings,
)
from hpcgate.operations.metrics import Metrics, command_kind
from tests.events.fakes import FakeRunner, FakeScheduler, make_job
from tests.events.helpers import sse_events

MIN = 0.05


def system(
    service_user: str | None = None, *, visibility: str = "own", **watcher: object
) -> SystemSettings:
    return SystemSettings.model_validate(
        {
            "name": "c",
            "service_user": service_user,
            "scheduler": {"job_visibility": visibility},
            "ssh": {"host": "h", "known_hosts": "/k"},
            "credentials": {"kind": "static_keys", "key_path": "/k/{username}"},
            # constructed: faster than the configuration allows (min 0.2 s)
            "watcher": WatcherSettings.model_construct(
                **{
                    **WatcherSettings().model_dump(),
                    "min_interval": MIN,
                    "max_interval": 0.5,
                    **watcher,
                }
            ),
        }
    )


@pytest.fixture
async def fake() -> FakeScheduler:
    return FakeScheduler()


@pytest.fixture
async def watcher(fake: FakeScheduler) -> AsyncIterator[JobWatcher]:
    w = JobWatcher(system(service_user="svc"), fake, FakeRunner, metrics=Metrics())
    w.start()
    yield w
    await w.close()


async def test_concurrent_waiters_share_one_squeue(fake: FakeScheduler, watcher) -> None:
    for n in range(50):
        fake.set(str(100 + n), "RUNNING")
    views = await asyncio.gather(*(watcher.view("alice", str(100 + n % 50)) for n in range(1000)))
    assert {v.job.status.state for v in views} == {"RUNNING"}
    assert fake.calls == {"squeue": 1}
    # fresh views answer without a command
    await watcher.view("alice", "100")
    assert watcher.cached("alice", "101") is not None
    assert fake.calls == {"squeue": 1}


async def test_rounds_never_closer_than_min_interval(fake: FakeScheduler, watcher) -> None:
    started = time.monotonic()
    for n in range(20):
        fake.set(str(n + 1), "PENDING")
        await watcher.view("alice", str(n + 1))
    elapsed = time.monotonic() - started
    assert fake.calls["squeue"] <= 1 + elapsed / MIN + 1


async def test_unknown_and_foreign_jobs_are_not_found(fake: FakeScheduler, watcher) -> None:
    fake.set("7", "RUNNING", user="bob")
    with pytest.raises(errors.NotFound):
        await watcher.view("alice", "7")
    with pytest.raises(errors.NotFound):
        await watcher.view("alice", "8")
    assert (await watcher.view("bob", "7")).owner == "bob"
    assert watcher.cached("alice", "7") is None


async def test_changes_become_events_and_final_jobs_are_not_polled(
    fake: FakeScheduler, watcher
) -> None:
    fake.set("5", "PENDING")
    view = await watcher.view("alice", "5")
    sub = watcher.subscribe("alice", ["5"], "sse")
    states = []
    for state in ("RUNNING", "COMPLETED"):
        fake.set("5", state)
        view_id, event = await asyncio.wait_for(sub.queue.get(), 2)
        assert view_id == "5"
        states.append((event.job.status.state, event.terminal))
    assert states == [("RUNNING", False), ("COMPLETED", True)]
    assert view.final and view.job.tasks  # accounting merged in: its steps
    watcher.unsubscribe(sub)
    polled = fake.calls["squeue"]
    await asyncio.sleep(10 * MIN)
    assert fake.calls["squeue"] == polled
    assert [e.seq for e in view.history] == sorted({e.seq for e in view.history})


async def test_array_summary_changes_with_each_task(fake: FakeScheduler, watcher) -> None:
    for index in range(3):
        fake.set(f"9_{index}", "RUNNING")
    view = await watcher.view("alice", "9")
    assert view.job.job_id == "9" and len(view.job.tasks or []) == 3
    sub = watcher.subscribe("alice", ["9"], "sse")
    fake.set("9_0", "COMPLETED")
    _, event = await asyncio.wait_for(sub.queue.get(), 2)
    assert event.job.status.state == "RUNNING" and not event.terminal
    fake.set("9_1", "COMPLETED")
    fake.set("9_2", "FAILED")
    _, event = await asyncio.wait_for(sub.queue.get(), 2)
    assert event.terminal and event.job.status.state == "FAILED"
    watcher.unsubscribe(sub)


async def test_per_user_scopes_run_as_each_user(fake: FakeScheduler) -> None:
    users: list[str] = []

    def runner(user: str) -> FakeRunner:
        users.append(user)
        return FakeRunner(user)

    w = JobWatcher(system(), fake, runner)
    w.start()
    try:
        fake.set("1", "RUNNING", user="alice")
        fake.set("2", "RUNNING", user="bob")
        await asyncio.gather(w.view("alice", "1"), w.view("bob", "2"))
        assert set(users) == {"alice", "bob"}
        with pytest.raises(errors.NotFound):
            await w.view("alice", "2")
    finally:
        await w.close()


async def test_all_jobs_subscription_sees_new_jobs_of_its_user_only(
    fake: FakeScheduler, watcher
) -> None:
    sub = watcher.subscribe("alice", None, "sse")
    await watcher.all_views("alice")
    fake.set("30", "PENDING", user="bob")
    fake.set("31", "PENDING", user="alice")
    view_id, event = await asyncio.wait_for(sub.queue.get(), 2)
    assert view_id == "31" and event.job.user == "alice"
    assert sub.queue.empty()
    watcher.unsubscribe(sub)


async def test_service_scope_takes_no_callers_answer(fake: FakeScheduler) -> None:
    """A caller's own lookup (printed by the caller's login shell) never feeds the
    shared scope, whoever it claims owns the job; every command runs as the service."""
    ran_as: list[str] = []

    def runner(user: str) -> FakeRunner:
        ran_as.append(user)
        return FakeRunner(user)

    w = JobWatcher(system(service_user="svc"), fake, runner)
    w.start()
    try:
        fake.set("7", "PENDING", user="alice")
        view = await w.view("alice", "7")
        sub = w.subscribe("alice", ["7"], "sse")
        for claimed in ("alice", "bob"):
            forged = make_job("7", "COMPLETED", user=claimed, steps=True)
            assert w.observe("bob", "7", forged) is None
            assert w.observe("alice", "7", forged) is None  # even the owner's own shell
        await asyncio.sleep(5 * MIN)
        current = w.current("alice", "7")
        assert current is view and current.job.status.state == "PENDING" and not view.final
        assert sub.queue.empty()
        with pytest.raises(errors.NotFound):
            await w.view("bob", "7")
        # unknown ids are looked up by the rounds too, as the service identity
        with pytest.raises(errors.NotFound):
            await w.view("bob", "8")
        assert set(ran_as) == {"svc"} and fake.calls["lookup"] == 0
        # the service identity's own answer is taken
        assert w.observe("alice", "7", make_job("7", "RUNNING"), source="svc") is view
        w.unsubscribe(sub)
    finally:
        await w.close()


async def test_per_user_scope_is_fed_and_read_by_its_user_alone(fake: FakeScheduler) -> None:
    w = JobWatcher(system(), fake, FakeRunner)
    w.start()
    try:
        fake.set("7", "PENDING", user="alice")
        view = await w.view("alice", "7")
        forged = make_job("7", "COMPLETED", user="bob", steps=True)
        assert w.observe("bob", "7", forged) is not None  # bob fools himself
        assert (await w.view("bob", "7")).job.status.state == "COMPLETED"
        assert w.current("alice", "7") is view and view.job.status.state == "PENDING"
        assert w.cached("bob", "7") is not view
    finally:
        await w.close()


async def test_visibility_follows_the_site_rule(fake: FakeScheduler) -> None:
    fake.set("7", "RUNNING", user="bob")
    for visibility, visible in (("own", False), ("scheduler", True)):
        w = JobWatcher(system("svc", visibility=visibility), fake, FakeRunner)
        w.start()
        try:
            assert (await w.view("bob", "7")).owner == "bob"
            sub = w.subscribe("alice", ["7"], "sse")
            if visible:
                assert (await w.view("alice", "7")).owner == "bob"
            else:
                with pytest.raises(errors.NotFound) as info:
                    await w.view("alice", "7")
                assert info.value.message == "Job not found: 7"  # as for an unknown id
            assert (w.cached("alice", "7") is not None) == visible
            assert (w.current("alice", "7") is not None) == visible
            fake.set("7", "COMPLETED", user="bob")
            got = await asyncio.wait_for(sub.queue.get(), 2) if visible else None
            await asyncio.sleep(4 * MIN)
            assert (got is not None) == visible and sub.queue.empty()
            w.unsubscribe(sub)
            everything = w.subscribe("alice", None, "sse")
            assert await w.all_views("alice") == []  # all-jobs streams: one's own jobs
            w.unsubscribe(everything)
        finally:
            await w.close()
            fake.set("7", "RUNNING", user="bob")


async def test_unknown_ids_cost_one_batch(fake: FakeScheduler, watcher) -> None:
    fake.set("1", "RUNNING")
    ids = [str(5000 + n) for n in range(200)]
    found = await asyncio.gather(*(watcher.view("bob", i) for i in ids), return_exceptions=True)
    assert all(isinstance(result, errors.NotFound) for result in found)
    assert fake.calls["squeue"] == 1 and fake.calls["sacct"] == 1
    assert fake.calls["lookup"] == 0
    assert watcher.stats()["leases"] == 0  # nothing kept watched for them
    assert not watcher.knows("bob", ids[0])


async def test_subscriber_budgets(fake: FakeScheduler) -> None:
    w = JobWatcher(system("svc", max_subscribers_per_user=2, max_subscribers=3), fake, FakeRunner)
    first, second = w.acquire("alice", "sse"), w.acquire("alice", "longpoll")
    with pytest.raises(errors.TooManyRequests) as info:
        w.acquire("alice", "sse")
    assert info.value.status_code == 429 and int(info.value.headers["Retry-After"]) > 0
    kept = w.acquire("bob", "sse")  # the system is full now
    with pytest.raises(errors.ServiceUnavailable):
        w.acquire("carol", "sse")
    first.release()
    first.release()  # once only
    assert w.held("alice") == 1
    third = w.acquire("alice", "sse")
    del third  # dropped without release: given back all the same
    gc.collect()
    assert w.held("alice") == 1
    second.release()
    kept.release()
    assert w.held("alice") == w.held("bob") == 0


async def test_leases_and_kept_views_per_user_are_capped(fake: FakeScheduler) -> None:
    cap = 10
    w = JobWatcher(system("svc", max_leases_per_user=cap), fake, FakeRunner)
    w.start()
    try:
        ids = [str(100 + n) for n in range(100)]
        for job_id in ids:
            fake.set(job_id, "COMPLETED", user="alice")
        views = await asyncio.gather(*(w.view("alice", i) for i in ids))
        assert len(views) == 100  # a request beyond the cap still gets every answer
        assert w.stats()["leases"] <= cap
        # bob asks for every one of them: nothing is kept for him
        for job_id in ids:
            with pytest.raises(errors.NotFound):
                await w.view("bob", job_id)
        await asyncio.sleep(4 * MIN)
        stats = w.stats()
        assert stats["leases"] <= cap and stats["views"] <= 2 * cap, stats
    finally:
        await w.close()


def test_a_slow_subscriber_overflows_instead_of_growing() -> None:
    sub = Subscription("alice", frozenset({"1"}), "sse")
    event = JobEvent(1, make_job("1", "RUNNING"))
    for _ in range(QUEUE_LIMIT + 5):
        sub.deliver("1", event)
    assert sub.overflowed and sub.queue.qsize() == QUEUE_LIMIT


async def _body(stream: AsyncIterator[bytes]) -> list:
    async def lines() -> AsyncIterator[str]:
        async for chunk in stream:
            for line in chunk.decode().split("\n")[:-1]:
                yield line

    return [e async for e in sse_events(lines()) if e.event != "comment"]


async def test_stream_replays_after_last_event_id(fake: FakeScheduler, watcher) -> None:
    fake.set("40", "RUNNING")
    view = await watcher.view("alice", "40")
    first = view.seq
    fake.set("40", "COMPLETED")
    while not view.terminal:
        await asyncio.sleep(MIN)
    full = await _body(job_events(watcher, "alice", {"40": view}, last_id=None))
    assert [(e.event, e.state) for e in full] == [("terminal", "COMPLETED")]
    resumed = await _body(job_events(watcher, "alice", {"40": view}, last_id=first))
    assert [int(e.id) for e in resumed] == [view.seq]
    done = await _body(job_events(watcher, "alice", {"40": view}, last_id=view.seq))
    assert done == []
    assert watcher.stats()["sse"] == 0


def test_event_ids_and_command_kinds() -> None:
    assert parse_event_id(" 12 ") == 12
    assert parse_event_id("x") is None and parse_event_id(None) is None
    assert command_kind(["env", "SLURM_TIME_FORMAT=%s", "squeue", "-h"]) == "squeue"
    assert command_kind(["env", "A=1", "/usr/bin/sbatch", "--export=ALL"]) == "sbatch"
    assert command_kind(["sh", "-c", "command -v sbatch"]) == "other"


def request(name: str) -> JobSubmitRequest:
    return JobSubmitRequest.model_validate(
        {"job": {"name": name, "workingDirectory": "/w", "script": "#!/bin/bash\ntrue\n"}}
    )


async def test_store_and_submitter(tmp_path: Path) -> None:
    settings = IdempotencySettings()
    path = tmp_path / "state" / "idem.sqlite3"
    submitter = IdempotentSubmitter(SqliteIdempotencyStore(path), settings, Metrics())
    await submitter.start()
    submitted: list[str] = []
    stamped: dict[str, str] = {}

    async def submit(comment: str) -> str:
        await asyncio.sleep(0.05)
        job_id = str(1000 + len(submitted))
        submitted.append(job_id)
        stamped[comment] = job_id
        return job_id

    async def lookup(comment: str, since: int) -> list[str]:
        return [stamped[comment]] if comment in stamped else []

    scope = KeyScope("c", "alice", "key-1")
    answers = await asyncio.gather(
        *(submitter.submit(scope, request("a"), submit, lookup) for _ in range(10))
    )
    assert {job_id for job_id, _ in answers} == {"1000"}
    assert sum(not replayed for _, replayed in answers) == 1
    assert submitted == ["1000"]
    with pytest.raises(errors.UnprocessableEntity):
        await submitter.submit(scope, request("b"), submit, lookup)
    # another user, same key: another job
    other = await submitter.submit(KeyScope("c", "bob", "key-1"), request("a"), submit, lookup)
    assert other == ("1001", False)
    # a pending record (the server died after sbatch) is resolved by the stamp
    lost = KeyScope("c", "alice", "key-2")
    await submitter.store.claim(lost, body_hash(request("a")), time.time() - 60)
    stamped[stamp(lost)] = "999"
    assert await submitter.submit(lost, request("a"), submit, lookup) == ("999", True)
    assert submitted == ["1000", "1001"]
    await submitter.close()
    # the records outlive the process
    again = IdempotentSubmitter(SqliteIdempotencyStore(path), settings)
    await again.start()
    assert await again.submit(scope, request("a"), submit, lookup) == ("1000", True)
    await again.close()


async def test_failed_submission_forgets_or_keeps_key(tmp_path: Path) -> None:
    submitter = IdempotentSubmitter(
        SqliteIdempotencyStore(tmp_path / "i.sqlite3"), IdempotencySettings()
    )
    await submitter.start()
    scope = KeyScope("c", "alice", "k")

    async def rejected(comment: str) -> str:
        raise errors.BadRequest("Job submission rejected")

    async def lost(comment: str) -> str:
        raise errors.RequestTimeout("timed out")

    async def nothing(comment: str, since: int) -> list[str]:
        return []

    with pytest.raises(errors.BadRequest):
        await submitter.submit(scope, request("a"), rejected, nothing)
    # forgotten: another body may use the key now
    with pytest.raises(errors.RequestTimeout):
        await submitter.submit(scope, request("b"), lost, nothing)
    # kept pending: the body is bound to the key
    with pytest.raises(errors.UnprocessableEntity):
        await submitter.submit(scope, request("a"), lost, nothing)
    await submitter.close()


# -- configuration ---------------------------------------------------------------------

VALID = """
auth: {issuer: https://idp.example, audience: hpcgate, jwks_file: /etc/hpcgate/jwks.json}
systems:
  - name: cluster
    ssh: {host: login.example, known_hosts: /etc/hpcgate/known_hosts}
    credentials: {kind: ca, ca_key: /etc/hpcgate/user_ca}
    watcher: {%s}
"""


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("max_subscribers_per_user: 0", "systems.0.watcher.max_subscribers_per_user"),
        ("max_unknown_ids_per_request: 0", "systems.0.watcher.max_unknown_ids_per_request"),
        ("max_unknown_ids_per_request: 100000", "systems.0.watcher.max_unknown_ids_per_request"),
        ("max_leases_per_user: -1", "systems.0.watcher.max_leases_per_user"),
        ("interest_seconds: 1.0e9", "systems.0.watcher.interest_seconds"),
        ("retention_seconds: 1.0e9", "systems.0.watcher.retention_seconds"),
    ],
)
def test_event_budget_settings_are_checked(tmp_path: Path, setting: str, field: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(VALID % setting)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert field in str(info.value)


def test_event_budget_defaults() -> None:
    settings = WatcherSettings()
    assert settings.max_subscribers_per_user == 100
    assert settings.max_unknown_ids_per_request == 20
    assert settings.max_leases_per_user == 2000
    assert settings.max_subscribers_per_user < settings.max_subscribers
