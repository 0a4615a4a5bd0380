"""Prometheus metrics: one registry per ``Services``, rendered at ``GET /metrics``.

Labels never carry user names or job ids: routes are templates, commands are
program names, systems are configured names, so the series stay few.

* ``hpcgate_http_requests_total`` and ``hpcgate_http_request_duration_seconds``
  (method, route template, status; streams count their whole lifetime).
* ``hpcgate_scheduler_commands_total`` and ``..._duration_seconds`` (system,
  command, source: ``request``, ``watcher``, ``health``, ``idempotency``), from the
  SSH pool's command hook, so every command run on a cluster is counted.
* Read at scrape time: SSH connections/channels per system (``SshPool.stats()``),
  the watchers' interval, lag, jobs tracked, subscribers and waiters.

Several worker processes (``hpcgate serve --workers N``) use prometheus_client's
multiprocess mode: ``serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` (under the state
directory, emptied at start) before the workers import prometheus_client, every
counter and histogram is written to a per-process file there (about 4 µs more per
request than in memory), and whichever worker answers ``/metrics`` sums every
worker's files.

The scrape-time figures (``Figure``) are read from their providers at every scrape
when one process serves. With several workers each worker writes its readings into
multiprocess gauges (``live*`` modes: a dead worker's files are removed, by the
worker as it stops and by ``serve`` when one dies) every ``PUBLISH_SECONDS`` and
again when it answers a scrape, so any worker's answer shows
``Share.SUM`` figures (streams, waiters, SSH connections) summed over the live
workers, ``Share.LEADER`` figures (the watcher's interval, lag, data age, jobs
tracked, scopes) as the round leader wrote them, and ``Share.TOTAL`` (SSH connects)
summed over every worker since ``serve`` started. The other workers' part is at
most ``PUBLISH_SECONDS`` old (plus how late their event loop runs the refresh).
A host whose workers all follow a leader elsewhere (the Redis store) shows no
``Share.LEADER`` series.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

SCHEDULER_PROGRAMS = frozenset(
    {"sbatch", "squeue", "sacct", "scancel", "scontrol", "sinfo", "sacctmgr", "srun", "sprio"}
)
"""Programs counted under their own name; anything else is ``other``."""

command_source: contextvars.ContextVar[str] = contextvars.ContextVar(
    "hpcgate_command_source", default="request"
)
"""Who runs the commands of the current task: set by the watcher, the health
checker and the idempotency lookup; ``request`` otherwise."""

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: they double the output for nothing

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
_COMMAND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set (by ``hpcgate serve`` with several workers) before prometheus_client is imported."""
PUBLISH_SECONDS = 1.0
"""With several workers: how often each writes its scrape-time figures to the files."""
_MAX_CACHED_CHILDREN = 4096


class Share(enum.Enum):
    """How the workers' readings of one figure make the figure (the multiprocess mode)."""

    SUM = "livesum"
    """Each worker holds a part (its streams, its connections): the live workers' sum."""
    LEADER = "livemostrecent"
    """The watcher round leader's reading (the followers' are not written)."""
    TOTAL = "counter"
    """A count since start: summed over every worker, dead ones included."""


@dataclass(frozen=True)
class Figure:
    """A scrape-time series labelled by ``system``."""

    name: str
    documentation: str
    share: Share = Share.SUM


class Reading(NamedTuple):
    """One figure's value for one system, as this process sees it."""

    figure: Figure
    system: str
    value: float
    leads: bool = True
    """For ``Share.LEADER``: whether this process leads the system's rounds."""


Readings = Callable[[], Iterable[Reading]]


def forget_process(pid: int) -> None:
    """Drop the live figures of worker ``pid`` (it stopped or died)."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def command_kind(argv: Sequence[str]) -> str:
    """The program of ``argv``, past an ``env NAME=VALUE ...`` prefix."""
    index = 0
    if argv and argv[0] == "env":
        index = 1
        while index < len(argv) and "=" in argv[index] and not argv[index].startswith("-"):
            index += 1
    program = argv[index].rsplit("/", 1)[-1] if index < len(argv) else ""
    return program if program in SCHEDULER_PROGRAMS else "other"


class _Live(Collector):
    """One process's figures, read from the providers when scraped."""

    def __init__(self) -> None:
        self.providers: list[tuple[Sequence[Figure], Readings]] = []

    def collect(self) -> Iterable[Metric]:
        for figures, read in self.providers:
            families: dict[Figure, GaugeMetricFamily | CounterMetricFamily] = {}
            for figure in figures:
                kind = CounterMetricFamily if figure.share is Share.TOTAL else GaugeMetricFamily
                families[figure] = kind(figure.name, figure.documentation, labels=["system"])
            for reading in read():
                families[reading.figure].add_metric([reading.system], reading.value)
            yield from families.values()


class _Published:
    """One worker's figures written to the multiprocess files, each in its mode."""

    def __init__(self) -> None:
        self._series: dict[Figure, Gauge | Counter] = {}
        self._counted: dict[tuple[Figure, str], float] = {}

    def declare(self, figure: Figure) -> None:
        if figure in self._series:
            return
        if figure.share is Share.TOTAL:
            self._series[figure] = Counter(
                figure.name, figure.documentation, ["system"], registry=None
            )
        else:
            self._series[figure] = Gauge(
                figure.name,
                figure.documentation,
                ["system"],
                registry=None,
                multiprocess_mode=figure.share.value,
            )

    def write(self, readings: Iterable[Reading]) -> None:
        for figure, system, value, leads in readings:
            series = self._series[figure]
            if isinstance(series, Counter):
                key = (figure, system)
                added = value - self._counted.get(key, 0.0)
                if added > 0:
                    series.labels(system).inc(added)
                    self._counted[key] = value
            elif figure.share is not Share.LEADER or leads:
                series.labels(system).set(value)


class Metrics:
    """The server's metrics and their registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "hpcgate_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "hpcgate_http_request_duration_seconds",
            "HTTP request duration (streams: their lifetime)",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.commands = Counter(
            "hpcgate_scheduler_commands",
            "Commands run on a cluster, by program (Slurm commands by name, else other)",
            ["system", "command", "source", "outcome"],
            registry=self.registry,
        )
        self.command_seconds = Histogram(
            "hpcgate_scheduler_command_duration_seconds",
            "Duration of commands run on a cluster",
            ["system", "command"],
            buckets=_COMMAND_BUCKETS,
            registry=self.registry,
        )
        self.watcher_rounds = Counter(
            "hpcgate_watcher_rounds",
            "Watcher polling rounds (one squeue and at most one sacct per scope each)",
            ["system", "outcome"],
            registry=self.registry,
        )
        self.watcher_round_seconds = Histogram(
            "hpcgate_watcher_round_duration_seconds",
            "Duration of a watcher round",
            ["system"],
            buckets=_COMMAND_BUCKETS,
            registry=self.registry,
        )
        self.watcher_events = Counter(
            "hpcgate_watcher_events",
            "Job state changes the watcher published",
            ["system"],
            registry=self.registry,
        )
        self.submissions = Counter(
            "hpcgate_idempotent_submissions",
            "Submissions with an Idempotency-Key, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self._live = _Live()
        # several workers: /metrics sums every worker's files, figures included
        self._exposed = self.registry
        self._published: _Published | None = None
        self._publisher: asyncio.Task[None] | None = None
        shared = os.environ.get(MULTIPROC_ENV)
        if shared:
            self._exposed = CollectorRegistry(auto_describe=True)
            MultiProcessCollector(self._exposed, path=shared)  # type: ignore[no-untyped-call]
            self._published = _Published()
        else:
            self.registry.register(self._live)
        # the request series' children by labels: labels() costs more than the update
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def add_figures(self, figures: Sequence[Figure], read: Readings) -> None:
        """Show ``figures`` at every scrape, their values from ``read()``."""
        self._live.providers.append((figures, read))
        if self._published is not None:
            for figure in figures:
                self._published.declare(figure)

    def publish(self) -> None:
        """Several workers: write this worker's figures to the shared files."""
        if self._published is not None:
            for _, read in self._live.providers:
                self._published.write(read())

    def start(self) -> None:
        """Several workers: refresh this worker's figures every ``PUBLISH_SECONDS``."""
        if self._published is not None and self._publisher is None:
            self._publisher = asyncio.create_task(self._publish_often(), name="metrics-publish")

    async def close(self) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
            self._publisher = None
            forget_process(os.getpid())

    async def _publish_often(self) -> None:
        while True:
            self.publish()
            await asyncio.sleep(PUBLISH_SECONDS)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            labels = (method, route, str(status))
            children = (self.requests.labels(*labels), self.request_seconds.labels(*labels))
            if len(self._request_children) < _MAX_CACHED_CHILDREN:
                self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_command(
        self, system: str, argv: Sequence[str], seconds: float, exit_status: int | None
    ) -> None:
        kind = command_kind(argv)
        if exit_status is None:
            outcome = "error"
        else:
            outcome = "ok" if exit_status == 0 else "nonzero"
        self.commands.labels(system, kind, command_source.get(), outcome).inc()
        self.command_seconds.labels(system, kind).observe(seconds)

    def render(self) -> bytes:
        self.publish()  # the answering worker's own figures, fresh
        return generate_latest(self._exposed)


SSH_FIGURES = {
    "connections": Figure("hpcgate_ssh_connections", "Open SSH connections"),
    "connecting": Figure("hpcgate_ssh_connecting", "SSH connections being opened"),
    "channels_in_use": Figure("hpcgate_ssh_channels_in_use", "SSH exec channels in use"),
    "sftp_sessions": Figure("hpcgate_ssh_sftp_sessions", "Open SFTP sessions"),
    "connects_total": Figure(
        "hpcgate_ssh_connects", "SSH connections opened since start", Share.TOTAL
    ),
}


def pool_readings(stats: Callable[[], dict[str, dict[str, int]]]) -> Readings:
    """SSH pool figures per system (``SSH_FIGURES``), from ``SshPool.stats()``."""

    def read() -> Iterable[Reading]:
        for system, row in stats().items():
            for key, figure in SSH_FIGURES.items():
                yield Reading(figure, system, row[key])

    return read
