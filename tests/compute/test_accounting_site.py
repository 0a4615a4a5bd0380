"""Job accounting through the real server, compared with ``sacct`` run directly."""

from __future__ import annotations

import shlex
import time
import uuid

import httpx
import pytest

from tests.api.helpers import submit, wait_final
from tests.server import ApiServer
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e]

FIELDS = (
    "JobID,State,ExitCode,Submit,Start,End,ElapsedRaw,NNodes,AllocCPUS,TotalCPU,CPUTimeRAW,"
    "MaxRSS,NodeList,Account,Partition"
)
BUSY = 'end=$((SECONDS+2)); while [ "$SECONDS" -lt "$end" ]; do :; done'


async def sacct_direct(ssh_as, user: str, job_id: str) -> dict[str, dict[str, str]]:  # type: ignore[no-untyped-def]
    """``sacct -P`` as the user, by record id."""
    conn = await ssh_as(user)
    argv = ["sacct", "-P", "-n", "-o", FIELDS, "-j", job_id]
    result = await conn.run("SLURM_TIME_FORMAT=%s " + shlex.join(argv), check=True)
    names = FIELDS.split(",")
    records = [
        dict(zip(names, line.split("|"), strict=True)) for line in str(result.stdout).splitlines()
    ]
    return {record["JobID"]: record for record in records}


def cpu_seconds(text: str) -> float:
    days, _, clock = text.rpartition("-")
    parts = [float(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    return (int(days or 0) * 24 + parts[0]) * 3600 + parts[1] * 60 + parts[2]


def accounting(client: httpx.Client, system: str, job_id: str) -> list[dict]:  # type: ignore[type-arg]
    """The endpoint's records once accounting has settled (sacct lags the controller)."""
    deadline = time.monotonic() + 60
    while True:
        response = client.get(f"/compute/{system}/jobs/{job_id}/accounting")
        assert response.status_code in (200, 404), response.text
        if response.status_code == 200:
            jobs = response.json()["jobs"]
            if all(j["end"] and j["state"] == "COMPLETED" for j in jobs) and jobs[0]["steps"]:
                return jobs  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, response.text
        time.sleep(0.5)


async def test_accounting_matches_sacct(api_server: ApiServer, site_env: SiteEnv, ssh_as) -> None:
    alice = api_server.client("hpcuser1")
    job_id = submit(
        alice,
        api_server.system,
        {
            "name": f"acct-{uuid.uuid4().hex[:6]}",
            "workingDirectory": site_env.scratch("hpcuser1"),
            "cpusPerTask": 2,
            "standardOutput": "/dev/null",
            "script": f"#!/bin/bash\nsrun -n1 bash -c {shlex.quote(BUSY)}\n",
        },
    )
    assert wait_final(alice, api_server.system, job_id)["status"]["state"] == "COMPLETED"
    accounting(alice, api_server.system, job_id)  # settled (sacct lags the controller)
    direct = await sacct_direct(ssh_as, "hpcuser1", job_id)
    [record] = accounting(alice, api_server.system, job_id)
    row = direct[job_id]
    assert record["jobId"] == job_id and record["state"] == row["State"] == "COMPLETED"
    assert record["exitCode"] == 0
    assert record["submit"] == int(row["Submit"]) and record["start"] == int(row["Start"])
    assert record["end"] == int(row["End"])
    assert record["queueWaitSeconds"] == int(row["Start"]) - int(row["Submit"])
    assert record["elapsedSeconds"] == int(row["ElapsedRaw"]) >= 2
    assert record["allocNodes"] == int(row["NNodes"]) == 1
    assert record["allocCpus"] == int(row["AllocCPUS"]) == 2
    assert record["nodeHours"] == pytest.approx(int(row["ElapsedRaw"]) / 3600, abs=1e-6)
    assert record["cpuHours"] == pytest.approx(int(row["CPUTimeRAW"]) / 3600, abs=1e-6)
    assert record["totalCpuSeconds"] == pytest.approx(cpu_seconds(row["TotalCPU"]), abs=0.01)
    efficiency = cpu_seconds(row["TotalCPU"]) / (int(row["ElapsedRaw"]) * 2)
    assert record["cpuEfficiency"] == pytest.approx(efficiency, abs=1e-3)
    assert 0 < record["cpuEfficiency"] <= 1
    # the API answers null where sacct prints nothing (sacct may leave Partition empty)
    assert (record["nodeList"], record["account"], record["partition"]) == (
        row["NodeList"] or None,
        row["Account"] or None,
        row["Partition"] or None,
    )
    steps = {step["id"]: step for step in record["steps"]}
    assert set(steps) == set(direct) - {job_id}
    for step_id, step in steps.items():
        assert step["state"] == direct[step_id]["State"]
        assert step["elapsedSeconds"] == int(direct[step_id]["ElapsedRaw"])
    rss = [r["MaxRSS"] for key, r in direct.items() if key != job_id and r["MaxRSS"]]
    assert (record["maxRssBytes"] is None) == (not rss)  # this site may not record RSS


async def test_accounting_follows_job_ownership(api_server: ApiServer, site_env: SiteEnv) -> None:
    alice, bob = api_server.client("hpcuser1"), api_server.client("hpcuser2")
    job_id = submit(
        alice,
        api_server.system,
        {
            "workingDirectory": site_env.scratch("hpcuser1"),
            "standardOutput": "/dev/null",
            "script": "#!/bin/bash\ntrue\n",
        },
    )
    wait_final(alice, api_server.system, job_id)
    other = bob.get(f"/compute/{api_server.system}/jobs/{job_id}/accounting")
    assert other.status_code == 404 and "Job not found" in other.text
    missing = alice.get(f"/compute/{api_server.system}/jobs/999999999/accounting")
    assert missing.status_code == 404 and "Job not found" in missing.text
    bad = alice.get(f"/compute/{api_server.system}/jobs/1;id/accounting")
    assert bad.status_code in (400, 404, 422)
