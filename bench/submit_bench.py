"""Job submissions at c=1: ``POST /compute/{system}/jobs`` beside raw ``sbatch``.

The floor is ``sbatch --parsable`` with the same script on stdin over one warm
asyncssh connection as the same user (one exec channel per submission, as hpcgate's
pool does). hpcgate (``serve --workers 1``, its own warm pool) gets N sequential
submissions over one keep-alive connection, without and with an ``Idempotency-Key``
(a fresh key each: the SQLite claim, the stamp and the recorded id), and plain ones
with a query parameter the lean path (``api/hotpath.py``) leaves to FastAPI's
routing. The kinds are interleaved (floor, plain, keyed, FastAPI's, one HTTP round
trip alone: ``GET /status/liveness/``, floor, ...) so that drift hits them alike. Every
job is held (``#SBATCH --hold``: nothing runs) and cancelled at the end.

    .venv/bin/python bench/submit_bench.py [--count 50] [--duration 0] [--smoke]
        [--profile FILE [--rate 500]] [--only plain|keyed]

``--duration`` (seconds, 0: off) stops after that long instead of ``--count``;
``--profile`` samples the server with py-spy meanwhile (as ``profile_server.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.floor_bench import load_average, quiet
from bench.procstat import tree_cpu_seconds
from bench.profile_server import summarise
from bench.report import publish
from bench.serving import start_hpcgate
from tests.events.helpers import metric_values
from tests.site import ensure_site_up

JOB_NAME = "hpcgate-submit-bench"
SCRIPT = "#!/bin/bash\n#SBATCH --hold\ntrue\n"


def server_split(text: str) -> tuple[float, float, float, float]:
    """From ``/metrics``: the sums of POST jobs' request seconds and of sbatch's command
    seconds, the number of sbatch commands and of all commands run for requests."""
    request = metric_values(
        text, "hpcgate_http_request_duration_seconds_sum", method="POST", status="201"
    )
    sbatch = metric_values(text, "hpcgate_scheduler_command_duration_seconds_sum", command="sbatch")
    count = metric_values(
        text, "hpcgate_scheduler_command_duration_seconds_count", command="sbatch"
    )
    commands = metric_values(text, "hpcgate_scheduler_commands_total", source="request")
    return request, sbatch, count, commands


def summary(label: str, seconds: list[float]) -> dict[str, Any]:
    ms = sorted(s * 1000 for s in seconds)
    return {
        "label": label,
        "n": len(ms),
        "p50": round(statistics.median(ms), 2),
        "mean": round(statistics.fmean(ms), 2),
        "p90": round(ms[int(0.9 * (len(ms) - 1))], 2),
    }


async def bench(args: argparse.Namespace) -> str:
    site = ensure_site_up()
    workdir = Path(tempfile.mkdtemp(prefix="hpcgate-submitbench-"))
    served = start_hpcgate(site, workdir / "server", workers=1)
    assert served.issuer is not None
    token = served.issuer.mint("hpcuser1", lifetime_seconds=6 * 3600)
    scratch = site.scratch("hpcuser1")
    conn = await asyncssh.connect(
        site.ssh_host,
        port=site.ssh_port,
        username="hpcuser1",
        client_keys=[str(site.key("hpcuser1"))],
        known_hosts=str(site.known_hosts),
    )
    sbatch = shlex.join(
        [
            "sbatch",
            "--parsable",
            f"--job-name={JOB_NAME}",
            f"--chdir={scratch}",
            "--output=/dev/null",
        ]
    )
    body = {
        "job": {
            "name": JOB_NAME,
            "workingDirectory": scratch,
            "script": SCRIPT,
            "standardOutput": "/dev/null",
        }
    }
    url = f"{served.url}/compute/{served.system}/jobs"
    times: dict[str, list[float]] = {
        "sbatch": [],
        "POST jobs": [],
        "POST jobs + key": [],
        "POST jobs, FastAPI's path": [],
    }
    http_alone: list[float] = []  # GET /status/liveness/: one HTTP round trip, no SSH
    cpu_seconds: dict[str, float] = dict.fromkeys(times, 0.0)  # the server's, per kind
    floor_cpu = 0.0  # this process's CPU in the floor's sbatch (asyncssh's client side)
    try:
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as session:

            async def floor() -> None:
                result = await conn.run(sbatch, input=SCRIPT, check=True)
                assert str(result.stdout).strip().split(";")[0].isdigit(), result.stdout

            async def liveness() -> None:
                async with session.get(f"{served.url}/status/liveness/") as response:
                    await response.read()
                    assert response.status == 200

            async def api(keyed: bool, fastapi: bool = False) -> None:
                extra = {"Idempotency-Key": uuid.uuid4().hex} if keyed else {}
                # a query parameter the lean path does not know: FastAPI serves it
                query = {"viaFastapi": "1"} if fastapi else {}
                async with session.post(url, json=body, headers=extra, params=query) as response:
                    text = await response.text()
                    assert response.status == 201, text

            for _ in range(3):  # warm both: connections, caches, the account policy
                await floor()
                await api(False)
                await api(True)
            load = await quiet(args.max_load, args.patience)
            async with session.get(f"{served.url}/metrics") as response:
                split_before = server_split(await response.text())
            spy = None
            if args.profile:
                pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                spy = subprocess.Popen(  # noqa: ASYNC220 - the bench's own helper process
                    [pyspy, "record", "--pid", str(served.pid), "--format", "raw",
                     "--rate", str(args.rate), "--nonblocking", "-o", args.profile],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                await asyncio.sleep(1)
            deadline = time.monotonic() + args.duration if args.duration else None
            done = 0
            while done < args.count and (deadline is None or time.monotonic() < deadline):
                for label, call in (
                    ("sbatch", floor),
                    ("POST jobs", lambda: api(False)),
                    ("POST jobs + key", lambda: api(True)),
                    ("POST jobs, FastAPI's path", lambda: api(False, fastapi=True)),
                ):
                    if label not in args.kinds:
                        continue
                    before = tree_cpu_seconds(served.pid)
                    own_before = time.process_time()
                    started = time.perf_counter()
                    await call()
                    times[label].append(time.perf_counter() - started)
                    if label != "sbatch":
                        cpu_seconds[label] += tree_cpu_seconds(served.pid) - before
                    else:
                        floor_cpu += time.process_time() - own_before
                started = time.perf_counter()
                await liveness()
                http_alone.append(time.perf_counter() - started)
                done += 1
            async with session.get(f"{served.url}/metrics") as response:
                split_after = server_split(await response.text())
            if spy is not None:
                spy.send_signal(2)  # py-spy writes its file on SIGINT
                spy.wait(timeout=60)
                print(summarise(Path(args.profile), 40))
        load_after = load_average()
    finally:
        await conn.run(shlex.join(["scancel", f"--name={JOB_NAME}"]), check=False)
        conn.close()
        served.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    rows = [summary(label, values) for label, values in times.items() if values]
    request_s, sbatch_s, sbatch_n, commands = (
        a - b for a, b in zip(split_after, split_before, strict=True)
    )
    floor_row = rows[0]
    http_p50 = summary("", http_alone)["p50"] if http_alone else float("nan")
    lines = [
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, c=1, "
        f"{floor_row['n']} submissions of each, interleaved; load {load:.2f} before, "
        f"{load_after:.2f} after; an HTTP round trip alone (GET /status/liveness/) "
        f"p50 {http_p50} ms",
        f"inside the server (its metrics, means of all API kinds): request "
        f"{request_s * 1000 / sbatch_n:.2f} ms, of which sbatch over SSH "
        f"{sbatch_s * 1000 / sbatch_n:.2f} ms; {commands / sbatch_n:.2f} SSH commands per "
        "submission",
        "",
        "| submission | n | p50 ms | mean ms | p90 ms | p50 - sbatch ms | mean - sbatch ms "
        "| CPU ms each |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        label = row["label"]
        if label == "sbatch":  # the floor's client: asyncssh's side of the exchange
            cpu = f"{floor_cpu * 1000 / row['n']:.2f} (client)"
        else:
            cpu = f"{cpu_seconds[label] * 1000 / row['n']:.2f} (server)"
        lines.append(
            f"| {label} | {row['n']} | {row['p50']} | {row['mean']} | {row['p90']} "
            f"| {row['p50'] - floor_row['p50']:+.2f} | {row['mean'] - floor_row['mean']:+.2f} "
            f"| {cpu} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50, help="submissions of each kind")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after (s); 0: off")
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--patience", type=float, default=60.0)
    parser.add_argument("--smoke", action="store_true", help="three of each")
    parser.add_argument("--output", help="append the markdown table here")
    parser.add_argument("--profile", help="py-spy's collapsed stacks of the server here")
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--only", choices=["plain", "keyed", "fastapi"], help="sbatch and this one")
    args = parser.parse_args()
    kinds = {
        "plain": "POST jobs",
        "keyed": "POST jobs + key",
        "fastapi": "POST jobs, FastAPI's path",
    }
    args.kinds = {"sbatch", *kinds.values()}
    if args.only:
        args.kinds = {"sbatch", kinds[args.only]}
    args.count = min(args.count, 2000)
    args.duration = min(args.duration, 600.0)
    if args.smoke:
        args.count, args.patience = 3, 0.0
    publish(asyncio.run(bench(args)), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
