"""Waiting for the submitted job: deferred in the triggerer, or polled in the worker.

A mixin of :class:`~.job.HpcSubmitJobOperator`: :meth:`JobWaiting._follow` waits until
the job ends (or Slurm gives up requeueing it) and hands over to ``_ended``
(:mod:`.ending`); a job that outlives ``job_timeout`` is cancelled if asked.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from airflow_provider_hpc.exceptions import HpcJobError
from airflow_provider_hpc.hooks.models import JobSummary
from airflow_provider_hpc.operators.output import OutputFollower
from airflow_provider_hpc.triggers.job import HpcJobTrigger, requeue_gave_up

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.triggers.base import BaseTrigger

    from airflow_provider_hpc.hooks.hpc import HpcHook
    from airflow_provider_hpc.operators.resubmission import JobLedger, ResubmitPolicy

DEFAULT_JOB_TIMEOUT = timedelta(days=7)


def _seconds(value: timedelta | float | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class JobWaiting:
    """For :class:`~.job.HpcSubmitJobOperator`: :meth:`_follow` and the job's deadline."""

    if TYPE_CHECKING:
        hook: HpcHook
        log: Any
        hpc_conn_id: str
        deferrable: bool
        poll_interval: float
        job_timeout: timedelta | float | None
        execution_timeout: timedelta | None
        cancel_on_kill: bool
        cancel_on_timeout: bool
        _ledger: JobLedger | None

        @property
        def policy(self) -> ResubmitPolicy: ...

        def defer(
            self,
            *,
            trigger: BaseTrigger,
            method_name: str,
            kwargs: dict[str, Any] | None = None,
            timeout: timedelta | int | float | None = None,
        ) -> NoReturn: ...

        def _ended(
            self,
            context: Context,
            system: str,
            summary: JobSummary,
            ledger: JobLedger,
            follower: OutputFollower | None = None,
        ) -> dict[str, Any]: ...

        def _cancel_quietly(self, system: str, job_id: str) -> None: ...

    def _follow(
        self,
        context: Context,
        system: str,
        job_id: str,
        summary: JobSummary | None,
        ledger: JobLedger,
    ) -> dict[str, Any]:
        """Wait for the job (deferred: in the triggerer), then :meth:`_ended`."""
        self._ledger = ledger
        if summary is not None and (summary.terminal or self._gave_up(summary)):
            return self._ended(context, system, summary, ledger)
        timeout = self._timeout_seconds()
        if self.deferrable:
            self.defer(
                trigger=HpcJobTrigger(
                    job_id=job_id,
                    system=system,
                    hpc_conn_id=self.hpc_conn_id,
                    deadline=time.time() + timeout,
                    poll_interval=self.poll_interval,
                    cancel_on_kill=self.cancel_on_kill,
                    not_found_until=time.time() + 120,
                    end_on_requeue_hold=self.policy.max_resubmits > 0,
                ),
                method_name="execute_complete",
                kwargs={"ledger": ledger.to_dict()},
            )
        follower = OutputFollower(self.hook, system, job_id, self.log)

        def on_poll(status: JobSummary) -> None:
            follower.on_poll(status)
            if self._gave_up(status):
                raise _RequeueHeld(status)

        try:
            summary = self.hook.wait_for_job(
                job_id,
                system=system,
                poll_interval=self.poll_interval,
                timeout=timeout,
                on_poll=on_poll,
            )
        except _RequeueHeld as held:
            summary = held.summary
        except HpcJobError as exc:
            self._on_timeout(system, job_id)
            raise exc
        return self._ended(context, system, summary, ledger, follower)

    def _gave_up(self, summary: JobSummary) -> bool:
        return self.policy.max_resubmits > 0 and requeue_gave_up(
            summary.state, summary.state_reason
        )

    def _timeout_seconds(self) -> float:
        return (
            _seconds(self.job_timeout)
            or _seconds(self.execution_timeout)
            or DEFAULT_JOB_TIMEOUT.total_seconds()
        )

    def _on_timeout(self, system: str, job_id: str) -> None:
        if self.cancel_on_timeout:
            self.log.warning("Cancelling job %s: it did not finish in time", job_id)
            self._cancel_quietly(system, job_id)


class _RequeueHeld(Exception):
    """Stops the worker's wait: Slurm gave up requeueing the job."""

    def __init__(self, summary: JobSummary) -> None:
        super().__init__(summary.state)
        self.summary = summary
