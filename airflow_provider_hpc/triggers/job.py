"""``HpcJobTrigger``: wait for a job to end, in the triggerer, without holding a worker slot."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_hpc.exceptions import HpcError, HpcNotFoundError
from airflow_provider_hpc.hooks.hpc import ErrorBudget, HpcHook, RetryPolicy
from airflow_provider_hpc.hooks.models import JobSummary
from airflow_provider_hpc.triggers.events import UNSUPPORTED, JobEventHub, get_hub

#: Event ``status`` values. Exactly one event is yielded per run.
SUCCESS, FAILED, TIMEOUT, ERROR = "success", "failed", "timeout", "error"

_MAX_ERROR_BACKOFF = 300.0
_ON_KILL_TIMEOUT = 20.0

#: Slurm's words for a job it requeued and then held instead of running it again (the
#: state ``REQUEUE_HOLD``, or a held job's reason): it waits for a human, not the machine.
_GAVE_UP_REASONS = ("JobHoldMaxRequeue", "launch failed requeued held")


def requeue_gave_up(state: str | None, reason: str | None) -> bool:
    """The job was requeued and Slurm gave up on it (held after too many requeues or a
    failed launch): it will not run again on its own."""
    if state == "REQUEUE_HOLD":
        return True
    return state in ("PENDING", "REQUEUED") and any(
        word.lower() in (reason or "").lower() for word in _GAVE_UP_REASONS
    )


class HpcJobTrigger(BaseTrigger):
    """Fire once when ``job_id`` on ``system`` ends, the deadline passes, or errors persist.

    Event payload: ``{"status": "success"|"failed"|"timeout"|"error", "job_id", "system",
    "state", "exit_code", "state_reason", "message"}``.

    Waiting is shared: all triggers of a triggerer process on the same connection and
    system follow one job-event stream (:mod:`.events`); on servers without one they
    poll with a GET every ``poll_interval``.

    :param deadline: absolute UNIX time after which a ``timeout`` event fires (survives
        triggerer restarts); None waits forever.
    :param poll_interval: seconds between status requests when polling; with the event
        stream, how often the trigger re-checks its deadline (and GETs a job the stream
        does not cover).
    :param cancel_on_kill: cancel the job when a user kills the deferred task (clear, mark
        failed/success). Never on triggerer restart or in ``cleanup()``.
    :param not_found_until: absolute UNIX time until which 404 counts as "not listed yet".
    :param error_window: seconds of consecutive transient errors tolerated.
    :param end_on_requeue_hold: also fire (``failed``) when Slurm gave up requeueing the
        job (:func:`requeue_gave_up`), which is otherwise a pending state that never ends.
    """

    def __init__(
        self,
        *,
        job_id: str,
        system: str,
        hpc_conn_id: str = HpcHook.default_conn_name,
        deadline: float | None = None,
        poll_interval: float = 30.0,
        cancel_on_kill: bool = True,
        not_found_until: float | None = None,
        error_window: float = 600.0,
        end_on_requeue_hold: bool = False,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # BaseTrigger is unannotated
        self.job_id = str(job_id)
        self.system = system
        self.hpc_conn_id = hpc_conn_id
        self.deadline = deadline
        self.poll_interval = float(poll_interval)
        self.cancel_on_kill = cancel_on_kill
        self.not_found_until = not_found_until
        self.error_window = float(error_window)
        self.end_on_requeue_hold = end_on_requeue_hold
        self._hub: JobEventHub | None = None
        self._polling = False

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_id": self.job_id,
                "system": self.system,
                "hpc_conn_id": self.hpc_conn_id,
                "deadline": self.deadline,
                "poll_interval": self.poll_interval,
                "cancel_on_kill": self.cancel_on_kill,
                "not_found_until": self.not_found_until,
                "error_window": self.error_window,
                "end_on_requeue_hold": self.end_on_requeue_hold,
            },
        )

    def _get_hook(self, retry: RetryPolicy | None = None) -> HpcHook:
        return HpcHook(self.hpc_conn_id, system=self.system, retry=retry)

    async def _next_status(
        self, hook: HpcHook, previous: JobSummary | None, wait: float
    ) -> JobSummary:
        """Wait up to ``wait`` seconds for news about the job and return its status.

        The one place that decides *how* to wait: through the process-wide job-event
        stream when the server has one, else a sleep and a GET.
        """
        started = time.monotonic()
        if self._hub is None and not self._polling:
            self._hub = await get_hub(hook, self.system)
            if self._hub is None:
                self._polling = True
            else:
                self._hub.register(self.job_id)
        if self._hub is not None:
            timeout = wait if previous is not None else max(wait, self.poll_interval)
            if self.deadline is not None:
                timeout = min(timeout, self.deadline - time.time())
            summary = await self._hub.next_status(self.job_id, previous, timeout)
            if summary is not UNSUPPORTED:
                return summary
            self._release_hub()
            self._polling = True
            wait -= time.monotonic() - started
        if wait > 0:
            await asyncio.sleep(wait)
        return await hook.aget_job_status(self.job_id, system=self.system)

    def _release_hub(self) -> None:
        if self._hub is not None:
            self._hub.release(self.job_id)
            self._hub = None

    def _event(self, status: str, summary: JobSummary | None, message: str = "") -> TriggerEvent:
        return TriggerEvent(
            {
                "status": status,
                "job_id": self.job_id,
                "system": self.system,
                "state": summary.state if summary else None,
                "exit_code": summary.exit_code if summary else None,
                "state_reason": summary.state_reason if summary else None,
                "message": message,
            }
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self._get_hook()
        budget = ErrorBudget(window=self.error_window, not_found_until=self.not_found_until or 0.0)
        last: JobSummary | None = None
        wait, errors = 0.0, 0
        try:
            while True:
                try:
                    summary = await self._next_status(hook, last, wait)
                except HpcError as exc:
                    if not budget.allows(exc, time.time()):
                        self.log.error("Giving up on job %s: %s", self.job_id, exc)
                        yield self._event(ERROR, last, str(exc))
                        return
                    errors += 1
                    step = min(_MAX_ERROR_BACKOFF, self.poll_interval * 2 ** min(errors, 8))
                    wait = step / 2 + random.uniform(0, step / 2)  # noqa: S311
                    self.log.warning(
                        "Job %s status unavailable (%s); retry in %.0f s", self.job_id, exc, wait
                    )
                except Exception as exc:  # never raise out of run(): report it once
                    self.log.exception("Unexpected error while waiting for job %s", self.job_id)
                    yield self._event(ERROR, last, f"{type(exc).__name__}: {exc}")
                    return
                else:
                    budget.reset()
                    errors = 0
                    if last is None or summary.state != last.state:
                        self.log.info(
                            "Job %s on %s is %s", self.job_id, self.system, summary.describe()
                        )
                    last = summary
                    if summary.terminal:
                        yield self._event(SUCCESS if summary.succeeded else FAILED, summary)
                        return
                    if self.end_on_requeue_hold and requeue_gave_up(
                        summary.state, summary.state_reason
                    ):
                        yield self._event(FAILED, summary, "Slurm gave up requeueing the job")
                        return
                    wait = self.poll_interval
                if self.deadline is not None:
                    remaining = self.deadline - time.time()
                    if remaining <= 0:
                        state = last.state if last else "unknown"
                        message = f"job {self.job_id} still {state} at the deadline"
                        yield self._event(TIMEOUT, last, message)
                        return
                    wait = min(wait, remaining)
        finally:
            self._release_hub()
            await hook.aclose()

    async def on_kill(self) -> None:
        """The user killed the deferred task: cancel the job (if this trigger owns it)."""
        if not self.cancel_on_kill:
            return
        hook = self._get_hook(RetryPolicy(max_retries=2, backoff_max=2.0, retry_after_max=5.0))
        try:
            await asyncio.wait_for(
                hook.acancel_job(self.job_id, system=self.system), _ON_KILL_TIMEOUT
            )
            self.log.info("Cancelled job %s on %s", self.job_id, self.system)
        except HpcNotFoundError:
            self.log.info("Job %s is gone already; nothing to cancel", self.job_id)
        except (HpcError, TimeoutError) as exc:
            self.log.warning("Could not cancel job %s: %r", self.job_id, exc)
        finally:
            await hook.aclose()

    async def cleanup(self) -> None:
        """Runs on every exit, including triggerer restarts: never cancels the job."""
        self._release_hub()
