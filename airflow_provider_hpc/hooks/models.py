"""Request and response models of the FirecREST v2 wire API, shared by the sync and async hook.

Readers are tolerant (unknown fields are ignored, most fields optional, ids coerced to
strings) so that small server differences do not break a running DAG.
"""

from __future__ import annotations

from datetime import timedelta
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
