"""Waiting for a job: the error budget shared by workers and triggers, and the worker's
polling loop (triggers wait through :mod:`airflow_provider_hpc.triggers.job`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from airflow_provider_hpc.exceptions import (
    HpcApiError,
    HpcConnectionError,
    HpcError,
    HpcJobError,
    HpcNotFoundError,
)
from airflow_provider_hpc.hooks import retry
from airflow_provider_hpc.hooks.models import JobSummary


@dataclass
class ErrorBudget:
    """How long a waiter tolerates errors: transient ones for ``window`` seconds in a row,
    404 until ``not_found_until`` (a job the scheduler has not listed yet)."""

    window: float = 600.0
    not_found_until: float = 0.0
    _first_error: float | None = None

    def allows(self, exc: BaseException, now: float) -> bool:
        if isinstance(exc, HpcNotFoundError):
            transient = now < self.not_found_until
        elif isinstance(exc, HpcApiError):
            transient = exc.transient
        else:
            transient = isinstance(exc, HpcConnectionError)
        if not transient:
            return False
        if self._first_error is None:
            self._first_error = now
        return now - self._first_error < self.window

    def reset(self) -> None:
        self._first_error = None


def wait_for_job(
    status: Callable[[], JobSummary],
    *,
    job_id: str,
    log: logging.Logger | Any,
    poll_interval: float = 30.0,
    timeout: float | None = None,
    on_poll: Callable[[JobSummary], None] | None = None,
    error_window: float = 600.0,
    not_found_grace: float = 120.0,
) -> JobSummary:
    """Call ``status`` until the job is terminal (in the worker). Transient errors are
    tolerated for ``error_window`` seconds in a row, 404 for ``not_found_grace`` seconds
    from the start.

    :raises HpcJobError: on timeout (the job is left alone; the caller decides).
    """
    start = time.monotonic()
    deadline = start + timeout if timeout else None
    budget = ErrorBudget(window=error_window, not_found_until=start + not_found_grace)
    while True:
        summary: JobSummary | None
        try:
            summary = status()
            budget.reset()
        except HpcError as exc:
            if not budget.allows(exc, time.monotonic()):
                raise
            log.warning("Status of job %s unavailable (%s); still waiting", job_id, exc)
            summary = None
        if summary is not None:
            if on_poll is not None:
                on_poll(summary)
            if summary.terminal:
                return summary
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise HpcJobError(
                f"job {job_id} did not finish within {timeout:.0f} s",
                job_id=job_id,
                state=summary.state if summary else None,
            )
        retry.sleep(min(poll_interval, deadline - now) if deadline is not None else poll_interval)
