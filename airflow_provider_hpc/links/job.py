"""``HpcJobLink``: the job's API URL as an extra link, live while the task is deferred."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey

#: XCom keys the job operators push before they wait.
XCOM_JOB_ID = "job_id"
XCOM_JOB_URL = "job_url"


class HpcJobLink(BaseOperatorLink):
    """Links to ``<api>/compute/<system>/jobs/<id>`` (read from the ``job_url`` XCom)."""

    name = "HPC Job"

    @property
    def xcom_key(self) -> str:
        # The operator pushes this key before deferring, so the API server can show the
        # link while the task waits, without calling get_link.
        return XCOM_JOB_URL

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(ti_key=ti_key, key=XCOM_JOB_URL) or ""
