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
worker's files. The scrape-time gauges are the answering worker's own.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
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

Gauges = Callable[[], Iterable[Metric]]
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set (by ``hpcgate serve`` with several workers) before prometheus_client is imported."""
_MAX_CACHED_CHILDREN = 4096


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
    """Gauges computed when scraped, from the registered providers."""

    def __init__(self) -> None:
        self.providers: list[Gauges] = []

    def collect(self) -> Iterable[Metric]:
        for provider in self.providers:
            yield from provider()


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
        self.registry.register(self._live)
        # several workers: /metrics sums every worker's files, plus this one's gauges
        self._exposed = self.registry
        shared = os.environ.get(MULTIPROC_ENV)
        if shared:
            self._exposed = CollectorRegistry(auto_describe=True)
            MultiProcessCollector(self._exposed, path=shared)  # type: ignore[no-untyped-call]
            self._exposed.register(self._live)
        # the request series' children by labels: labels() costs more than the update
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def add_gauges(self, provider: Gauges) -> None:
        """Collect ``provider()``'s metric families at every scrape."""
        self._live.providers.append(provider)

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
        return generate_latest(self._exposed)


def gauge(name: str, documentation: str, values: dict[str, float]) -> GaugeMetricFamily:
    """A gauge family labelled by ``system``."""
    family = GaugeMetricFamily(name, documentation, labels=["system"])
    for system, value in values.items():
        family.add_metric([system], value)
    return family


def pool_gauges(stats: Callable[[], dict[str, dict[str, int]]]) -> Gauges:
    """SSH pool figures per system, from ``SshPool.stats()``."""

    def collect() -> Iterable[Metric]:
        rows = stats()
        yield gauge(
            "hpcgate_ssh_connections",
            "Open SSH connections",
            {s: r["connections"] for s, r in rows.items()},
        )
        yield gauge(
            "hpcgate_ssh_connecting",
            "SSH connections being opened",
            {s: r["connecting"] for s, r in rows.items()},
        )
        yield gauge(
            "hpcgate_ssh_channels_in_use",
            "SSH exec channels in use",
            {s: r["channels_in_use"] for s, r in rows.items()},
        )
        yield gauge(
            "hpcgate_ssh_sftp_sessions",
            "Open SFTP sessions",
            {s: r["sftp_sessions"] for s, r in rows.items()},
        )
        connects = CounterMetricFamily(
            "hpcgate_ssh_connects", "SSH connections opened since start", labels=["system"]
        )
        for system, row in rows.items():
            connects.add_metric([system], row["connects_total"])
        yield connects

    return collect
