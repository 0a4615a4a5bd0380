"""``preflight=True`` on the real server and site: the scheduler's verdict
(``sbatch --test-only`` through ``POST .../jobs?dryRun=true``) decides at the start of
the task, before anything is submitted or waited for."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_hpc.hooks.hpc import HpcHook
from airflow_provider_hpc.operators.job import HpcSubmitJobOperator
from tests.provider.conftest import FakeStore, FakeTI, make_context
from tests.server import ApiServer
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e]

USER = "hpcuser1"


@pytest.fixture
def hook(api_server: ApiServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[HpcHook]:
    conn = {
        "conn_type": "hpc",
        "host": api_server.url,
        "password": api_server.token(USER),
        "extra": {"system": api_server.system},
    }
    monkeypatch.setenv("AIRFLOW_CONN_HPC_DEFAULT", json.dumps(conn))
    hook = HpcHook()
    yield hook
    hook.close()


def operator(site_env: SiteEnv, name: str, **kw: object) -> HpcSubmitJobOperator:
    return HpcSubmitJobOperator(
        task_id="preflight",
        job_name=name,
        working_directory=site_env.scratch(USER),
        script="#!/bin/bash\nsleep 30\n",
        preflight=True,
        deferrable=False,
        poll_interval=0.5,
        **kw,  # type: ignore[arg-type]
    )


def test_a_bad_account_fails_at_preflight_fast_and_submits_nothing(
    hook: HpcHook, site_env: SiteEnv
) -> None:
    name = f"pf-{uuid.uuid4().hex[:8]}"
    op = operator(site_env, name, account="no-such-account")
    started = time.monotonic()
    with pytest.raises(AirflowFailException, match=r"pre-flight on hpcsite.*\(account\)") as info:
        op.execute(make_context(FakeStore(), ti=FakeTI("preflight")))
    took = time.monotonic() - started
    print(f"pre-flight refused the job in {took:.2f} s")
    assert took < 2.0, f"pre-flight took {took:.2f} s"
    assert "account" in str(info.value).lower()
    # nothing was submitted under the task's name
    assert [job for job in hook.list_jobs() if (job.name or "").startswith(name)] == []


@pytest.mark.parametrize(
    ("kw", "category"),
    [({"partition": "no-such-partition"}, "partition"), ({"qos": "no-such-qos"}, "qos")],
)
def test_other_refusals_name_their_reason(
    hook: HpcHook, site_env: SiteEnv, kw: dict[str, str], category: str
) -> None:
    with pytest.raises(AirflowFailException, match=rf"\({category}\)"):
        operator(site_env, "pf", **kw).execute(make_context(FakeStore(), ti=FakeTI("preflight")))


def test_a_valid_job_passes_preflight_then_is_submitted(
    hook: HpcHook, site_env: SiteEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"pf-{uuid.uuid4().hex[:8]}"
    op = operator(site_env, name, wait_for_completion=False)
    result = op.execute(make_context(FakeStore(), ti=FakeTI("preflight")))
    try:
        assert "Pre-flight on hpcsite" in capsys.readouterr().out
        assert result["state"] == "SUBMITTED"
        job = hook.get_job(result["job_id"])[0]
        assert (job.name or "").startswith(name)
    finally:
        hook.cancel_job(result["job_id"])
