"""An in-memory stand-in for the server's HTTP API, for the provider's unit tests only.

It implements the subset of the FirecREST v2 wire API the provider calls, behind an
``httpx.MockTransport``; integration tests use the real server instead. The wire shapes
are not written here: request bodies are read and answers are built with the server's own
models (``hpcgate``), so the fake speaks exactly what the server speaks, and
``test_wire_contract.py`` checks its routes against the server's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import httpx
from pydantic import BaseModel, ValidationError

from airflow_provider_hpc.hooks.models import TERMINAL_STATES
from hpcgate.api.routers import filesystem as fs_wire
from hpcgate.api.routers import status as status_wire
from hpcgate.compute.scheduler import models as jobs_wire
from hpcgate.filesystem.models import FileChecksum, FileContent, FileStat
from hpcgate.transfer import models as transfer_wire
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


def _read(model: type[BaseModel], request: httpx.Request) -> Any:
    """The JSON body as the server's ``model`` reads it; a ValidationError is a 422."""
    return model.model_validate_json(request.content)


class _Missing(LookupError):
    """A 404 with this message."""


_SYSTEM = status_wire.System(
    name=SYSTEM,
    ssh=status_wire.SshInfo(host="login", port=22, max_clients=10, timeout=status_wire.SshTimeouts(
        connection=5, command_execution=30, idle_timeout=60, keep_alive=5)),
    scheduler=status_wire.SchedulerInfo(type="slurm", version="24.05", timeout=30),
    services_health=None, last_health_check=None, file_systems=[],
    data_operation=status_wire.DataOperation(),
)  # fmt: skip


def _multipart_file(request: httpx.Request) -> tuple[str, bytes]:
    boundary = request.headers["content-type"].split("boundary=")[1].encode()
    for part in request.content.split(b"--" + boundary):
        head, _, body = part.partition(b"\r\n\r\n")
        match = re.search(rb'name="file"; filename="([^"]*)"', head)
        if match:
            return match.group(1).decode(), body.removesuffix(b"\r\n")
    raise AssertionError("no file part")


class FakeHpcApi:
    """State + request log; ``inject`` queues canned answers for matching requests."""

    def __init__(self) -> None:
        self.jobs: dict[str, FakeJob] = {}
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = {"/", "/scratch", "/scratch/hpcuser"}
        self.requests: list[httpx.Request] = []
        self.next_id = 1000
        self.plan = ["PENDING", "RUNNING", "COMPLETED"]
        self.exit_code = 0
        self.idempotency: dict[str, str] | None = None  # None: the server ignores the header
        self.tokens_issued = 0
        self.token_lifetime = 3600
        self.valid_tokens: set[str] = {"static-token-123"}
        self.bad_checksum = False
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
        self.files[f"/scratch/hpcuser/slurm-{job_id}.out"] = b"line 1\nline 2\nresult=42\n"
        self.files[f"/scratch/hpcuser/slurm-{job_id}.err"] = b"warning: something\nerror: boom\n"
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

    @property
    def submissions(self) -> list[httpx.Request]:
        return self.calls("POST", r"/compute/[^/]+/jobs$")

    @property
    def cancels(self) -> list[httpx.Request]:
        return self.calls("DELETE", r"/compute/[^/]+/jobs/")

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
        except ValidationError as error:  # as the server: a body its models refuse
            return _ok(ErrorBody(error_type="validation", message=str(error)), 422)
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
            (r"/status/systems", ("GET", self._systems)),
            (r"/compute/([^/]+)/events", ("GET", self._events)),
            (r"/compute/([^/]+)/jobs", ("POST", self._submit)),
            (r"/compute/([^/]+)/jobs", ("GET", self._list)),
            (r"/compute/([^/]+)/jobs/([^/]+)", ("GET", self._get)),
            (r"/compute/([^/]+)/jobs/([^/]+)", ("DELETE", self._cancel)),
            (r"/compute/([^/]+)/jobs/([^/]+)/metadata", ("GET", self._metadata)),
            (r"/filesystem/([^/]+)/ops/tail", ("GET", self._tail)),
            (r"/filesystem/([^/]+)/ops/view", ("GET", self._view)),
            (r"/filesystem/([^/]+)/ops/stat", ("GET", self._stat)),
            (r"/filesystem/([^/]+)/ops/checksum", ("GET", self._checksum)),
            (r"/filesystem/([^/]+)/ops/download", ("GET", self._download)),
            (r"/filesystem/([^/]+)/ops/upload", ("POST", self._upload)),
            (r"/filesystem/([^/]+)/ops/mkdir", ("POST", self._mkdir)),
            (r"/filesystem/([^/]+)/ops/rm", ("DELETE", self._rm)),
            (r"/filesystem/([^/]+)/transfer/(mv|cp)", ("POST", self._transfer)),
        ]

    # ------------------------------------------------------------------ auth + status

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

    def _systems(self, request: httpx.Request) -> httpx.Response:
        return _ok(status_wire.SystemsResponse(systems=[_SYSTEM]))

    # ------------------------------------------------------------------ compute

    def _submit(self, request: httpx.Request, system: str) -> httpx.Response:
        _read(jobs_wire.JobSubmitRequest, request)
        body = json.loads(request.content)["job"]
        key = request.headers.get("idempotency-key")
        if self.idempotency is not None and key in self.idempotency:
            known = self.idempotency[key]
            if self.jobs[known].spec != body:  # as hpcgate: same key, other body
                return _error(
                    422,
                    "This Idempotency-Key was used with a different request body; use a new key",
                )
            replayed = {"Idempotent-Replayed": "true"}
            return _ok(jobs_wire.JobSubmitResponse(job_id=known), 201, replayed)
        job = self.add_job(body.get("name") or "job", exit_code=self.exit_code)
        job.working_directory = body["workingDirectory"]
        job.spec = body
        if self.idempotency is not None and key:
            self.idempotency[key] = job.job_id
        return _ok(jobs_wire.JobSubmitResponse(job_id=job.job_id), 201)

    def _list(self, request: httpx.Request, system: str) -> httpx.Response:
        name = request.url.params.get("name")
        jobs = [j.model() for j in self.jobs.values() if name is None or j.name == name]
        return _ok(jobs_wire.JobsResponse(jobs=jobs))

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

    def _cancel(self, request: httpx.Request, system: str, job_id: str) -> httpx.Response:
        job = self._job(job_id)
        if job.state not in ("PENDING", "RUNNING"):
            return _error(400, f"job {job_id} has already finished")
        job.plan, job.polls, job.exit_code = ["CANCELLED"], 0, 15
        return httpx.Response(204)

    def _metadata(self, request: httpx.Request, system: str, job_id: str) -> httpx.Response:
        self._job(job_id)
        meta = jobs_wire.JobMetadata(
            job_id=job_id,
            script="#!/bin/bash\n",
            standard_output=f"slurm-{job_id}.out",
            standard_error=f"/scratch/hpcuser/slurm-{job_id}.err",
        )
        return _ok(jobs_wire.JobMetadataResponse(jobs=[meta]))

    # ------------------------------------------------------------------ filesystem

    def _file(self, request: httpx.Request) -> bytes:
        path = request.url.params["path"]
        if path not in self.files:
            raise _Missing(f"{path}: No such file or directory")
        return self.files[path]

    def _tail(self, request: httpx.Request, system: str) -> httpx.Response:
        data = self._file(request)
        lines = int(request.url.params.get("lines", 10))
        text = "".join(data.decode().splitlines(keepends=True)[-lines:])
        content = FileContent(content=text, content_type="lines", start_position=0, end_position=0)
        return _ok(fs_wire.ContentResponse(output=content))

    def _view(self, request: httpx.Request, system: str) -> httpx.Response:
        data = self._file(request)
        offset = int(request.url.params.get("offset", 0))
        size = int(request.url.params.get("size", len(data)))
        return _ok(fs_wire.TextResponse(output=data[offset : offset + size].decode()))

    def _stat(self, request: httpx.Request, system: str) -> httpx.Response:
        path = request.url.params["path"]
        data = self.files.get(path)
        if data is None and path.rstrip("/") not in self.dirs:
            raise _Missing(f"{path}: No such file or directory")
        stat = FileStat(
            mode=33188, ino=1, dev=1, nlink=1, uid=1000, gid=1000, size=len(data or b""),
            atime=0, mtime=0, ctime=0,
        )  # fmt: skip
        return _ok(fs_wire.StatResponse(output=stat))

    def _checksum(self, request: httpx.Request, system: str) -> httpx.Response:
        data = self._file(request)
        digest = hashlib.sha256(data + (b"x" if self.bad_checksum else b"")).hexdigest()
        return _ok(fs_wire.ChecksumResponse(output=FileChecksum(checksum=digest)))

    def _download(self, request: httpx.Request, system: str) -> httpx.Response:
        data = self._file(request)
        return httpx.Response(
            200, content=data, headers={"content-type": "application/octet-stream"}
        )

    def _upload(self, request: httpx.Request, system: str) -> httpx.Response:
        directory = request.url.params["path"].rstrip("/")
        if directory not in self.dirs:
            raise _Missing(f"{directory}: No such file or directory")
        filename, data = _multipart_file(request)
        self.files[f"{directory}/{filename}"] = data
        return httpx.Response(204)

    def _mkdir(self, request: httpx.Request, system: str) -> httpx.Response:
        body = _read(fs_wire.MkdirRequest, request)
        path = body.path.rstrip("/")
        if not body.parent and posixpath.dirname(path) not in self.dirs:
            raise _Missing(f"{path}: No such file or directory")
        while path and path not in self.dirs:
            self.dirs.add(path)
            path = posixpath.dirname(path)
        return _ok(fs_wire.FileResponse(output=None), 201)

    def _rm(self, request: httpx.Request, system: str) -> httpx.Response:
        path = request.url.params["path"]
        if self.files.pop(path, None) is None:
            if path not in self.dirs:
                raise _Missing(f"{path}: No such file or directory")
            self.dirs.discard(path)
        return httpx.Response(204)

    def _transfer(self, request: httpx.Request, system: str, op: str) -> httpx.Response:
        body = _read(
            transfer_wire.MoveRequest if op == "mv" else transfer_wire.CopyRequest, request
        )
        data = self.files.get(body.source_path)
        job = self.add_job(f"transfer-{op}", plan=["RUNNING", "COMPLETED" if data else "FAILED"])
        if data is not None:
            self.files[body.target_path] = data
            if op == "mv":
                del self.files[body.source_path]
        logs = transfer_wire.TransferJobLogs(
            output_log=f"/scratch/hpcuser/slurm-{job.job_id}.out",
            error_log=f"/scratch/hpcuser/slurm-{job.job_id}.err",
        )
        transfer = transfer_wire.TransferJob(
            job_id=job.job_id, system=system, working_directory="/scratch/hpcuser", logs=logs
        )
        return _ok(transfer_wire.TransferJobResponse(transfer_job=transfer), 201)
