"""What the submit operator does when a job ends: finish, resubmit, wait on, or fail.

Pure rules (no I/O), so that they are tested on their own and read in one place:

* ``COMPLETED`` finishes the task.
* A machine-caused end (``NODE_FAIL``, ``BOOT_FAIL``, ``PREEMPTED``, or a requeue Slurm
  gave up on: ``REQUEUE_HOLD`` / held with ``JobHoldMaxRequeue``) is resubmitted with the
  same resources, up to ``max_resubmits`` per task instance and try group; this spends
  none of the task's Airflow retries.
* ``OUT_OF_MEMORY`` and ``TIMEOUT`` are resubmitted only when their policy is set:
  memory (or the time limit) times a factor, up to a cap; a job already at the cap fails.
* Anything else (``FAILED``, ``CANCELLED``, ``DEADLINE``...) fails at once.

:class:`JobLedger` is the task's list of jobs (id, state, reason, resources, accounting):
what the return value shows, what the task state store and the trigger's ``kwargs``
carry across worker restarts and deferrals.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from airflow_provider_hpc.hooks.models import format_time_limit
from airflow_provider_hpc.identity import TaskIdentity
from airflow_provider_hpc.triggers.job import requeue_gave_up

#: Ended by the machine, not the code: resubmitting the same job is the remedy.
MACHINE_FAILURE_STATES = frozenset({"NODE_FAIL", "BOOT_FAIL", "PREEMPTED"})
#: Ended states after which Slurm itself may requeue the job (same id, PENDING again).
REQUEUEABLE_STATES = frozenset({"NODE_FAIL", "PREEMPTED"})

_MEMORY = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?[nc]?\s*", re.IGNORECASE)
_MIB_PER_UNIT = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024, "": 1}


class Action(StrEnum):
    COMPLETE = "complete"
    RESUBMIT = "resubmit"
    FAIL = "fail"


@dataclass(frozen=True)
class Decision:
    """What to do with an ended job; ``resources`` are the next job's changed resources."""

    action: Action
    reason: str
    resources: dict[str, Any] | None = None


# ---------------------------------------------------------------------- resources


def memory_mib(text: str | int | None) -> int | None:
    """Slurm ``--mem`` text as MiB (``"4G"`` → 4096, ``"500"`` → 500; MB is Slurm's default
    unit; sacct's ``ReqMem`` per-node/cpu suffix ``n``/``c`` is ignored); None if unknown."""
    if text is None:
        return None
    match = _MEMORY.fullmatch(str(text))
    if not match:
        return None
    return max(1, math.ceil(float(match.group(1)) * _MIB_PER_UNIT[match.group(2).upper()]))


def format_memory(mib: int) -> str:
    """MiB as Slurm ``--mem`` text: whole GiB as ``"8G"``, else ``"1536M"``."""
    return f"{mib // 1024}G" if mib % 1024 == 0 else f"{mib}M"


def time_limit_seconds(value: timedelta | int | str | None) -> int | None:
    """A time limit as seconds: ``timedelta``, minutes (int) or Slurm text ("MM",
    "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM", "D-HH:MM:SS"); None if unknown/unlimited."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return int(value.total_seconds())
    if isinstance(value, int):
        return value * 60
    text = str(value).strip()
    days, _, rest = text.rpartition("-")
    if days and not days.isdigit():
        return None
    parts = rest.split(":")
    if not all(part.isdigit() for part in parts) or len(parts) > 3:
        return None
    numbers = [int(part) for part in parts]
    if days:  # D-HH, D-HH:MM, D-HH:MM:SS
        numbers += [0] * (3 - len(numbers))
        hours, minutes, seconds = numbers
    elif len(numbers) == 1:
        hours, minutes, seconds = 0, numbers[0], 0
    elif len(numbers) == 2:
        hours, (minutes, seconds) = 0, numbers
    else:
        hours, minutes, seconds = numbers
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def _scaled(current: int, factor: float, cap: int | None, step: int = 1) -> int | None:
    """``current * factor`` rounded up to ``step``, at most ``cap``; None when that is
    no increase (already at the cap)."""
    wanted = math.ceil(current * factor / step) * step
    if cap is not None:
        wanted = min(wanted, cap)
    return wanted if wanted > current else None


# ---------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class ResubmitPolicy:
    """When and how a task resubmits its job (operator arguments of the same names).

    :param max_resubmits: resubmissions per task instance and try group, for all causes.
    :param oom_memory_factor: resubmit ``OUT_OF_MEMORY`` with memory times this (opt-in).
    :param oom_max_memory: the memory cap (Slurm text, e.g. ``"64G"``).
    :param timeout_factor: resubmit ``TIMEOUT`` with the time limit times this (opt-in).
    :param timeout_max_time_limit: the time-limit cap (``timedelta``, minutes or Slurm text).
    """

    max_resubmits: int = 2
    oom_memory_factor: float | None = None
    oom_max_memory: str | None = None
    timeout_factor: float | None = None
    timeout_max_time_limit: timedelta | int | str | None = None

    def __post_init__(self) -> None:
        if self.max_resubmits < 0:
            raise ValueError("max_resubmits must be >= 0")
        for name in ("oom_memory_factor", "timeout_factor"):
            factor = getattr(self, name)
            if factor is not None and factor <= 1:
                raise ValueError(f"{name} must be > 1")
        if self.oom_max_memory is not None and memory_mib(self.oom_max_memory) is None:
            raise ValueError(f"oom_max_memory {self.oom_max_memory!r} is not Slurm memory text")
        cap = self.timeout_max_time_limit
        if cap is not None and time_limit_seconds(cap) is None:
            raise ValueError(f"timeout_max_time_limit {cap!r} is not a time limit")

    def decide(
        self,
        state: str,
        reason: str | None,
        *,
        resubmits: int,
        memory: str | None = None,
        time_limit: timedelta | int | str | None = None,
    ) -> Decision:
        """The action for a job that ended in ``state`` (``reason``: Slurm's), given the
        resubmissions made so far and the job's memory and time limit (None: unknown)."""
        if state == "COMPLETED":
            return Decision(Action.COMPLETE, "the job completed")
        if state in MACHINE_FAILURE_STATES or requeue_gave_up(state, reason):
            cause = f"{state} ({reason})" if reason else state
            return self._resubmit(resubmits, f"{cause} is a machine failure, not the job's")
        if state == "OUT_OF_MEMORY" and self.oom_memory_factor:
            return self._more_memory(resubmits, memory)
        if state == "TIMEOUT" and self.timeout_factor:
            return self._more_time(resubmits, time_limit)
        detail = f" ({reason})" if reason and reason != "None" else ""
        return Decision(Action.FAIL, f"the job ended {state}{detail}")

    def _resubmit(
        self, resubmits: int, why: str, resources: dict[str, Any] | None = None
    ) -> Decision:
        if resubmits >= self.max_resubmits:
            return Decision(
                Action.FAIL,
                f"{why}, but the task resubmitted {resubmits} time(s) already "
                f"(max_resubmits={self.max_resubmits})",
            )
        return Decision(Action.RESUBMIT, why, resources)

    def _more_memory(self, resubmits: int, memory: str | None) -> Decision:
        current = memory_mib(memory)
        if current is None:
            return Decision(
                Action.FAIL,
                "the job ran OUT_OF_MEMORY and its memory is unknown: set memory= so that "
                "oom_memory_factor can raise it",
            )
        cap = memory_mib(self.oom_max_memory)
        assert self.oom_memory_factor is not None
        wanted = _scaled(current, self.oom_memory_factor, cap)
        if wanted is None:
            return Decision(
                Action.FAIL,
                f"the job ran OUT_OF_MEMORY at {memory}, already the cap (oom_max_memory)",
            )
        new = format_memory(wanted)
        return self._resubmit(
            resubmits, f"the job ran OUT_OF_MEMORY with {memory}: {new} next", {"memory": new}
        )

    def _more_time(self, resubmits: int, time_limit: timedelta | int | str | None) -> Decision:
        current = time_limit_seconds(time_limit)
        if current is None:
            return Decision(
                Action.FAIL,
                "the job hit its TIMEOUT and its time limit is unknown: set time_limit= so "
                "that timeout_factor can raise it",
            )
        cap = time_limit_seconds(self.timeout_max_time_limit)
        assert self.timeout_factor is not None
        wanted = _scaled(current, self.timeout_factor, cap, step=60)  # Slurm: whole minutes
        if wanted is None:
            return Decision(
                Action.FAIL,
                f"the job hit its TIMEOUT at {format_time_limit(timedelta(seconds=current))}, "
                "already the cap (timeout_max_time_limit)",
            )
        new = format_time_limit(timedelta(seconds=wanted))
        old = format_time_limit(timedelta(seconds=current))
        return self._resubmit(
            resubmits, f"the job hit its TIMEOUT at {old}: {new} next", {"time_limit": new}
        )


# ---------------------------------------------------------------------- the ledger


@dataclass
class JobLedger:
    """Every job the task made in this try group, oldest first, as plain JSON.

    Entry: ``{"job_id", "state", "exit_code", "reason", "resources", "action",
    "accounting"}``; ``resources`` are the ones the operator changed (memory, time limit);
    ``action`` what the task did when the job ended (``complete`` / ``resubmit`` /
    ``fail``, None while it runs).
    """

    generation: int
    jobs: list[dict[str, Any]]

    @classmethod
    def from_dict(cls, value: Any, generation: int) -> JobLedger:
        """A stored or carried ledger of the same try group, else an empty one."""
        if isinstance(value, dict) and value.get("generation") == generation:
            jobs = value.get("jobs")
            if isinstance(jobs, list) and all(isinstance(job, dict) for job in jobs):
                return cls(generation, [dict(job) for job in jobs])
        return cls(generation, [])

    def to_dict(self) -> dict[str, Any]:
        return {"generation": self.generation, "jobs": [dict(job) for job in self.jobs]}

    @property
    def resubmits(self) -> int:
        return sum(1 for job in self.jobs if job.get("action") == Action.RESUBMIT.value)

    @property
    def next_resources(self) -> dict[str, Any]:
        """The resources a new job of this task gets: those the last job was resubmitted
        with, else the last job's own (an Airflow retry keeps raised memory or time)."""
        if not self.jobs:
            return {}
        last = self.jobs[-1]
        if last.get("action") == Action.RESUBMIT.value and last.get("next_resources"):
            return dict(last["next_resources"])
        return dict(last.get("resources") or {})

    def entry(self, job_id: str) -> dict[str, Any] | None:
        return next((job for job in self.jobs if job.get("job_id") == job_id), None)

    def attach(self, job_id: str, resources: dict[str, Any]) -> dict[str, Any]:
        """The entry of ``job_id``, added (with the resources it runs with) if new."""
        found = self.entry(job_id)
        if found is None:
            found = {
                "job_id": job_id,
                "state": None,
                "exit_code": None,
                "reason": None,
                "resources": dict(resources),
                "action": None,
                "accounting": None,
            }
            self.jobs.append(found)
        return found


# ---------------------------------------------------------------------- task state store

#: task_state_store key of the task's ledger (survives worker crashes and retries).
LEDGER_KEY = "hpc_jobs"


def load_ledger(context: Any, identity: TaskIdentity) -> JobLedger:
    """The ledger of this try group from the task state store (empty if none)."""
    store = context.get("task_state_store")
    return JobLedger.from_dict(
        store.get(LEDGER_KEY) if store is not None else None, identity.generation
    )


def save_ledger(context: Any, ledger: JobLedger) -> None:
    store = context.get("task_state_store")
    if store is not None:
        store.set(LEDGER_KEY, ledger.to_dict())
