"""The job's extra links, live while the task is deferred and after it ended.

"HPC Job" opens a page a person can read in a browser: hpcgate mints it for the job's
owner (``POST .../jobs/{id}/page-link``: a signed, read-only, expiring URL with the
job's state, times, exit code and output tail; or the site portal's URL when the server
is configured with one). "HPC Job (API)" is the job's raw API URL, for tools that send a
token. Airflow's API server shows links from XCom (``xcom_key``) without running
provider code, so the operator pushes both before it defers, and a fresh page link when
the job has ended (a link lives ``job_page.link_ttl_seconds`` from its minting, 7 days
by default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

from airflow_provider_hpc.exceptions import HpcApiError, HpcError

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey

    from airflow_provider_hpc.hooks.hpc import HpcHook

#: XCom keys the job operators push before they wait.
XCOM_JOB_ID = "job_id"
XCOM_JOB_URL = "job_url"
XCOM_JOB_PAGE_URL = "job_page_url"


class _XComLink(BaseOperatorLink):
    """A link whose whole URL is one XCom value (what Airflow's API server reads)."""

    key = ""

    @property
    def xcom_key(self) -> str:
        return self.key

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(ti_key=ti_key, key=self.key) or ""


class HpcJobLink(_XComLink):
    """The job's browser page (read from the ``job_page_url`` XCom)."""

    name = "HPC Job"
    key = XCOM_JOB_PAGE_URL


class HpcJobApiLink(_XComLink):
    """``<api>/compute/<system>/jobs/<id>`` (``job_url`` XCom): needs a bearer token."""

    name = "HPC Job (API)"
    key = XCOM_JOB_URL


def push_job_links(ti: Any, hook: HpcHook, job_id: str, system: str, log: Any) -> None:
    """Push the job's API URL and a freshly minted page link (best effort: a server
    without job pages, or a failure, leaves only the API link and a log line)."""
    ti.xcom_push(key=XCOM_JOB_URL, value=hook.get_job_url(job_id, system=system))
    try:
        page = hook.get_job_page_url(job_id, system=system)
    except HpcApiError as exc:
        if exc.status_code in (404, 405, 501):
            log.info("No browser page for job %s (%s): the API link only", job_id, exc.message)
        else:
            log.warning("Could not get a browser link for job %s: %s", job_id, exc)
        return
    except HpcError as exc:
        log.warning("Could not get a browser link for job %s: %s", job_id, exc)
        return
    ti.xcom_push(key=XCOM_JOB_PAGE_URL, value=page)
