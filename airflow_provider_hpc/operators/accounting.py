"""A finished job's accounting (``sacct`` through the API) for the task's result and log.

Best effort: accounting is a report, not the job's outcome, so a server without the
endpoint, a lagging accounting daemon or an error never fails the task.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_hpc.exceptions import HpcError
from airflow_provider_hpc.hooks.hpc import HpcHook


def job_accounting(hook: HpcHook, system: str, job_id: str, log: Any) -> dict[str, Any] | None:
    """``JobAccounting`` of ``job_id`` as plain JSON (XCom-safe), its one-line summary in
    the task log; None when the server has none to give."""
    try:
        accounting = hook.get_job_accounting(job_id, system=system)
    except HpcError as exc:
        log.info("No accounting for job %s (%s)", job_id, exc)
        return None
    log.info("Accounting of job %s: %s", job_id, accounting.summary())
    value: dict[str, Any] = accounting.model_dump(mode="json")
    return value
