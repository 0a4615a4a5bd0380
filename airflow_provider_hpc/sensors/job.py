"""``HpcJobSensor``: wait for an existing (externally submitted) job to end."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowSensorTimeout, AirflowSkipException

from airflow_provider_hpc.exceptions import HpcError, HpcJobError
from airflow_provider_hpc.hooks.hpc import HpcHook, UsesHpcHook
from airflow_provider_hpc.hooks.models import JobSummary
from airflow_provider_hpc.operators.job import default_deferrable
from airflow_provider_hpc.triggers.job import FAILED, SUCCESS, TIMEOUT, HpcJobTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class HpcJobSensor(UsesHpcHook, BaseSensorOperator):
    """Succeed when job ``job_id`` COMPLETES; fail when it ends in any other state.

    The sensor does not own the job: it never cancels it. Transient API errors count as
    "not yet". Poke, reschedule and deferrable modes are supported.

    :param job_id: the job id (templated; an XComArg or ``{"job_id": ...}`` result works).
    :param system: cluster name; default the connection's ``system``.
    """

    template_fields: Sequence[str] = ("job_id", "system")

    def __init__(
        self,
        *,
        job_id: Any,
        system: str | None = None,
        hpc_conn_id: str = HpcHook.default_conn_name,
        deferrable: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_id = job_id
        self.system = system
        self.hpc_conn_id = hpc_conn_id
        self.deferrable = default_deferrable() if deferrable is None else deferrable

    @property
    def _job_id(self) -> str:
        value = self.job_id
        return str(value.get("job_id") if isinstance(value, dict) else value)

    def _done(self, summary: JobSummary) -> PokeReturnValue:
        if summary.succeeded:
            return PokeReturnValue(True, summary.model_dump())
        raise HpcJobError(
            f"job {summary.job_id} ended {summary.state} (exit code {summary.exit_code})",
            job_id=summary.job_id,
            state=summary.state,
            exit_code=summary.exit_code,
        )

    def poke(self, context: Context) -> PokeReturnValue:
        try:
            summary = self.hook.get_job_status(self._job_id, system=self.system)
        except HpcError as exc:
            if getattr(exc, "transient", False):
                self.log.warning("Job %s status unavailable (%s)", self._job_id, exc)
                return PokeReturnValue(False)
            raise
        self.log.info("Job %s is %s", self._job_id, summary.state)
        return self._done(summary) if summary.terminal else PokeReturnValue(False)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        first = self.poke(context)
        if first.is_done:
            return first.xcom_value
        self.defer(
            trigger=HpcJobTrigger(
                job_id=self._job_id,
                system=self.hook.resolve_system(self.system),
                hpc_conn_id=self.hpc_conn_id,
                deadline=time.time() + float(self.timeout),
                poll_interval=float(self.poke_interval),
                cancel_on_kill=False,
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        status = event.get("status")
        if status in (SUCCESS, FAILED):
            summary = JobSummary(
                job_id=str(event["job_id"]),
                state=event.get("state") or "UNKNOWN",
                exit_code=event.get("exit_code"),
                state_reason=event.get("state_reason"),
            )
            return self._done(summary).xcom_value
        if status == TIMEOUT:
            if self.soft_fail:
                raise AirflowSkipException(event.get("message"))
            raise AirflowSensorTimeout(event.get("message"))
        raise HpcJobError(f"lost track of job {event.get('job_id')}: {event.get('message')}")
