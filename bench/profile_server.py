"""Profile a real ``hpcgate serve`` under load with py-spy; summarise where CPU goes.

Starts the server for the local site, drives one request with the aiohttp load
generator while ``py-spy record`` samples the server process, and prints the
functions with the most samples: by own time (self) and including callees
(inclusive), as a share of all samples. py-spy: ``.venv/bin/pip install py-spy``.

    .venv/bin/python bench/profile_server.py --request stat --duration 10 [--raw FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import asyncssh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import BACKENDS, default_backend, format_row, run_load, use_backend
from bench.serving import start_hpcgate
from tests.site import ensure_site_up


def _frame(frame: str) -> str:
    """``function (path/file.py:line)`` -> ``function (file.py``."""
    function, _, where = frame.partition(" (")
    return f"{function} ({where.split(':')[0].rsplit('/', 1)[-1]}"


def summarise(collapsed: Path, top: int) -> str:
    """Self and inclusive shares of the functions in py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        total += count
        frames = [_frame(frame) for frame in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} samples", "", "self:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    site = ensure_site_up()
    workdir = Path(tempfile.mkdtemp(prefix="hpcgate-profile-"))
    conn = await asyncssh.connect(
        site.ssh_host, port=site.ssh_port, username="hpcuser1",
        client_keys=[str(site.key("hpcuser1"))], known_hosts=str(site.known_hosts),
    )  # fmt: skip
    remote = f"{site.scratch('hpcuser1')}/profile-{uuid.uuid4().hex[:8]}"
    await conn.run(f"mkdir -p {remote} && cd {remote} && seq -f 'f%05g' 1 {args.entries} "
                   "| xargs touch", check=True)  # fmt: skip
    job = await conn.run("sbatch --parsable --output=/dev/null", input="#!/bin/bash\ntrue\n")
    job_id = str(job.stdout).strip()
    server = start_hpcgate(site, workdir / "server", http=args.http)
    assert server.issuer is not None
    token = server.issuer.mint("hpcuser1", lifetime_seconds=3600)
    fs = f"{server.url}/filesystem/{server.system}/ops"
    url = {
        "stat": f"{fs}/stat?path={remote}/f00001",
        "ls": f"{fs}/ls?path={remote}",
        "job": f"{server.url}/compute/{server.system}/jobs/{job_id}",
        "systems": f"{server.url}/status/systems",
    }[args.request]
    headers = {"Authorization": f"Bearer {token}"}
    try:
        await asyncio.sleep(3)
        await run_load(url, headers=headers, concurrency=2, duration=1)  # warm
        raw = Path(args.raw or workdir / "profile.txt")
        spy = subprocess.Popen(  # noqa: ASYNC220 - the bench's own helper process
            ["py-spy", "record", "--pid", str(server.pid), "--format", "raw", "--rate", "250",
             "--duration", str(int(args.duration)), "--nonblocking", "-o", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.sleep(0.5)
        result = await run_load(url, headers=headers, concurrency=args.concurrency,
                                duration=args.duration - 1)  # fmt: skip
        print(format_row(result))
        spy.wait(timeout=args.duration + 30)
        print(summarise(raw, args.top))
    finally:
        await conn.run(f"rm -rf {shlex.quote(remote)}", check=False)
        conn.close()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--request", choices=["stat", "ls", "job", "systems"], default="stat")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--entries", type=int, default=20, help="files in the listed directory")
    parser.add_argument("--http", choices=["h11", "httptools"], default="httptools")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--raw", help="keep py-spy's collapsed stacks here")
    parser.add_argument("--loadgen", choices=BACKENDS, default=default_backend())
    args = parser.parse_args()
    use_backend(args.loadgen)
    args.duration = min(max(args.duration, 2.0), 120.0)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
