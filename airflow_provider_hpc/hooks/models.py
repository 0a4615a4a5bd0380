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
# Worst first: the state reported for an array whose tasks ended differently.
_SEVERITY = (
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "BOOT_FAIL",
    "TIMEOUT",
    "DEADLINE",
    "FAILED",
    "SPECIAL_EXIT",
    "PREEMPTED",
    "REVOKED",
    "CANCELLED",
)


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


class Job(WireModel):
    job_id: str
    name: str | None = None
    status: JobStatus = JobStatus()
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
    """One status for a job id, whether it names one job or a whole array."""

    job_id: str
    state: str
    exit_code: int | None = None
    state_reason: str | None = None
    tasks: int = 1

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state in SUCCESS_STATES

    @classmethod
    def from_jobs(cls, job_id: str, jobs: list[Job]) -> JobSummary:
        """Active while any task is; COMPLETED if all are; else the worst failed state."""
        if not jobs:
            return cls(job_id=job_id, state="UNKNOWN", tasks=0)
        states = [job.state for job in jobs]
        exit_codes = [job.status.exit_code for job in jobs if job.status.exit_code is not None]
        nonzero = [code for code in exit_codes if code != 0]
        exit_code = nonzero[0] if nonzero else (exit_codes[0] if exit_codes else None)
        reason = next((job.status.state_reason for job in jobs if job.status.state_reason), None)
        active = [state for state in states if state not in TERMINAL_STATES]
        if active:
            state = "RUNNING" if "RUNNING" in active else active[0]
        elif all(state in SUCCESS_STATES for state in states):
            state = "COMPLETED"
        else:
            state = min(
                (s for s in states if s in FAILED_STATES),
                key=lambda s: _SEVERITY.index(s) if s in _SEVERITY else len(_SEVERITY),
            )
        return cls(
            job_id=job_id, state=state, exit_code=exit_code, state_reason=reason, tasks=len(jobs)
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
