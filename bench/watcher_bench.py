"""Benchmark the shared job watcher on the local site, in one run.

For 1, 100 and 1,000 waiters (half SSE streams, half `waitFor=terminal` long-polls,
spread over 40 short jobs; the single waiter follows 8 jobs one after the other, so
that every level lasts about 40 s) it measures, through a real `hpcgate serve`:
  scheduler commands per minute (squeue, sacct, all) from /metrics,
  watcher rounds per minute, the server's CPU (% of one core),
  latency from a job's end (a marker the job writes as its last action, on the same
  host and clock) to each waiter receiving the terminal state: p50, p95, max;
and beside them, in the same run, two raw floors on one warm asyncssh connection:
  one batched `squeue -j <ids>` per watcher interval (what the watcher does, minus
  the server): its end-to-terminal latency;
  one batched `squeue` every 0.1 s: when Slurm itself reports the end.

    .venv/bin/python bench/watcher_bench.py [--levels 1,100,1000] [--min-interval 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import asyncssh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.procstat import cpu_seconds
from tests.server import ApiServer, start_server
from tests.site import SiteEnv, ensure_site_up

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}
MAX_JOBS = 40
SEQUENTIAL_JOBS = 8
LEVEL_LIMIT_S = 240.0


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric_name, _, rest = head.partition("{")
        if metric_name != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += float(value)
    return total


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@dataclass
class LevelResult:
    waiters: int
    jobs: int
    seconds: float
    squeue_per_min: float
    sacct_per_min: float
    commands_per_min: float
    rounds_per_min: float
    server_cpu_pct: float
    p50_s: float
    p95_s: float
    max_s: float
    received: int
    expected: int


@dataclass
class FloorResult:
    label: str
    interval_s: float
    jobs: int
    commands_per_min: float
    p50_s: float
    p95_s: float


def job_script(marker: str, seconds: float) -> str:
    return f"#!/bin/bash\nsleep {seconds:.2f}\ndate +%s.%N > {shlex.quote(marker)}\n"


def sleeps(count: int) -> list[float]:
    """Spread job ends over the polling interval: 3 to 12 s, not aligned to seconds."""
    return [3 + (i * 2.37) % 9 for i in range(count)]


class Bench:
    def __init__(self, site: SiteEnv, server: ApiServer, conn: asyncssh.SSHClientConnection):
        self.site = site
        self.server = server
        self.conn = conn
        self.base = f"{server.url}/compute/{server.system}"
        token = server.token("hpcuser1", lifetime_seconds=3 * 3600)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.scratch = site.scratch("hpcuser1")

    async def markers(self, directory: str, count: int) -> dict[int, float]:
        """When each job wrote its marker (epoch seconds), for those that did."""
        found: dict[int, float] = {}
        async with self.conn.start_sftp_client() as sftp:
            for index in range(count):
                try:
                    async with sftp.open(f"{directory}/{index}.end") as handle:
                        found[index] = float((await handle.read()).strip())
                except (asyncssh.SFTPError, ValueError):
                    continue
        return found

    async def submit_all(
        self, session: aiohttp.ClientSession, directory: str, durations: list[float]
    ) -> list[str]:
        async def one(index: int, seconds: float) -> str:
            body = {
                "job": {
                    "name": "hpcgate-wbench",
                    "workingDirectory": self.scratch,
                    "script": job_script(f"{directory}/{index}.end", seconds),
                    "standardOutput": "/dev/null",
                }
            }
            async with session.post(f"{self.base}/jobs", json=body, headers=self.headers) as r:
                assert r.status == 201, await r.text()
                return (await r.json())["jobId"]

        return await asyncio.gather(*(one(i, s) for i, s in enumerate(durations)))

    async def stream(self, session: aiohttp.ClientSession, job_id: str) -> float | None:
        async with session.get(f"{self.base}/jobs/{job_id}/events", headers=self.headers) as r:
            event = ""
            async for raw in r.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "terminal":
                    return time.time()
        return None

    async def long_poll(self, session: aiohttp.ClientSession, job_id: str) -> float | None:
        params = {"waitFor": "terminal", "timeout": "200"}
        async with session.get(
            f"{self.base}/jobs/{job_id}", params=params, headers=self.headers
        ) as r:
            body = await r.json()
            if body["jobs"][0]["status"]["state"] in TERMINAL:
                return time.time()
        return None

    async def scrape(self, session: aiohttp.ClientSession) -> str:
        async with session.get(f"{self.server.url}/metrics") as r:
            return await r.text()

    async def level(self, waiters: int) -> LevelResult:
        """``waiters`` clients on up to 40 jobs; one waiter follows 8 jobs in turn
        (ending 4.7 s apart), so that every level lasts about as long."""
        jobs = min(waiters, MAX_JOBS) if waiters > 1 else SEQUENTIAL_JOBS
        durations = sleeps(jobs) if waiters > 1 else [4.0 + 4.7 * k for k in range(jobs)]
        directory = f"{self.scratch}/wbench-{uuid.uuid4().hex[:8]}"
        await self.conn.run(shlex.join(["mkdir", "-p", directory]), check=True)
        pid = self.server.process.pid
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=LEVEL_LIMIT_S)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            ids = await self.submit_all(session, directory, durations)
            before, cpu_before, started = await self.scrape(session), cpu_seconds(pid), time.time()

            async def wait(n: int) -> float | None:
                return await (self.stream if n % 2 == 0 else self.long_poll)(session, ids[n])

            async def follow_in_turn() -> list[float | None]:
                return [await wait(n) for n in range(jobs)]

            if waiters == 1:
                done = await asyncio.wait_for(follow_in_turn(), LEVEL_LIMIT_S)
            else:
                tasks = [asyncio.create_task(wait(n % jobs)) for n in range(waiters)]
                done = await asyncio.wait_for(
                    asyncio.gather(*tasks, return_exceptions=True), LEVEL_LIMIT_S
                )
            elapsed = time.time() - started
            cpu = cpu_seconds(pid) - cpu_before
            after = await self.scrape(session)
        ends = await self.markers(directory, jobs)
        latencies = [
            received - ends[n % jobs]
            for n, received in enumerate(done)
            if isinstance(received, float) and n % jobs in ends
        ]

        def per_min(name: str, **labels: str) -> float:
            return round(
                (metric(after, name, **labels) - metric(before, name, **labels)) / elapsed * 60, 1
            )

        total = sum(
            per_min("hpcgate_scheduler_commands_total", command=kind)
            for kind in ("squeue", "sacct", "scontrol", "sinfo", "sacctmgr", "srun", "other")
        )
        return LevelResult(
            waiters=waiters,
            jobs=jobs,
            seconds=round(elapsed, 1),
            squeue_per_min=per_min("hpcgate_scheduler_commands_total", command="squeue"),
            sacct_per_min=per_min("hpcgate_scheduler_commands_total", command="sacct"),
            commands_per_min=round(total, 1),
            rounds_per_min=per_min("hpcgate_watcher_rounds_total"),
            server_cpu_pct=round(cpu / elapsed * 100, 1),
            p50_s=round(percentile(latencies, 0.5), 3),
            p95_s=round(percentile(latencies, 0.95), 3),
            max_s=round(max(latencies, default=float("nan")), 3),
            received=len(latencies),
            expected=len(done),
        )

    async def floor(self, label: str, interval: float, jobs: int) -> FloorResult:
        """One batched squeue per ``interval`` on a warm connection, until all ended."""
        directory = f"{self.scratch}/wbench-{uuid.uuid4().hex[:8]}"
        await self.conn.run(shlex.join(["mkdir", "-p", directory]), check=True)
        ids = []
        for index, seconds in enumerate(sleeps(jobs)):
            argv = ["sbatch", "--parsable", "--job-name=hpcgate-wbench", "--output=/dev/null"]
            argv.append(f"--chdir={self.scratch}")
            result = await self.conn.run(
                shlex.join(argv), input=job_script(f"{directory}/{index}.end", seconds), check=True
            )
            ids.append(result.stdout.strip())
        seen: dict[str, float] = {}
        command = shlex.join(
            ["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-O", "JobID:|,State:|"]
        )
        started, commands = time.time(), 0
        while len(seen) < len(ids) and time.time() - started < LEVEL_LIMIT_S:
            tick = time.monotonic()
            result = await self.conn.run(command, check=False)
            commands += 1
            now = time.time()
            for line in str(result.stdout).splitlines():
                job_id, state, *_ = line.split("|")
                if state in TERMINAL and job_id not in seen:
                    seen[job_id] = now
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - tick)))
        elapsed = time.time() - started
        ends = await self.markers(directory, jobs)
        latencies = [seen[j] - ends[i] for i, j in enumerate(ids) if j in seen and i in ends]
        return FloorResult(
            label=label,
            interval_s=interval,
            jobs=jobs,
            commands_per_min=round(commands / elapsed * 60, 1),
            p50_s=round(percentile(latencies, 0.5), 3),
            p95_s=round(percentile(latencies, 0.95), 3),
        )


def markdown(levels: list[LevelResult], floors: list[FloorResult], interval: float) -> str:
    lines = [
        f"Watcher `min_interval` = {interval:g} s. Latency: job's end marker to the client "
        "holding the terminal state.",
        "",
        "| waiters | jobs | s | squeue/min | sacct/min | all cmds/min | rounds/min "
        "| server CPU % | p50 s | p95 s | max s | terminal states received |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in levels:
        lines.append(
            f"| {r.waiters} | {r.jobs} | {r.seconds} | {r.squeue_per_min} | {r.sacct_per_min} "
            f"| {r.commands_per_min} | {r.rounds_per_min} | {r.server_cpu_pct} | {r.p50_s} "
            f"| {r.p95_s} | {r.max_s} | {r.received}/{r.expected} |"
        )
    lines += [
        "",
        "| raw floor (warm asyncssh, no server) | interval s | jobs | squeue/min | p50 s | p95 s |",
        "|---|---|---|---|---|---|",
    ]
    for f in floors:
        lines.append(
            f"| {f.label} | {f.interval_s} | {f.jobs} | {f.commands_per_min} | {f.p50_s} "
            f"| {f.p95_s} |"
        )
    return "\n".join(lines)


async def bench(levels: list[int], interval: float) -> tuple[list[LevelResult], list[FloorResult]]:
    site = ensure_site_up()
    workdir = Path(tempfile.mkdtemp(prefix="hpcgate-wbench-"))
    server = start_server(
        site,
        workdir,
        overrides={"watcher": {"min_interval": interval}},
        settings_overrides={"health": {"interval_seconds": 3600}},
    )
    conn = await asyncssh.connect(
        site.ssh_host,
        port=site.ssh_port,
        username="hpcuser1",
        client_keys=[str(site.key("hpcuser1"))],
        known_hosts=str(site.known_hosts),
    )
    bench = Bench(site, server, conn)
    results: list[LevelResult] = []
    floors: list[FloorResult] = []
    try:
        for waiters in levels:
            result = await bench.level(waiters)
            print(json.dumps(asdict(result)), flush=True)
            results.append(result)
        for label, every in (
            ("batched squeue at the watcher's interval", interval),
            ("batched squeue every 0.1 s (Slurm's own delay)", 0.1),
        ):
            floor = await bench.floor(label, every, 10)
            print(json.dumps(asdict(floor)), flush=True)
            floors.append(floor)
    finally:
        await conn.run(shlex.join(["scancel", "--name=hpcgate-wbench"]))
        conn.close()
        server.stop()
    return results, floors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,100,1000")
    parser.add_argument("--min-interval", type=float, default=2.0)
    parser.add_argument("--output", help="write the markdown tables here too")
    args = parser.parse_args()
    levels = [min(int(level), 5000) for level in args.levels.split(",")]
    results, floors = asyncio.run(bench(levels, args.min_interval))
    table = markdown(results, floors, args.min_interval)
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
