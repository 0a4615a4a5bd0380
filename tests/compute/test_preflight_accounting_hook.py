"""The provider hook's pre-flight and accounting methods against the real server and site."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from airflow_provider_hpc.exceptions import HpcNotFoundError, HpcPreflightUnsupported
from airflow_provider_hpc.hooks.hpc import HpcHook
from airflow_provider_hpc.hooks.models import JobAccounting, JobSpec
from tests.server import ApiServer
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e]


@pytest.fixture
def hook(api_server: ApiServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[HpcHook]:
    conn = {
        "conn_type": "hpc",
        "host": api_server.url,
        "password": api_server.token("hpcuser1"),
        "extra": {"system": api_server.system},
    }
    monkeypatch.setenv("AIRFLOW_CONN_HPC_DEFAULT", json.dumps(conn))
    hook = HpcHook()
    yield hook
    hook.close()


def spec(site_env: SiteEnv, **fields: object) -> JobSpec:
    return JobSpec(
        name=f"hook-{uuid.uuid4().hex[:8]}",
        working_directory=site_env.scratch("hpcuser1"),
        script="#!/bin/bash\ntrue\n",
        standard_output="/dev/null",
        **fields,
    )


def test_preflight_sync_and_async(hook: HpcHook, site_env: SiteEnv) -> None:
    started = time.monotonic()
    refused = hook.preflight_job(spec(site_env, account="nosuchaccount"))
    assert time.monotonic() - started < 2.0
    assert not refused.valid and refused.category == "account"
    assert "refused (account)" in refused.describe()
    valid = asyncio.run(hook.apreflight_job(spec(site_env, time_limit="5")))
    assert valid.valid and valid.expected_start is not None
    assert valid.describe().startswith("valid: ")


def test_accounting_sync_async_and_arrays(hook: HpcHook, site_env: SiteEnv) -> None:
    job_id = hook.submit_job(spec(site_env, array="0-1"))
    assert hook.wait_for_job(job_id, poll_interval=0.3, timeout=60).state == "COMPLETED"
    deadline = time.monotonic() + 60
    while True:
        try:
            accounting = hook.get_job_accounting(job_id)
            if accounting.tasks and all(t.end for t in accounting.tasks):
                break
        except HpcNotFoundError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert accounting.job_id == job_id and accounting.state == "COMPLETED"
    assert sorted(t.job_id for t in accounting.tasks or []) == [f"{job_id}_0", f"{job_id}_1"]
    assert accounting.node_hours == pytest.approx(
        sum(t.node_hours or 0 for t in accounting.tasks or []), abs=1e-6
    )
    assert "2 array tasks" in accounting.summary()
    task = asyncio.run(hook.aget_job_accounting(f"{job_id}_1"))
    assert isinstance(task, JobAccounting) and task.job_id == f"{job_id}_1" and task.tasks is None
    assert json.loads(json.dumps(accounting.model_dump(mode="json")))["job_id"] == job_id
    with pytest.raises(HpcNotFoundError):
        hook.get_job_accounting("999999999")


class IgnoresDryRun(httpx.BaseTransport):
    """The real server behind a transport that drops ``dryRun``: a server without dry
    runs, as a plain FirecREST server is (it submits the job and answers 201)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if "dryRun" in request.url.params:
            request.url = request.url.copy_remove_param("dryRun")
        return self.inner.handle_request(request)


def test_a_server_that_submits_on_preflight_gets_its_job_cancelled(
    api_server: ApiServer, site_env: SiteEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = {
        "conn_type": "hpc",
        "host": api_server.url,
        "password": api_server.token("hpcuser1"),
        "extra": {"system": api_server.system},
    }
    monkeypatch.setenv("AIRFLOW_CONN_HPC_DEFAULT", json.dumps(conn))
    hook = HpcHook(transport=IgnoresDryRun())
    try:
        job = spec(site_env, time_limit="5")
        job.script = "#!/bin/bash\nsleep 120\n"
        with pytest.raises(HpcPreflightUnsupported, match="does not support pre-flight") as err:
            hook.preflight_job(job)
        submitted = err.value.job_id
        # the job the server made is cancelled, not left to run
        ended = hook.wait_for_job(submitted, poll_interval=0.3, timeout=60)
        assert ended.state == "CANCELLED", ended
    finally:
        hook.close()
