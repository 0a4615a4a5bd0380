"""A low-overhead HTTP load generator for any FirecREST-compatible server.

N concurrent clients send the same request in a loop for a fixed duration (bounded:
it always stops by itself) and report requests per second, latency percentiles,
errors and the generator's own CPU milliseconds per request. Two backends:

* ``wrk`` (Debian's ``wrk``, ``scripts/install-wrk``; the default when installed): one
  C thread, keep-alive connections, the request (the Authorization header too) set by a
  Lua script written 0600, never in argv; percentiles from the script's ``done()``.
  Whole seconds only (at least 1); ``max_requests`` is not enforced.
* ``aiohttp``: one Python process, about a third of httpx's CPU per request, and
  exact status counts.

The generator shares two cores with the server and sshd, so its CPU per request
bounds what a benchmark can show (``client_cpu_ms``).

    python bench/loadgen.py --url http://127.0.0.1:8000 --token "$TOKEN" \
        --path /status/systems --concurrency 10 --duration 10 [--loadgen wrk|aiohttp]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp


@dataclass
class Result:
    label: str
    concurrency: int
    duration_s: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]
    client_cpu_ms: float = 0.0
    """The load generator's CPU milliseconds per request."""
    loadgen: str = "aiohttp"


BACKENDS = ("wrk", "aiohttp")


def default_backend() -> str:
    """wrk when it is installed, else aiohttp."""
    return "wrk" if shutil.which("wrk") else "aiohttp"


_backend = default_backend()


def use_backend(name: str) -> None:
    """The backend ``run_load`` uses when not told (``--loadgen`` of the bench scripts)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown load generator {name!r}")
    if name == "wrk" and not shutil.which("wrk"):
        raise RuntimeError("wrk is not installed: bash scripts/install-wrk")
    _backend = name


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


def summarise(
    label: str,
    concurrency: int,
    elapsed: float,
    latencies: list[float],
    statuses: dict[str, int],
    errors: int,
) -> Result:
    latencies.sort()
    return Result(
        label=label,
        concurrency=concurrency,
        duration_s=round(elapsed, 2),
        requests=len(latencies),
        errors=errors,
        rps=round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        p50_ms=round(percentile(latencies, 0.50) * 1000, 2),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 2),
        statuses=statuses,
    )


async def run_load(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    concurrency: int = 1,
    duration: float = 10.0,
    max_requests: int = 1_000_000,
    expect: int = 200,
    label: str = "",
    backend: str | None = None,
) -> Result:
    """Drive ``url`` with ``concurrency`` clients for ``duration`` seconds."""
    label = label or f"{method} {url}"
    if (backend or _backend) == "wrk":
        return await run_wrk(
            url,
            method=method,
            headers=headers,
            body=body,
            concurrency=concurrency,
            duration=duration,
            expect=expect,
            label=label,
        )
    cpu_before = time.process_time()
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors = 0
    sent = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        deadline = started + duration

        async def worker() -> None:
            nonlocal errors, sent
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                t0 = time.perf_counter()
                try:
                    async with session.request(method, url, headers=headers, data=body) as resp:
                        await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                latencies.append(time.perf_counter() - t0)
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if status != expect:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    result = summarise(label, concurrency, elapsed, latencies, statuses, errors)
    if result.requests:
        result.client_cpu_ms = round((time.process_time() - cpu_before) * 1000 / result.requests, 4)
    return result


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid Lua string literal for ASCII


_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n@@result {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,'
    .. '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def wrk_script(method: str, headers: dict[str, str], body: bytes | None) -> str:
    """The Lua script of one wrk run: the request, and a ``done()`` printing JSON."""
    lines = [f"wrk.method = {_lua_string(method)}"]
    for name, value in headers.items():
        lines.append(f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}")
    if body is not None:
        lines.append(f"wrk.body = {_lua_string(body.decode())}")
    return "\n".join(lines) + "\n" + _DONE


async def run_wrk(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    concurrency: int = 1,
    duration: float = 10.0,
    expect: int = 200,
    label: str = "",
) -> Result:
    """``wrk`` with one thread and ``concurrency`` connections for ``duration`` s
    (rounded up to whole seconds)."""
    seconds = max(1, math.ceil(duration))
    with tempfile.TemporaryDirectory(prefix="hpcgate-wrk-") as workdir:
        script = Path(workdir) / "request.lua"
        script.touch(mode=0o600)
        script.write_text(wrk_script(method, headers or {}, body))
        argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "60s"]
        argv += ["-s", str(script), url]
        cpu_before = _children_cpu()
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await asyncio.wait_for(process.communicate(), seconds + 60)
        cpu = _children_cpu() - cpu_before
    text = output.decode(errors="replace")
    marker = text.rfind("@@result ")
    if process.returncode != 0 or marker < 0:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{text[-2000:]}")
    raw = json.loads(text[marker + len("@@result ") :].splitlines()[0])
    requests = int(raw["requests"])
    elapsed = raw["duration_us"] / 1e6
    transport = sum(int(raw[k]) for k in ("connect", "read", "write", "timeout"))
    bad_status = int(raw["status"])  # wrk counts answers of 400 and above
    errors = transport + (bad_status if expect < 400 else requests - bad_status)
    statuses = {"<400": requests - bad_status, ">=400": bad_status}
    if transport:
        statuses["0"] = transport
    return Result(
        label=label or f"{method} {url}",
        concurrency=concurrency,
        duration_s=round(elapsed, 2),
        requests=requests,
        errors=errors,
        rps=round(requests / elapsed, 1) if elapsed else 0.0,
        p50_ms=round(raw["p50_us"] / 1000, 2),
        p99_ms=round(raw["p99_us"] / 1000, 2),
        statuses=statuses,
        client_cpu_ms=round(cpu * 1000 / requests, 4) if requests else 0.0,
        loadgen="wrk",
    )


def format_row(result: Result) -> str:
    return (
        f"{result.label:<44} c={result.concurrency:<3} {result.rps:>8.1f} req/s  "
        f"p50 {result.p50_ms:>8.2f} ms  p99 {result.p99_ms:>8.2f} ms  "
        f"errors {result.errors}/{result.requests}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL of the server")
    parser.add_argument("--token", help="bearer token")
    parser.add_argument("--path", required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--json", help="request body (JSON text)")
    parser.add_argument("--expect", type=int, default=200, help="status counted as success")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--output-json", action="store_true")
    parser.add_argument("--loadgen", choices=BACKENDS, default=default_backend())
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    body = None
    if args.json:
        headers["Content-Type"] = "application/json"
        body = args.json.encode()
    result = asyncio.run(
        run_load(
            args.url.rstrip("/") + args.path,
            method=args.method,
            headers=headers,
            body=body,
            concurrency=args.concurrency,
            duration=min(args.duration, 600),
            max_requests=args.max_requests,
            expect=args.expect,
            label=f"{args.method} {args.path}",
            backend=args.loadgen,
        )
    )
    print(json.dumps(asdict(result)) if args.output_json else format_row(result))
    return 0 if result.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
