"""``ObjectStoragePath("hpc://...")`` against the real server and the local site, as hpcuser1.

Byte-exact round trips (small, and 200 MiB with the copying process's peak memory
measured), listing, stat, delete, copies on the cluster and between the cluster and the
local disk, the staging operators with ``hpc://`` paths on either side, the example DAG
``hpc_object_storage`` run with ``dag.test()`` and its default (empty) ``workdir``.

Run as a script (``python -m tests.provider.test_objectstorage_real probe DIR``) it is
the memory probe: a fresh process that moves 200 MiB each way and reports its VmHWM
growth per step (reset through ``/proc/self/clear_refs`` before each).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

USER = "hpcuser1"
MiB = 1 << 20
BIG = 200 * MiB
#: Peak-RSS growth allowed while 200 MiB pass through (a whole-file buffer would be 200).
MEMORY_BOUND = 64 * MiB


def _hwm() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def probe(base_url: str, workdir: str) -> dict[str, Any]:
    """200 MiB local -> cluster (tus), cluster -> local (signed ranged download), a
    streamed write (``open("wb")``) and a streamed read; peak memory of each step."""
    import importlib

    from airflow.sdk import ObjectStoragePath

    importlib.import_module("airflow_provider_hpc.fs")  # registers hpc://
    local = Path(workdir) / "big.bin"
    digest = hashlib.sha256()
    with local.open("wb") as out:
        for _ in range(BIG // MiB):
            block = os.urandom(MiB)
            digest.update(block)
            out.write(block)
    expected = digest.hexdigest()
    remote = ObjectStoragePath(base_url) / "big.bin"
    remote.parent.mkdir(parents=True, exist_ok=True)
    back = Path(workdir) / "back.bin"
    results: dict[str, Any] = {"sha256": expected}

    def measured(name: str, step: Callable[[], Any]) -> Any:
        _reset_hwm()
        before, start = _hwm(), time.monotonic()
        value = step()
        results[name] = {
            "seconds": round(time.monotonic() - start, 2),
            "hwm_growth": _hwm() - before,
        }
        return value

    measured("put", lambda: ObjectStoragePath(f"file://{local}").copy(remote))
    results["remote_sha256"] = remote.fs.sha256(remote.path)
    measured("get", lambda: remote.copy(ObjectStoragePath(f"file://{back}")))
    results["back_sha256"] = _sha256(back)

    def write() -> None:
        with local.open("rb") as source, (remote.parent / "written.bin").open("wb") as sink:
            while chunk := source.read(MiB):
                sink.write(chunk)

    measured("write", write)
    results["written_sha256"] = remote.fs.sha256((remote.parent / "written.bin").path)

    def read() -> str:
        hasher = hashlib.sha256()
        with (remote.parent / "written.bin").open("rb") as source:
            while chunk := source.read(MiB):
                hasher.update(chunk)
        return hasher.hexdigest()

    results["read_sha256"] = measured("read", read)
    return results


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(MiB):
            hasher.update(chunk)
    return hasher.hexdigest()


if __name__ == "__main__":  # the memory probe, in its own process
    print("PROBE " + json.dumps(probe(sys.argv[2], sys.argv[3])))
    sys.exit(0)


# ---------------------------------------------------------------------- the tests

from airflow.sdk import ObjectStoragePath  # noqa: E402

import airflow_provider_hpc.fs  # noqa: E402,F401 - registers hpc://
from airflow_provider_hpc.exceptions import HpcChecksumError  # noqa: E402
from airflow_provider_hpc.fs.filesystem import HpcFileSystem  # noqa: E402
from airflow_provider_hpc.fs.workdir import default_workdir, hpc_workdir  # noqa: E402
from airflow_provider_hpc.operators.files import (  # noqa: E402
    HpcDownloadOperator,
    HpcUploadOperator,
)
from tests.provider.airflow_stack import airflow_env, dagrun_outcome, start_dagrun  # noqa: E402
from tests.provider.conftest import make_context  # noqa: E402
from tests.server import ApiServer  # noqa: E402
from tests.site import SiteEnv  # noqa: E402

pytestmark = [pytest.mark.site, pytest.mark.e2e]


@pytest.fixture(scope="module")
def conn(api_server: ApiServer) -> dict[str, Any]:
    return {
        "conn_type": "hpc",
        "host": api_server.url,
        "password": api_server.token(USER, lifetime_seconds=7200),
        "extra": {"system": api_server.system},
    }


@pytest.fixture(autouse=True)
def hpc_default(conn: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``hpc_default`` names the real server; no filesystem cached from another test."""
    from airflow.sdk.io import store

    monkeypatch.setenv("AIRFLOW_CONN_HPC_DEFAULT", json.dumps(conn))
    store._STORE_CACHE.clear()
    HpcFileSystem.clear_instance_cache()
    default_workdir.cache_clear()
    yield
    store._STORE_CACHE.clear()
    HpcFileSystem.clear_instance_cache()


@pytest.fixture
def base(api_server: ApiServer, site_env: SiteEnv) -> Iterator[ObjectStoragePath]:
    """A fresh directory under hpcuser1's scratch, as an ``hpc://`` path (removed after)."""
    url = f"hpc://hpc_default@{api_server.system}{site_env.scratch(USER)}/os-{uuid.uuid4().hex[:8]}"
    path = ObjectStoragePath(url)
    path.mkdir(parents=True, exist_ok=True)
    yield path
    path.fs.rm(path.path, recursive=True)


def test_url_names_connection_system_and_path(api_server: ApiServer) -> None:
    path = ObjectStoragePath(f"hpc://hpc_default@{api_server.system}/scratch/u/results.csv")
    assert path.conn_id == "hpc_default" and path.protocol == "hpc"
    assert isinstance(path.fs, HpcFileSystem) and path.fs.conn_id == "hpc_default"
    assert path.fs.split_path(path.path) == (api_server.system, "/scratch/u/results.csv")
    assert str(path) == f"hpc://hpc_default@{api_server.system}/scratch/u/results.csv"
    assert str(path.parent / "x.csv").endswith("/scratch/u/x.csv") and path.name == "results.csv"


def test_small_round_trip_list_stat_delete(base: ObjectStoragePath) -> None:
    data = bytes(range(256)) * 40 + b"\r\n\x00end"
    target = base / "sub" / "small.bin"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    assert target.read_bytes() == data
    with target.open("rb") as handle:  # a seek back reopens the stream
        handle.seek(1000)
        assert handle.read(10) == data[1000:1010]
        handle.seek(5)
        assert handle.read(3) == data[5:8]
    (base / "note.txt").write_text("héllo\n")
    assert (base / "note.txt").read_text() == "héllo\n"

    stat = target.stat()
    assert stat.st_size == len(data) and stat["type"] == "file"
    assert target.is_file() and base.is_dir() and (base / "sub").is_dir()
    assert target.checksum() == int(hashlib.sha256(data).hexdigest(), 16)
    assert sorted(p.name for p in base.iterdir()) == ["note.txt", "sub"]
    listing = {e["name"].rsplit("/", 1)[-1]: e for e in base.fs.ls(base.path, detail=True)}
    assert listing["sub"]["type"] == "directory" and listing["note.txt"]["size"] == 7
    assert [p.name for p in base.rglob("*.bin")] == ["small.bin"]

    target.unlink()
    assert not target.exists()
    with pytest.raises(FileNotFoundError):
        target.read_bytes()
    (base / "sub" / "again.txt").write_text("x")
    with pytest.raises(IsADirectoryError):
        base.fs.rm((base / "sub").path)
    base.fs.rm((base / "sub").path, recursive=True)
    assert not (base / "sub").exists()


def test_copy_and_move_on_the_cluster(base: ObjectStoragePath) -> None:
    source = base / "a.txt"
    source.write_text("payload\n")
    source.copy(base / "b.txt")  # transfer/cp job
    assert (base / "b.txt").read_text() == "payload\n" and source.exists()
    (base / "b.txt").move(base / "c.txt")  # transfer/mv job
    assert not (base / "b.txt").exists() and (base / "c.txt").read_text() == "payload\n"


def test_copy_between_cluster_and_local_disk(base: ObjectStoragePath, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 17)
    (tmp_path / "in.bin").write_bytes(data)
    ObjectStoragePath(f"file://{tmp_path}/in.bin").copy(base / "in.bin")
    assert (base / "in.bin").fs.sha256((base / "in.bin").path) == hashlib.sha256(data).hexdigest()
    (base / "in.bin").copy(ObjectStoragePath(f"file://{tmp_path}/out.bin"))
    assert (tmp_path / "out.bin").read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.bin", "out.bin"]  # no leftovers


def test_a_checksum_mismatch_fails_the_write(
    base: ObjectStoragePath, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(HpcFileSystem, "sha256", lambda self, path: "0" * 64)
    with pytest.raises(HpcChecksumError, match="sha256 local"):
        (base / "x.txt").write_text("x")
    with pytest.raises(HpcChecksumError):
        (base / "x.txt").read_bytes()


def test_a_write_abandoned_by_an_error_leaves_the_target_alone(base: ObjectStoragePath) -> None:
    target = base / "kept.txt"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), target.open("wb") as sink:
        sink.write(b"x" * (9 * MiB))  # more than a block: the upload has started
        raise RuntimeError("the task failed half-way")
    assert target.read_text() == "old\n"


def test_operators_take_hpc_paths_on_either_side(base: ObjectStoragePath, tmp_path: Path) -> None:
    data = b"operator data\n" * 1000
    (tmp_path / "src.txt").write_bytes(data)
    up = HpcUploadOperator(
        task_id="up",
        local_path=ObjectStoragePath(f"file://{tmp_path}/src.txt"),
        remote_path=base / "staged" / "src.txt",
    ).execute(make_context())
    assert up["size"] == len(data) and up["sha256"] == hashlib.sha256(data).hexdigest()
    assert (base / "staged" / "src.txt").read_bytes() == data
    # cluster -> cluster as an upload whose source is an hpc:// path (streamed)
    HpcUploadOperator(
        task_id="up2", local_path=base / "staged" / "src.txt", remote_path=f"{base}/copy.txt"
    ).execute(make_context())
    down = HpcDownloadOperator(
        task_id="down", remote_path=str(base / "copy.txt"), local_path=f"{tmp_path}/out/"
    ).execute(make_context())
    assert Path(down["local_path"]).read_bytes() == data
    down2 = HpcDownloadOperator(
        task_id="down2",
        remote_path=base / "copy.txt",
        local_path=ObjectStoragePath(f"file://{tmp_path}/out2.txt"),
    ).execute(make_context())
    assert (tmp_path / "out2.txt").read_bytes() == data and down2["size"] == len(data)


def test_default_workdir_is_the_users_scratch(api_server: ApiServer, site_env: SiteEnv) -> None:
    assert hpc_workdir("", api_server.system) == site_env.scratch(USER)
    assert hpc_workdir(None) == site_env.scratch(USER)
    assert hpc_workdir("/elsewhere/", api_server.system) == "/elsewhere"


@pytest.mark.slow
def test_200_mib_round_trips_with_flat_memory(
    base: ObjectStoragePath, conn: dict[str, Any], tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "AIRFLOW_CONN_HPC_DEFAULT": json.dumps(conn),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    result = subprocess.run(
        [sys.executable, "-m", __name__, "probe", str(base), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [line] = [x for x in result.stdout.splitlines() if x.startswith("PROBE ")]
    report = json.loads(line.removeprefix("PROBE "))
    print(json.dumps(report, indent=1))  # the figures for the record (pytest -s)
    expected = report["sha256"]
    assert report["remote_sha256"] == expected
    assert report["back_sha256"] == expected
    assert report["written_sha256"] == expected
    assert report["read_sha256"] == expected
    for step in ("put", "get", "write", "read"):
        assert report[step]["hwm_growth"] < MEMORY_BOUND, (step, report)


@pytest.mark.slow
def test_example_dag_object_storage_with_default_params(
    api_server: ApiServer,
    site_env: SiteEnv,
    conn: dict[str, Any],
    airflow_home: Callable[[str], Path],
) -> None:
    """``dag.test()`` of the example (tasks and the deferred job's trigger run inline),
    with nothing but the connection: ``workdir`` resolves to hpcuser1's scratch."""
    home = airflow_home("object-storage")
    env = airflow_env(home, conn=conn, extra={"HPC_LOCAL_DIR": str(home / "staging")})
    env.pop("HPC_WORKDIR", None)
    started = time.monotonic()
    outcome = dagrun_outcome(start_dagrun("hpc_object_storage", env), timeout=300)
    assert outcome["state"] == "success", outcome
    assert outcome["tasks"] == {
        "write_input": "success",
        "sum_job": "success",
        "read_result": "success",
    }
    assert outcome["xcoms"]["read_result"]["return_value"] == sum(n * n for n in range(1, 101))
    run_url = outcome["xcoms"]["write_input"]["return_value"]
    assert site_env.scratch(USER) + "/hpc_object_storage/" in run_url
    run_dir = ObjectStoragePath(run_url)
    try:
        names = sorted(p.name for p in run_dir.iterdir())
        assert {"input.csv", "result.csv"} <= set(names)
        assert (run_dir / "result.csv").read_text() == "rows,100\ntotal,338350\n"
        local = list((home / "staging").rglob("result.csv"))
        assert [p.read_text() for p in local] == ["rows,100\ntotal,338350\n"]
    finally:
        run_dir.fs.rm(run_dir.path, recursive=True)
    print(f"hpc_object_storage: {time.monotonic() - started:.1f} s")
