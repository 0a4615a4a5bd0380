"""What a round makes of the scheduler's records: which records each watched id
names, when to ask accounting, and when an answer is settled. Scheduler-neutral:
the records come through the ``Scheduler`` interface, the rules from ``jobs``.

A failing accounting command fails only its part of the round (``poll``): the
controller's records are still answered, and the ids accounting should have
settled are marked ``unaccounted`` and asked again by later rounds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from hpcgate import errors
from hpcgate.cluster.remote import CommandRunner
from hpcgate.compute.jobs import (
    as_answer,
    id_sort_key,
    is_final,
    is_task_of,
    is_terminal,
    job_sort_key,
    merge_records,
    records_named,
    top_id,
)
from hpcgate.compute.scheduler.base import Scheduler
from hpcgate.compute.scheduler.models import Job
from hpcgate.compute.watcher.results import RoundResult
from hpcgate.compute.watcher.scope import Scope
from hpcgate.config import WatcherSettings

log = logging.getLogger(__name__)

ACCOUNTING_DOWN = "job accounting (slurmdbd) is not reachable"
ACCOUNTING_LATER = "job accounting is asked again later"

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


def wants_accounting(
    scope: Scope, view_id: str, found: Sequence[Job], *, remote: bool = False
) -> bool:
    """Ask accounting about ``view_id``: not final yet (here, or at a replica that
    asks for it: ``remote``), and ended (some of its records), vanished from the
    controller or never seen by a round."""
    view = scope.views.get(view_id)
    if view is not None and view.final and not remote:
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


@dataclass(frozen=True)
class Selection:
    """What a round asks about: watched ids and users whose jobs are all followed."""

    ids: list[str]
    users: list[str]
    """Listed with ``squeue -u`` (then ``ids`` are looked for among their jobs)."""
    followed: Collection[str] = ()
    """Users all of whose jobs are watched (a view for each)."""
    remote_ids: Collection[str] = ()
    """Ids another replica still waits on (asked of accounting whatever our view)."""
    accounting: bool = True
    """False while accounting backs off after failures: not asked this round."""


def select(scope: Scope, now: float, settings: WatcherSettings) -> Selection:
    """This round's ids and users: this replica's interest and the other replicas'."""
    own = scope.poll_ids(now)
    remote = scope.remote_ids.difference(own)
    ids = scope.window(sorted({*own, *remote}, key=id_sort_key), settings.max_batch)
    followed = scope.follows_all() | scope.remote_follows
    users = sorted(scope.interested_users(now) | scope.remote_users) if followed else []
    return Selection(
        ids,
        users,
        followed=followed,
        remote_ids=remote,
        accounting=now >= scope.accounting_retry_at,
    )


def count_accounting(
    scope: Scope, result: RoundResult, now: float, settings: WatcherSettings, system: str
) -> None:
    """After a failed accounting command, accounting is asked again ``min_interval``
    later, doubling up to four of them, while the controller's rounds keep their pace.
    Logged once when it fails and once when it answers again."""
    if not result.accounting_tried:
        return
    if result.accounting_error is None:
        if scope.accounting_failures:
            log.info(
                "watcher: job accounting answers again",
                extra={"system": system, "failed_rounds": scope.accounting_failures},
            )
        scope.accounting_failures = 0
        scope.accounting_retry_at = -math.inf
        return
    scope.accounting_failures += 1
    step = settings.min_interval
    scope.accounting_retry_at = now + min(
        step * 2 ** min(scope.accounting_failures - 1, 10), 4 * step
    )
    if scope.accounting_failures == 1:
        log.warning(
            "watcher: job accounting failed; answering from the controller alone",
            extra={
                "system": system,
                "scope": scope.user,
                "reason": result.accounting_detail,
                "jobs": len(result.unaccounted),
            },
        )


async def poll(
    scheduler: Scheduler,
    runner: CommandRunner,
    scope: Scope,
    selection: Selection,
    limit: int,
) -> tuple[RoundResult, bool]:
    """One round as ``runner``'s identity: the controller, then accounting for
    ended, vanished or never-seen jobs. Returns the result and whether anything was
    asked. A failing controller command raises (the round failed); a failing
    accounting command only marks the ids it should have answered ``unaccounted``."""
    result = RoundResult(scope.user)
    if selection.users:
        listed = await scheduler.active_jobs(runner, users=selection.users)
    elif selection.ids:
        listed = await scheduler.active_jobs(runner, job_ids=selection.ids)
    else:
        return result, False
    records: dict[str, Job] = {}
    raw_ids: dict[str, str] = {}
    for item in listed:
        records[item.job.job_id] = item.job
        raw_ids.setdefault(item.raw_id, item.job.job_id)
    view_ids = set(selection.ids)
    followed = set(selection.followed)
    if followed:
        view_ids.update(top_id(job_id) for job_id, job in records.items() if job.user in followed)
    found_by_id = {view_id: entries(view_id, records, raw_ids) for view_id in view_ids}
    remote = set(selection.remote_ids)
    accounting = [
        view_id
        for view_id in sorted(view_ids, key=id_sort_key)
        if wants_accounting(scope, view_id, found_by_id[view_id], remote=view_id in remote)
    ][:limit]
    accounted: list[Job] = []
    if accounting and not selection.accounting:
        result.accounting_error = ACCOUNTING_LATER
    elif accounting:
        result.accounting_tried = True
        try:
            accounted = await scheduler.accounted_jobs(runner, accounting)
        except errors.ApiError as exc:
            result.accounting_error = ACCOUNTING_DOWN
            result.accounting_detail = exc.message
    asked = set(accounting) if result.accounting_error is None else set()
    if result.accounting_error is not None:
        result.unaccounted.update(accounting)
    for view_id in view_ids:
        found = found_by_id[view_id]
        mine = (
            accounted_for(view_id, found, accounted, scheduler.drop_stale)
            if view_id in asked
            else []
        )
        merged = records_named(view_id, merge_records(found, mine)) if mine else found
        if not merged:
            if view_id in asked:
                result.nowhere.add(view_id)
            continue
        result.jobs[view_id] = as_answer(view_id, merged)
        if mine and settled(found, mine):
            result.settled.add(view_id)
    return result, True
