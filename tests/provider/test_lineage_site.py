"""OpenLineage of the submit operator, through a real Airflow against the real site.

The four real components (scheduler with the LocalExecutor, dag-processor, triggerer,
api-server) run ``tests/provider/lineage_dags/hpc_lineage.py``: a file is staged in and a
deferrable job reads it and writes its result. OpenLineage's file transport writes
every event the components and task processes emit to one JSON-lines file; the test
reads the task's START and COMPLETE events: the job as run facets (``hpc_job`` with
the job id, system, final state and accounting; ``externalQuery``) and the operator's
``inputs`` / ``outputs`` as datasets in the namespace ``hpc://<system>``; and the
upload's COMPLETE event: the worker's file read, the job's input written.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.provider.airflow_stack import AirflowStack, airflow_env
from tests.server import ApiServer
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e, pytest.mark.slow]

USER = "hpcuser1"
DAG = "hpc_lineage"
DAGS = Path(__file__).parent / "lineage_dags"
NAMESPACE = "hpcgate-tests"


@pytest.fixture(scope="module")
def alice(api_server: ApiServer) -> Iterator[httpx.Client]:
    with api_server.client(USER) as client:
        yield client


@pytest.fixture(scope="module")
def stack(api_server: ApiServer, airflow_home: Callable[[str], Path]) -> Iterator[AirflowStack]:
    home = airflow_home("airflow-lineage")
    conn = {
        "conn_type": "hpc",
        "host": api_server.url,
        "password": api_server.token(USER, lifetime_seconds=3600),
        "extra": {"system": api_server.system},
    }
    env = airflow_env(
        home,
        conn=conn,
        dags_folder=DAGS,
        extra={
            "HPC_SYSTEM": api_server.system,
            "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
                {"type": "file", "log_file_path": str(home / "openlineage.jsonl"), "append": True}
            ),
            "AIRFLOW__OPENLINEAGE__NAMESPACE": NAMESPACE,
            # a task's events are emitted by a forked child the task waits for at most
            # this long (10 s by default, which a busy 2-core machine can overrun)
            "AIRFLOW__OPENLINEAGE__EXECUTION_TIMEOUT": "60",
        },
    )
    # Not the repository root on the path: its hpcgate.egg-info would list hpcgate's plugin
    # twice, and Airflow's task SDK drops every plugin after a duplicate name, OpenLineage's
    # listener included (see tests.provider.dagrun._drop_repo_root); the DAG needs only
    # the installed provider.
    env.pop("PYTHONPATH")
    stack = AirflowStack(env).start()
    try:
        stack.wait_ready(dag_ids=[DAG], timeout=120)
        yield stack
    finally:
        stack.stop()


def lineage_events(stack: AirflowStack) -> list[dict[str, Any]]:
    path = stack.home / "openlineage.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def without_nulls(value: Any) -> Any:
    """``value`` as OpenLineage serialises it: keys whose value is None left out."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def names(datasets: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(d["namespace"], d["name"]) for d in datasets]


def test_the_job_and_its_files_are_reported_as_lineage(
    stack: AirflowStack,
    api_server: ApiServer,
    alice: httpx.Client,
    site_env: SiteEnv,
    tmp_path: Path,
) -> None:
    system = api_server.system
    workdir = f"{site_env.scratch(USER)}/lineage-{uuid.uuid4().hex[:8]}"
    local_input = tmp_path / "input.txt"
    local_input.write_text("a\nb\nc\n")
    try:
        run_id = stack.trigger(DAG, conf={"workdir": workdir, "local_input": str(local_input)})
        run = stack.wait_run(DAG, run_id, timeout=240)
        assert run["state"] == "success", stack.diagnostics(DAG, run_id)
        result = stack.xcom(DAG, run_id, "count")
    finally:
        alice.delete(f"/filesystem/{system}/ops/rm", params={"path": workdir})
    job_id = result["job_id"]
    assert result["state"] == "COMPLETED"

    events = lineage_events(stack)
    seen = [(e["eventType"], e["job"]["name"]) for e in events]
    task = [e for e in events if e["job"]["name"] == f"{DAG}.count"]
    kinds = [e["eventType"] for e in task]
    assert "START" in kinds and kinds[-1] == "COMPLETE", seen
    start, complete = task[0], task[-1]
    assert start["eventType"] == "START"
    assert start["run"]["runId"] == complete["run"]["runId"]
    assert complete["job"]["namespace"] == NAMESPACE

    # datasets: the staged input and the job's output, by absolute path on the system
    inputs = [(f"hpc://{system}", f"{workdir}/input.txt")]
    outputs = [(f"hpc://{system}", f"{workdir}/result.txt")]
    assert names(complete["inputs"]) == inputs
    assert names(complete["outputs"]) == outputs
    assert names(start["inputs"]) == inputs  # known before the job runs
    assert names(start["outputs"]) == outputs

    # the staging task: the worker's file in, the job's input out (one lineage graph)
    [staged] = [
        e for e in events if e["job"]["name"] == f"{DAG}.stage_in" and e["eventType"] == "COMPLETE"
    ]
    assert names(staged["inputs"]) == [("file", str(local_input))]
    assert names(staged["outputs"]) == inputs

    # run facets: the job (id, system, final state, accounting) and the external query
    facets = complete["run"]["facets"]
    assert facets["externalQuery"]["externalQueryId"] == job_id
    assert facets["externalQuery"]["source"] == f"hpc://{system}"
    hpc_job = facets["hpc_job"]
    assert hpc_job["system"] == system
    assert hpc_job["_schemaURL"].endswith("HpcJobRunFacet.json")
    [job] = hpc_job["jobs"]
    assert (job["job_id"], job["state"], job["action"]) == (job_id, "COMPLETED", "complete")
    accounting = job["accounting"]
    # what the task returned (checked against sacct in test_resubmission_site.py)
    assert accounting == without_nulls(result["accounting"])
    assert (accounting["job_id"], accounting["state"]) == (job_id, "COMPLETED")
    for field in ("elapsed_seconds", "queue_wait_seconds", "alloc_cpus", "cpu_hours"):
        assert field in accounting, (field, accounting)
    assert accounting["alloc_cpus"] >= 1
