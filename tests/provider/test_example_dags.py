"""The example DAGs: they parse, and each runs end to end with ``dag.test()`` (deferral and
triggers included) against the fake API. The integration step reruns them against the
real server by dropping ``--fake`` (see ``dagrun.py``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags_examples"
AIRFLOW = str(Path(sys.executable).parent / "airflow")


def test_example_dags_parse() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {
        "hpc_submit_and_wait",
        "hpc_stage_array_stage",
        "hpc_job_chain",
        "hpc_sensor_external_job",
    }
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


def _env(home: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW_CONN_HPC_DEFAULT": json.dumps(
            {"conn_type": "hpc", "host": "http://hpc.test", "password": "static-token-123"}
        ),
        "HPC_SYSTEM": "hpcsite",
        "HPC_WORKDIR": "/scratch/hpcuser",
        "HPC_LOCAL_DIR": str(home / "staging"),
        "PYTHONPATH": str(REPO),
    }


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every example DAG run once with ``dag.test()``, concurrently, each in its own
    AIRFLOW_HOME holding a copy of one migrated sqlite database."""
    base = tmp_path_factory.mktemp("airflow-home")
    migrate = subprocess.run(
        [AIRFLOW, "db", "migrate"], env=_env(base), capture_output=True, text=True, timeout=300
    )
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    running = {}
    for dag_id, extra in EXAMPLES.items():
        home = tmp_path_factory.mktemp(dag_id)
        shutil.copy(base / "airflow.db", home / "airflow.db")
        command = [sys.executable, "-m", "tests.provider.dagrun", dag_id, "--fake", *extra]
        running[dag_id] = subprocess.Popen(
            command,
            env=_env(home),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    outcomes: dict[str, dict] = {}
    for dag_id, process in running.items():
        stdout, stderr = process.communicate(timeout=300)
        lines = [line for line in stdout.splitlines() if line.startswith("DAGRUN ")]
        assert process.returncode == 0 and lines, (dag_id, stdout[-4000:], stderr[-4000:])
        outcomes[dag_id] = json.loads(lines[-1].removeprefix("DAGRUN "))
    return outcomes


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
    jobs = {j["name"].split("-")[0]: (job_id, j) for job_id, j in outcome["jobs"].items()}
    assert sorted(jobs) == ["analyse", "prepare", "simulate"]
    assert jobs["simulate"][1]["dependencies"] == [jobs["prepare"][0]]
    assert jobs["analyse"][1]["dependencies"] == [jobs["simulate"][0]]


@pytest.mark.slow
def test_sensor_on_external_job(example_runs: dict[str, dict]) -> None:
    outcome = example_runs["hpc_sensor_external_job"]
    assert outcome["state"] == "success", outcome
    assert not any(r.startswith(("POST /compute", "DELETE")) for r in outcome["requests"])
