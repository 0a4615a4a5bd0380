"""How the submit operator's lineage is built (OpenLineage's own classes, no Airflow run).

The events themselves, emitted by the real components, are tested in
``test_lineage_site.py``.
"""

from __future__ import annotations

from pathlib import Path

from openlineage.client.serde import Serde

from airflow_provider_hpc.operators.files import HpcDownloadOperator, HpcUploadOperator
from airflow_provider_hpc.operators.job import HpcSubmitJobOperator
from airflow_provider_hpc.operators.lineage import staged
from airflow_provider_hpc.operators.resubmission import JobLedger
from tests.provider.conftest import SYSTEM, make_context
from tests.provider.realapi import RealApi


def operator(**kwargs: object) -> HpcSubmitJobOperator:
    return HpcSubmitJobOperator(
        task_id="count",
        working_directory="/scratch/u/run",
        script="#!/bin/bash\ntrue\n",
        inputs=["input.txt", "/data/shared/ref.fa"],
        outputs=["out/../result.txt"],
        **kwargs,  # type: ignore[arg-type]
    )


def test_start_has_the_datasets_of_the_operators_own_system() -> None:
    lineage = operator(system="hpcsite").get_openlineage_facets_on_start()
    assert [(d.namespace, d.name) for d in lineage.inputs] == [
        ("hpc://hpcsite", "/scratch/u/run/input.txt"),
        ("hpc://hpcsite", "/data/shared/ref.fa"),
    ]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [
        ("hpc://hpcsite", "/scratch/u/run/result.txt")
    ]
    assert lineage.run_facets == {}


def test_start_without_a_system_leaves_the_datasets_to_complete() -> None:
    # the system would come from the connection, not looked up in OpenLineage's child
    assert operator().get_openlineage_facets_on_start() is None


def test_complete_has_the_jobs_as_run_facets() -> None:
    task = operator()
    task._system, task._job_id = "hpcsite", "13"
    task._ledger = JobLedger(
        1,
        [
            {"job_id": "12", "state": "NODE_FAIL", "action": "resubmit", "accounting": None},
            {"job_id": "13", "state": "COMPLETED", "action": "complete", "accounting": None},
        ],
    )
    lineage = task.get_openlineage_facets_on_complete(None)
    assert [d.name for d in lineage.outputs] == ["/scratch/u/run/result.txt"]
    facets = {name: Serde.to_dict(facet) for name, facet in lineage.run_facets.items()}
    assert facets["externalQuery"]["externalQueryId"] == "13"
    assert facets["externalQuery"]["source"] == "hpc://hpcsite"
    hpc_job = facets["hpc_job"]
    assert hpc_job["system"] == "hpcsite"
    assert [(j["job_id"], j["action"]) for j in hpc_job["jobs"]] == [
        ("12", "resubmit"),
        ("13", "complete"),
    ]
    assert "accounting" not in hpc_job["jobs"][0]  # null fields are left out
    assert hpc_job["_schemaURL"].endswith("HpcJobRunFacet.json")
    assert task.get_openlineage_facets_on_failure(None).run_facets.keys() == facets.keys()


def test_nothing_before_the_operator_knew_its_system() -> None:
    assert operator().get_openlineage_facets_on_complete(None) is None


def test_a_transfer_reads_one_dataset_and_writes_another() -> None:
    up = staged("/tmp/stage/in.txt", ("hpcsite", "/scratch/u/run/./in.txt"))
    assert [(d.namespace, d.name) for d in up.inputs] == [("file", "/tmp/stage/in.txt")]
    assert [(d.namespace, d.name) for d in up.outputs] == [
        ("hpc://hpcsite", "/scratch/u/run/in.txt")
    ]
    down = staged(("hpcsite", "/scratch/u/out.txt"), "s3://bucket/results/out.txt")
    assert [(d.namespace, d.name) for d in down.outputs] == [("s3://bucket", "results/out.txt")]
    across = staged("hpc://hpc_default@other/data/x", "file:///tmp/x")
    assert [(d.namespace, d.name) for d in across.inputs] == [("hpc://other", "/data/x")]
    assert [(d.namespace, d.name) for d in across.outputs] == [("file", "/tmp/x")]


def test_staging_operators_report_what_they_moved(api: RealApi, tmp_path: Path) -> None:
    """Through the real application (fake cluster): the paths after resolution."""
    source = tmp_path / "in.txt"
    source.write_text("data\n")
    up = HpcUploadOperator(task_id="up", local_path=str(source), remote_path="/scratch/u/r/")
    assert up.get_openlineage_facets_on_complete(None) is None  # nothing moved yet
    up.execute(make_context())
    lineage = up.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("file", str(source))]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [
        (f"hpc://{SYSTEM}", "/scratch/u/r/in.txt")
    ]
    down = HpcDownloadOperator(
        task_id="down", remote_path="/scratch/u/r/in.txt", local_path=f"{tmp_path}/back/"
    )
    down.execute(make_context())
    lineage = down.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [
        (f"hpc://{SYSTEM}", "/scratch/u/r/in.txt")
    ]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("file", f"{tmp_path}/back/in.txt")]
