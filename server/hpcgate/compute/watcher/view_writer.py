"""How rounds become views and events: the part of the job watcher that writes.

A round's result (``RoundResult``: this replica's own round, or the leading replica's)
is applied to a scope's views; a state change becomes a ``JobEvent`` delivered to the
subscriptions that may see it. ``JobWatcher`` inherits this; it is apart so that the
rules of a view's life (new, changed, terminal, final) read in one place.
"""

from __future__ import annotations

import time

from hpcgate.compute.jobs import is_final, top_id
from hpcgate.compute.scheduler.models import Job
from hpcgate.compute.scheduler.visibility import JobVisibility, may_see
from hpcgate.compute.watcher.results import RoundResult
from hpcgate.compute.watcher.scope import Scope
from hpcgate.compute.watcher.views import JobEvent, JobView, signature
from hpcgate.config import WatcherSettings
from hpcgate.operations.metrics import Metrics


class ViewWriter:
    """Mixin of ``JobWatcher``: applies observations to views and publishes events."""

    system: str
    settings: WatcherSettings
    visibility: JobVisibility
    _metrics: Metrics | None
    _seq: int

    def _may_see(self, user: str, view: JobView) -> bool:
        return may_see(user, view.owner, self.visibility)

    def _next_seq(self) -> int:
        self._seq = max(self._seq + 1, int(time.time() * 1000))
        return self._seq

    def _update(
        self,
        scope: Scope,
        view_id: str,
        job: Job,
        observed: float,
        *,
        settled: bool,
        accounted: bool = True,
    ) -> JobView:
        """Record an observation; publish an event when the state changed. An ended
        job is final once accounting settled it, or ``settle_seconds`` after it
        ended if accounting answered (``accounted``) without settling it."""
        view = scope.views.get(view_id)
        if view is None:
            event = JobEvent(self._next_seq(), job)
            view = scope.views[view_id] = JobView(
                view_id, job, event, observed, self.settings.history
            )
            self._publish(scope, view, event)
        else:
            view.observed = max(view.observed, observed)
            sig = signature(job)
            if view.final and sig == view.sig:
                return view  # ended and settled: keep the accounted record
            view.job = job
            if sig != view.sig:
                view.sig = sig
                event = JobEvent(self._next_seq(), job)
                view.history.append(event)
                view.final = False
                self._publish(scope, view, event)
        if view.terminal:
            view.terminal_at = view.terminal_at or observed
            waited = observed - view.terminal_at
            view.final = (settled and is_final(job)) or (
                accounted and waited >= self.settings.settle_seconds
            )
        else:
            view.terminal_at = None
            view.final = False
        return view

    def _publish(self, scope: Scope, view: JobView, event: JobEvent) -> None:
        if self._metrics is not None:
            self._metrics.watcher_events.labels(self.system).inc()
        owner = view.owner
        for sub in scope.subs_by_view.get(view.view_id, ()):
            if self._may_see(sub.user, view):
                sub.deliver(view.view_id, event)
        if owner is not None and view.view_id == top_id(view.view_id):
            for sub in scope.subs_all.get(owner, ()):
                sub.deliver(view.view_id, event)

    def _apply(self, scope: Scope, result: RoundResult, *, observed: float, started: float) -> bool:
        """Write a round's result into ``scope``'s views (only ids someone here watches);
        True if anything changed."""
        explicit = scope.explicit_ids(observed)
        followed = scope.follows_all()
        changed = False
        for view_id, job in result.jobs.items():
            if view_id not in scope.views and view_id not in explicit and job.user not in followed:
                continue  # another replica's interest
            before = scope.views.get(view_id)
            old_seq = before.seq if before is not None else None
            view = self._update(
                scope,
                view_id,
                job,
                observed,
                settled=view_id in result.settled,
                accounted=view_id not in result.unaccounted,
            )
            changed = changed or view.seq != old_seq
        for view_id in result.nowhere:
            before = scope.views.get(view_id)
            if before is not None:
                before.observed = max(before.observed, observed)  # nothing newer known
            elif view_id in explicit:
                # neither the controller nor accounting knows it: stop watching it
                scope.missing[view_id] = started
                for by_id in scope.leases.values():
                    by_id.pop(view_id, None)
        for view_id in result.unaccounted.difference(result.jobs):
            if view_id in explicit and view_id not in scope.views:
                scope.unresolved[view_id] = started
        return changed
