"""``HpcFileSensor``: wait for a path to appear on the cluster."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowSensorTimeout, AirflowSkipException

from airflow_provider_hpc.exceptions import HpcError
from airflow_provider_hpc.hooks.hpc import HpcHook, UsesHpcHook
from airflow_provider_hpc.operators.job import default_deferrable
from airflow_provider_hpc.triggers.files import HpcFileTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class HpcFileSensor(UsesHpcHook, BaseSensorOperator):
    """Succeed when ``path`` exists on the cluster (file, directory or link target).

    Transient API errors count as "not yet". Poke, reschedule and deferrable modes.
    """

    template_fields: Sequence[str] = ("path", "system")

    def __init__(
        self,
        *,
        path: str,
        system: str | None = None,
        hpc_conn_id: str = HpcHook.default_conn_name,
        deferrable: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.system = system
        self.hpc_conn_id = hpc_conn_id
        self.deferrable = default_deferrable() if deferrable is None else deferrable

    def poke(self, context: Context) -> bool:
        try:
            found = self.hook.exists(self.path, system=self.system)
        except HpcError as exc:
            if getattr(exc, "transient", False):
                self.log.warning("Cannot check %s yet (%s)", self.path, exc)
                return False
            raise
        self.log.info("%s %s", self.path, "exists" if found else "does not exist yet")
        return found

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        if self.poke(context):
            return None
        self.defer(
            trigger=HpcFileTrigger(
                path=self.path,
                system=self.hook.resolve_system(self.system),
                hpc_conn_id=self.hpc_conn_id,
                deadline=time.time() + float(self.timeout),
                poll_interval=float(self.poke_interval),
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> None:
        status = event.get("status")
        if status == "success":
            self.log.info("%s exists (%s bytes)", event.get("path"), event.get("size"))
            return
        if status == "timeout":
            if self.soft_fail:
                raise AirflowSkipException(event.get("message"))
            raise AirflowSensorTimeout(event.get("message"))
        raise HpcError(f"cannot check {event.get('path')}: {event.get('message')}")
