"""What a round makes of the scheduler's records: which records each watched id
names, when to ask accounting, and when an answer is settled. Scheduler-neutral:
the records come through the ``Scheduler`` interface, the rules from ``jobs``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hpcgate.compute.jobs import is_final, is_task_of, is_terminal, job_sort_key
from hpcgate.compute.scheduler.models import Job
from hpcgate.compute.watcher.scope import Scope

DropStale = Callable[[Sequence[Job], Sequence[Job]], list[Job]]
"""``Scheduler.drop_stale``: accounting records the controller's do not supersede."""


def entries(view_id: str, records: dict[str, Job], raw_ids: dict[str, str]) -> list[Job]:
    """The controller's records that ``view_id`` names: the job, an array's tasks, or
    the array task whose own numeric id it is."""
    exact = records.get(view_id)
    if exact is not None:
        return [exact]
    tasks = [job for job_id, job in records.items() if is_task_of(job_id, view_id)]
    if tasks:
        return sorted(tasks, key=job_sort_key)
    canonical = raw_ids.get(view_id)
    return [records[canonical]] if canonical is not None else []


def wants_accounting(scope: Scope, view_id: str, found: Sequence[Job]) -> bool:
    """Ask accounting about ``view_id``: not final yet, and ended (some of its
    records), vanished from the controller or never seen by a round."""
    view = scope.views.get(view_id)
    if view is not None and view.final:
        return False
    if found:
        return any(is_terminal(job) for job in found)
    # vanished from the controller, or never seen by a round: ask accounting
    return True


def accounted_for(
    view_id: str, found: Sequence[Job], accounted: Sequence[Job], drop_stale: DropStale
) -> list[Job]:
    """Accounting records of ``view_id`` (or of the records the controller showed for it)."""
    names = {job.job_id for job in found}
    mine = [
        job
        for job in accounted
        if job.job_id in names or job.job_id == view_id or is_task_of(job.job_id, view_id)
    ]
    return drop_stale(found, mine)


def settled(found: Sequence[Job], accounted: Sequence[Job]) -> bool:
    """Accounting holds every record the controller showed, all in final states."""
    if found and {job.job_id for job in found} - {job.job_id for job in accounted}:
        return False
    return bool(accounted) and all(is_final(job) for job in accounted)
