"""The three images, started with testcontainers: pyfirecrest against the containerised
server and site, an example DAG in the containerised Airflow, the job in ``sacct``."""

from __future__ import annotations

import time

import firecrest
import pytest

from tests.docker.stack import AirflowApi, Stack, run, sacct

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


class Token:
    def __init__(self, token: str) -> None:
        self.token = token

    def get_access_token(self) -> str:
        return self.token


def test_images_are_small_and_clean(containers: Stack) -> None:
    """Non-root server and Airflow, no compiler and no pip in any final image."""
    assert containers.airflow is not None
    assert run(containers.server, "id", "-u").strip() == "10001"
    assert run(containers.airflow, "id", "-u").strip() == "50000"
    for container in (containers.site, containers.server, containers.airflow):
        code, _ = container.get_wrapped_container().exec_run(
            ["sh", "-c", "command -v gcc cc pip pip3 || test -e /opt/venv/bin/pip"]
        )
        assert code != 0, "a compiler or pip is in the final image"


def test_site_container_runs_slurm(containers: Stack) -> None:
    assert "idle" in run(containers.site, "sinfo", "-h", "-o", "%t")
    assert containers.ports.cluster in run(
        containers.site, "sacctmgr", "-n", "-P", "list", "cluster"
    )
    env = containers.slurm_env()
    assert f"HPC_SITE_SSH_PORT={containers.ports.ssh}" in env


def test_pyfirecrest_against_the_containers(containers: Stack) -> None:
    client = firecrest.v2.Firecrest(
        firecrest_url=containers.url, authorization=Token(containers.token())
    )
    system = containers.ports.cluster
    assert [s["name"] for s in client.systems()] == [system]
    assert {p["name"] for p in client.partitions(system)} == {"compute", "xfer"}
    assert client.userinfo(system)["user"]["name"] == "hpcuser1"
    scratch = "/var/lib/hpcsite/fs/scratch/hpcuser1"
    names = {entry["name"] for entry in client.list_files(system, scratch)}
    assert isinstance(names, set)
    script = "#!/bin/bash\n#SBATCH --job-name=docker-pyfc\necho hello from $(hostname)\n"
    job_id = str(client.submit(system, working_dir=scratch, script_str=script)["jobId"])
    [info] = client.wait_for_job(system, job_id, timeout=180)
    assert info["status"]["state"] == "COMPLETED"
    record = sacct(containers.site, job_id)
    assert record == {"id": job_id, "user": "hpcuser1", "state": "COMPLETED", "exit_code": "0:0"}
    [meta] = client.job_metadata(system, job_id)
    output = client.view(system, meta["standardOutput"])
    assert output.startswith("hello from ")


def test_example_dag_in_the_airflow_container(containers: Stack) -> None:
    assert containers.airflow is not None
    api = AirflowApi(containers.airflow_url)
    dag = "hpc_submit_and_wait"
    api.wait_dag(dag, timeout=180)
    start = time.monotonic()
    run_id = api.trigger(dag, {"system": containers.ports.cluster, "steps": 2})
    outcome = api.wait_run(dag, run_id, timeout=300)
    tasks = api.task_states(dag, run_id)
    assert outcome["state"] == "success", (tasks, containers.airflow.get_logs())
    print(f"docker: {dag} ran in {time.monotonic() - start:.1f} s: {tasks}")
    result = api.xcom(dag, run_id, "simulate")
    job_id = str(result["job_id"] if isinstance(result, dict) else result)
    record = sacct(containers.site, job_id)
    assert record["user"] == "hpcuser1"
    assert record["state"] == "COMPLETED"
