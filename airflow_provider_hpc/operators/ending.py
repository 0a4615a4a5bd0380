"""The job ended: finish, wait again (Slurm requeued it), resubmit, or fail.

A mixin of :class:`~.job.HpcSubmitJobOperator`: :meth:`JobEnding._ended` records the
end in the task's job ledger, asks the :class:`~.resubmission.ResubmitPolicy` what to
do, and either returns the task's result, resubmits through the exactly-once
submission (``_submit``) and waits again (``_follow``, :mod:`.waiting`), or raises
:class:`~airflow_provider_hpc.exceptions.HpcJobError` with the stderr tail.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_hpc.exceptions import HpcError, HpcJobError
from airflow_provider_hpc.hooks.models import JobSummary
from airflow_provider_hpc.identity import TaskIdentity
from airflow_provider_hpc.links.job import push_job_links
from airflow_provider_hpc.operators.accounting import job_accounting
from airflow_provider_hpc.operators.output import OutputFollower, report_job_output
from airflow_provider_hpc.operators.resubmission import (
    REQUEUEABLE_STATES,
    Action,
    JobLedger,
    ResubmitPolicy,
    save_ledger,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_hpc.hooks.hpc import HpcHook


class JobEnding:
    """For :class:`~.job.HpcSubmitJobOperator`: :meth:`_ended` and the task's result."""

    if TYPE_CHECKING:
        hook: HpcHook
        log: Any
        memory: str | None
        time_limit: timedelta | int | str | None
        log_tail_lines: int
        max_resubmits: int
        oom_memory_factor: float | None
        oom_max_memory: str | None
        timeout_factor: float | None
        timeout_max_time_limit: timedelta | int | str | None
        _ledger: JobLedger | None

        def _submit(
            self,
            context: Context,
            system: str,
            identity: TaskIdentity,
            ledger: JobLedger,
            replace: str | None = None,
        ) -> tuple[str, JobSummary | None]: ...

        def _follow(
            self,
            context: Context,
            system: str,
            job_id: str,
            summary: JobSummary | None,
            ledger: JobLedger,
        ) -> dict[str, Any]: ...

        def _gave_up(self, summary: JobSummary) -> bool: ...

        def _cancel_quietly(self, system: str, job_id: str) -> None: ...

    def _ended(
        self,
        context: Context,
        system: str,
        summary: JobSummary,
        ledger: JobLedger,
        follower: OutputFollower | None = None,
    ) -> dict[str, Any]:
        """The job ended: finish, wait again (Slurm requeued it), resubmit, or fail."""
        self._ledger = ledger
        # a fresh page link: it then works for its whole lifetime after the job's end
        push_job_links(context["ti"], self.hook, summary.job_id, system, self.log)
        job_id, state = summary.job_id, summary.state
        entry = ledger.attach(job_id, ledger.next_resources)
        entry.update(state=state, exit_code=summary.exit_code, reason=summary.state_reason)
        if state in REQUEUEABLE_STATES and entry.get("requeued", 0) < _MAX_REQUEUE_WAITS:
            current = self._status_now(system, job_id)
            if current is not None and not current.terminal and not self._gave_up(current):
                entry["requeued"] = entry.get("requeued", 0) + 1
                entry.update(state=current.state, reason=current.state_reason)
                save_ledger(context, ledger)
                self.log.warning(
                    "Job %s ended %s and Slurm requeued it itself (now %s): waiting for it "
                    "again, no resubmission",
                    job_id,
                    state,
                    current.state,
                )
                return self._follow(context, system, job_id, current, ledger)
        entry["accounting"] = job_accounting(self.hook, system, job_id, self.log)
        decision = self.policy.decide(
            state,
            summary.state_reason,
            resubmits=ledger.resubmits,
            memory=self._memory(entry),
            time_limit=self._time_limit(entry),
        )
        entry["action"] = decision.action.value
        stderr_tail = report_job_output(
            self.hook, system, job_id, self.log, lines=self.log_tail_lines, follower=follower
        )
        if decision.action is Action.COMPLETE:
            save_ledger(context, ledger)
            self.log.info("Job %s COMPLETED (exit code %s)", job_id, summary.exit_code)
            self._log_jobs(ledger)
            return self._result(job_id, system, summary, ledger)
        if decision.action is Action.RESUBMIT:
            entry["next_resources"] = {
                **(entry.get("resources") or {}),
                **(decision.resources or {}),
            }
            save_ledger(context, ledger)  # the decision survives a worker crash from here
            self.log.warning(
                "Job %s ended %s: %s. Resubmitting (%d of at most %d), without using an "
                "Airflow retry",
                job_id,
                state,
                decision.reason,
                ledger.resubmits,
                self.policy.max_resubmits,
            )
            if not summary.terminal:  # held by Slurm: it must not run later as well
                self._cancel_quietly(system, job_id)
            identity = TaskIdentity.from_context(context)
            new_id, new_summary = self._submit(context, system, identity, ledger, replace=job_id)
            return self._follow(context, system, new_id, new_summary, ledger)
        save_ledger(context, ledger)
        self._log_jobs(ledger)
        message = f"job {job_id} on {system} ended {state} (exit code {summary.exit_code})"
        if decision.reason != f"the job ended {state}":
            message += f": {decision.reason}"
        if stderr_tail:
            message += "\n--- stderr (tail) ---\n" + "\n".join(stderr_tail.splitlines()[-20:])
        raise HpcJobError(message, job_id=job_id, state=state, exit_code=summary.exit_code)

    @property
    def policy(self) -> ResubmitPolicy:
        return ResubmitPolicy(
            max_resubmits=self.max_resubmits,
            oom_memory_factor=self.oom_memory_factor,
            oom_max_memory=self.oom_max_memory,
            timeout_factor=self.timeout_factor,
            timeout_max_time_limit=self.timeout_max_time_limit,
        )

    def _status_now(self, system: str, job_id: str) -> JobSummary | None:
        try:
            return self.hook.get_job_status(job_id, system=system)
        except HpcError as exc:
            self.log.info("Cannot re-read job %s (%s)", job_id, exc)
            return None

    def _memory(self, entry: dict[str, Any]) -> str | None:
        """The ended job's memory: what the task asked for, else what accounting says."""
        memory = (entry.get("resources") or {}).get("memory") or self.memory
        if memory is None and entry.get("accounting"):
            memory = entry["accounting"].get("requested_memory")
        return str(memory) if memory is not None else None

    def _time_limit(self, entry: dict[str, Any]) -> timedelta | int | str | None:
        """The ended job's time limit: what the task asked for, else accounting's."""
        limit = (entry.get("resources") or {}).get("time_limit") or self.time_limit
        if limit is None and entry.get("accounting"):
            limit = entry["accounting"].get("time_limit_minutes")
        return limit

    def _log_jobs(self, ledger: JobLedger) -> None:
        if len(ledger.jobs) > 1:
            self.log.info(
                "Jobs of this task: %s",
                "; ".join(
                    f"{job['job_id']} {job.get('state')} ({job.get('action')})"
                    for job in ledger.jobs
                ),
            )

    def _result(
        self,
        job_id: str,
        system: str,
        summary: JobSummary | None,
        ledger: JobLedger | None = None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = {
            "job_id": job_id,
            "system": system,
            "state": summary.state if summary else "SUBMITTED",
            "exit_code": summary.exit_code if summary else None,
        }
        if ledger is not None:
            entry = ledger.entry(job_id) or {}
            result["accounting"] = entry.get("accounting")
            result["jobs"] = [_public(job) for job in ledger.jobs]
        return result


def _public(job: dict[str, Any]) -> dict[str, Any]:
    """A ledger entry as the return value shows it."""
    return {key: job.get(key) for key in _PUBLIC_KEYS}


_PUBLIC_KEYS = ("job_id", "state", "exit_code", "reason", "action", "resources", "accounting")
#: How often one job may be seen requeued by Slurm itself before it counts as ended.
_MAX_REQUEUE_WAITS = 10
