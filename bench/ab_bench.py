"""A change judged in one run: this tree's server (A) and another checkout's (B) side
by side, the same load alternating between them round after round (A B, B A, ...),
so that the drift of a shared machine hits both alike.

Whole runs of the other benchmarks spread too much on two shared cores to judge a
change of a few percent (the same code gave 0.52-0.74 of `put` over four runs); an
alternating A/B does not. Only B's server code comes from the other checkout (its
``server/`` ahead on ``PYTHONPATH``): this tree's bench and site scripts drive both,
so never run the site or the tests from the other checkout.

    .venv/bin/python bench/ab_bench.py --variant DIR [--kinds stat,download,upload]
        [--rounds 4] [--duration 5] [--concurrency 10] [--size-mib 512] [--output FILE]
    .venv/bin/python bench/ab_bench.py --smoke        # what tests/bench runs (A against A)

``DIR``: a checkout of the other code (``git worktree add /tmp/b <rev>``, or a copy
with the change). Kinds: ``stat`` and ``systems`` (``GET ops/stat``, ``GET
/status/systems`` with the load generator for ``--duration`` s at ``--concurrency``),
``download`` (``GET ops/download`` of a ``--size-mib`` file, the bytes dropped by
``http_sink``) and ``upload`` (``POST ops/upload`` of it, streamed multipart, its size
checked on the cluster after). Per server: the median rate over the rounds, each
round's rate, and the server's and its sshd sessions' CPU per request (ms) or per GiB
(s), the medians (``cpu_split``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import asyncssh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cpu_split import CpuSplit
from bench.fs_bench import Transfers, connect, make_file
from bench.http_sink import download_discarding
from bench.loadgen import run_load
from bench.report import publish
from bench.serving import Served, start_hpcgate
from tests.site import ensure_site_up

MIB = 1024 * 1024
KINDS = ("stat", "systems", "download", "upload")
TRANSFER_TIMEOUT = 600.0


@dataclass
class Runs:
    """One server's rounds of one kind: rate, and CPU per request or per GiB."""

    rates: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    sshd_cpu: list[float] = field(default_factory=list)

    def row(self, kind: str, name: str) -> str:
        unit = "MB/s" if kind in ("download", "upload") else "req/s"
        cpu = "s/GiB" if unit == "MB/s" else "ms/req"
        each = " / ".join(f"{rate:,.0f}" for rate in self.rates)
        return (
            f"| {kind} | {name} | {statistics.median(self.rates):,.0f} {unit} | {each} "
            f"| {statistics.median(self.server_cpu):.3f} {cpu} "
            f"| {statistics.median(self.sshd_cpu):.3f} {cpu} |"
        )


async def bench(args: argparse.Namespace) -> str:
    site = ensure_site_up()
    work = Path(tempfile.mkdtemp(prefix="hpcgate-ab-"))
    servers: dict[str, Served] = {}
    conn = await connect(site)
    sftp = await conn.start_sftp_client()
    remote = f"{site.scratch('hpcuser1')}/ab-{uuid.uuid4().hex[:8]}"
    runs = {(kind, name): Runs() for kind in args.kinds for name in "AB"}
    try:
        servers["A"] = start_hpcgate(site, work / "a")
        servers["B"] = start_hpcgate(site, work / "b", code=args.variant)
        await sftp.makedirs(remote)
        async with sftp.open(f"{remote}/stat-me", "w"):
            pass
        size = args.size_mib * MIB
        local = work / "data.bin"
        if {"download", "upload"} & set(args.kinds):
            make_file(local, size)
            await sftp.put(str(local), f"{remote}/raw.bin")
        tokens = {name: s.issuer.mint("hpcuser1", lifetime_seconds=6 * 3600)  # type: ignore[union-attr]
                  for name, s in servers.items()}  # fmt: skip

        async def once(kind: str, name: str) -> tuple[float, float]:
            """One round of ``kind`` on one server: its rate and its units of work."""
            served = servers[name]
            headers = {"Authorization": f"Bearer {tokens[name]}"}
            fs = f"{served.url}/filesystem/{served.system}"
            if kind in ("stat", "systems"):
                url = (
                    f"{fs}/ops/stat?{urlencode({'path': f'{remote}/stat-me'})}"
                    if kind == "stat"
                    else f"{served.url}/status/systems"
                )
                result = await run_load(
                    url, headers=headers, concurrency=args.concurrency,
                    duration=args.duration, label=f"{kind} {name}",
                )  # fmt: skip
                if result.errors:
                    raise RuntimeError(f"{kind} on {name}: {result.errors} errors")
                return result.rps, result.requests
            started = time.perf_counter()
            if kind == "download":
                url = f"{fs}/ops/download?{urlencode({'path': f'{remote}/raw.bin'})}"
                assert await download_discarding(url, headers, TRANSFER_TIMEOUT) == size
            else:
                timeout = aiohttp.ClientTimeout(total=TRANSFER_TIMEOUT)
                async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
                    await Transfers(served, sftp, session, local, remote).ops_upload()  # type: ignore[arg-type]
                assert (await sftp.stat(f"{remote}/ops.bin")).size == size
                await sftp.remove(f"{remote}/ops.bin")
            return size / (time.perf_counter() - started) / 1e6, size / 1024**3

        for round_ in range(args.rounds):
            for kind in args.kinds:
                for name in ("A", "B") if round_ % 2 == 0 else ("B", "A"):
                    split = CpuSplit(servers[name].pid, site.ssh_port)
                    rate, units = await once(kind, name)
                    taken = split.done()
                    scale = 1000 if kind in ("stat", "systems") else 1  # ms/req, s/GiB
                    seconds = taken.elapsed / 100 / units * scale
                    measured = runs[(kind, name)]
                    measured.rates.append(rate)
                    measured.server_cpu.append(taken.server * seconds)
                    measured.sshd_cpu.append(taken.sshd * seconds)
                    print(f"round {round_ + 1} {kind:<8} {name}: {rate:10,.1f}", flush=True)
    finally:
        for served in servers.values():
            served.stop()
        with contextlib.suppress(asyncssh.SFTPError):
            await sftp.rmtree(remote)
        conn.close()
        shutil.rmtree(work, ignore_errors=True)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    lines = [
        f"{time.strftime('%Y-%m-%d %H:%M')}, A: this tree, B: {args.variant}, "
        f"{args.rounds} rounds alternating, load after {load}",
        "",
        "| kind | server | median | each round | server CPU | sshd CPU |",
        "|---|---|---|---|---|---|",
    ]
    lines += [runs[(kind, name)].row(kind, name) for kind in args.kinds for name in "AB"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", type=Path, help="a checkout whose server/ is B")
    parser.add_argument("--kinds", default="stat,download,upload", help=", ".join(KINDS))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load round")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--size-mib", type=int, default=512, help="file size for transfers")
    parser.add_argument("--smoke", action="store_true", help="tiny: A against A (CI)")
    parser.add_argument("--output", help="append the markdown table here")
    args = parser.parse_args()
    if args.smoke:
        args.variant = args.variant or Path(__file__).resolve().parents[1]
        args.rounds, args.duration, args.size_mib = 2, 0.3, 4
    if args.variant is None or not (args.variant / "server" / "hpcgate").is_dir():
        parser.error("--variant: a checkout with server/hpcgate in it")
    args.kinds = [kind for kind in args.kinds.split(",") if kind]
    if not args.kinds or set(args.kinds) - set(KINDS):
        parser.error(f"--kinds: some of {', '.join(KINDS)}")
    args.rounds = max(1, min(args.rounds, 50))
    args.duration = max(0.1, min(args.duration, 120.0))
    args.size_mib = max(1, min(args.size_mib, 16 * 1024))
    publish(asyncio.run(bench(args)), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
