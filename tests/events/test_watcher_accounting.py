"""A failing accounting command fails only its part of a watcher round (scripted
scheduler): the controller's states are still delivered, ended jobs are settled once
accounting answers again, and the rounds keep their pace."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from hpcgate import errors
from hpcgate.compute.scheduler.models import Job
from hpcgate.compute.scheduler.slurm.messages import unavailable
from hpcgate.compute.watcher import JobWatcher
from hpcgate.operations.metrics import Metrics
from tests.events.fakes import FakeRunner, FakeScheduler
from tests.events.helpers import metric_values
from tests.events.test_watcher_unit import MIN, system

SLURMDBD_DOWN = (
    "sacct: error: slurm_persist_conn_open_without_init: failed to open persistent "
    "connection to host:127.0.0.1:6819: Connection refused\n"
    "sacct: error: Sending PersistInit msg: Connection refused\n"
    "sacct: error: Problem talking to the database: Connection refused\n"
)


class FlakyAccounting(FakeScheduler):
    """The scripted scheduler whose accounting command fails while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def accounted_jobs(self, runner: FakeRunner, job_ids: Sequence[str]) -> list[Job]:
        if self.down:
            self.calls["sacct"] += 1
            raise unavailable("sacct", SLURMDBD_DOWN)
        return await super().accounted_jobs(runner, job_ids)


@pytest.fixture
async def flaky() -> FlakyAccounting:
    return FlakyAccounting()


@pytest.fixture
async def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def watcher(flaky: FlakyAccounting, metrics: Metrics) -> AsyncIterator[JobWatcher]:
    w = JobWatcher(
        system(service_user="svc", settle_seconds=4 * MIN),
        flaky,
        FakeRunner,
        metrics=metrics,
    )
    w.start()
    yield w
    await w.close()


def rounds(metrics: Metrics, outcome: str) -> float:
    text = metrics.render().decode()
    return metric_values(text, "hpcgate_watcher_rounds_total", outcome=outcome)


async def until(predicate, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(MIN / 2)


async def test_the_controllers_states_flow_while_accounting_fails(
    flaky: FlakyAccounting, watcher: JobWatcher, metrics: Metrics
) -> None:
    flaky.set("5", "RUNNING")
    view = await watcher.view("alice", "5")
    sub = watcher.subscribe("alice", ["5"], "sse")
    flaky.down = True
    flaky.set("5", "COMPLETED")
    _, event = await asyncio.wait_for(sub.queue.get(), 2)
    assert event.terminal and event.job.status.state == "COMPLETED"
    assert event.job.tasks is None  # the controller's record alone
    # longer than settle_seconds: without accounting's answer the job is not final
    await asyncio.sleep(10 * MIN)
    assert not view.final
    squeue_while_down = flaky.calls["squeue"]
    assert flaky.calls["sacct"] >= 2  # asked again by later rounds
    assert rounds(metrics, "error") == 0 and rounds(metrics, "partial") >= 2
    flaky.down = False
    await until(lambda: view.final)
    assert view.job.tasks  # the ended job's details (its steps) came with accounting
    assert sub.queue.empty()  # same state: no second terminal event
    watcher.unsubscribe(sub)
    # squeue went on at the fast pace: no whole-round backoff (which would have
    # spaced rounds 2, 4, 8 ... intervals apart)
    assert squeue_while_down >= 8


async def test_a_job_the_controller_forgot_is_settled_when_accounting_returns(
    flaky: FlakyAccounting, watcher: JobWatcher
) -> None:
    flaky.set("6", "RUNNING")
    view = await watcher.view("alice", "6")
    sub = watcher.subscribe("alice", ["6"], "sse")
    flaky.down = True
    flaky.set("6", "FAILED")
    flaky.purged.add("6")  # gone from the controller (MinJobAge) while accounting is down
    await asyncio.sleep(10 * MIN)
    assert view.job.status.state == "RUNNING" and not view.final
    flaky.down = False
    _, event = await asyncio.wait_for(sub.queue.get(), 2)
    assert event.terminal and event.job.status.state == "FAILED" and event.job.tasks
    await until(lambda: view.final)
    watcher.unsubscribe(sub)


async def test_an_unseen_job_needing_accounting_is_a_503_naming_slurmdbd(
    flaky: FlakyAccounting, watcher: JobWatcher
) -> None:
    flaky.set("7", "COMPLETED")
    flaky.purged.add("7")
    flaky.down = True
    started = time.monotonic()
    with pytest.raises(errors.ServiceUnavailable) as refused:
        await watcher.view("alice", "7")
    assert "slurmdbd" in refused.value.message
    assert time.monotonic() - started < 1.0  # told at the round, not at the deadline
    flaky.down = False
    await until(lambda: flaky.calls["sacct"] >= 2)
    view = await watcher.view("alice", "7")
    assert view.job.status.state == "COMPLETED"


async def test_accounting_backs_off_alone(flaky: FlakyAccounting, watcher: JobWatcher) -> None:
    """A failing accounting command is retried after min_interval, doubling up to
    four; the controller is asked every round meanwhile."""
    flaky.set("8", "RUNNING")
    sub = watcher.subscribe("alice", ["8"], "sse")
    await asyncio.wait_for(sub.queue.get(), 2)
    flaky.down = True
    flaky.set("8", "COMPLETED")
    await asyncio.wait_for(sub.queue.get(), 2)
    squeue, sacct = flaky.calls["squeue"], flaky.calls["sacct"]
    await asyncio.sleep(40 * MIN)
    squeue, sacct = flaky.calls["squeue"] - squeue, flaky.calls["sacct"] - sacct
    assert squeue >= 20
    assert 4 <= sacct <= squeue / 2, (squeue, sacct)
    watcher.unsubscribe(sub)


def test_messages_name_the_unreachable_daemon() -> None:
    assert "slurmdbd" in unavailable("sacct", SLURMDBD_DOWN).message
    assert "controller" not in unavailable("sacct", SLURMDBD_DOWN).message
    down = "squeue: error: Unable to contact slurm controller (connect failure)\n"
    assert "(slurmctld)" in unavailable("squeue", down).message
    assert "(slurmdbd)" in unavailable("sbatch", "error: Problem talking to the database").message
