"""Benchmark many open clients on one real job: server memory per client, memory given
back after they close, and the terminal event's fan-out.

Through a real ``hpcgate serve`` (``bench/serving.py``, one worker, httptools), as
hpcuser1, on one job that sleeps until it is cancelled:

* baseline: the server's VmRSS after a warm-up (a few clients opened and closed);
* ``--cycles`` times: open ``--clients`` clients (``--mode mixed``: half SSE streams
  ``GET .../jobs/{id}/events``, half long-polls ``GET .../jobs/{id}?waitFor=terminal``;
  or all ``sse`` / ``longpoll``), wait until the server counts them all
  (``hpcgate_sse_subscribers`` + ``hpcgate_longpoll_waiters``), hold ``--duration`` s,
  read VmRSS (KB per open client over the baseline); the clients then go away
  (every cycle but the last) and VmRSS is read again once the server counts none;
* in the last cycle the job is cancelled instead: per client, the time from the
  watcher seeing the end (the terminal event's id is the wall-clock millisecond at
  which the watcher applied the round, same host and clock) to the client holding
  it: p50, p99, max.

The floor, in the same run: a bare asyncio server (uvloop, as ``hpcgate serve``)
that holds the same number of connections as SSE streams and, on request, writes
one event (its id the same millisecond stamp) to all of them in one pass: its KB
per connection and the fan-out as the same client sees it (the client's own cost
of receiving ten thousand events is in both figures).

The per-user and system subscriber caps (``watcher.max_subscribers_per_user``,
``max_subscribers``) are raised to the client count for the bench (one user holds
all the clients); every check stays in the path. The file-descriptor limit is
raised to its hard limit here and inherited by both servers.

    flock /tmp/hpcgate-bench.lock .venv/bin/python bench/clients_bench.py \
        [--clients 10000] [--cycles 3] [--mode mixed|sse|longpoll] [--duration 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.procstat import cpu_seconds, rss_kb
from bench.serving import Served, free_port, start_hpcgate
from hpcgate.cli import local_site_config
from tests.site import ensure_site_up

OPEN_BATCH = 250  # clients started at once
OPEN_AHEAD = 1000  # started but not yet counted by the server, at most (listen backlog)
READY_LIMIT_S = 240.0
HOLD_TIMEOUT_S = 300  # the long-polls' timeout (max_wait_seconds)


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rpartition(" ")[2])
    return total


@dataclass
class Cycle:
    cycle: int
    clients: int
    open_s: float
    rss_open_kb: int
    kb_per_client: float
    rss_after_kb: int
    ended_by: str


@dataclass
class FanOut:
    received: int
    expected: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass
class Run:
    label: str
    clients: int
    mode: str
    baseline_kb: int
    cycles: list[Cycle] = field(default_factory=list)
    fan_out: FanOut | None = None
    by_kind: dict[str, FanOut] = field(default_factory=dict)
    load_1min: float = 0.0
    cpu_s: float = 0.0


class Clients:
    """``count`` open clients on one URL set; each records when it got the end."""

    def __init__(self, session: aiohttp.ClientSession, headers: dict[str, str]) -> None:
        self.session = session
        self.headers = headers
        self.tasks: list[asyncio.Task[None]] = []
        self.got: list[tuple[float, int, str]] = []  # (received at, event id, kind)
        self.failed: list[str] = []

    async def sse(self, url: str) -> None:
        async with self.session.get(url, headers=self.headers) as r:
            if r.status != 200:
                self.failed.append(f"{r.status} {await r.text()}")
                return
            event_id = 0
            async for raw in r.content:
                if raw.startswith(b"id:"):
                    event_id = int(raw[3:])
                elif raw.startswith(b"event: terminal"):
                    self.got.append((time.time(), event_id, "sse"))
                    return

    async def long_poll(self, url: str) -> None:
        async with self.session.get(url, headers=self.headers) as r:
            if r.status != 200:
                self.failed.append(f"{r.status} {await r.text()}")
                return
            await r.read()
            received = time.time()
            if r.headers.get("X-Hpcgate-Wait") == "terminal":
                self.got.append((received, int(r.headers["X-Hpcgate-Event-Id"]), "longpoll"))

    async def start(
        self, urls: list[tuple[str, str]], counted: Callable[[], Awaitable[int]]
    ) -> None:
        """Open them in batches, so that at most ``OPEN_AHEAD`` wait in the backlog."""
        for index, (kind, url) in enumerate(urls):
            coro = self.sse(url) if kind == "sse" else self.long_poll(url)
            self.tasks.append(asyncio.create_task(coro))
            if index % OPEN_BATCH == OPEN_BATCH - 1:
                deadline = time.monotonic() + READY_LIMIT_S
                while await counted() < index + 1 - OPEN_AHEAD:
                    if self.failed or time.monotonic() > deadline:
                        raise RuntimeError(f"clients do not open: {self.failed[:3]}")
                    await asyncio.sleep(0.1)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def fan_out(got: list[tuple[float, int, str]], expected: int) -> FanOut:
    delays = [(received - event_id / 1000) * 1000 for received, event_id, _ in got]
    return FanOut(
        received=len(delays),
        expected=expected,
        p50_ms=round(percentile(delays, 0.5), 1),
        p99_ms=round(percentile(delays, 0.99), 1),
        max_ms=round(max(delays, default=float("nan")), 1),
    )


class HpcgateBench:
    def __init__(self, served: Served, args: argparse.Namespace) -> None:
        self.served = served
        self.args = args
        assert served.issuer is not None
        token = served.issuer.mint("hpcuser1", lifetime_seconds=6 * 3600)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.base = f"{served.url}/compute/{served.system}"

    async def snapshot(self, name: str) -> None:
        """``--tracemalloc``: the server writes a tracemalloc snapshot (``tracehook``)."""
        if not self.args.tracemalloc:
            return
        folder = Path(self.args.tracemalloc)
        done = folder / "done"
        before = done.stat().st_size if done.exists() else 0
        os.kill(self.served.pid, signal.SIGUSR1)
        while not done.exists() or done.stat().st_size == before:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        (folder / f"snap-{before + 1}.pickle").rename(folder / f"{name}.pickle")

    async def counted(self, session: aiohttp.ClientSession) -> int:
        async with session.get(f"{self.served.url}/metrics") as r:
            text = await r.text()
        return round(
            metric(text, "hpcgate_sse_subscribers") + metric(text, "hpcgate_longpoll_waiters")
        )

    async def wait_count(self, session: aiohttp.ClientSession, target: int, what: str) -> None:
        deadline = time.monotonic() + READY_LIMIT_S
        while (count := await self.counted(session)) != target:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: the server counts {count} clients, not {target}")
            await asyncio.sleep(0.25)

    def urls(self, job_id: str, count: int) -> list[tuple[str, str]]:
        sse = f"{self.base}/jobs/{job_id}/events"
        poll = f"{self.base}/jobs/{job_id}?waitFor=terminal&timeout={HOLD_TIMEOUT_S}"
        kinds = {"sse": ["sse"], "longpoll": ["longpoll"], "mixed": ["sse", "longpoll"]}
        pattern = kinds[self.args.mode]
        return [
            (kind, sse if kind == "sse" else poll)
            for kind in (pattern[n % len(pattern)] for n in range(count))
        ]

    async def submit(self, session: aiohttp.ClientSession) -> str:
        body = {
            "job": {
                "name": "hpcgate-cbench",
                "workingDirectory": "/tmp",
                "script": "#!/bin/bash\nsleep 3600\n",
                "standardOutput": "/dev/null",
            }
        }
        async with session.post(f"{self.base}/jobs", json=body, headers=self.headers) as r:
            assert r.status == 201, await r.text()
            return str((await r.json())["jobId"])

    async def cancel(self, session: aiohttp.ClientSession, job_id: str) -> None:
        async with session.delete(f"{self.base}/jobs/{job_id}", headers=self.headers) as r:
            assert r.status in (200, 204), await r.text()

    async def one_cycle(
        self, number: int, job_id: str, count: int, baseline: int, *, cancel: bool
    ) -> tuple[Cycle, list[tuple[float, int, str]]]:
        pid = self.served.pid
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as meta:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), timeout=timeout
            ) as session:
                clients = Clients(session, self.headers)
                started = time.monotonic()
                await clients.start(self.urls(job_id, count), lambda: self.counted(meta))
                await self.wait_count(meta, count, f"cycle {number}")
                opened = time.monotonic() - started
                if clients.failed:
                    raise RuntimeError(f"{len(clients.failed)} failed: {clients.failed[:3]}")
                await asyncio.sleep(self.args.duration)
                rss_open = rss_kb(pid)
                await self.snapshot(f"open-{number}")
                if cancel:
                    await self.cancel(meta, job_id)
                    await asyncio.wait_for(
                        asyncio.gather(*clients.tasks, return_exceptions=True), 120
                    )
                else:
                    await clients.stop()
            await self.wait_count(meta, 0, f"cycle {number} closed")
        await asyncio.sleep(self.args.settle)  # what the server frees after the last close
        await self.snapshot(f"closed-{number}")
        cycle = Cycle(
            cycle=number,
            clients=count,
            open_s=round(opened, 1),
            rss_open_kb=rss_open,
            kb_per_client=round((rss_open - baseline) / count, 2),
            rss_after_kb=rss_kb(pid),
            ended_by="cancel (terminal event)" if cancel else "clients closed",
        )
        return cycle, clients.got

    async def run(self) -> Run:
        args = self.args
        async with aiohttp.ClientSession() as session:
            job_id = await self.submit(session)
        try:
            # warm-up: first-time imports and caches are not per-client memory
            for _ in range(2):
                async with aiohttp.ClientSession() as session:
                    warm = Clients(session, self.headers)
                    await warm.start(self.urls(job_id, 10), lambda: self.counted(session))
                    await self.wait_count(session, 10, "warm-up")
                    await warm.stop()
                    await self.wait_count(session, 0, "warm-up closed")
            await asyncio.sleep(2)
            baseline = rss_kb(self.served.pid)
            await self.snapshot("baseline")
            run = Run("hpcgate serve", args.clients, args.mode, baseline)
            cpu_before = cpu_seconds(self.served.pid)
            for number in range(1, args.cycles + 1):
                last = number == args.cycles
                cycle, got = await self.one_cycle(
                    number, job_id, args.clients, baseline, cancel=last
                )
                print(json.dumps(asdict(cycle)), flush=True)
                run.cycles.append(cycle)
                if last:
                    run.fan_out = fan_out(got, args.clients)
                    if args.mode == "mixed":
                        for kind in ("sse", "longpoll"):
                            mine = [item for item in got if item[2] == kind]
                            run.by_kind[kind] = fan_out(mine, args.clients // 2)
            run.cpu_s = round(cpu_seconds(self.served.pid) - cpu_before, 1)
            run.load_1min = os.getloadavg()[0]
            return run
        finally:
            with contextlib.suppress(Exception):
                async with aiohttp.ClientSession() as session:
                    await self.cancel(session, job_id)


# ------------------------------------------------------------------ the floor


async def floor_run(clients_count: int, duration: float) -> Run:
    port = free_port()
    process = subprocess.Popen(  # noqa: ASYNC220 (the bench's own loop: nothing waits)
        [sys.executable, str(Path(__file__).with_name("clients_floor.py")), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as meta:

            async def count() -> int:
                async with meta.get(f"{url}/count") as r:
                    return int(await r.text())

            deadline = time.monotonic() + 30
            while True:
                try:
                    await count()
                    break
                except aiohttp.ClientError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            baseline = rss_kb(process.pid)
            run = Run("floor: bare asyncio server (uvloop)", clients_count, "sse", baseline)
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                clients = Clients(session, {})
                started = time.monotonic()
                await clients.start([("sse", f"{url}/stream")] * clients_count, count)
                ready_by = time.monotonic() + READY_LIMIT_S
                while await count() != clients_count:
                    if time.monotonic() > ready_by:
                        raise RuntimeError("floor: clients did not all open")
                    await asyncio.sleep(0.25)
                opened = time.monotonic() - started
                await asyncio.sleep(duration)
                rss_open = rss_kb(process.pid)
                async with meta.get(f"{url}/fire") as r:
                    await r.read()
                await asyncio.wait_for(asyncio.gather(*clients.tasks, return_exceptions=True), 60)
            await asyncio.sleep(2)
            run.cycles.append(
                Cycle(
                    cycle=1,
                    clients=clients_count,
                    open_s=round(opened, 1),
                    rss_open_kb=rss_open,
                    kb_per_client=round((rss_open - baseline) / clients_count, 2),
                    rss_after_kb=rss_kb(process.pid),
                    ended_by="one pass writes the event",
                )
            )
            run.fan_out = fan_out(clients.got, clients_count)
            run.load_1min = os.getloadavg()[0]
            return run
    finally:
        process.terminate()
        process.wait(timeout=10)


# ------------------------------------------------------------------ report


def compare(folder: Path, name: str, clients: int) -> str:
    """The allocations ``name`` holds beyond the baseline, grouped by where they were
    made (innermost frames first), in bytes per client."""
    import tracemalloc

    base = tracemalloc.Snapshot.load(str(folder / "baseline.pickle"))
    snap = tracemalloc.Snapshot.load(str(folder / f"{name}.pickle"))
    stats = snap.compare_to(base, "traceback")
    total = sum(stat.size_diff for stat in stats)
    lines = [f"traced growth: {total / 1024 / 1024:.1f} MB, {total / clients:.0f} B per client"]
    for stat in stats[:30]:
        frames = " <- ".join(
            f"{Path(f.filename).name}:{f.lineno}" for f in list(stat.traceback)[-1:-6:-1]
        )
        lines.append(f"{stat.size_diff / clients:8.0f} B/client  {frames}")
    return "\n".join(lines)


def markdown(runs: list[Run]) -> str:
    lines = [
        "| server | cycle | clients | opened in s | RSS base MB | RSS open MB | KB per client "
        "| RSS after close MB | after / base | ended by |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for c in run.cycles:
            lines.append(
                f"| {run.label} ({run.mode}) | {c.cycle} | {c.clients} | {c.open_s} "
                f"| {run.baseline_kb / 1024:.1f} | {c.rss_open_kb / 1024:.1f} "
                f"| {c.kb_per_client} | {c.rss_after_kb / 1024:.1f} "
                f"| {c.rss_after_kb / run.baseline_kb:.2f} | {c.ended_by} |"
            )
    lines += [
        "",
        "| server | terminal events received | fan-out p50 ms | p99 ms | max ms "
        "| load avg (1 min) |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        rows = [(run.label, run.fan_out)]
        rows += [(f"{run.label}: {kind} only", f) for kind, f in run.by_kind.items()]
        for label, f in rows:
            if f is not None:
                lines.append(
                    f"| {label} | {f.received}/{f.expected} | {f.p50_ms} | {f.p99_ms} "
                    f"| {f.max_ms} | {run.load_1min:.2f} |"
                )
    return "\n".join(lines)


async def bench(args: argparse.Namespace) -> list[Run]:
    site = ensure_site_up()
    workdir = Path(tempfile.mkdtemp(prefix="hpcgate-cbench-"))
    places = args.clients + 100
    watcher = {"max_subscribers": places, "max_subscribers_per_user": places}
    # the systems of the configuration bench/serving.py writes, with the caps raised
    systems = local_site_config(site.values, workdir / "hpcgate" / "keys")["systems"]
    assert isinstance(systems, list)
    for system in systems:
        system["watcher"] = {**system.get("watcher", {}), **watcher}
    settings = {"health": {"interval_seconds": 3600}, "systems": systems}
    served = start_hpcgate(site, workdir / "hpcgate", settings=settings)
    runs: list[Run] = []
    try:
        runs.append(await HpcgateBench(served, args).run())
    finally:
        served.stop()
    runs.append(await floor_run(args.clients, args.duration))
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--mode", choices=("mixed", "sse", "longpoll"), default="mixed")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds all are held open")
    parser.add_argument(
        "--settle", type=float, default=15.0, help="seconds after the last close to read RSS"
    )
    parser.add_argument(
        "--malloc",
        action="store_true",
        help="the servers use glibc malloc for Python objects (PYTHONMALLOC=malloc)",
    )
    parser.add_argument("--smoke", action="store_true", help="20 clients, 2 cycles, 0.5 s")
    parser.add_argument("--output", help="write the markdown tables here too")
    parser.add_argument(
        "--tracemalloc",
        metavar="DIR",
        help="debug: trace the server's allocations, write snapshots to DIR, print diffs",
    )
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.cycles, args.duration, args.settle = 20, 2, 0.5, 0.5
    hard = raise_nofile()
    if hard < args.clients + 500:
        print(f"RLIMIT_NOFILE hard limit {hard} is too low for {args.clients}", file=sys.stderr)
        return 2
    if args.tracemalloc:
        folder = Path(args.tracemalloc).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        args.tracemalloc = str(folder)
        hook = str(Path(__file__).resolve().parent / "tracehook")
        path = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = hook + (os.pathsep + path if path else "")
        os.environ["PYTHONTRACEMALLOC"] = "12"
        os.environ["HPCGATE_BENCH_SNAPSHOTS"] = str(folder)
    if args.malloc:
        os.environ["PYTHONMALLOC"] = "malloc"  # the servers started from here, not this client
    runs = asyncio.run(bench(args))
    if args.tracemalloc:
        for name in ("open-1", "closed-1"):
            print(f"\n## tracemalloc: {name} - baseline (top 30 by traceback)")
            print(compare(Path(args.tracemalloc), name, args.clients))
    table = markdown(runs)
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
