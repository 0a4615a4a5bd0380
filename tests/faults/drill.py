"""Load for the fault drills: clients that submit, wait and use files while a fault runs.

A ``Drill`` drives one server of the private site with a few concurrent clients, as
real ones behave: each submission carries an ``Idempotency-Key`` and is retried with
it until it is answered (some keys are ``tests.faults``' slow ones, with a client
timeout shorter than the server's stall, so the client gives up and retries); each
accepted job gets a waiter (an SSE stream resumed with ``Last-Event-ID``, a long-poll
or plain polling) that follows it to its terminal state; filesystem clients make,
list and remove directories; probes call a filesystem and a compute route every
quarter second. Every request is recorded (start, end, route, status), so that the
drill can say which errors clients saw, and how long after the fault they stopped.

The verdict (``Drill.verify``): every accepted job is in accounting exactly once
under its unique name, with the id the client was given (0 lost, 0 duplicated); every
waiter saw the state the job's script decides (``COMPLETED``, or ``FAILED`` for the
jobs that exit 3); and no request that started more than ``RECOVERY_LIMIT`` seconds
after the fault ended failed with a 5xx or a transport error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.events.helpers import TERMINAL, sse_events
from tests.faults import FAULT_DELAY, FAULT_PREFIX
from tests.private_site import PrivateServer, PrivateSite
from tests.site import REPO

__all__ = ["RECOVERY_LIMIT", "REPORT", "RESULTS", "Drill", "Submission", "record_result", "step"]

RECOVERY_LIMIT = 5.0
"""Seconds after a fault's end from which no route may fail any more (issue 10)."""
REPORT = REPO / "build" / "fault-drills.jsonl"
"""Where each drill's figures are appended (one JSON line per drill)."""
RESULTS: list[dict[str, Any]] = []
"""This session's figures, printed in the terminal summary (tests/faults/conftest.py)."""

WAIT_MODES = ("sse", "longpoll", "poll")
SLOW_EVERY = 3  # every third submission uses a stalling key and a short client timeout
FAIL_EVERY = 4  # every fourth job exits 3: its waiter must see FAILED
SUBMIT_TIMEOUT = 20.0
SLOW_TIMEOUT = FAULT_DELAY * 0.75
TRANSIENT = frozenset({408, 424, 429})
"""Retried, as the Airflow provider does (with 5xx and transport errors)."""
TIMEOUT = -1
"""``Call.status`` of a client timeout (0: any other transport error)."""


@dataclass
class Call:
    """One request as a client saw it (``status``: ``TIMEOUT``, 0 for a transport error)."""

    start: float
    end: float
    kind: str
    status: int

    @property
    def failed(self) -> bool:
        """A failure a client retries; the deliberate timeouts of slow keys are not."""
        if self.status == TIMEOUT:
            return self.kind != "submit-slow"
        return self.status == 0 or self.status >= 500 or self.status in TRANSIENT


@dataclass
class Submission:
    name: str
    key: str
    expected: str
    job_id: str | None = None
    attempts: int = 0
    final: str | None = None
    waiter: str = ""
    last_event: str | None = None  # an SSE waiter resumes after it
    refusal: str | None = None  # a 4xx that ended the submission (a bug)
    last_status: int | None = None  # of the last attempt


@dataclass
class Drill:
    """One fault drill against ``server`` on the private ``site`` (see the module doc)."""

    name: str
    site: PrivateSite
    server: PrivateServer
    users: tuple[str, ...] = ("hpcuser1", "hpcuser2")
    jobs_per_user: int = 4
    job_seconds: int = 2
    submit_gap: float = 0.3
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    calls: list[Call] = field(default_factory=list)
    submissions: list[Submission] = field(default_factory=list)
    fault_start: float = 0.0
    fault_end: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _waiters: list[asyncio.Task[Any]] = field(default_factory=list)

    # ------------------------------------------------------------ clients --
    def client(self, user: str, timeout: float = 30.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.server.url, headers=self.server.headers(user), timeout=timeout
        )

    async def call(
        self, client: httpx.AsyncClient, kind: str, method: str, url: str, **kwargs: Any
    ) -> httpx.Response | None:
        """One request, recorded; ``None`` on a transport error or timeout."""
        start = time.monotonic()
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            status = TIMEOUT if isinstance(exc, httpx.TimeoutException) else 0
            self.calls.append(Call(start, time.monotonic(), kind, status))
            return None
        self.calls.append(Call(start, time.monotonic(), kind, response.status_code))
        return response

    @staticmethod
    async def backoff(response: httpx.Response | None, default: float = 0.5) -> None:
        """Honour ``Retry-After`` (capped: a drill must stay short), else ``default``."""
        delay = default
        if response is not None and response.headers.get("Retry-After", "").isdigit():
            delay = min(float(response.headers["Retry-After"]), 5.0)
        await asyncio.sleep(max(delay, 0.2))

    def body(self, sub: Submission, user: str) -> dict[str, Any]:
        code = 3 if sub.expected == "FAILED" else 0
        return {
            "job": {
                "name": sub.name,
                "workingDirectory": self.site.env.scratch(user),
                "script": f"#!/bin/bash\nsleep {self.job_seconds}\nexit {code}\n",
                "standardOutput": "/dev/null",
                "standardError": "/dev/null",
            }
        }

    async def submit(self, user: str, sub: Submission, deadline: float) -> None:
        """POST with the key until a 201 (another 4xx than 408, 424, 429 ends it: a bug)."""
        slow = sub.key.startswith(FAULT_PREFIX)
        kind = "submit-slow" if slow else "submit"
        path = f"/compute/{self.server.system}/jobs"
        body = self.body(sub, user)
        async with self.client(user, SLOW_TIMEOUT if slow else SUBMIT_TIMEOUT) as http:
            while time.monotonic() < deadline:
                sub.attempts += 1
                response = await self.call(
                    http, kind, "POST", path, json=body, headers={"Idempotency-Key": sub.key}
                )
                sub.last_status = self.calls[-1].status
                if response is not None and response.status_code == 201:
                    sub.job_id = response.json()["jobId"]
                    return
                if response is not None and 400 <= response.status_code < 500:
                    if response.status_code not in TRANSIENT:
                        sub.refusal = f"{response.status_code} {response.text[:300]}"
                        return
                await self.backoff(response)

    async def submitter(self, user: str, deadline: float) -> None:
        for i in range(self.jobs_per_user):
            if self._stop.is_set():
                return
            key = f"{FAULT_PREFIX if i % SLOW_EVERY == SLOW_EVERY - 1 else ''}{uuid.uuid4()}"
            expected = "FAILED" if i % FAIL_EVERY == FAIL_EVERY - 1 else "COMPLETED"
            sub = Submission(f"drill-{self.tag}-{user}-{i}", key, expected)
            self.submissions.append(sub)
            await self.submit(user, sub, deadline)
            if sub.job_id is not None:
                mode = WAIT_MODES[(len(self.submissions) - 1) % len(WAIT_MODES)]
                self._waiters.append(asyncio.create_task(self.wait(user, sub, mode, deadline)))
            await asyncio.sleep(self.submit_gap)

    # ------------------------------------------------------------ waiters --
    async def wait(self, user: str, sub: Submission, mode: str, deadline: float) -> None:
        sub.waiter = mode
        waiter = {"sse": self._wait_sse, "longpoll": self._wait_longpoll, "poll": self._wait_poll}
        async with self.client(user, 60) as http:
            while sub.final is None and time.monotonic() < deadline:
                await waiter[mode](http, sub, deadline)

    async def _wait_poll(self, http: httpx.AsyncClient, sub: Submission, deadline: float) -> None:
        response = await self.call(http, "poll", "GET", self._job_path(sub))
        if response is not None and response.status_code == 200:
            state = response.json()["jobs"][0]["status"]["state"]
            if state in TERMINAL:
                sub.final = state
                return
        await self.backoff(response, 1.0)

    async def _wait_longpoll(
        self, http: httpx.AsyncClient, sub: Submission, deadline: float
    ) -> None:
        params = {"waitFor": "terminal", "timeout": "20"}
        response = await self.call(http, "longpoll", "GET", self._job_path(sub), params=params)
        if response is not None and response.status_code == 200:
            state = response.json()["jobs"][0]["status"]["state"]
            if state in TERMINAL:
                sub.final = state
            return
        await self.backoff(response)

    async def _wait_sse(self, http: httpx.AsyncClient, sub: Submission, deadline: float) -> None:
        """One connection of a stream; the next one resumes after the last event seen."""
        headers = {"Last-Event-ID": sub.last_event} if sub.last_event else {}
        start = time.monotonic()
        status = 0
        try:
            async with http.stream(
                "GET", f"{self._job_path(sub)}/events", headers=headers, timeout=60
            ) as response:
                status = response.status_code
                if status == 200:
                    async for event in sse_events(_lines(response)):
                        if event.id:
                            sub.last_event = event.id
                        if event.event == "terminal":
                            sub.final = event.state
                            break
        except httpx.TransportError:
            status = 0  # cut (a killed server): the next connection resumes
        self.calls.append(Call(start, time.monotonic(), "sse", status))
        if sub.final is None:
            await asyncio.sleep(0.5)

    def _job_path(self, sub: Submission) -> str:
        return f"/compute/{self.server.system}/jobs/{sub.job_id}"

    # ------------------------------------------------------- files, probes --
    async def files(self, user: str) -> None:
        """mkdir, ls, stat, rm in the user's scratch until the drill stops."""
        base = f"{self.site.env.scratch(user)}/drill-{self.tag}"
        ops = f"/filesystem/{self.server.system}/ops"
        async with self.client(user, 20) as http:
            i = 0
            while not self._stop.is_set():
                path = f"{base}-{i}"
                steps: list[tuple[str, str, dict[str, Any]]] = [
                    ("POST", "mkdir", {"json": {"path": path}}),
                    ("GET", "ls", {"params": {"path": path}}),
                    ("GET", "stat", {"params": {"path": path}}),
                    ("DELETE", "rm", {"params": {"path": path}}),
                ]
                for method, op, kwargs in steps:
                    response = await self.call(http, f"fs-{op}", method, f"{ops}/{op}", **kwargs)
                    if response is None or response.status_code >= 400:
                        await self.backoff(response, 0.3)
                        break
                i += 1
                await asyncio.sleep(0.2)

    async def probe(self) -> None:
        """A filesystem and a compute route, every quarter second."""
        user = self.users[0]
        routes = {
            "probe-fs": f"/filesystem/{self.server.system}/ops/ls",
            "probe-jobs": f"/compute/{self.server.system}/jobs",
        }
        params = {"probe-fs": {"path": self.site.env.scratch(user)}, "probe-jobs": {}}
        async with self.client(user, 10) as http:
            while not self._stop.is_set():
                for kind, url in routes.items():
                    await self.call(http, kind, "GET", url, params=params[kind])
                await asyncio.sleep(0.25)

    # ------------------------------------------------------------- running --
    @contextlib.asynccontextmanager
    async def load(self, budget: float = 90.0) -> AsyncIterator[None]:
        """Clients run inside; on exit, submissions and waiters are awaited (bounded)."""
        deadline = time.monotonic() + budget
        background = [asyncio.create_task(self.probe())]
        background += [asyncio.create_task(self.files(user)) for user in self.users]
        submitters = [asyncio.create_task(self.submitter(u, deadline)) for u in self.users]
        try:
            yield
            # bounded by the deadline; what is unfinished then shows in the verdict
            await asyncio.wait(submitters, timeout=max(deadline - time.monotonic(), 1))
            if self._waiters:
                await asyncio.wait(self._waiters, timeout=max(deadline - time.monotonic(), 1))
            # probes keep going until well past the recovery limit
            rest = self.fault_end + RECOVERY_LIMIT + 1 - time.monotonic()
            if rest > 0:
                await asyncio.sleep(rest)
        finally:
            self._stop.set()
            for task in [*submitters, *self._waiters]:
                task.cancel()
            await asyncio.gather(*submitters, *self._waiters, return_exceptions=True)
            await asyncio.gather(*background, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def fault(self) -> AsyncIterator[None]:
        """Marks the fault's start and end (the end: when its repair has returned)."""
        self.fault_start = time.monotonic()
        yield
        self.fault_end = time.monotonic()

    # ------------------------------------------------------------- verdict --
    async def accounted(self, timeout: float = 45.0) -> dict[str, list[str]]:
        """Job ids per drill job name in the private site's accounting (as root)."""
        prefix = f"drill-{self.tag}-"
        wanted = {s.name for s in self.submissions if s.job_id is not None}
        deadline = time.monotonic() + timeout
        while True:
            result = await asyncio.to_thread(
                self.site.slurm,
                "sacct", "-X", "-n", "-a", "-P", "-S", "now-1hours", "-o", "JobID,JobName%200",
                check=False,
            )  # fmt: skip
            found: dict[str, list[str]] = {}
            for line in result.stdout.splitlines():
                job_id, _, name = line.partition("|")
                if name.startswith(prefix):
                    found.setdefault(name, []).append(job_id)
            if result.returncode == 0 and wanted <= found.keys():
                return found
            if time.monotonic() > deadline:
                return found
            await asyncio.sleep(1)

    def figures(self, accounted: dict[str, list[str]]) -> dict[str, Any]:
        after = [c for c in self.calls if c.start >= self.fault_start]
        failed = [c for c in after if c.failed]
        late = [c for c in failed if c.start > self.fault_end + RECOVERY_LIMIT]
        names = {0: "transport", TIMEOUT: "timeout"}
        errors = Counter(f"{c.kind}:{names.get(c.status, c.status)}" for c in failed)
        client_4xx = Counter(
            f"{c.kind}:{c.status}"
            for c in after
            if 400 <= c.status < 500 and c.status not in TRANSIENT
        )
        last_failure_end = max((c.end for c in failed), default=self.fault_end)
        firsts: dict[str, float] = {}
        for kind in ("probe-fs", "probe-jobs"):
            ok = [c.end for c in after if c.kind == kind and 200 <= c.status < 300]
            ok_after = [t for t in ok if t >= self.fault_end]
            if ok_after:
                firsts[kind] = round(max(min(ok_after) - self.fault_end, 0.0), 2)
        return {
            "drill": self.name,
            "fault_seconds": round(self.fault_end - self.fault_start, 2),
            "requests": len(after),
            "errors_seen": sum(errors.values()),
            "errors": dict(sorted(errors.items())),
            "client_errors": dict(sorted(client_4xx.items())),
            "client_timeouts": sum(c.status == TIMEOUT and not c.failed for c in after),
            "recovery_seconds": round(max(last_failure_end - self.fault_end, 0.0), 2),
            "first_ok_after_fault": firsts,
            "late_failures": len(late),
            "in_flight_at_fault": dict(
                Counter(c.kind for c in self.calls if c.start < self.fault_start < c.end)
            ),
            "jobs_submitted": len(self.submissions),
            "jobs_accepted": sum(s.job_id is not None for s in self.submissions),
            "jobs_lost": sum(s.job_id is None or s.name not in accounted for s in self.submissions),
            "jobs_duplicated": sum(len(ids) > 1 for ids in accounted.values()),
            "submit_attempts": sum(s.attempts for s in self.submissions),
            "waiters": dict(Counter(s.waiter for s in self.submissions if s.job_id)),
            "wrong_final_states": sum(
                s.final != s.expected for s in self.submissions if s.job_id is not None
            ),
            **self.notes,
        }

    async def verify(self) -> dict[str, Any]:
        """The figures, recorded; then the assertions of the module doc."""
        accounted = await self.accounted()
        figures = self.figures(accounted)
        record_result(figures)
        for sub in self.submissions:
            assert sub.job_id is not None, (
                f"{sub.name} never accepted after {sub.attempts} attempts (last status "
                f"{sub.last_status}, {sub.refusal}): {figures}"
            )
            assert accounted.get(sub.name) == [sub.job_id], (
                f"{sub.name}: client got {sub.job_id}, accounting has "
                f"{accounted.get(sub.name)}: {figures}"
            )
            assert sub.final == sub.expected, (
                f"{sub.name} ({sub.waiter}) ended {sub.final}, expected {sub.expected}"
            )
        late = [c for c in self.calls if c.start > self.fault_end + RECOVERY_LIMIT]
        bad = [c for c in late if c.failed]
        assert not bad, f"failures more than {RECOVERY_LIMIT} s after the fault: {bad[:5]}"
        return figures


async def _lines(response: httpx.Response) -> AsyncIterator[str]:
    async for line in response.aiter_lines():
        yield line


def record_result(figures: dict[str, Any]) -> None:
    """Keep a drill's figures for the summary and append them to ``REPORT``."""
    RESULTS.append(figures)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with Path(REPORT).open("a") as out:
        out.write(json.dumps({"time": int(time.time()), **figures}) + "\n")


async def step(action: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking action (``site.stop``, ``server.kill``...) beside the clients."""
    return await asyncio.to_thread(action, *args)
