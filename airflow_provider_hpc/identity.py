"""Deterministic job names and idempotency keys for a task instance.

A task instance (dag, task, run, map index) submits jobs named
``<prefix>-<16 hex of its identity>-g<try group>``. The try group is the first try
number since the task was last cleared (``max_tries - retries + 1``, as Airflow itself
computes it): retries share it and so find the job an earlier try submitted, while
clearing the task starts a new group and a new job. Clearing *other* tasks of the run
does not change it. Without ``max_tries`` the DAG run's ``clear_number`` is used.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


def _digest(*parts: object) -> str:
    return hashlib.sha256("\0".join(str(part) for part in parts).encode()).hexdigest()


def try_group(context: Any) -> int:
    """First try number since the task instance was last cleared."""
    ti = context["ti"]
    task = context.get("task") or getattr(ti, "task", None)
    max_tries, retries = getattr(ti, "max_tries", None), getattr(task, "retries", None)
    if isinstance(max_tries, int) and isinstance(retries, int):
        return max(1, max_tries - retries + 1)
    return int(getattr(context.get("dag_run"), "clear_number", 0) or 0)


@dataclass(frozen=True)
class TaskIdentity:
    dag_id: str
    task_id: str
    run_id: str
    map_index: int = -1
    generation: int = 0

    @classmethod
    def from_context(cls, context: Any) -> TaskIdentity:
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        return cls(
            dag_id=ti.dag_id,
            task_id=ti.task_id,
            run_id=ti.run_id,
            map_index=-1 if map_index is None else int(map_index),
            generation=try_group(context),
        )

    @property
    def token(self) -> str:
        """16 hex characters identifying the task instance (not the try)."""
        return _digest(self.dag_id, self.task_id, self.run_id, self.map_index)[:16]

    def job_name(self, prefix: str | None = None) -> str:
        """Slurm job name: ``<prefix>-<token>-g<generation>`` (prefix sanitised, max 64 chars)."""
        clean = _UNSAFE.sub("_", prefix or "af").strip("_")[:64] or "af"
        return f"{clean}-{self.token}-g{self.generation}"

    def idempotency_key(self, after: str | None = None) -> str:
        """Key for ``Idempotency-Key``: same for every try of this group; ``after`` is the
        failed job a resubmission replaces (so that it is not answered with that job)."""
        return "af-" + _digest(self.token, self.generation, after or "")[:40]

    def as_dict(self) -> dict[str, Any]:
        return {
            "dag_id": self.dag_id,
            "task_id": self.task_id,
            "run_id": self.run_id,
            "map_index": self.map_index,
            "generation": self.generation,
        }
