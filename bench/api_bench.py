"""Benchmark the API against its raw floors, in one run, on the local site.

For each concurrency level it measures, through a real `hpcgate serve` process:
  GET  /status/systems            (served from the health checker's cache)
  GET  /compute/{s}/jobs/{id}     (a finished job: one squeue, sacct result cached)
  POST /compute/{s}/jobs          (sbatch of a trivial job; bounded in count)
and beside each, its raw floor measured in the same run:
  GET /status/liveness/           the HTTP floor: no token, no cluster work
  squeue -h -j ID                 the same scheduler command on one warm asyncssh connection
  sbatch --parsable               likewise
plus the server's CPU seconds per request.

    .venv/bin/python bench/api_bench.py [--duration 10] [--levels 1,10,50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import asyncssh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import Result, format_row, run_load, summarise
from bench.procstat import cpu_seconds
from tests.server import start_server
from tests.site import ensure_site_up

BENCH_JOB_NAME = "hpcgate-bench"
SCRIPT = "#!/bin/bash\ntrue\n"


async def ssh_floor(
    conn: asyncssh.SSHClientConnection,
    argv: list[str],
    *,
    stdin: str | None,
    concurrency: int,
    duration: float,
    max_requests: int,
    label: str,
) -> Result:
    """Run ``argv`` in a loop on one warm connection, like the load generator does."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors = 0
    sent = 0
    command = shlex.join(argv)
    started = time.perf_counter()
    deadline = started + duration

    async def worker() -> None:
        nonlocal errors, sent
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            t0 = time.perf_counter()
            result = await conn.run(command, input=stdin, check=False)
            latencies.append(time.perf_counter() - t0)
            key = str(result.exit_status)
            statuses[key] = statuses.get(key, 0) + 1
            errors += result.exit_status != 0

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarise(label, concurrency, time.perf_counter() - started, latencies, statuses, errors)


async def bench(levels: list[int], duration: float, max_submits: int) -> list[dict[str, object]]:
    site = ensure_site_up()
    workdir = Path(tempfile.mkdtemp(prefix="hpcgate-bench-"))
    server = start_server(site, workdir)
    pid = server.process.pid
    token = server.token("hpcuser1", lifetime_seconds=6 * 3600)
    headers = {"Authorization": f"Bearer {token}"}
    system = server.system
    scratch = site.scratch("hpcuser1")
    submit_body = json.dumps(
        {
            "job": {
                "name": BENCH_JOB_NAME,
                "workingDirectory": scratch,
                "script": SCRIPT,
                "standardOutput": "/dev/null",
            }
        }
    ).encode()
    conn = await asyncssh.connect(
        site.ssh_host,
        port=site.ssh_port,
        username="hpcuser1",
        client_keys=[str(site.key("hpcuser1"))],
        known_hosts=str(site.known_hosts),
    )
    rows: list[dict[str, object]] = []
    try:
        # one finished job to look up
        job_id = (
            await conn.run(
                shlex.join(
                    ["sbatch", "--parsable", f"--job-name={BENCH_JOB_NAME}", "--output=/dev/null"]
                ),
                input=SCRIPT,
                check=True,
            )
        ).stdout.strip()
        await asyncio.sleep(3)

        async def measure(kind: str, load, floor) -> None:
            before = cpu_seconds(pid)
            api = await load
            used = cpu_seconds(pid) - before
            raw = await floor
            per_request = used / api.requests * 1000 if api.requests else float("nan")
            rows.append(
                {
                    "kind": kind,
                    "api": api,
                    "floor": raw,
                    "server_cpu_ms_per_req": round(per_request, 3),
                }
            )
            print(format_row(api), f" server CPU {per_request:.2f} ms/req")
            print(format_row(raw))

        for level in levels:
            await measure(
                "GET /status/systems",
                run_load(
                    f"{server.url}/status/systems",
                    headers=headers,
                    concurrency=level,
                    duration=duration,
                    label="GET /status/systems",
                ),
                run_load(
                    f"{server.url}/status/liveness/",
                    concurrency=level,
                    duration=duration,
                    label="floor: GET /status/liveness/",
                ),
            )
            await measure(
                "GET /compute/{s}/jobs/{id}",
                run_load(
                    f"{server.url}/compute/{system}/jobs/{job_id}",
                    headers=headers,
                    concurrency=level,
                    duration=duration,
                    label="GET /compute/{s}/jobs/{id}",
                ),
                ssh_floor(
                    conn,
                    ["squeue", "-h", "-j", job_id],
                    stdin=None,
                    concurrency=level,
                    duration=duration,
                    max_requests=1_000_000,
                    label="floor: squeue -h -j ID (warm ssh)",
                ),
            )
            await measure(
                "POST /compute/{s}/jobs",
                run_load(
                    f"{server.url}/compute/{system}/jobs",
                    method="POST",
                    headers={**headers, "Content-Type": "application/json"},
                    body=submit_body,
                    concurrency=level,
                    duration=duration,
                    max_requests=max_submits,
                    expect=201,
                    label="POST /compute/{s}/jobs",
                ),
                ssh_floor(
                    conn,
                    [
                        "sbatch",
                        "--parsable",
                        f"--job-name={BENCH_JOB_NAME}",
                        "--output=/dev/null",
                        f"--chdir={scratch}",
                    ],
                    stdin=SCRIPT,
                    concurrency=level,
                    duration=duration,
                    max_requests=max_submits,
                    label="floor: sbatch --parsable (warm ssh)",
                ),
            )
            # let the submitted jobs drain so that the next level starts from a quiet queue
            await conn.run(shlex.join(["scancel", f"--name={BENCH_JOB_NAME}", "--state=PENDING"]))
            await asyncio.sleep(2)
    finally:
        await conn.run(shlex.join(["scancel", f"--name={BENCH_JOB_NAME}"]))
        conn.close()
        server.stop()
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| endpoint | c | API req/s | p50 ms | p99 ms | errors | server CPU ms/req "
        "| floor | floor req/s | floor p50 ms | floor p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        api, floor = row["api"], row["floor"]
        assert isinstance(api, Result) and isinstance(floor, Result)
        lines.append(
            f"| {row['kind']} | {api.concurrency} | {api.rps} | {api.p50_ms} | {api.p99_ms} "
            f"| {api.errors}/{api.requests} | {row['server_cpu_ms_per_req']} "
            f"| {floor.label.removeprefix('floor: ')} | {floor.rps} | {floor.p50_ms} "
            f"| {floor.p99_ms} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--levels", default="1,10,50")
    parser.add_argument(
        "--max-submits",
        type=int,
        default=300,
        help="at most this many jobs submitted per level (API and floor each)",
    )
    parser.add_argument("--output", help="write the markdown table here too")
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    rows = asyncio.run(bench(levels, min(args.duration, 120), args.max_submits))
    table = markdown(rows)
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
