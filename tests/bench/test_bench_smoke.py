"""Smoke runs of the benchmarks: each script, tiny durations, against the real site.

They check that the scripts run end to end (servers start, every request answers,
the tables are written), not the figures: those are taken by hand on a quiet
machine (bench/README.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def run(*argv: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_floor_bench_smoke(site_env: SiteEnv, tmp_path: Path) -> None:
    output = tmp_path / "floor.md"
    stdout = run("bench/floor_bench.py", "--smoke", "--output", str(output))
    table = output.read_text()
    for label in ("GET ops/stat", "GET ops/ls (20 entries)", "GET jobs/{id}", "GET status/systems"):
        assert f"| {label} |" in table, stdout
    # every row has both servers' figures and no errors
    rows = [line for line in table.splitlines() if line.startswith("| GET")]
    assert len(rows) == 4
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        errors = cells[7]
        done, total = errors.split("/")
        assert done == "0" and int(total) > 0, row
        assert float(cells[-1]) > 0, row


def test_api_bench_smoke(site_env: SiteEnv, tmp_path: Path) -> None:
    output = tmp_path / "api.md"
    run("bench/api_bench.py", "--duration", "0.3", "--levels", "1", "--max-submits", "3",
        "--output", str(output))  # fmt: skip
    assert "| GET /status/systems | 1 |" in output.read_text()


def test_fs_bench_smoke(site_env: SiteEnv, tmp_path: Path) -> None:
    output = tmp_path / "fs.md"
    run("bench/fs_bench.py", "--duration", "0.3", "--levels", "1", "--size-mib", "4",
        "--output", str(output))  # fmt: skip
    table = output.read_text()
    assert "| GET ops/stat | 1 |" in table
    assert "POST ops/upload" in table
    # where the cores went: one row per transfer timed as a whole, each share a number
    cores = table.split("| transfer | server | sshd | client | idle | other |")[1]
    rows = [line for line in cores.splitlines() if line.startswith("| ") and "---" not in line]
    assert {row.split("|")[1].strip() for row in rows} >= {
        "floor: SFTP get (warm session)",
        "GET ops/download (streamed)",
        "floor: SFTP get, bytes dropped (/dev/null)",
        "GET ops/download, lean client, bytes dropped",
    }, rows
    for row in rows:
        assert all(float(share) == float(share) for share in row.split("|")[2:7]), row


def test_workers_bench_smoke(site_env: SiteEnv, tmp_path: Path) -> None:
    output = tmp_path / "workers.md"
    # wrk: scripts/install-wrk (scripts/test runs it)
    run("bench/workers_bench.py", "--smoke", "--loadgen", "wrk", "--output", str(output))
    lines = [line for line in output.read_text().splitlines() if line.startswith("| GET")]
    rates = [line for line in lines if line.count("|") == 15]  # 14 columns
    cores = [line for line in lines if line.count("|") == 9]  # where the cores went
    assert len(rates) == 2 and len(cores) == 4, lines
    for row in rates:
        assert row.split("|")[-3].strip() == "0", row  # no errors
    for row in cores:
        assert float(row.split("|")[4]) > 0, row  # the server's share of the cores


def test_submit_bench_smoke(site_env: SiteEnv, tmp_path: Path) -> None:
    output = tmp_path / "submit.md"
    run("bench/submit_bench.py", "--smoke", "--output", str(output))
    table = output.read_text()
    for row in ("| sbatch | 3 |", "| POST jobs | 3 |", "| POST jobs + key | 3 |"):
        assert row in table, table
    assert "1.00 SSH commands per submission" in table, table  # sbatch and nothing else


def test_clients_bench_smoke(site_env: SiteEnv, tmp_path: Path) -> None:
    output = tmp_path / "clients.md"
    stdout = run("bench/clients_bench.py", "--smoke", "--output", str(output))
    table = output.read_text()
    assert "| hpcgate serve (mixed) | 2 | 20 |" in table, stdout
    # every client of the cancelled cycle got the terminal event, from both servers
    assert "| hpcgate serve | 20/20 |" in table, stdout
    assert "| floor: bare asyncio server (uvloop) | 20/20 |" in table, stdout


def test_ab_bench_smoke(site_env: SiteEnv, tmp_path: Path) -> None:
    output = tmp_path / "ab.md"
    stdout = run("bench/ab_bench.py", "--smoke", "--output", str(output))
    rows = [
        line
        for line in output.read_text().splitlines()
        if line.startswith("| ") and "---" not in line
    ][1:]
    # A and B for each kind, each with a rate per round and CPU figures
    assert [row.split("|")[1:3] for row in rows] == [
        [f" {kind} ", f" {name} "] for kind in ("stat", "download", "upload") for name in "AB"
    ], stdout
    for row in rows:
        cells = row.split("|")
        assert len(cells[4].split("/")) == 2, row  # two rounds
        if cells[1].strip() == "stat":  # 0.3 s of load: the server's CPU is seen
            assert float(cells[5].split()[0]) > 0, row
