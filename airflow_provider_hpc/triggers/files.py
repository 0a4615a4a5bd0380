"""``HpcFileTrigger``: wait in the triggerer for a path to appear on the cluster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_hpc.exceptions import HpcError, HpcNotFoundError
from airflow_provider_hpc.hooks.hpc import ErrorBudget, HpcHook


class HpcFileTrigger(BaseTrigger):
    """Fire once when ``path`` exists on ``system`` (``success``), at ``deadline`` (``timeout``),
    or when errors persist (``error``). Event: ``{"status", "path", "system", "size", "message"}``.

    :param deadline: absolute UNIX time; None waits forever.
    """

    def __init__(
        self,
        *,
        path: str,
        system: str,
        hpc_conn_id: str = HpcHook.default_conn_name,
        deadline: float | None = None,
        poll_interval: float = 30.0,
        error_window: float = 600.0,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # BaseTrigger is unannotated
        self.path = path
        self.system = system
        self.hpc_conn_id = hpc_conn_id
        self.deadline = deadline
        self.poll_interval = float(poll_interval)
        self.error_window = float(error_window)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "path": self.path,
                "system": self.system,
                "hpc_conn_id": self.hpc_conn_id,
                "deadline": self.deadline,
                "poll_interval": self.poll_interval,
                "error_window": self.error_window,
            },
        )

    def _get_hook(self) -> HpcHook:
        return HpcHook(self.hpc_conn_id, system=self.system)

    def _event(self, status: str, size: int | None = None, message: str = "") -> TriggerEvent:
        return TriggerEvent(
            {
                "status": status,
                "path": self.path,
                "system": self.system,
                "size": size,
                "message": message,
            }
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self._get_hook()
        budget = ErrorBudget(window=self.error_window)
        try:
            while True:
                try:
                    stat = await hook.astat(self.path, system=self.system, dereference=True)
                except HpcNotFoundError:
                    budget.reset()
                except HpcError as exc:
                    if not budget.allows(exc, time.time()):
                        yield self._event("error", message=str(exc))
                        return
                    self.log.warning("Cannot check %s yet: %s", self.path, exc)
                except Exception as exc:  # never raise out of run(): report it once
                    self.log.exception("Unexpected error while checking %s", self.path)
                    yield self._event("error", message=f"{type(exc).__name__}: {exc}")
                    return
                else:
                    yield self._event("success", stat.size)
                    return
                wait = self.poll_interval
                if self.deadline is not None:
                    remaining = self.deadline - time.time()
                    if remaining <= 0:
                        yield self._event("timeout", message=f"{self.path} did not appear in time")
                        return
                    wait = min(wait, remaining)
                await asyncio.sleep(wait)
        finally:
            await hook.aclose()
