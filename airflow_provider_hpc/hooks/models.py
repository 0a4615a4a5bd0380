"""Request and response models of the FirecREST v2 wire API, shared by the sync and async hook.

Readers are tolerant (unknown fields are ignored, most fields optional, ids coerced to
strings) so that small server differences do not break a running DAG.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

# Slurm job states (first word of ``status.state``, e.g. "CANCELLED by 1000").
SUCCESS_STATES = frozenset({"COMPLETED"})
FAILED_STATES = frozenset(
    {
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)
TERMINAL_STATES = SUCCESS_STATES | FAILED_STATES


def normalize_state(state: str | None) -> str:
    """``"CANCELLED by 1000"`` -> ``"CANCELLED"``; ``"RUNNING,COMPLETING"`` -> ``"RUNNING"``."""
    if not state:
        return "UNKNOWN"
    first = state.strip().split()[0] if state.strip() else "UNKNOWN"
    return first.split(",")[0].rstrip("+").upper()


def is_terminal(state: str) -> bool:
    return normalize_state(state) in TERMINAL_STATES


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        coerce_numbers_to_str=True,
    )


# --------------------------------------------------------------------------- errors


class ApiErrorBody(WireModel):
    error_type: str | None = None
    message: str = ""
    caused_by: Any = None
    data: Any = None
    user: str | None = None


# --------------------------------------------------------------------------- compute


def format_time_limit(value: timedelta | int | str | None) -> str | None:
    """Slurm ``--time`` text: minutes as int, ``timedelta`` as ``D-HH:MM:SS``, text unchanged."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, timedelta):
        seconds = int(value.total_seconds())
        days, seconds = divmod(seconds, 86400)
        hours, seconds = divmod(seconds, 3600)
        minutes, seconds = divmod(seconds, 60)
        return f"{days}-{hours:02d}:{minutes:02d}:{seconds:02d}"
    return str(int(value))


class JobSpec(WireModel):
    """The ``job`` object of ``POST /compute/{system}/jobs``.

    The last block are this server's extensions; a plain FirecREST server ignores them.
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    working_directory: str
    script: str | None = None
    script_path: str | None = None
    env: dict[str, str] | None = None
    account: str | None = None
    partition: str | None = None
    reservation: str | None = None
    constraints: str | None = None
    standard_input: str | None = None
    standard_output: str | None = None
    standard_error: str | None = None
    # extensions
    time_limit: str | None = None
    nodes: int | str | None = None
    tasks: int | None = Field(None, ge=1)
    cpus_per_task: int | None = Field(None, ge=1)
    memory: str | None = None
    qos: str | None = None
    array: str | None = None
    dependencies: list[str] | str | None = None
    extra_options: dict[str, str | None] | None = None

    @model_validator(mode="after")
    def _one_script(self) -> JobSpec:
        if (self.script is None) == (self.script_path is None):
            raise ValueError("give exactly one of script and script_path")
        return self

    @field_validator("env", mode="before")
    @classmethod
    def _env_as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        return value

    @field_validator("extra_options", mode="before")
    @classmethod
    def _options_as_text(cls, value: Any) -> Any:
        """``True`` / ``None`` -> flag (None), ``False`` -> left out, others as text."""
        if not isinstance(value, dict):
            return value
        return {
            str(k): None if v is None or v is True else str(v)
            for k, v in value.items()
            if v is not False
        }

    def to_wire(self) -> dict[str, Any]:
        return {"job": self.model_dump(by_alias=True, exclude_none=True)}


class JobSubmitted(WireModel):
    job_id: str


class JobStatus(WireModel):
    state: str = "UNKNOWN"
    state_reason: str | None = None
    exit_code: int | None = None
    interrupt_signal: int | None = None


class JobTime(WireModel):
    elapsed: int | None = None
    start: int | None = None
    end: int | None = None
    suspended: int | None = None
    limit: int | None = None


class JobTask(WireModel):
    """In an array summary: one array task (in a plain job: a step)."""

    id: str
    name: str | None = None
    status: JobStatus = JobStatus()

    @property
    def state(self) -> str:
        return normalize_state(self.status.state)


class Job(WireModel):
    job_id: str
    name: str | None = None
    status: JobStatus = JobStatus()
    tasks: list[JobTask] | None = None
    time: JobTime | None = None
    account: str | None = None
    partition: str | None = None
    nodes: str | None = None
    user: str | None = None
    working_directory: str | None = None

    @property
    def state(self) -> str:
        return normalize_state(self.status.state)

    @property
    def task_index(self) -> tuple[int, int]:
        """Sort key of array tasks ("123_4" -> (123, 4)), as the server orders them."""
        head, _, index = self.job_id.partition("_")
        number = head.split("+")[0]
        return (int(number) if number.isdigit() else -1, int(index) if index.isdigit() else -1)

    @property
    def numeric_id(self) -> tuple[int, str]:
        """Sort key: Slurm ids grow; array tasks ("123_4") sort by their parent."""
        head = self.job_id.split("_")[0].split("+")[0]
        return (int(head) if head.isdigit() else -1, self.job_id)


class JobsResponse(WireModel):
    jobs: list[Job] | None = None


class JobMetadata(WireModel):
    job_id: str
    script: str | None = None
    standard_input: str | None = None
    standard_output: str | None = None
    standard_error: str | None = None


class JobMetadataResponse(WireModel):
    jobs: list[JobMetadata] | None = None


class JobSummary(WireModel):
    """One status for a job id, whether it names one job or a whole array.

    For an array the state and exit code are the server's summary, taken as it comes
    (``GET .../jobs/{array id}`` answers one record for the array); ``task_states`` keeps
    each task's state for the logs.
    """

    job_id: str
    state: str
    exit_code: int | None = None
    state_reason: str | None = None
    tasks: int = 1
    task_states: dict[str, str] | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state in SUCCESS_STATES

    def describe(self) -> str:
        """``"FAILED"``, or for an array ``"FAILED (tasks: 3 COMPLETED, 1 FAILED)"``."""
        if not self.task_states:
            return self.state
        counts: dict[str, int] = {}
        for state in self.task_states.values():
            counts[state] = counts.get(state, 0) + 1
        detail = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        return f"{self.state} (tasks: {detail})"

    @classmethod
    def from_job(cls, job_id: str, job: Job) -> JobSummary:
        """The status the server gave for ``job_id`` (a job, or an array's summary)."""
        prefix = f"{job_id}_"
        tasks = [task for task in job.tasks or [] if task.id.startswith(prefix)]
        return cls(
            job_id=job_id,
            state=job.state,
            exit_code=job.status.exit_code,
            state_reason=job.status.state_reason,
            tasks=len(tasks) or 1,
            task_states={task.id: task.state for task in tasks} or None,
        )

    @classmethod
    def from_jobs(cls, job_id: str, jobs: list[Job]) -> JobSummary:
        """The server's record for ``job_id`` when it sent one (hpcgate always does, for an
        array too); else, from a server that lists only the tasks, hpcgate's rule: while
        a task is active the most advanced active state, then the first non-COMPLETED
        task's state (in task order), and the highest exit code."""
        if not jobs:
            return cls(job_id=job_id, state="UNKNOWN", tasks=0)
        own = next((job for job in jobs if job.job_id == job_id), None)
        if own is not None:
            return cls.from_job(job_id, own)
        if len(jobs) == 1:
            return cls.from_job(job_id, jobs[0]).model_copy(update={"job_id": job_id})
        ordered = sorted(jobs, key=lambda job: job.task_index)
        active = [job for job in ordered if job.state not in TERMINAL_STATES]
        if active:
            lead = next((job for job in active if job.state != "PENDING"), active[0])
        else:
            lead = next((job for job in ordered if job.state != "COMPLETED"), ordered[0])
        exit_codes = [job.status.exit_code for job in jobs if job.status.exit_code is not None]
        return cls(
            job_id=job_id,
            state=lead.state,
            exit_code=max(exit_codes) if exit_codes else None,
            state_reason=lead.status.state_reason,
            tasks=len(jobs),
            task_states={job.job_id: job.state for job in ordered},
        )


class JobPageLink(WireModel):
    """``POST .../jobs/{id}/page-link`` (hpcgate): a URL a person can open in a browser,
    and until when it works (None: the site portal's, which does not expire)."""

    url: str
    expires_at: str | None = None


# --------------------------------------------------------------------------- preflight, accounting


class PreflightResult(WireModel):
    """``POST .../jobs?dryRun=true``: would the scheduler accept the job (nothing is
    submitted); if not, ``reason`` (``category``: account, partition, qos, time_limit,
    resources, request)."""

    valid: bool
    reason: str | None = None
    category: str | None = None
    expected_start: int | None = None
    nodes: str | None = None
    partition: str | None = None
    processors: int | None = None
    message: str | None = None

    def describe(self) -> str:
        """One line for the task log."""
        if not self.valid:
            return f"refused ({self.category or 'other'}): {self.reason or self.message or '?'}"
        where = f"{self.processors or '?'} CPUs on {self.nodes or '?'} in {self.partition or '?'}"
        if self.expected_start is None:
            return f"valid: {where}"
        start = datetime.fromtimestamp(self.expected_start, tz=UTC)
        return f"valid: {where}, expected start {start:%Y-%m-%d %H:%M:%S} UTC"


class StepAccounting(WireModel):
    id: str
    name: str | None = None
    state: str = "UNKNOWN"
    exit_code: int | None = None
    elapsed_seconds: int | None = None
    alloc_cpus: int | None = None
    total_cpu_seconds: float | None = None
    max_rss_bytes: int | None = None


class JobAccountingRecord(WireModel):
    """One accounting record as the server sends it (a job, or one array task)."""

    job_id: str
    name: str | None = None
    user: str | None = None
    state: str = "UNKNOWN"
    exit_code: int | None = None
    account: str | None = None
    partition: str | None = None
    qos: str | None = None
    node_list: str | None = None
    submit: int | None = None
    start: int | None = None
    end: int | None = None
    queue_wait_seconds: int | None = None
    elapsed_seconds: int | None = None
    time_limit_minutes: int | None = None
    alloc_nodes: int | None = None
    alloc_cpus: int | None = None
    node_hours: float | None = None
    cpu_hours: float | None = None
    total_cpu_seconds: float | None = None
    cpu_efficiency: float | None = None
    max_rss_bytes: int | None = None
    max_rss_step: str | None = None
    requested_memory: str | None = None
    steps: list[StepAccounting] = []
    steps_truncated: bool = False

    @field_validator("state", mode="before")
    @classmethod
    def _state(cls, value: Any) -> Any:
        return normalize_state(value) if isinstance(value, str) else value


class JobAccounting(JobAccountingRecord):
    """A job's accounting (``sacct``); for an array id, ``tasks`` holds each task and the
    top-level figures are totals (hours, CPU time) or maxima (RSS, elapsed, wait)."""

    tasks: list[JobAccountingRecord] | None = None

    @classmethod
    def from_records(cls, job_id: str, records: list[JobAccountingRecord]) -> JobAccounting:
        """The record for ``job_id``, or for an array the sum of its tasks' records."""
        own = next((record for record in records if record.job_id == job_id), None)
        if own is not None or len(records) == 1:
            return cls.model_validate((own or records[0]).model_dump())
        if not records:
            raise ValueError(f"no accounting record for job {job_id}")

        def total(field: str) -> float | None:
            values = [getattr(r, field) for r in records if getattr(r, field) is not None]
            return round(sum(values), 6) if values else None

        def most(field: str) -> Any:
            values = [getattr(r, field) for r in records if getattr(r, field) is not None]
            return max(values) if values else None

        summary = JobSummary.from_jobs(
            job_id,
            [Job(job_id=r.job_id, status=JobStatus(state=r.state)) for r in records],
        )
        used = [
            (r.elapsed_seconds or 0) * (r.alloc_cpus or 0)
            for r in records
            if r.cpu_efficiency is not None
        ]
        cpu = [r.total_cpu_seconds or 0.0 for r in records if r.cpu_efficiency is not None]
        rss = max(
            (r for r in records if r.max_rss_bytes is not None),
            key=lambda r: r.max_rss_bytes or 0,
            default=None,
        )
        return cls(
            job_id=job_id,
            name=records[0].name,
            user=records[0].user,
            state=summary.state,
            exit_code=most("exit_code"),
            account=records[0].account,
            partition=records[0].partition,
            qos=records[0].qos,
            submit=min((r.submit for r in records if r.submit), default=None),
            start=min((r.start for r in records if r.start), default=None),
            end=most("end"),
            queue_wait_seconds=most("queue_wait_seconds"),
            elapsed_seconds=most("elapsed_seconds"),
            alloc_nodes=most("alloc_nodes"),
            alloc_cpus=most("alloc_cpus"),
            node_hours=total("node_hours"),
            cpu_hours=total("cpu_hours"),
            total_cpu_seconds=total("total_cpu_seconds"),
            cpu_efficiency=round(sum(cpu) / sum(used), 4) if used and sum(used) else None,
            max_rss_bytes=rss.max_rss_bytes if rss else None,
            max_rss_step=rss.max_rss_step if rss else None,
            tasks=records,
        )

    def summary(self) -> str:
        """One line for the task log."""
        parts = [self.state]
        if self.tasks:
            parts.append(f"{len(self.tasks)} array tasks")
        if self.elapsed_seconds is not None:
            parts.append(f"elapsed {timedelta(seconds=self.elapsed_seconds)}")
        if self.queue_wait_seconds is not None:
            parts.append(f"queued {timedelta(seconds=self.queue_wait_seconds)}")
        if self.alloc_nodes is not None or self.alloc_cpus is not None:
            parts.append(f"{self.alloc_nodes or '?'} node(s), {self.alloc_cpus or '?'} CPUs")
        if self.node_hours is not None:
            parts.append(f"{self.node_hours:.4g} node-h")
        if self.cpu_hours is not None:
            parts.append(f"{self.cpu_hours:.4g} CPU-h")
        if self.max_rss_bytes is not None:
            parts.append(f"max RSS {self.max_rss_bytes / 2**20:.1f} MiB")
        if self.cpu_efficiency is not None:
            parts.append(f"CPU efficiency {self.cpu_efficiency:.0%}")
        return ", ".join(parts)


class JobAccountingResponse(WireModel):
    jobs: list[JobAccountingRecord] | None = None


# --------------------------------------------------------------------------- filesystem


class FileContent(WireModel):
    content: str = ""
    content_type: str | None = None
    start_position: int | None = None
    end_position: int | None = None


class FileContentResponse(WireModel):
    output: FileContent | None = None


class TextResponse(WireModel):
    output: str | None = None


class FileStat(WireModel):
    size: int
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime: int | None = None
    atime: int | None = None
    ctime: int | None = None


class FileStatResponse(WireModel):
    output: FileStat | None = None


class FileChecksum(WireModel):
    algorithm: str = "SHA256"
    checksum: str

    @property
    def hashlib_name(self) -> str:
        """``"SHA-256"`` / ``"SHA256"`` -> ``"sha256"``."""
        return self.algorithm.replace("-", "").replace("_", "").lower()


class FileChecksumResponse(WireModel):
    output: FileChecksum | None = None


class FileEntry(WireModel):
    name: str
    type: str | None = None
    link_target: str | None = None
    user: str | None = None
    group: str | None = None
    permissions: str | None = None
    last_modified: str | None = None
    size: str | None = None


class FileListResponse(WireModel):
    output: list[FileEntry] | None = None


class TransferJobLogs(WireModel):
    output_log: str | None = None
    error_log: str | None = None


class TransferJob(WireModel):
    job_id: str
    system: str | None = None
    working_directory: str | None = None
    logs: TransferJobLogs | None = None


class TransferResponse(WireModel):
    transfer_job: TransferJob


# --------------------------------------------------------------------------- status


class FileSystem(WireModel):
    path: str
    data_type: str | None = None
    default_work_dir: bool | None = None


class System(WireModel):
    name: str
    file_systems: list[FileSystem] | None = None


class SystemsResponse(WireModel):
    systems: list[System] = []
