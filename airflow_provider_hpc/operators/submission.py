"""Exactly-once submission: find this task instance's job, or submit it (once).

A task instance's try group owns one job, recorded in the task state store and named
deterministically (:mod:`airflow_provider_hpc.identity`). A retry re-attaches to it
(running, pending or COMPLETED); only a failed one is replaced; a job lost between
submission and recording is found by its name; a lost submission answer is checked for
before submitting again. The ``Idempotency-Key`` lets the server dedupe too.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_hpc.exceptions import (
    HpcApiError,
    HpcConnectionError,
    HpcError,
    HpcNotFoundError,
)
from airflow_provider_hpc.hooks.hpc import HpcHook
from airflow_provider_hpc.hooks.models import JobSpec, JobSummary
from airflow_provider_hpc.identity import TaskIdentity

if TYPE_CHECKING:
    from airflow.sdk import Context

#: task_state_store key holding the job of this task instance (survives retries).
STATE_KEY = "hpc_job"
_SUBMIT_ROUNDS = 3
#: How far back the lookup by name looks for finished jobs (the API's widest window).
LOOKUP_WINDOW = "7d"
#: Indirection so that tests can skip the waiting.
_sleep = time.sleep


class ExactlyOnceSubmission:
    """For :class:`~.job.HpcSubmitJobOperator`: :meth:`submit_or_attach`."""

    hook: HpcHook
    job_name: str | None
    log: Any

    def build_job_spec(self, name: str) -> JobSpec:
        raise NotImplementedError

    def _cancel_quietly(self, system: str, job_id: str) -> None:
        try:
            self.hook.cancel_job(job_id, system=system)
        except HpcError as exc:
            self.log.warning("Could not cancel job %s: %s", job_id, exc)

    def submit_or_attach(
        self,
        context: Context,
        system: str,
        identity: TaskIdentity,
        *,
        replace: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> tuple[str, JobSummary | None]:
        """Return the job of this task instance's try group, submitting it only if needed.

        Order: the task state store record, then a lookup by the deterministic job name
        (covers a crash between submission and recording), then submission.

        :param replace: a job this submission replaces (a resubmission): never re-attached
            to, even while it still shows as pending (held), and its id makes the new
            ``Idempotency-Key``, so a worker that dies mid-resubmission re-attaches to the
            replacement (found by name) instead of submitting another.
        :param overrides: ``JobSpec`` fields that differ from the operator's (more memory,
            a longer time limit).
        """
        hook = self.hook
        store = context.get("task_state_store")
        name = identity.job_name(self.job_name)
        after: str | None = replace

        record = _store_get(store)
        if record and replace is not None and str(record.get("job_id")) == replace:
            record = None  # the job being replaced: never re-attach to it
        if record and record.get("system") == system:
            found = self._job_if_alive(str(record["job_id"]), system)
            same_group = record.get("generation") == identity.generation
            if found is not None and same_group:
                if not found.terminal or found.succeeded:
                    self.log.info(
                        "Re-attaching to job %s (%s) from an earlier try", found.job_id, found.state
                    )
                    return found.job_id, found
                after = found.job_id
            elif found is None and same_group:
                after = str(record["job_id"])  # gone from the scheduler: do not reuse its key
            elif found is not None and not found.terminal:
                self.log.warning(
                    "Task was cleared: cancelling job %s of the previous run (%s)",
                    found.job_id,
                    found.state,
                )
                self._cancel_quietly(system, found.job_id)

        named = self._find_named(system, name)
        if named is not None and named.job_id == replace:
            named = None
        if named is not None:
            if not named.terminal or named.succeeded:
                self.log.info(
                    "Re-attaching to job %s (%s) named %s", named.job_id, named.state, name
                )
                _store_put(store, named.job_id, system, identity, name)
                return named.job_id, named
            after = named.job_id
        if after:
            self.log.info("Earlier job %s failed; submitting a new one", after)

        spec = self.build_job_spec(name)
        if overrides:
            spec = spec.model_copy(update=dict(overrides))
        key = identity.idempotency_key(after)
        for attempt in range(1, _SUBMIT_ROUNDS + 1):
            try:
                job_id = hook.submit_job(spec, system=system, idempotency_key=key)
                break
            except (HpcConnectionError, HpcApiError) as exc:
                conflict = getattr(exc, "status_code", None) == 422
                if not conflict and (not exc.transient or attempt == _SUBMIT_ROUNDS):
                    raise
                if conflict:
                    # hpcgate: this try group's key already made a job, from another body
                    # (a template rendered differently on this try). That job is the one.
                    self.log.warning("Submission refused (%s); looking for job %s", exc, name)
                else:
                    # A timeout or 5xx may hide a job that was submitted: look before retrying.
                    self.log.warning("Submission answer lost (%s); checking for job %s", exc, name)
                    _sleep(min(30.0, 2.0 * attempt))
                named = self._find_named(system, name)
                if named is not None and named.job_id != after:
                    _store_put(store, named.job_id, system, identity, name)
                    return named.job_id, named
                if conflict:
                    raise
        self.log.info("Submitted job %s (%s) on %s", job_id, name, system)
        _store_put(store, job_id, system, identity, name)
        return job_id, None

    def _job_if_alive(self, job_id: str, system: str) -> JobSummary | None:
        try:
            summary = self.hook.get_job_status(job_id, system=system)
        except HpcNotFoundError:
            return None
        return summary if summary.tasks else None

    def _find_named(self, system: str, name: str) -> JobSummary | None:
        """Newest job with this exact name (array tasks grouped by their parent id)."""
        try:
            jobs = self.hook.list_jobs(system=system, name=name, time_window=LOOKUP_WINDOW)
        except HpcApiError as exc:
            if exc.transient:
                raise
            self.log.warning("Cannot list jobs by name (%s); relying on the task state store", exc)
            return None
        if not jobs:
            return None
        parent = jobs[0].job_id.split("_")[0]
        records = [job for job in jobs if job.job_id.split("_")[0] == parent]
        if any(job.job_id != parent for job in records):
            # An array listed task by task: its summary is the server's to give.
            try:
                return self.hook.get_job_status(parent, system=system)
            except HpcNotFoundError:
                pass
        return JobSummary.from_jobs(parent, records)


# ---------------------------------------------------------------------- task state store


def _store_get(store: Any) -> dict[str, Any] | None:
    if store is None:
        return None
    value = store.get(STATE_KEY)
    return value if isinstance(value, dict) and value.get("job_id") else None


def _store_put(store: Any, job_id: str, system: str, identity: TaskIdentity, name: str) -> None:
    if store is None:
        return
    store.set(
        STATE_KEY,
        {
            "job_id": job_id,
            "system": system,
            "generation": identity.generation,
            "name": name,
            "recorded_at": time.time(),
        },
    )
