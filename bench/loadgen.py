"""A low-overhead HTTP load generator for any FirecREST-compatible server.

N concurrent aiohttp clients send the same request in a loop for a fixed duration
(bounded: it always stops by itself) and report requests per second, latency
percentiles and errors. aiohttp costs about a third of httpx's CPU per request,
which matters when the generator shares two cores with the server and sshd.

    python bench/loadgen.py --url http://127.0.0.1:8000 --token "$TOKEN" \
        --path /status/systems --concurrency 10 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass

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
) -> Result:
    """Drive ``url`` with ``concurrency`` workers for ``duration`` seconds."""
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
    return summarise(label or f"{method} {url}", concurrency, elapsed, latencies, statuses, errors)


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
        )
    )
    print(json.dumps(asdict(result)) if args.output_json else format_row(result))
    return 0 if result.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
