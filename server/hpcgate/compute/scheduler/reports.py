"""Wire models of what the scheduler says about a job beyond its state: the verdict of
a dry-run submission (``POST .../jobs?dryRun=true``) and a job's accounting
(``GET .../jobs/{id}/accounting``). Both are hpcgate extensions of FirecREST v2."""

from __future__ import annotations

from typing import Literal

from hpcgate.wire import WireModel

PreflightCategory = Literal["account", "partition", "qos", "time_limit", "resources", "request"]


class JobPreflight(WireModel):
    """The scheduler's verdict on a job description, nothing submitted.

    ``valid``: the scheduler would accept it; then ``expected_start`` (epoch seconds,
    the scheduler's forecast), ``nodes``, ``partition`` and ``processors`` say where.
    Otherwise ``reason`` is the scheduler's (or the gateway's) message and
    ``category`` what it is about, when recognisable.
    """

    valid: bool
    reason: str | None = None
    category: PreflightCategory | None = None
    expected_start: int | None = None
    nodes: str | None = None
    partition: str | None = None
    processors: int | None = None
    message: str | None = None


class StepAccounting(WireModel):
    """One step of a job (``123.batch``, ``123.0``) as accounting recorded it."""

    id: str
    name: str | None = None
    state: str
    exit_code: int | None = None
    elapsed_seconds: int | None = None
    alloc_cpus: int | None = None
    total_cpu_seconds: float | None = None
    max_rss_bytes: int | None = None


class JobAccounting(WireModel):
    """A job's (or an array task's) accounting record, with derived figures.

    Times are epoch seconds, durations seconds. ``node_hours`` and ``cpu_hours`` are
    what the allocation cost (elapsed x allocated nodes / CPUs); ``cpu_efficiency`` is
    ``TotalCPU / (Elapsed x AllocCPUS)`` where Slurm recorded CPU time (None otherwise);
    ``max_rss_bytes`` is the largest ``MaxRSS`` over the steps.
    """

    job_id: str
    name: str | None = None
    user: str | None = None
    state: str
    exit_code: int | None = None
    account: str | None = None
    partition: str | None = None
    qos: str | None = None
    node_list: str | None = None
    submit: int | None = None
    start: int | None = None
    end: int | None = None
    queue_wait_seconds: int | None = None
    elapsed_seconds: int | None = None
    time_limit_minutes: int | None = None
    alloc_nodes: int | None = None
    alloc_cpus: int | None = None
    node_hours: float | None = None
    cpu_hours: float | None = None
    total_cpu_seconds: float | None = None
    cpu_efficiency: float | None = None
    max_rss_bytes: int | None = None
    max_rss_step: str | None = None
    requested_memory: str | None = None
    steps: list[StepAccounting] = []
    steps_truncated: bool = False


class JobAccountingResponse(WireModel):
    """``GET .../jobs/{id}/accounting``: one record per job (an array id: per task)."""

    jobs: list[JobAccounting]
