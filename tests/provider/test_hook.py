"""HpcHook: connection parsing, auth, retries/backoff, the sync and async sides."""

from __future__ import annotations

import email.utils
import hashlib
import io
import json
import time
from types import SimpleNamespace

import httpx
import pytest

from airflow_provider_hpc.exceptions import (
    HpcApiError,
    HpcAuthError,
    HpcConnectionError,
    HpcError,
    HpcNotFoundError,
)
from airflow_provider_hpc.hooks import auth as auth_module
from airflow_provider_hpc.hooks.auth import TOKEN_CACHE, ClientCredentials, StaticToken
from airflow_provider_hpc.hooks.hpc import (
    ErrorBudget,
    HpcConnectionConfig,
    HpcHook,
    RetryPolicy,
    retry_after_seconds,
)
from airflow_provider_hpc.hooks.models import Job, JobSpec, JobSummary, normalize_state
from tests.provider.cluster import HOME
from tests.provider.realapi import SYSTEM, TOKEN_URL, RealApi

# Every test here runs against the real application over a fake cluster (``api``).


def _conn(**kw: object) -> SimpleNamespace:
    base = {"conn_id": "c", "host": "api.test", "schema": None, "port": None, "login": None}
    return SimpleNamespace(**{**base, "password": None, **kw})


# ---------------------------------------------------------------------- configuration


def test_config_static_token_and_url_building() -> None:
    config = HpcConnectionConfig.from_connection(_conn(password="tok", port=8443), {"system": "a"})
    assert config.base_url == "https://api.test:8443"
    assert config.credentials == StaticToken("tok")
    assert config.system == "a" and config.verify is True
    assert "tok" not in repr(config)


def test_config_oauth2_and_tls_options() -> None:
    extra = {
        "auth_method": "oauth2",
        "token_url": "https://idp/token",
        "client_id": "cid",
        "client_secret": "very-secret",
        "scope": "hpc",
        "ca_bundle": "/etc/ca.pem",
        "timeout": "12",
    }
    config = HpcConnectionConfig.from_connection(_conn(host="http://h:1/api/"), extra)
    assert config.base_url == "http://h:1/api"
    assert isinstance(config.credentials, ClientCredentials)
    assert config.credentials.scope == "hpc"
    assert config.verify == "/etc/ca.pem" and config.timeout == 12.0
    assert "very-secret" not in repr(config.credentials)
    insecure = HpcConnectionConfig.from_connection(_conn(password="t"), {"verify_tls": "false"})
    assert insecure.verify is False


@pytest.mark.parametrize(
    ("conn", "extra", "match"),
    [
        (_conn(host=""), {}, "API URL"),
        (_conn(), {"auth_method": "oauth2", "client_id": "x"}, "OAuth2 needs"),
        (_conn(), {"auth_method": "kerberos"}, "unknown auth_method"),
    ],
)
def test_config_errors(conn: SimpleNamespace, extra: dict, match: str) -> None:
    with pytest.raises(HpcError, match=match):
        HpcConnectionConfig.from_connection(conn, extra)


def test_hook_construction_touches_nothing() -> None:
    hook = HpcHook("no_such_connection", system="x")
    assert hook._config is None and hook._client is None


def test_system_resolution(hook: HpcHook, api: RealApi) -> None:
    assert hook.resolve_system() == SYSTEM
    assert hook.resolve_system("other") == "other"
    assert hook.get_job_url("12", system="a b") == f"{api.url}/compute/a%20b/jobs/12"


# ---------------------------------------------------------------------- requests and models


def test_submit_sends_camel_case_job_and_idempotency_key(hook: HpcHook, api: RealApi) -> None:
    spec = JobSpec(
        name="n",
        working_directory="/scratch/hpcuser",
        script="#!/bin/bash\necho hi\n",
        env={"A": 1},
        time_limit="10",
        cpus_per_task=2,
        dependencies=["1", "2"],
        extra_options={"exclusive": True, "comment": 5, "skip": False},
    )
    job_id = hook.submit_job(spec, idempotency_key="af-key")
    assert job_id == "1000"
    request = api.submissions[0]
    assert request.headers["Idempotency-Key"] == "af-key"
    assert request.headers["Authorization"] == f"Bearer {api.token}"
    body = json.loads(request.content)["job"]
    assert body["workingDirectory"] == "/scratch/hpcuser"
    assert body["env"] == {"A": "1"} and body["cpusPerTask"] == 2
    assert body["dependencies"] == ["1", "2"] and body["timeLimit"] == "10"
    assert body["extraOptions"] == {"exclusive": None, "comment": "5"}
    assert "scriptPath" not in body
    # ... and the server read it as meant: what reached the scheduler
    description = api.jobs[job_id].description
    assert description is not None and description.env == {"A": "1"}
    assert description.cpus_per_task == 2 and description.working_directory == HOME


def test_job_spec_needs_exactly_one_script() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        JobSpec(working_directory="/w")
    with pytest.raises(ValueError, match="exactly one"):
        JobSpec(working_directory="/w", script="x", script_path="/y")


def test_job_status_and_metadata(hook: HpcHook, api: RealApi) -> None:
    job = api.add_job(plan=["RUNNING", "COMPLETED"])
    first = hook.get_job_status(job.job_id)
    assert (first.state, first.terminal) == ("RUNNING", False)
    second = hook.get_job_status(job.job_id)
    assert (second.state, second.succeeded, second.exit_code) == ("COMPLETED", True, 0)
    meta = hook.get_job_metadata(job.job_id)[0]
    assert meta.standard_output == f"slurm-{job.job_id}.out"


def test_list_jobs_filters_by_exact_name_newest_first(hook: HpcHook, api: RealApi) -> None:
    api.add_job("a")
    api.add_job("a-b")
    newest = api.add_job("a")
    jobs = hook.list_jobs(name="a", time_window="7d")
    assert [j.job_id for j in jobs] == [newest.job_id, "1000"]
    assert api.calls("GET", "/jobs$")[0].url.params["time_window"] == "7d"


@pytest.mark.parametrize(
    ("raw", "state"),
    [("CANCELLED by 1000", "CANCELLED"), ("RUNNING,COMPLETING", "RUNNING"), ("", "UNKNOWN")],
)
def test_normalize_state(raw: str, state: str) -> None:
    assert normalize_state(raw) == state


def _job(job_id: str, state: str, code: int | None = 0) -> Job:
    return Job.model_validate({"jobId": job_id, "status": {"state": state, "exitCode": code}})


def test_summary_of_array_jobs_follows_the_servers_rule() -> None:
    """A server that lists only the tasks: hpcgate's rule (the most advanced active state,
    then the first non-COMPLETED task's state; the highest exit code)."""
    done = JobSummary.from_jobs("7", [_job("7_0", "COMPLETED"), _job("7_1", "COMPLETED")])
    assert (done.state, done.tasks) == ("COMPLETED", 2)
    active = JobSummary.from_jobs("7", [_job("7_0", "COMPLETED"), _job("7_1", "RUNNING", None)])
    assert active.state == "RUNNING" and not active.terminal
    pending = JobSummary.from_jobs("7", [_job("7_0", "PENDING", None), _job("7_1", "RUNNING")])
    assert pending.state == "RUNNING"
    failed = JobSummary.from_jobs(
        "7",
        [_job("7_2", "COMPLETED"), _job("7_1", "OUT_OF_MEMORY", 137), _job("7_0", "CANCELLED", 0)],
    )
    assert (failed.state, failed.exit_code, failed.terminal) == ("CANCELLED", 137, True)
    assert failed.describe() == "CANCELLED (tasks: 1 CANCELLED, 1 COMPLETED, 1 OUT_OF_MEMORY)"
    assert Job.model_validate({"jobId": 12, "status": {"state": "PENDING"}}).job_id == "12"


def test_summary_of_an_array_is_the_servers_record_as_it_comes() -> None:
    """hpcgate answers an array id with one summary record: taken as is, tasks for logs."""
    record = Job.model_validate(
        {
            "jobId": "7",
            "status": {"state": "FAILED", "exitCode": 9},
            "tasks": [
                {"id": "7_0", "name": "a", "status": {"state": "COMPLETED", "exitCode": 0}},
                {"id": "7_1", "name": "a", "status": {"state": "FAILED", "exitCode": 9}},
                {"id": "7_2", "name": "a", "status": {"state": "OUT_OF_MEMORY", "exitCode": 0}},
            ],
        }
    )
    summary = JobSummary.from_jobs("7", [record])
    assert (summary.state, summary.exit_code, summary.tasks) == ("FAILED", 9, 3)
    assert summary.task_states == {"7_0": "COMPLETED", "7_1": "FAILED", "7_2": "OUT_OF_MEMORY"}
    plain = JobSummary.from_jobs("8", [_job("8", "COMPLETED")])
    assert (plain.state, plain.tasks, plain.task_states) == ("COMPLETED", 1, None)


def test_error_body_and_not_found(hook: HpcHook, api: RealApi) -> None:
    with pytest.raises(HpcNotFoundError, match="Job not found") as info:
        hook.get_job("424242")
    assert info.value.status_code == 404 and info.value.error_type == "error"


# ---------------------------------------------------------------------- retries


def test_retries_5xx_with_backoff_then_succeeds(
    hook: HpcHook, api: RealApi, sleeps: list[float]
) -> None:
    job = api.add_job()
    api.inject("GET", "/jobs/", httpx.Response(502), httpx.Response(503), httpx.Response(500))
    assert hook.get_job_status(job.job_id).state == "PENDING"
    assert len(api.calls("GET", "/jobs/")) == 4
    # equal jitter: attempt n waits between step/2 and step, step = 0.5 * 2**n
    assert len(sleeps) == 3
    for attempt, slept in enumerate(sleeps):
        step = 0.5 * 2**attempt
        assert step / 2 <= slept <= step


def test_retry_after_is_honoured(hook: HpcHook, api: RealApi, sleeps: list[float]) -> None:
    api.inject(
        "GET",
        "/status/systems",
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(503, headers={"Retry-After": "9999"}),
    )
    assert [s.name for s in hook.list_systems()] == [SYSTEM]
    assert sleeps == [7.0, 300.0]  # capped at retry_after_max


def test_retry_after_http_date() -> None:
    now = time.time()
    header = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= retry_after_seconds({"retry-after": header}, now=now) <= 31
    assert retry_after_seconds({"ratelimit-reset": "4"}) == 4.0
    assert retry_after_seconds({}) is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 408, 413, 422, 424])
def test_never_retries_4xx(hook: HpcHook, api: RealApi, sleeps: list[float], status: int) -> None:
    api.inject("GET", "/status/systems", httpx.Response(status, json={"message": "no"}))
    with pytest.raises(HpcApiError) as info:
        hook.list_systems()
    assert info.value.status_code == status
    assert len(api.calls("GET", "/status/systems")) == 1 and sleeps == []


def test_gives_up_after_max_retries(api: RealApi, sleeps: list[float]) -> None:
    hook = HpcHook(retry=RetryPolicy(max_retries=2))
    api.inject("GET", "/status/systems", *[httpx.Response(503)] * 3)
    with pytest.raises(HpcApiError) as info:
        hook.list_systems()
    assert info.value.status_code == 503 and info.value.transient
    assert len(sleeps) == 2


def test_submission_is_not_retried_when_the_server_may_have_acted(
    hook: HpcHook, api: RealApi, sleeps: list[float]
) -> None:
    spec = JobSpec(working_directory="/w", script="x")
    api.inject("POST", "/jobs$", httpx.Response(500))
    with pytest.raises(HpcApiError):
        hook.submit_job(spec)
    api.inject("POST", "/jobs$", httpx.ReadTimeout("slow"))
    with pytest.raises(HpcConnectionError):
        hook.submit_job(spec)
    assert len(api.submissions) == 2 and sleeps == []


def test_submission_is_retried_when_the_server_did_not_act(
    hook: HpcHook, api: RealApi, sleeps: list[float]
) -> None:
    spec = JobSpec(working_directory="/w", script="x")
    api.inject(
        "POST",
        "/jobs$",
        httpx.ConnectError("refused"),
        httpx.Response(429),
        httpx.Response(503),
    )
    assert hook.submit_job(spec) == "1000"
    assert len(api.submissions) == 4 and len(sleeps) == 3


def test_idempotent_requests_retry_on_read_timeout(
    hook: HpcHook, api: RealApi, sleeps: list[float]
) -> None:
    api.inject("GET", "/status/systems", httpx.ReadTimeout("slow"))
    assert hook.list_systems()[0].name == SYSTEM
    assert len(sleeps) == 1


async def test_async_side_retries_and_reads_connection_async(
    api: RealApi, sleeps: list[float]
) -> None:
    hook = HpcHook()
    job = api.add_job(plan=["COMPLETED"])
    api.inject("GET", "/jobs/", httpx.Response(503, headers={"Retry-After": "2"}))
    try:
        summary = await hook.aget_job_status(job.job_id)
    finally:
        await hook.aclose()
    assert summary.succeeded and sleeps == [2.0]
    with pytest.raises(HpcNotFoundError):
        await HpcHook().aget_job("9")


# ---------------------------------------------------------------------- OAuth2


def test_oauth2_token_is_cached_across_hooks(api: RealApi) -> None:
    first, second = HpcHook("hpc_oauth"), HpcHook("hpc_oauth")
    first.list_systems()
    first.list_systems()
    second.list_systems()
    assert api.transport.tokens_issued == 1
    token_request = api.requests[0]
    assert token_request.url.path == "/token"
    assert b"grant_type=client_credentials" in token_request.content
    assert api.requests[-1].headers["Authorization"] == f"Bearer {api.transport.issued[0]}"


def test_oauth2_refreshes_before_expiry(api: RealApi, monkeypatch: pytest.MonkeyPatch) -> None:
    api.transport.token_lifetime = 300  # refresh margin: min(60, 30) = 30 s before expiry
    hook = HpcHook("hpc_oauth")
    hook.list_systems()
    real_time = time.time
    # the provider's clock moves on; the server's (and the IdP's) stays real
    monkeypatch.setattr(auth_module, "time", SimpleNamespace(time=lambda: real_time() + 265))
    hook.list_systems()
    assert api.transport.tokens_issued == 1
    monkeypatch.setattr(auth_module, "time", SimpleNamespace(time=lambda: real_time() + 275))
    hook.list_systems()
    assert api.transport.tokens_issued == 2
    assert api.requests[-1].headers["Authorization"] == f"Bearer {api.transport.issued[1]}"


def test_oauth2_revoked_token_is_replaced_once(api: RealApi) -> None:
    hook = HpcHook("hpc_oauth")
    hook.list_systems()
    api.transport.revoked.add(api.transport.issued[0])
    hook.list_systems()
    assert api.transport.tokens_issued == 2
    api.inject("GET", "/status/systems", httpx.Response(401), httpx.Response(401))
    with pytest.raises(HpcApiError) as info:
        hook.list_systems()
    assert info.value.status_code == 401 and api.transport.tokens_issued == 3


def test_oauth2_refused_without_leaking_the_secret(
    api: RealApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_HPC_BAD",
        json.dumps(
            {
                "conn_type": "hpc",
                "host": api.url,
                "extra": {
                    "token_url": TOKEN_URL,
                    "client_id": "airflow",
                    "client_secret": "wrong-secret",
                },
            }
        ),
    )
    with pytest.raises(HpcAuthError) as info:
        HpcHook("hpc_bad").list_systems()
    assert "invalid_client" in str(info.value) and "wrong-secret" not in str(info.value)


async def test_oauth2_async_fetches_one_token_for_concurrent_callers(api: RealApi) -> None:
    import asyncio

    hooks = [HpcHook("hpc_oauth") for _ in range(5)]
    try:
        await asyncio.gather(*(h.aget_job_status(api.add_job().job_id) for h in hooks))
    finally:
        for h in hooks:
            await h.aclose()
    assert api.transport.tokens_issued == 1
    TOKEN_CACHE.clear()


# ---------------------------------------------------------------------- test_connection, files


def test_test_connection(hook: HpcHook, api: RealApi) -> None:
    ok, message = hook.test_connection()
    assert ok and SYSTEM in message
    ok, message = HpcHook(system="elsewhere").test_connection()
    assert not ok and "elsewhere" in message
    api.inject("GET", "/status/systems", httpx.Response(403, json={"message": "forbidden"}))
    ok, message = hook.test_connection()
    assert not ok and "forbidden" in message


def test_upload_and_download_stream(hook: HpcHook, api: RealApi) -> None:
    payload = bytes(range(256)) * 1000
    hook.upload("/scratch/hpcuser/in.bin", io.BytesIO(payload))
    assert api.files["/scratch/hpcuser/in.bin"] == payload
    sink, hasher = io.BytesIO(), hashlib.sha256()
    size = hook.download("/scratch/hpcuser/in.bin", sink, hasher=hasher, chunk_size=4096)
    assert size == len(payload) and sink.getvalue() == payload
    assert hasher.hexdigest() == hook.checksum("/scratch/hpcuser/in.bin").checksum
    assert hook.exists("/scratch/hpcuser/in.bin") and not hook.exists(f"{HOME}/nope")
    with pytest.raises(HpcApiError) as outside:  # the server's path policy
        hook.exists("/nope")
    assert outside.value.status_code == 403


def test_upload_rewinds_on_retry(hook: HpcHook, api: RealApi) -> None:
    api.inject("POST", "ops/upload", httpx.Response(503))
    hook.upload("/scratch/hpcuser/a.txt", io.BytesIO(b"hello"))
    assert api.files["/scratch/hpcuser/a.txt"] == b"hello"


def test_wait_for_job_tolerates_transient_errors(
    hook: HpcHook, api: RealApi, sleeps: list[float]
) -> None:
    job = api.add_job(plan=["RUNNING", "COMPLETED"])
    api.inject("GET", "/jobs/", *[httpx.Response(503)] * 6)  # one call's worth of retries
    seen: list[str] = []
    summary = hook.wait_for_job(job.job_id, poll_interval=5, on_poll=lambda s: seen.append(s.state))
    assert summary.succeeded and seen == ["RUNNING", "COMPLETED"]


def test_error_budget() -> None:
    budget = ErrorBudget(window=10, not_found_until=5)
    assert budget.allows(HpcNotFoundError(404, "Job not found"), now=1)
    assert not ErrorBudget(not_found_until=5).allows(HpcNotFoundError(404, "x"), now=6)
    assert budget.allows(HpcApiError(503, "x"), now=2)
    assert not budget.allows(HpcApiError(503, "x"), now=13)
    assert not ErrorBudget().allows(HpcApiError(403, "x"), now=0)
    assert ErrorBudget().allows(HpcConnectionError("down"), now=0)


def test_malformed_answers_are_errors_not_crashes(hook: HpcHook, api: RealApi) -> None:
    api.inject("GET", "/jobs/", httpx.Response(200, text="<html>proxy</html>"))
    with pytest.raises(HpcApiError, match="unexpected answer") as info:
        hook.get_job("1")
    assert not info.value.transient
    api.inject("POST", "/jobs$", httpx.Response(201, json={"id": "x"}))
    with pytest.raises(HpcApiError, match="unexpected answer"):
        hook.submit_job(JobSpec(working_directory="/w", script="x"))


def test_fresh_hook_shares_settings_not_clients(hook: HpcHook) -> None:
    hook.list_systems()
    other = hook.fresh()
    assert other._config is hook._config and other._client is None
    assert other.list_systems()[0].name == SYSTEM
