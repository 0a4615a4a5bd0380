"""A job's accounting from ``sacct``: what it cost and how well it used it.

One ``sacct -j <id>`` as the user, every field followed by ``FIELD_SEP`` (as the other
sacct calls), times as epoch seconds. Everything sacct prints comes through the user's
login shell: fields are parsed strictly (a value of the wrong shape is None, never an
error that could hide the rest) and the answer is bounded (``MAX_STEPS`` steps per job
in the answer; totals over all of them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from hpcgate.compute.jobs import TERMINAL_STATES
from hpcgate.compute.scheduler.reports import JobAccounting, StepAccounting
from hpcgate.compute.scheduler.slurm.fields import (
    FIELD_SEP,
    none_if_empty,
    parse_epoch,
    parse_exit_code,
    parse_int,
    parse_state,
    parse_time_limit,
    split_records,
)

ACCOUNTING_FIELDS: tuple[str, ...] = (
    "JobID",
    "JobName",
    "User",
    "State",
    "ExitCode",
    "Account",
    "Partition",
    "QOS",
    "NodeList",
    "Submit",
    "Start",
    "End",
    "ElapsedRaw",
    "TimelimitRaw",
    "NNodes",
    "AllocCPUS",
    "TotalCPU",
    "CPUTimeRAW",
    "MaxRSS",
    "ReqMem",
)

MAX_STEPS = 1000
"""Steps listed per job in an answer (a job may have many thousands)."""

_CPU_TIME = re.compile(r"(?:(\d{1,7})-)?(?:(\d{1,4}):)?(\d{1,4}):(\d{1,2})(?:\.(\d{1,6}))?")
_SIZE = re.compile(r"(\d{1,15}(?:\.\d{1,6})?)([KMGTP]?)")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def sacct_accounting_argv(sacct: str, job_id: str) -> list[str]:
    """The sacct command for ``job_id`` (already validated); without ``-S`` sacct
    searches all time when given ``-j``."""
    return [
        "env",
        "SLURM_TIME_FORMAT=%s",
        sacct,
        "-n",
        "-p",
        f"--delimiter={FIELD_SEP}",
        "-o",
        ",".join(ACCOUNTING_FIELDS),
        "-j",
        job_id,
    ]


def parse_cpu_time(text: str) -> float | None:
    """Seconds of sacct's ``TotalCPU`` (``MM:SS.mmm``, ``HH:MM:SS``, ``D-HH:MM:SS``)."""
    match = _CPU_TIME.fullmatch(text.strip())
    if not match:
        return None
    days, hours, minutes, seconds, fraction = match.groups()
    whole = ((int(days or 0) * 24 + int(hours or 0)) * 60 + int(minutes)) * 60 + int(seconds)
    return whole + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def parse_size(text: str) -> int | None:
    """Bytes of sacct's ``MaxRSS`` (``1234K``, ``1.5G``, ``0``); None if not recorded."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _hours(seconds: float | None, count: int | None) -> float | None:
    if seconds is None or count is None:
        return None
    return round(seconds * count / 3600, 6)


def _step(row: dict[str, str]) -> StepAccounting:
    state, _ = parse_state(row["State"])
    exit_code, _ = parse_exit_code(row["ExitCode"])
    return StepAccounting(
        id=row["JobID"].strip(),
        name=none_if_empty(row["JobName"]),
        state=state,
        exit_code=exit_code,
        elapsed_seconds=parse_int(row["ElapsedRaw"]),
        alloc_cpus=parse_int(row["AllocCPUS"]),
        total_cpu_seconds=parse_cpu_time(row["TotalCPU"]),
        max_rss_bytes=parse_size(row["MaxRSS"]),
    )


def _job(row: dict[str, str], steps: Sequence[StepAccounting]) -> JobAccounting:
    state, _ = parse_state(row["State"])
    ended = state in TERMINAL_STATES
    exit_code, _ = parse_exit_code(row["ExitCode"]) if ended else (None, None)
    submit, start = parse_epoch(row["Submit"]), parse_epoch(row["Start"])
    elapsed = parse_int(row["ElapsedRaw"])
    nodes, cpus = parse_int(row["NNodes"]), parse_int(row["AllocCPUS"])
    cpu_time = parse_int(row["CPUTimeRAW"])
    total_cpu = parse_cpu_time(row["TotalCPU"])
    step_cpu = [s.total_cpu_seconds for s in steps if s.total_cpu_seconds is not None]
    if not total_cpu and step_cpu:
        total_cpu = sum(step_cpu)
    efficiency = None
    if ended and total_cpu is not None and elapsed and cpus:
        efficiency = round(total_cpu / (elapsed * cpus), 4)
    rss = [(s.max_rss_bytes, s.id) for s in steps if s.max_rss_bytes is not None]
    own_rss = parse_size(row["MaxRSS"])
    if own_rss is not None:
        rss.append((own_rss, row["JobID"].strip()))
    max_rss, max_step = max(rss) if rss else (None, None)
    return JobAccounting(
        job_id=row["JobID"].strip(),
        name=row["JobName"],
        user=none_if_empty(row["User"]),
        state=state,
        exit_code=exit_code,
        account=none_if_empty(row["Account"]),
        partition=none_if_empty(row["Partition"]),
        qos=none_if_empty(row["QOS"]),
        node_list=(none_if_empty(row["NodeList"]) or "").replace("None assigned", "") or None,
        submit=submit,
        start=start,
        end=parse_epoch(row["End"]) if ended else None,
        queue_wait_seconds=start - submit if start and submit and start >= submit else None,
        elapsed_seconds=elapsed,
        time_limit_minutes=parse_time_limit(row["TimelimitRaw"]),
        alloc_nodes=nodes,
        alloc_cpus=cpus,
        node_hours=_hours(elapsed, nodes),
        cpu_hours=_hours(cpu_time, 1) if cpu_time is not None else _hours(elapsed, cpus),
        total_cpu_seconds=round(total_cpu, 3) if total_cpu is not None else None,
        cpu_efficiency=efficiency,
        max_rss_bytes=max_rss,
        max_rss_step=max_step if max_rss is not None else None,
        requested_memory=none_if_empty(row["ReqMem"]),
        steps=list(steps[:MAX_STEPS]),
        steps_truncated=len(steps) > MAX_STEPS,
    )


def parse_accounting(output: str) -> list[JobAccounting]:
    """Jobs (array tasks each on their own) with their steps, in sacct's order, from
    ``sacct -n -p --delimiter=FIELD_SEP -o ACCOUNTING_FIELDS``."""
    rows: dict[str, dict[str, str]] = {}
    steps: dict[str, list[StepAccounting]] = {}
    for fields in split_records(output, len(ACCOUNTING_FIELDS)):
        row = dict(zip(ACCOUNTING_FIELDS, fields, strict=True))
        job_id = row["JobID"].strip()
        parent, dot, _ = job_id.partition(".")
        if dot:
            steps.setdefault(parent, []).append(_step(row))
        else:
            rows[job_id] = row
    return [_job(row, steps.get(job_id, [])) for job_id, row in rows.items()]


def select_accounting(job_id: str, records: Sequence[JobAccounting]) -> list[JobAccounting]:
    """The records ``job_id`` names: the job, an array task, or an array's tasks
    (``123`` -> ``123_0``, ``123_1``...; a pending array's ``123_[0-3]`` too)."""
    exact = [record for record in records if record.job_id == job_id]
    if exact:
        return exact
    tasks = [record for record in records if record.job_id.split("_", 1)[0] == job_id]
    if tasks and "_" not in job_id:
        return tasks
    # Slurm also answers to an array task's own numeric id
    return list(records) if len(records) == 1 else []
