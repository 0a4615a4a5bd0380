"""hpcgate beside its floor (``bench/floor_server.py``), in one run, on the local site.

For each request and concurrency it drives a real ``hpcgate serve`` and then the
floor server with the same request for the same time (aiohttp, ``bench/loadgen.py``)
and reports, for each, requests per second, p50 and p99 latency and the server's CPU
milliseconds per request (``/proc/<pid>/stat`` of the server process and of its
worker processes), the ratio of the two rates and the 1-minute load average before
the pair ran. The requests, as hpcuser1:

* ``GET ops/stat`` of a file (c=10, c=50);
* ``GET ops/ls`` of a directory of 20 and of 1,000 files (c=10);
* ``GET compute/{s}/jobs/{id}`` of a finished job (c=10, c=50);
* ``GET status/systems`` (c=10).

The rate limit stays in the measured path, set high enough not to refuse the load
(``rate_limit.requests_per_second``). Smoke mode (``--smoke``): tiny durations, one
level each, for the test suite.

    .venv/bin/python bench/floor_bench.py [--duration 8] [--workers 1] [--output FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import BACKENDS, Result, default_backend, format_row, run_load, use_backend
from bench.procstat import tree_cpu_seconds
from bench.serving import Served, shared_store, start_floor, start_hpcgate, start_redis
from tests.site import SiteEnv, ensure_site_up

JOB_NAME = "hpcgate-floor-bench"


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


async def quiet(max_load: float, patience: float) -> float:
    """Wait (at most ``patience`` s) for the 1-minute load average to fall below
    ``max_load``; the load average then."""
    deadline = time.monotonic() + patience
    load = load_average()
    while load >= max_load and time.monotonic() < deadline:
        await asyncio.sleep(5)
        load = load_average()
    return load


@dataclass
class Case:
    label: str
    path: str
    floor_path: str
    concurrency: int


@dataclass
class Pair:
    case: Case
    load: float
    api: Result
    api_cpu_ms: float
    floor: Result
    floor_cpu_ms: float

    @property
    def ratio(self) -> float:
        return self.api.rps / self.floor.rps if self.floor.rps else float("nan")


async def measure(server: Served, url: str, headers: dict[str, str], case: Case, duration: float):
    before = tree_cpu_seconds(server.pid)
    result = await run_load(
        url, headers=headers, concurrency=case.concurrency, duration=duration, label=case.label
    )
    used = tree_cpu_seconds(server.pid) - before
    cpu_ms = used / result.requests * 1000 if result.requests else float("nan")
    return result, round(cpu_ms, 3)


async def prepare(site: SiteEnv, sizes: list[int]) -> tuple[asyncssh.SSHClientConnection, str, str]:
    """A scratch directory with one directory per listing size and a finished job."""
    conn = await asyncssh.connect(
        site.ssh_host,
        port=site.ssh_port,
        username="hpcuser1",
        client_keys=[str(site.key("hpcuser1"))],
        known_hosts=str(site.known_hosts),
    )
    remote = f"{site.scratch('hpcuser1')}/floorbench-{uuid.uuid4().hex[:8]}"
    script = " && ".join(
        f"mkdir -p {remote}/ls{n} && (cd {remote}/ls{n} && seq -f 'file-%05g' 1 {n} | xargs touch)"
        for n in sizes
    )
    await conn.run(script, check=True)
    submit = ["sbatch", "--parsable", f"--job-name={JOB_NAME}", "--output=/dev/null"]
    job_id = (await conn.run(shlex.join(submit), input="#!/bin/bash\ntrue\n", check=True)).stdout
    return conn, remote, str(job_id).strip()


async def bench(args: argparse.Namespace) -> tuple[list[Pair], dict[str, Any]]:
    site = ensure_site_up()
    workdir = Path(tempfile.mkdtemp(prefix="hpcgate-floorbench-"))
    sizes = [20] if args.smoke else [20, 1000]
    conn, remote, job_id = await prepare(site, sizes)
    redis = start_redis(workdir / "redis") if args.workers > 1 else None
    hpcgate = start_hpcgate(
        site,
        workdir / "hpcgate",
        workers=args.workers,
        http=args.http,
        settings=shared_store(redis) if redis else None,
    )
    floor = start_floor(site, workdir / "hpcgate" / "keys", workdir / "floor", http=args.http)
    token = hpcgate.issuer.mint("hpcuser1", lifetime_seconds=6 * 3600)
    headers = {"Authorization": f"Bearer {token}"}
    system = hpcgate.system
    levels = {"stat": [10, 50], "ls": [10], "job": [10, 50], "systems": [10]}
    if args.smoke:
        levels = {"stat": [2], "ls": [2], "job": [2], "systems": [2]}
    cases: list[Case] = []
    fs = f"/filesystem/{system}/ops"
    for c in levels["stat"]:
        path = f"{fs}/stat?path={remote}/ls20/file-00001"
        cases.append(Case("GET ops/stat", path, path, c))
    for n in sizes:
        for c in levels["ls"]:
            path = f"{fs}/ls?path={remote}/ls{n}"
            cases.append(Case(f"GET ops/ls ({n} entries)", path, path, c))
    for c in levels["job"]:
        path = f"/compute/{system}/jobs/{job_id}"
        cases.append(Case("GET jobs/{id}", path, path, c))
    for c in levels["systems"]:
        cases.append(Case("GET status/systems", "/status/systems", "/status/systems", c))
    pairs: list[Pair] = []
    try:
        await asyncio.sleep(2 if args.smoke else 4)  # the job ends; both servers warm up
        async with aiohttp.ClientSession(headers=headers) as session:
            for served in (hpcgate, floor):
                for case in cases:  # warm: connections, SFTP channels, caches
                    async with session.get(served.url + case.path) as response:
                        body = await response.read()
                        assert response.status == 200, (served.url, case.path, body[:300])
        for case in cases:
            load = await quiet(args.max_load, args.patience)
            api, api_cpu = await measure(
                hpcgate, hpcgate.url + case.path, headers, case, args.duration
            )
            low, low_cpu = await measure(
                floor, floor.url + case.floor_path, headers, case, args.duration
            )
            pair = Pair(case, load, api, api_cpu, low, low_cpu)
            pairs.append(pair)
            print(f"load {load:.2f}  {format_row(api)}  CPU {api_cpu:.3f} ms/req", flush=True)
            print(f"{'':10} floor: {format_row(low)}  CPU {low_cpu:.3f} ms/req", flush=True)
    finally:
        await conn.run(f"rm -rf {shlex.quote(remote)}", check=False)
        await conn.run(shlex.join(["scancel", f"--name={JOB_NAME}"]), check=False)
        conn.close()
        hpcgate.stop()
        floor.stop()
        if redis is not None:
            redis.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    conditions = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "duration_s": args.duration,
        "workers": args.workers,
        "http": args.http,
        "cores": os.cpu_count(),
    }
    return pairs, conditions


def markdown(pairs: list[Pair], conditions: dict[str, Any]) -> str:
    lines = [
        f"{conditions['date']}, {conditions['cores']} cores, {conditions['duration_s']} s per "
        f"point, hpcgate workers: {conditions['workers']}, HTTP: {conditions['http']}",
        "",
        "| request | c | load | hpcgate req/s | p50 ms | p99 ms | CPU ms/req | errors "
        "| floor req/s | p50 ms | p99 ms | CPU ms/req | hpcgate / floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in pairs:
        a, f = p.api, p.floor
        lines.append(
            f"| {p.case.label} | {p.case.concurrency} | {p.load:.2f} | {a.rps:,.0f} | {a.p50_ms} "
            f"| {a.p99_ms} | {p.api_cpu_ms} | {a.errors}/{a.requests} | {f.rps:,.0f} "
            f"| {f.p50_ms} | {f.p99_ms} | {p.floor_cpu_ms} | {p.ratio:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per point")
    parser.add_argument("--workers", type=int, default=1, help="hpcgate serve --workers")
    parser.add_argument("--http", choices=["h11", "httptools"], default="httptools")
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for a quieter machine")
    parser.add_argument("--patience", type=float, default=60.0, help="at most this long (s)")
    parser.add_argument("--smoke", action="store_true", help="tiny durations, one level each")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--output", help="append the markdown table here")
    parser.add_argument("--json", help="write the raw figures here")
    parser.add_argument("--loadgen", choices=BACKENDS, default=default_backend())
    args = parser.parse_args()
    use_backend(args.loadgen)
    args.duration = min(args.duration, 120.0)
    if args.smoke:
        args.duration, args.patience = min(args.duration, 0.5), 0.0
    pairs, conditions = asyncio.run(bench(args))
    table = markdown(pairs, conditions)
    print(table)
    if args.output:
        with open(args.output, "a") as handle:
            handle.write(table + "\n\n")
    if args.json:
        rows = [
            {
                **p.__dict__,
                "case": p.case.__dict__,
                "api": p.api.__dict__,
                "floor": p.floor.__dict__,
            }
            for p in pairs
        ]
        Path(args.json).write_text(json.dumps({"conditions": conditions, "rows": rows}, indent=1))
    errors = sum(p.api.errors + p.floor.errors for p in pairs)
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
