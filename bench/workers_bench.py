"""One worker against several, in one run: ``hpcgate serve --workers 1`` and ``--workers N``.

Both servers share their state the same way, so that only the process count differs:
through their state directory (SQLite files, the default) or a private redis-server
(``--store redis``). For ``GET ops/stat`` and ``GET jobs/{id}`` at each concurrency it
drives each server in turn for the same time (``bench/loadgen.py``: wrk by default
when installed, else aiohttp) and reports requests per second, p50, p99, CPU
milliseconds per request of all the server's processes and of the load generator,
and the ratio of the two rates. The load generator shares the machine, so a second
table says where the cores went during each point (percent of one core): the
server's processes, the site's sshd sessions serving them (``bench/cpu_split.py``:
selected by their sockets), the load generator, idle time, and the rest (other
processes on the machine).

    .venv/bin/python bench/workers_bench.py [--workers 2] [--duration 8] [--levels 10,50]
        [--loadgen wrk|aiohttp] [--store sqlite|redis] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cpu_split import CpuSplit
from bench.floor_bench import JOB_NAME, Case, measure, prepare, quiet
from bench.loadgen import BACKENDS, default_backend, format_row, use_backend
from bench.report import publish
from bench.serving import shared_store, start_hpcgate, start_redis
from tests.site import ensure_site_up


async def bench(args: argparse.Namespace) -> str:
    site = ensure_site_up()
    workdir = Path(tempfile.mkdtemp(prefix="hpcgate-workersbench-"))
    conn, remote, job_id = await prepare(site, [20])
    redis = start_redis(workdir / "redis") if args.store == "redis" else None
    store = shared_store(redis) if redis is not None else {}
    one = start_hpcgate(site, workdir / "one", workers=1, settings=store)
    many = start_hpcgate(site, workdir / "many", workers=args.workers, settings=store)
    rows = []
    splits = []
    try:
        cases = []
        for level in args.levels:
            stat = f"/filesystem/{one.system}/ops/stat?path={remote}/ls20/file-00001"
            cases.append(Case("GET ops/stat", stat, stat, level))
            job = f"/compute/{one.system}/jobs/{job_id}"
            cases.append(Case("GET jobs/{id}", job, job, level))
        await asyncio.sleep(4)
        tokens = {}
        for served in (one, many):
            assert served.issuer is not None
            tokens[served.url] = served.issuer.mint("hpcuser1", lifetime_seconds=6 * 3600)
            headers = {"Authorization": f"Bearer {tokens[served.url]}"}
            async with aiohttp.ClientSession(headers=headers) as session:
                for case in cases:  # warm every worker: many connections at once

                    async def get(url: str = served.url + case.path) -> None:
                        async with session.get(url) as response:
                            assert response.status == 200, await response.text()

                    await asyncio.gather(*(get() for _ in range(4 * args.workers)))
        for case in cases:
            load = await quiet(args.max_load, args.patience)
            results = []
            for served in (one, many):
                headers = {"Authorization": f"Bearer {tokens[served.url]}"}
                split = CpuSplit(served.pid, site.ssh_port)
                result, cpu = await measure(
                    served, served.url + case.path, headers, case, args.duration
                )
                where = split.done().with_client(result.client_cpu_ms * result.requests / 1000)
                results.append((result, cpu))
                splits.append((case, served is one, where))
                print(
                    f"load {load:.2f} {format_row(result)}  CPU {cpu:.3f} ms/req"
                    f"  {result.loadgen} {result.client_cpu_ms:.3f} ms/req  "
                    + "  ".join(f"{k} {v:.0f}%" for k, v in where.items()),
                    flush=True,
                )
            (a, a_cpu), (b, b_cpu) = results
            rows.append(
                f"| {case.label} | {case.concurrency} | {load:.2f} | {a.rps:,.0f} | {a.p50_ms} "
                f"| {a.p99_ms} | {a_cpu} | {b.rps:,.0f} | {b.p50_ms} | {b.p99_ms} | {b_cpu} "
                f"| {a.client_cpu_ms:.3f} / {b.client_cpu_ms:.3f} | {a.errors + b.errors} "
                f"| {b.rps / a.rps:.2f} |"
            )
    finally:
        await conn.run(f"rm -rf {shlex.quote(remote)}", check=False)
        await conn.run(shlex.join(["scancel", f"--name={JOB_NAME}"]), check=False)
        conn.close()
        one.stop()
        many.stop()
        if redis is not None:
            redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    head = [
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, {args.duration} s per "
        f"point, load generator {args.loadgen}, {args.store} store for both",
        "",
        f"| request | c | load | 1 worker req/s | p50 ms | p99 ms | CPU ms/req "
        f"| {args.workers} workers req/s | p50 ms | p99 ms | CPU ms/req "
        f"| {args.loadgen} CPU ms/req (1 / {args.workers}) | errors | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cores = [
        "",
        f"Where the {os.cpu_count()} cores went (percent of one core over each point):",
        "",
        f"| request | c | workers | server | sshd | {args.loadgen} | idle | other |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, single, where in splits:
        figures = " | ".join(
            f"{where[k]:.0f}" for k in ("server", "sshd", "client", "idle", "other")
        )
        count = 1 if single else args.workers
        cores.append(f"| {case.label} | {case.concurrency} | {count} | {figures} |")
    return "\n".join(head + rows + cores)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--levels", default="10,50")
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--patience", type=float, default=60.0)
    parser.add_argument("--output", help="append the markdown table here")
    parser.add_argument("--loadgen", choices=BACKENDS, default=default_backend())
    parser.add_argument("--store", choices=["sqlite", "redis"], default="sqlite")
    parser.add_argument("--smoke", action="store_true", help="tiny durations, one level")
    args = parser.parse_args()
    use_backend(args.loadgen)
    args.levels = [int(level) for level in args.levels.split(",") if level]
    args.duration = min(args.duration, 120.0)
    if args.smoke:
        args.duration, args.patience, args.levels = min(args.duration, 1.0), 0.0, [2]
    publish(asyncio.run(bench(args)), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
