"""HpcUploadOperator / HpcDownloadOperator / HpcFileOperator."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from airflow_provider_hpc.exceptions import HpcChecksumError, HpcJobError, HpcNotFoundError
from airflow_provider_hpc.operators.files import (
    HpcDownloadOperator,
    HpcFileOperator,
    HpcUploadOperator,
)
from tests.provider.conftest import make_context
from tests.provider.realapi import RealApi

DATA = b"input data\n" * 5000


def test_upload_creates_parents_streams_and_verifies(api: RealApi, tmp_path: Path) -> None:
    source = tmp_path / "in.dat"
    source.write_bytes(DATA)
    op = HpcUploadOperator(
        task_id="up", local_path=str(source), remote_path="/scratch/hpcuser/run1/"
    )
    result = op.execute(make_context())
    assert api.files["/scratch/hpcuser/run1/in.dat"] == DATA
    assert result == {
        "remote_path": "/scratch/hpcuser/run1/in.dat",
        "size": len(DATA),
        "sha256": hashlib.sha256(DATA).hexdigest(),
    }
    assert api.calls("POST", "ops/mkdir") and api.calls("GET", "ops/checksum")


def test_upload_from_object_storage(api: RealApi, tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    source = ObjectStoragePath(f"file://{tmp_path}/model.bin")
    source.write_bytes(DATA)
    HpcUploadOperator(
        task_id="up", local_path=source, remote_path="/scratch/hpcuser/m.bin"
    ).execute(make_context())
    assert api.files["/scratch/hpcuser/m.bin"] == DATA


def test_upload_checksum_mismatch_fails(api: RealApi, tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"abc")
    api.cluster.bad_checksum = True
    op = HpcUploadOperator(
        task_id="up", local_path=str(tmp_path / "a"), remote_path="/scratch/hpcuser/a"
    )
    with pytest.raises(HpcChecksumError):
        op.execute(make_context())


def test_download_is_atomic_and_verified(api: RealApi, tmp_path: Path) -> None:
    api.files["/scratch/hpcuser/out.dat"] = DATA
    target = tmp_path / "results"
    target.mkdir()
    op = HpcDownloadOperator(
        task_id="down", remote_path="/scratch/hpcuser/out.dat", local_path=str(target)
    )
    result = op.execute(make_context())
    assert (target / "out.dat").read_bytes() == DATA
    assert result["size"] == len(DATA) and result["sha256"] == hashlib.sha256(DATA).hexdigest()
    assert [p.name for p in target.iterdir()] == ["out.dat"]


def test_download_mismatch_leaves_nothing(api: RealApi, tmp_path: Path) -> None:
    api.files["/scratch/hpcuser/out.dat"] = DATA
    api.cluster.bad_checksum = True
    op = HpcDownloadOperator(
        task_id="down", remote_path="/scratch/hpcuser/out.dat", local_path=str(tmp_path / "o.dat")
    )
    with pytest.raises(HpcChecksumError):
        op.execute(make_context())
    assert list(tmp_path.iterdir()) == []


def test_download_to_object_storage(api: RealApi, tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    api.files["/scratch/hpcuser/out.dat"] = DATA
    target = ObjectStoragePath(f"file://{tmp_path}/out.dat")
    HpcDownloadOperator(
        task_id="down", remote_path="/scratch/hpcuser/out.dat", local_path=target
    ).execute(make_context())
    assert (tmp_path / "out.dat").read_bytes() == DATA


def test_file_operations(api: RealApi) -> None:
    ctx = make_context()
    HpcFileOperator(task_id="m", operation="mkdir", path="/scratch/hpcuser/a/b").execute(ctx)
    assert "/scratch/hpcuser/a/b" in api.cluster.dirs
    api.files["/scratch/hpcuser/a/x"] = b"x"
    result = HpcFileOperator(
        task_id="c",
        operation="cp",
        path="/scratch/hpcuser/a/x",
        target_path="/scratch/hpcuser/a/y",
        poll_interval=0.001,
    ).execute(ctx)
    assert result["job_id"] and api.files["/scratch/hpcuser/a/y"] == b"x"
    HpcFileOperator(
        task_id="v",
        operation="mv",
        path="/scratch/hpcuser/a/y",
        target_path="/scratch/hpcuser/z",
        poll_interval=0.001,
    ).execute(ctx)
    assert "/scratch/hpcuser/a/y" not in api.files and "/scratch/hpcuser/z" in api.files
    HpcFileOperator(task_id="r", operation="rm", path="/scratch/hpcuser/z").execute(ctx)
    assert "/scratch/hpcuser/z" not in api.files
    missing = "/scratch/hpcuser/nope"
    HpcFileOperator(task_id="r2", operation="rm", path=missing, missing_ok=True).execute(ctx)
    with pytest.raises(HpcNotFoundError):
        HpcFileOperator(task_id="r3", operation="rm", path=missing).execute(ctx)


def test_failed_transfer_job_raises(api: RealApi) -> None:
    # the server checks the source before submitting; the job's cp fails on the cluster
    api.files["/scratch/hpcuser/x"] = b"x"
    op = HpcFileOperator(
        task_id="c",
        operation="cp",
        path="/scratch/hpcuser/x",
        target_path="/scratch/hpcuser/no-such-dir/t",
        poll_interval=0.001,
    )
    with pytest.raises(HpcJobError, match="ended FAILED"):
        op.execute(make_context())


def test_file_operator_arguments() -> None:
    with pytest.raises(ValueError, match="needs target_path"):
        HpcFileOperator(task_id="x", operation="mv", path="/a")
    with pytest.raises(ValueError, match="unknown operation"):
        HpcFileOperator(task_id="x", operation="chmod", path="/a")  # type: ignore[arg-type]
