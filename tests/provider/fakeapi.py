"""A scripted job-event stream, for the provider's event-hub tests only.

The provider's other unit tests run through the real server application over a fake
cluster (``tests.provider.realapi``). ``test_job_events.py`` needs what a real stream
cannot be made to do on cue: end right after ``synced`` (or hang silent), skip a job,
replay from an exact event id. This fake serves just the event stream and job lookups
(and a token endpoint), behind an ``httpx.MockTransport``, with answers built from the
server's own models; ``test_wire_contract.py`` checks its routes and answers against the
server's.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import httpx
from pydantic import BaseModel

from airflow_provider_hpc.hooks.models import TERMINAL_STATES
from hpcgate.compute.scheduler import models as jobs_wire
from hpcgate.wire import ErrorBody

TOKEN_URL = "https://idp.test/token"
BASE_URL = "http://hpc.test"
SYSTEM = "hpcsite"


@dataclass
class FakeJob:
    job_id: str
    name: str
    working_directory: str
    plan: list[str]
    exit_code: int = 0
    spec: dict[str, Any] = field(default_factory=dict)
    polls: int = 0

    @property
    def state(self) -> str:
        return self.plan[min(self.polls, len(self.plan) - 1)]

    def model(self) -> jobs_wire.Job:
        ended = self.state not in ("PENDING", "RUNNING")
        return jobs_wire.Job(
            job_id=self.job_id,
            name=self.name,
            status=jobs_wire.JobStatus(
                state=self.state, exit_code=self.exit_code if ended else None
            ),
            time=jobs_wire.JobTime(elapsed=1),
            allocation_nodes=1,
            cluster="cluster",
            nodes="n1",
            partition="debug",
            user="hpcuser",
            working_directory=self.working_directory,
        )

    def wire(self) -> dict[str, Any]:
        return _json(self.model())


def _json(model: BaseModel) -> dict[str, Any]:
    """The JSON the server sends for ``model`` (its models serialise by alias)."""
    return model.model_dump(mode="json")


def _ok(
    model: BaseModel, status: int = 200, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(status, json=_json(model), headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = ErrorBody(error_type="error", message=message, user="hpcuser")
    return _ok(body, status, headers)


class _Missing(LookupError):
    """A 404 with this message."""


class FakeHpcApi:
    """State + request log; ``inject`` queues canned answers for matching requests."""

    def __init__(self) -> None:
        self.jobs: dict[str, FakeJob] = {}
        self.requests: list[httpx.Request] = []
        self.next_id = 1000
        self.plan = ["PENDING", "RUNNING", "COMPLETED"]
        self.tokens_issued = 0
        self.token_lifetime = 3600
        self.valid_tokens: set[str] = {"static-token-123"}
        self._injected: list[tuple[Callable[[httpx.Request], bool], Any]] = []
        # Job events (``GET /compute/{s}/events``); None: no such endpoint (404).
        self.events: list[tuple[int, str, str, dict[str, Any]]] | None = None
        self.event_seq = 0
        self.retry_ms = 10
        self.heartbeat = 0.05
        self.hidden: set[str] = set()  # jobs the stream never mentions
        #: per connection, run after ``synced``: None streams on; else the callable runs
        #: (it may change jobs) and the stream ends, or hangs if it returns "hang".
        self.stream_ends: list[Callable[[], Any] | None] = []
        self._event_signal = asyncio.Event()
        self.transport = httpx.MockTransport(self.handle)

    # ------------------------------------------------------------------ test helpers

    def inject(self, method: str, path_re: str, *answers: Any) -> None:
        """Answer the next matching requests with ``answers`` (Response, or exception to raise,
        or a callable(request) -> Response that may also change state)."""
        pattern = re.compile(path_re)
        for answer in answers:
            self._injected.append(
                (
                    lambda r, m=method, p=pattern: r.method == m and bool(p.search(r.url.path)),
                    answer,
                )
            )

    def add_job(
        self, name: str = "external", plan: list[str] | None = None, exit_code: int = 0
    ) -> FakeJob:
        job_id = str(self.next_id)
        self.next_id += 1
        job = FakeJob(job_id, name, "/scratch/hpcuser", list(plan or self.plan), exit_code)
        self.jobs[job_id] = job
        self._emit(job)
        return job

    def enable_events(self) -> None:
        self.events = []
        for job in self.jobs.values():
            self._emit(job)

    def set_state(self, job: FakeJob, state: str, exit_code: int | None = None) -> None:
        """Move ``job`` to ``state`` (GETs no longer advance it) and emit an event."""
        job.plan, job.polls = [state], 0
        if exit_code is not None:
            job.exit_code = exit_code
        self._emit(job)

    def _emit(self, job: FakeJob) -> None:
        if self.events is None or job.job_id in self.hidden:
            return
        self.event_seq += 1
        name = "terminal" if job.state in TERMINAL_STATES else "job"
        self.events.append((self.event_seq, job.job_id, name, job.wire()))
        self._event_signal.set()
        self._event_signal = asyncio.Event()

    def calls(self, method: str, path_re: str = "") -> list[httpx.Request]:
        pattern = re.compile(path_re)
        return [r for r in self.requests if r.method == method and pattern.search(r.url.path)]

    # ------------------------------------------------------------------ dispatch

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        for index, (matches, answer) in enumerate(self._injected):
            if matches(request):
                del self._injected[index]
                if isinstance(answer, BaseException):
                    raise answer
                return answer(request) if callable(answer) else answer
        try:
            return self._dispatch(request)
        except _Missing as missing:
            return _error(404, str(missing))

    def _dispatch(self, request: httpx.Request) -> httpx.Response:
        if str(request.url) == TOKEN_URL:
            return self._token(request)
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self.valid_tokens:
            return _error(401, "invalid token")
        path = unquote(request.url.path)
        for pattern, handler in self._routes():
            match = re.fullmatch(pattern, path)
            if match and handler[0] == request.method:
                return handler[1](request, *match.groups())
        return _error(404, f"no route {request.method} {path}")

    def _routes(self) -> list[tuple[str, tuple[str, Any]]]:
        return [
            (r"/compute/([^/]+)/events", ("GET", self._events)),
            (r"/compute/([^/]+)/jobs/([^/]+)", ("GET", self._get)),
        ]

    # ------------------------------------------------------------------ auth

    def _token(self, request: httpx.Request) -> httpx.Response:
        form = dict(pair.split("=", 1) for pair in request.content.decode().split("&"))
        if form.get("client_secret") != "s3cret-value":
            return httpx.Response(401, json={"error": "invalid_client"})
        self.tokens_issued += 1
        token = f"oauth-token-{self.tokens_issued}"
        self.valid_tokens.add(token)
        return httpx.Response(
            200,
            json={"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"},
        )

    def _job(self, job_id: str) -> FakeJob:
        if job_id not in self.jobs:
            raise _Missing(f"Job not found: {job_id}")
        return self.jobs[job_id]

    def _get(self, request: httpx.Request, system: str, job_id: str) -> httpx.Response:
        job = self._job(job_id)
        answer = _ok(jobs_wire.JobsResponse(jobs=[job.model()]))
        job.polls += 1
        return answer

    def _events(self, request: httpx.Request, system: str) -> httpx.Response:
        if self.events is None:
            return _error(404, f"no route GET {request.url.path}")
        last = request.headers.get("last-event-id")
        connection = len(self.calls("GET", r"/events$")) - 1
        end = self.stream_ends[connection] if connection < len(self.stream_ends) else None
        body = self._sse(int(last) if last else None, end)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    @staticmethod
    def _format(seq: int, name: str, job: dict[str, Any]) -> bytes:
        # multi-line data (the JSON indented): clients must join the data lines
        data = "".join(f"data: {line}\n" for line in json.dumps(job, indent=1).splitlines())
        return f"id: {seq}\nevent: {name}\n{data}\n".encode()

    async def _sse(self, last: int | None, end: Callable[[], Any] | None) -> Any:
        assert self.events is not None
        yield f"retry: {self.retry_ms}\n\n".encode()
        sent = self.event_seq
        if last is None:
            latest = {job_id: (seq, name, job) for seq, job_id, name, job in self.events}
            replay = sorted(latest.values(), key=lambda item: item[0])
        else:
            replay = [(seq, name, job) for seq, _, name, job in self.events if seq > last]
        replay = [item for item in replay if item[0] <= sent]
        for seq, name, job in replay:
            yield self._format(seq, name, job)
        yield b": all sent\nevent: synced\ndata: {}\n\n"
        if end is not None:
            if end() == "hang":
                await asyncio.Event().wait()
            return
        while True:
            signal = self._event_signal
            for seq, _, name, job in self.events:
                if seq > sent:
                    yield self._format(seq, name, job)
                    sent = seq
            try:
                await asyncio.wait_for(signal.wait(), self.heartbeat)
            except TimeoutError:
                yield b": keep-alive\n\n"
