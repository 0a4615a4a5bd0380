"""/compute through the real server against the real site, as both users."""

from __future__ import annotations

import shlex
import uuid
from pathlib import Path

import httpx
import pytest

from tests.api.helpers import job_state, submit, wait_final, wait_state
from tests.server import ApiServer
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e]


@pytest.fixture(scope="module")
def alice(api_server: ApiServer) -> httpx.Client:
    return api_server.client("hpcuser1")


@pytest.fixture(scope="module")
def bob(api_server: ApiServer) -> httpx.Client:
    return api_server.client("hpcuser2")


def scratch(site_env: SiteEnv, user: str = "hpcuser1") -> str:
    return site_env.scratch(user)


async def read_remote(ssh_as, user: str, path: str) -> str:
    conn = await ssh_as(user)
    return str((await conn.run(shlex.join(["cat", path]), check=True)).stdout)


async def test_submit_inline_script_completes(api_server, alice, site_env, ssh_as) -> None:
    out = f"{scratch(site_env)}/api-{uuid.uuid4().hex[:8]}.out"
    job_id = submit(
        alice,
        api_server.system,
        {
            "name": "api-inline",
            "workingDirectory": scratch(site_env),
            "script": "#!/bin/bash\necho hello from $(whoami)\n",
            "standardOutput": out,
        },
    )
    job = wait_final(alice, api_server.system, job_id)
    assert job["status"]["state"] == "COMPLETED"
    assert job["status"]["exitCode"] == 0
    assert job["name"] == "api-inline"
    assert job["user"] == "hpcuser1"
    assert job["workingDirectory"] == scratch(site_env)
    assert await read_remote(ssh_as, "hpcuser1", out) == "hello from hpcuser1\n"


def test_failing_job_reports_exit_code(api_server, alice, site_env) -> None:
    job_id = submit(
        alice,
        api_server.system,
        {"workingDirectory": scratch(site_env), "script": "#!/bin/bash\nexit 3\n"},
    )
    job = wait_final(alice, api_server.system, job_id)
    assert job["status"]["state"] == "FAILED"
    assert job["status"]["exitCode"] == 3


def test_just_submitted_job_is_never_404(api_server, alice, site_env) -> None:
    for _ in range(3):
        job_id = submit(
            alice,
            api_server.system,
            {"workingDirectory": scratch(site_env), "script": "#!/bin/bash\ntrue\n"},
        )
        job = job_state(alice, api_server.system, job_id)
        assert str(job["jobId"]) == job_id


def test_cancel_and_ownership(api_server, alice, bob, site_env) -> None:
    system = api_server.system
    job_id = submit(
        alice,
        system,
        {"workingDirectory": scratch(site_env), "script": "#!/bin/bash\nsleep 120\n"},
    )
    wait_state(alice, system, job_id, "RUNNING")
    # another user can neither cancel it nor read its script
    denied = bob.delete(f"/compute/{system}/jobs/{job_id}")
    assert denied.status_code in (403, 404), denied.text
    metadata = bob.get(f"/compute/{system}/jobs/{job_id}/metadata")
    assert metadata.status_code in (403, 404), metadata.text
    assert "sleep 120" not in metadata.text
    assert job_state(alice, system, job_id)["status"]["state"] == "RUNNING"
    # the owner can
    assert alice.delete(f"/compute/{system}/jobs/{job_id}").status_code == 204
    assert wait_final(alice, system, job_id)["status"]["state"] == "CANCELLED"


def test_metadata_has_script_and_paths(api_server, alice, site_env) -> None:
    script = "#!/bin/bash\n#SBATCH --job-name=meta\necho 'quoted $HOME' \"x\"\n"
    out = f"{scratch(site_env)}/meta-%j.out"
    job_id = submit(
        alice,
        api_server.system,
        {"workingDirectory": scratch(site_env), "script": script, "standardOutput": out},
    )
    response = alice.get(f"/compute/{api_server.system}/jobs/{job_id}/metadata")
    assert response.status_code == 200, response.text
    [meta] = response.json()["jobs"]
    assert str(meta["jobId"]) == job_id
    assert "echo 'quoted $HOME' \"x\"" in meta["script"]
    assert meta["standardOutput"] == out.replace("%j", job_id)


def test_unknown_job_is_404(api_server, alice) -> None:
    response = alice.get(f"/compute/{api_server.system}/jobs/99999999")
    assert response.status_code == 404
    assert "Job not found" in response.json()["message"]
    assert alice.delete(f"/compute/{api_server.system}/jobs/99999999").status_code == 404


def test_malformed_job_id_is_400(api_server, alice) -> None:
    response = alice.get(f"/compute/{api_server.system}/jobs/1;id")
    assert response.status_code in (400, 404)
    assert response.json()["message"]


def test_env_list_is_a_clean_400(api_server, alice, site_env) -> None:
    response = alice.post(
        f"/compute/{api_server.system}/jobs",
        json={
            "job": {
                "workingDirectory": scratch(site_env),
                "script": "#!/bin/bash\ntrue\n",
                "env": ["A=1"],
            }
        },
    )
    assert response.status_code == 400
    body = response.json()
    assert body["errorType"] == "validation"
    assert any(field["name"].endswith("env") for field in body["data"]["fields"])


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("partition", "nosuchpartition", "partition"),
        ("account", "nosuchaccount", "account"),
        ("qos", "nosuchqos", "qos"),
    ],
)
def test_scheduler_rejections_are_400(api_server, alice, site_env, field, value, fragment) -> None:
    response = alice.post(
        f"/compute/{api_server.system}/jobs",
        json={
            "job": {
                "workingDirectory": scratch(site_env),
                "script": "#!/bin/bash\ntrue\n",
                field: value,
            }
        },
    )
    assert response.status_code == 400, response.text
    assert fragment in response.json()["message"].lower()


def test_unknown_system_is_404(api_server, alice) -> None:
    response = alice.get("/compute/nosuchsystem/jobs")
    assert response.status_code == 404
    assert "System not found" in response.json()["message"]


def test_system_name_is_case_insensitive(api_server, alice) -> None:
    response = alice.get(f"/compute/{api_server.system.upper()}/jobs")
    assert response.status_code == 200, response.text


def test_list_jobs_filters_by_name_and_accepts_blank_filters(api_server, alice, site_env) -> None:
    name = f"listed-{uuid.uuid4().hex[:6]}"
    job_id = submit(
        alice,
        api_server.system,
        {"name": name, "workingDirectory": scratch(site_env), "script": "#!/bin/bash\ntrue\n"},
    )
    wait_final(alice, api_server.system, job_id)
    response = alice.get(
        f"/compute/{api_server.system}/jobs",
        params={"name": name, "allusers": "false", "account": "", "time_window": "24h"},
    )
    assert response.status_code == 200, response.text
    jobs = response.json()["jobs"]
    assert [str(j["jobId"]) for j in jobs] == [job_id]
    everything = alice.get(
        f"/compute/{api_server.system}/jobs", params={"name": "", "time_window": ""}
    )
    assert everything.status_code == 200
    assert job_id in {str(j["jobId"]) for j in everything.json()["jobs"]}


def test_bob_does_not_see_alices_jobs(api_server, alice, bob, site_env) -> None:
    name = f"private-{uuid.uuid4().hex[:6]}"
    job_id = submit(
        alice,
        api_server.system,
        {"name": name, "workingDirectory": scratch(site_env), "script": "#!/bin/bash\ntrue\n"},
    )
    response = bob.get(f"/compute/{api_server.system}/jobs", params={"name": name})
    assert response.status_code == 200
    assert job_id not in {str(j["jobId"]) for j in response.json()["jobs"] or []}


async def test_extension_fields_reach_slurm(api_server, alice, site_env, ssh_as) -> None:
    out = f"{scratch(site_env)}/ext-{uuid.uuid4().hex[:8]}"
    first = submit(
        alice,
        api_server.system,
        {"workingDirectory": scratch(site_env), "script": f"#!/bin/bash\necho first > {out}\n"},
    )
    second = submit(
        alice,
        api_server.system,
        {
            "workingDirectory": scratch(site_env),
            "script": f"#!/bin/bash\necho $SLURM_ARRAY_TASK_ID $SLURM_CPUS_PER_TASK >> {out}\n",
            "array": "0-2",
            "cpusPerTask": 2,
            "timeLimit": "00:05:00",
            "dependencies": [first],
            "partition": "compute",
        },
    )
    tasks = [wait_final(alice, api_server.system, f"{second}_{i}") for i in range(3)]
    assert {t["status"]["state"] for t in tasks} == {"COMPLETED"}
    lines = (await read_remote(ssh_as, "hpcuser1", out)).splitlines()
    assert lines[0] == "first"
    assert sorted(lines[1:]) == ["0 2", "1 2", "2 2"]


INJECTIONS = ["; touch {p}", "$(touch {p})", "`touch {p}`", "' ; touch {p} ; '", '" ; touch {p}']


@pytest.mark.parametrize("template", INJECTIONS)
async def test_injection_in_fields_is_never_executed(
    api_server, alice, site_env, ssh_as, template
) -> None:
    marker = f"/tmp/hpcgate-pwned-{uuid.uuid4().hex[:8]}"
    payload = template.format(p=marker)
    base = {"workingDirectory": scratch(site_env), "script": "#!/bin/bash\nprintenv PAYLOAD\n"}
    attempts = [
        {"name": payload},
        {"account": payload},
        {"partition": payload},
        {"reservation": payload},
        {"constraints": payload},
        {"workingDirectory": scratch(site_env) + "/" + payload},
        {"standardOutput": scratch(site_env) + "/" + payload},
        {"env": {"PAYLOAD": payload}},
    ]
    accepted = []
    for extra in attempts:
        response = alice.post(f"/compute/{api_server.system}/jobs", json={"job": {**base, **extra}})
        assert response.status_code in (201, 400), (extra, response.text)
        if response.status_code == 201:
            accepted.append(response.json()["jobId"])
    for job_id in accepted:
        wait_final(alice, api_server.system, job_id)
    assert not Path(marker).exists(), f"{payload!r} was executed"
    conn = await ssh_as("hpcuser1")
    assert (await conn.run(shlex.join(["test", "-e", marker]), check=False)).exit_status != 0


async def test_env_values_are_passed_literally(api_server, alice, site_env, ssh_as) -> None:
    out = f"{scratch(site_env)}/env-{uuid.uuid4().hex[:8]}"
    value = "a b 'c' \"d\" $(id) `id` ; | & $HOME"
    job_id = submit(
        alice,
        api_server.system,
        {
            "workingDirectory": scratch(site_env),
            "script": f"#!/bin/bash\nprintf '%s' \"$TRICKY\" > {out}\n",
            "env": {"TRICKY": value},
        },
    )
    assert wait_final(alice, api_server.system, job_id)["status"]["state"] == "COMPLETED"
    assert await read_remote(ssh_as, "hpcuser1", out) == value


def test_script_path_submission(api_server, alice, site_env) -> None:
    response = alice.post(
        f"/compute/{api_server.system}/jobs",
        json={
            "job": {
                "workingDirectory": scratch(site_env),
                "scriptPath": f"{scratch(site_env)}/does-not-exist.sh",
            }
        },
    )
    assert response.status_code == 400, response.text


async def test_attach_runs_inside_the_allocation(api_server, alice, site_env, ssh_as) -> None:
    marker = f"{scratch(site_env)}/attach-{uuid.uuid4().hex[:8]}"
    job_id = submit(
        alice,
        api_server.system,
        {"workingDirectory": scratch(site_env), "script": "#!/bin/bash\nsleep 60\n"},
    )
    wait_state(alice, api_server.system, job_id, "RUNNING")
    response = alice.put(
        f"/compute/{api_server.system}/jobs/{job_id}/attach",
        json={"command": f"echo attached $SLURM_JOB_ID > {marker}"},
    )
    assert response.status_code == 204, response.text
    assert await read_remote(ssh_as, "hpcuser1", marker) == f"attached {job_id}\n"
    alice.delete(f"/compute/{api_server.system}/jobs/{job_id}")


def test_request_id_is_echoed(api_server, alice) -> None:
    response = alice.get(
        f"/compute/{api_server.system}/jobs", headers={"X-Request-ID": "req-12345"}
    )
    assert response.headers["x-request-id"] == "req-12345"
    assert response.headers["f7t-appversion"] == "2.6.0"
