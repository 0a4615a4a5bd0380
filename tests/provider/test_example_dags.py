"""The example DAGs: they parse, and each runs end to end with ``dag.test()`` (deferral and
triggers included) against the real application over a fake cluster (``dagrun --fake``).
``test_integration_dags`` reruns them against a real server and the local site."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.provider.airflow_stack import DAGS, airflow_env, dagrun_outcome, start_dagrun


def test_example_dags_parse() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) >= {
        "hpc_submit_and_wait",
        "hpc_stage_array_stage",
        "hpc_job_chain",
        "hpc_sensor_external_job",
        "hpc_object_storage",
    }
    # defaults that work as they are: an empty workdir is the user's own directory,
    # resolved at run time (``hpc_workdir``); the trigger form shows and takes it
    for dag_id in ("hpc_submit_and_wait", "hpc_stage_array_stage", "hpc_job_chain"):
        dag = bag.dags[dag_id]
        assert "hpc_workdir" in dag.user_defined_macros
        assert dag.params["workdir"] == os.environ.get("HPC_WORKDIR", "")
        assert "trigger form" in (dag.doc_md or "")
    storage = bag.dags["hpc_object_storage"]
    assert [t.task_id for t in storage.topological_sort()] == [
        "write_input",
        "sum_job",
        "read_result",
    ]
    simulate = bag.dags["hpc_submit_and_wait"].get_task("simulate")
    assert simulate.deferrable and simulate.retries == 2
    chain = bag.dags["hpc_job_chain"]
    assert {t.task_id for t in chain.get_task("analyse").upstream_list} == {"simulate"}
    sensor = bag.dags["hpc_sensor_external_job"].get_task("wait_for_job")
    assert sensor.deferrable


EXAMPLES = {
    "hpc_submit_and_wait": (),
    "hpc_stage_array_stage": (),
    "hpc_job_chain": (),
    "hpc_sensor_external_job": ("--external-job",),
}


# replaced inside the run by the in-process server's address and token (``dagrun --fake``)
FAKE_CONN = {"conn_type": "hpc", "host": "http://hpc.test", "password": "static-token-123"}


@pytest.fixture(scope="module")
def example_runs(airflow_home: Callable[[str], Path]) -> dict[str, dict]:
    """Every example DAG run once with ``dag.test()``, concurrently, each in its own
    AIRFLOW_HOME holding a copy of the session's migrated sqlite database."""
    running = {}
    for dag_id, extra in EXAMPLES.items():
        home = airflow_home(dag_id)
        env = airflow_env(
            home,
            conn=FAKE_CONN,
            extra={
                "HPC_SYSTEM": "hpcsite",
                "HPC_WORKDIR": "/scratch/hpcuser",
                "HPC_LOCAL_DIR": str(home / "staging"),
            },
        )
        running[dag_id] = start_dagrun(dag_id, env, "--fake", *extra)
    return {dag_id: dagrun_outcome(process) for dag_id, process in running.items()}


@pytest.mark.slow
def test_submit_and_wait(example_runs: dict[str, dict]) -> None:
    outcome = example_runs["hpc_submit_and_wait"]
    assert outcome["state"] == "success", outcome
    assert set(outcome["tasks"].values()) == {"success"}
    assert outcome["requests"].count("POST /compute/hpcsite/jobs") == 1
    [job] = outcome["jobs"].values()
    assert job["name"].startswith("simulate-") and job["state"] == "COMPLETED"


@pytest.mark.slow
def test_stage_array_stage(example_runs: dict[str, dict]) -> None:
    outcome = example_runs["hpc_stage_array_stage"]
    assert outcome["state"] == "success", outcome
    assert [k for k in outcome["tasks"] if k.startswith("stage_out[")] == [
        f"stage_out[{i}]" for i in range(4)
    ]
    assert outcome["requests"].count("POST /filesystem/hpcsite/ops/upload") == 1
    assert outcome["requests"].count("GET /filesystem/hpcsite/ops/download") == 4


@pytest.mark.slow
def test_job_chain(example_runs: dict[str, dict]) -> None:
    outcome = example_runs["hpc_job_chain"]
    assert outcome["state"] == "success", outcome
    assert outcome["requests"].count("POST /compute/hpcsite/jobs") == 3
    jobs = {
        j["name"].removeprefix("hpcgate-").split("-")[0]: (job_id, j)
        for job_id, j in outcome["jobs"].items()
    }
    assert sorted(jobs) == ["analyse", "prepare", "simulate", "transfer"]
    assert jobs["simulate"][1]["dependencies"] == [jobs["prepare"][0]]
    assert jobs["analyse"][1]["dependencies"] == [jobs["simulate"][0]]
    assert outcome["requests"].count("POST /filesystem/hpcsite/transfer/cp") == 1
    assert outcome["requests"].count("POST /filesystem/hpcsite/transfer/mv") == 1


@pytest.mark.slow
def test_sensor_on_external_job(example_runs: dict[str, dict]) -> None:
    outcome = example_runs["hpc_sensor_external_job"]
    assert outcome["state"] == "success", outcome
    assert not any(r.startswith(("POST /compute", "DELETE")) for r in outcome["requests"])


def test_main_commands_airflow_script_imports_and_explains_itself() -> None:
    """``scripts/airflow_e2e`` (the main command's Airflow part) runs with the venv's Python."""
    import subprocess
    import sys

    script = DAGS.parent / "scripts" / "airflow_e2e"
    result = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "--url" in result.stdout and "--workdir" in result.stdout
