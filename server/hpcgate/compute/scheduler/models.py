"""FirecREST v2 wire models of jobs and of the scheduler's view of a cluster.

Responses serialise in camelCase; requests accept camelCase and snake_case names.
Every request string that reaches ``sbatch`` is checked here: no control characters
(NUL, newline, ...) except in the script body, bounded lengths, and no value that
starts with ``-`` where it could be taken for an option.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from hpcgate.compute.ids import JOB_OR_TASK_ID
from hpcgate.wire import WireModel

MAX_SCRIPT_BYTES = 1024 * 1024
"""Largest inline job script accepted (UTF-8 bytes)."""
MAX_PATH_LENGTH = 4096
MAX_ENV_ENTRIES = 512
MAX_ENV_VALUE_LENGTH = 32 * 1024
MAX_ENV_TOTAL = 256 * 1024
MAX_EXTRA_OPTIONS = 64

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# ---------------------------------------------------------------- value checks


def _plain(max_length: int, *, what: str = "value") -> AfterValidator:
    """A one-line string: no control characters, 1..max_length characters."""

    def check(value: str) -> str:
        if not value:
            raise ValueError(f"{what} must not be empty")
        if len(value) > max_length:
            raise ValueError(f"{what} is longer than {max_length} characters")
        if _CONTROL.search(value):
            raise ValueError(f"{what} must not contain control characters (NUL, newline, ...)")
        return value

    return AfterValidator(check)


def _not_option(value: str) -> str:
    if value.startswith("-"):
        raise ValueError("must not start with '-'")
    return value


def _pattern(regex: str, message: str) -> AfterValidator:
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(message)
        return value

    return AfterValidator(check)


_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}"
SlurmName = Annotated[
    str,
    _plain(128),
    _pattern(_NAME, "must be a Slurm name (letters, digits, '_', '.', '@', '+', '-')"),
]
"""An account, QOS or reservation name."""

PartitionList = Annotated[
    str,
    _plain(1024),
    _pattern(rf"{_NAME}(,{_NAME})*", "must be a partition name or a comma-separated list"),
]

JobName = Annotated[str, _plain(200, what="job name"), AfterValidator(_not_option)]

RemotePath = Annotated[str, _plain(MAX_PATH_LENGTH, what="path"), AfterValidator(_not_option)]
"""A path on the cluster; relative paths are relative to the working directory."""


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must be an absolute path")
    return value


AbsolutePath = Annotated[str, _plain(MAX_PATH_LENGTH, what="path"), AfterValidator(_absolute)]

Constraints = Annotated[
    str,
    _plain(1024),
    _pattern(
        r"[A-Za-z0-9_\[(!][A-Za-z0-9_.:&|*\[\]()!,=+ -]*",
        "must be a Slurm constraint expression (features joined with & | , * [ ] ( ))",
    ),
]

JobIdText = Annotated[str, _pattern(JOB_OR_TASK_ID, "must be a job id such as 123 or 123_4")]

_TIME = re.compile(
    r"\d{1,9}"  # minutes
    r"|\d{1,9}:\d{1,2}"  # minutes:seconds
    r"|\d{1,9}:\d{1,2}:\d{1,2}"  # hours:minutes:seconds
    r"|\d{1,6}-\d{1,2}"  # days-hours
    r"|\d{1,6}-\d{1,2}:\d{1,2}"  # days-hours:minutes
    r"|\d{1,6}-\d{1,2}:\d{1,2}:\d{1,2}"  # days-hours:minutes:seconds
    r"|UNLIMITED|INFINITE"
)


def _time_limit(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("must be minutes or a Slurm time string")
    if isinstance(value, int):
        if value < 1:
            raise ValueError("must be at least 1 minute")
        return str(value)
    if isinstance(value, str) and not _TIME.fullmatch(value):
        raise ValueError(
            "must be minutes or a Slurm time string "
            "(MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, UNLIMITED)"
        )
    return value


TimeLimit = Annotated[str, BeforeValidator(_time_limit)]
"""``--time``: whole minutes (int) or a Slurm time string; normalised to a string."""

Memory = Annotated[
    str,
    _pattern(r"\d{1,12}[KMGTkmgt]?", "must be a size such as 4096, 500M, 4G or 1T"),
]

_ARRAY_ITEM = r"\d{1,9}(?:-\d{1,9}(?::\d{1,9})?)?"
ArraySpec = Annotated[
    str,
    _plain(512),
    _pattern(
        rf"{_ARRAY_ITEM}(?:,{_ARRAY_ITEM})*(?:%\d{{1,9}})?",
        "must be a Slurm array specification such as 0-9, 1,3,5, 0-15:4 or 0-99%10",
    ),
]

_DEP_ITEM = (
    r"(?:(?:after|afterany|afterburstbuffer|aftercorr|afternotok|afterok)"
    rf"(?::{JOB_OR_TASK_ID}(?:\+\d{{1,9}})?)+|singleton)"
)
_DEPENDENCY = re.compile(rf"{_DEP_ITEM}(?:[,?]{_DEP_ITEM})*")


def _dependencies(value: object) -> object:
    if isinstance(value, str):
        if len(value) > 4096 or not _DEPENDENCY.fullmatch(value):
            raise ValueError(
                "must be a list of job ids (afterok) or a Slurm dependency such as "
                "'afterok:12:13', 'afterany:12?afternotok:13' or 'singleton'"
            )
    return value


Dependencies = Annotated[
    Annotated[list[JobIdText], Field(min_length=1, max_length=1000)] | str,
    AfterValidator(_dependencies),
]


def _node_count(value: int | str) -> int | str:
    if isinstance(value, int) and value >= 1:
        return value
    if isinstance(value, str) and re.fullmatch(r"[1-9]\d{0,6}(-[1-9]\d{0,6})?", value):
        return value
    raise ValueError("must be a node count such as 2 or a range such as 2-4")


NodeCount = Annotated[int | str, AfterValidator(_node_count)]
"""``--nodes``: a count or a ``min-max`` range."""


EnvName = Annotated[
    str,
    _pattern(r"[A-Za-z_][A-Za-z0-9_]{0,255}", "must be an environment variable name"),
]
EnvValue = Annotated[
    str,
    Field(max_length=MAX_ENV_VALUE_LENGTH),
    _pattern(r"[^\x00\n\r]*", "must not contain NUL or newline characters"),
]

OptionName = Annotated[
    str, _pattern(r"[a-z][a-z0-9-]{0,63}", "must be a long sbatch option name without '--'")
]
OptionValue = Annotated[
    str,
    Field(max_length=4096),
    _pattern(r"[^\x00-\x1f\x7f]*", "must not contain control characters (NUL, newline, ...)"),
]

# Environment variables that sbatch (or any Slurm client) reads as its own input:
# they would bypass the checks above, so a job description cannot set them.
RESERVED_ENV_PREFIXES = ("SBATCH_", "SLURM_", "SALLOC_", "SRUN_")


# ---------------------------------------------------------------- requests


class JobDescription(WireModel):
    """What to run: FirecREST's job description plus a few common sbatch options.

    Exactly one of ``script`` (sent to sbatch on stdin) and ``script_path`` (a file on
    the cluster) is required. ``env`` is passed literally to the job (see
    ``SlurmScheduler.submit``). ``extra_options`` are long sbatch options that must be
    on the system's allow-list (``SchedulerSettings.extra_sbatch_options``).
    """

    model_config = ConfigDict(extra="forbid")

    working_directory: AbsolutePath = Field(description="Job working directory")
    script: str | None = Field(None, description="Script for the job")
    script_path: RemotePath | None = Field(None, description="Path to the job script on the system")
    name: JobName | None = None
    account: SlurmName | None = None
    partition: PartitionList | None = None
    reservation: SlurmName | None = None
    constraints: Constraints | None = None
    standard_input: RemotePath | None = None
    standard_output: RemotePath | None = None
    standard_error: RemotePath | None = None
    env: dict[EnvName, EnvValue] | None = Field(
        None, description="Environment variables set in the job, passed literally"
    )
    # extensions over FirecREST
    time_limit: TimeLimit | None = Field(None, description="minutes, or a Slurm time string")
    nodes: NodeCount | None = None
    tasks: Annotated[int, Field(ge=1, le=10_000_000)] | None = Field(
        None, description="number of tasks (--ntasks)"
    )
    cpus_per_task: Annotated[int, Field(ge=1, le=100_000)] | None = None
    memory: Memory | None = Field(None, description="memory per node (--mem), e.g. 4G")
    qos: SlurmName | None = None
    array: ArraySpec | None = Field(None, description="Slurm array spec, e.g. 0-9%2")
    dependencies: Dependencies | None = Field(
        None, description="job ids (afterok) or a full Slurm dependency expression"
    )
    extra_options: dict[OptionName, OptionValue | None] | None = Field(
        None, description="allow-listed long sbatch options (value None for a flag)"
    )

    @field_validator("script")
    @classmethod
    def _script_size(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if len(value.encode("utf-8", "surrogatepass")) > MAX_SCRIPT_BYTES:
            raise ValueError(f"the script is larger than {MAX_SCRIPT_BYTES} bytes")
        if "\x00" in value:
            raise ValueError("the script must not contain NUL characters")
        if not value.strip():
            raise ValueError("the script is empty")
        return value

    @field_validator("env")
    @classmethod
    def _env_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if not value:
            return value
        if len(value) > MAX_ENV_ENTRIES:
            raise ValueError(f"at most {MAX_ENV_ENTRIES} variables")
        if sum(len(k) + len(v) + 2 for k, v in value.items()) > MAX_ENV_TOTAL:
            raise ValueError(f"the environment is larger than {MAX_ENV_TOTAL} characters")
        for key in value:
            if key.startswith(RESERVED_ENV_PREFIXES):
                raise ValueError(
                    f"{key}: variables starting with {', '.join(RESERVED_ENV_PREFIXES)} "
                    "configure Slurm itself and cannot be set here"
                )
        return value

    @field_validator("extra_options")
    @classmethod
    def _extra_count(cls, value: dict[str, str | None] | None) -> dict[str, str | None] | None:
        if value is not None and len(value) > MAX_EXTRA_OPTIONS:
            raise ValueError(f"at most {MAX_EXTRA_OPTIONS} options")
        return value

    @model_validator(mode="after")
    def _one_script(self) -> JobDescription:
        if (self.script is None) == (self.script_path is None):
            raise ValueError("give exactly one of 'script' and 'scriptPath'")
        return self

    @property
    def dependency_expression(self) -> str | None:
        """The ``--dependency`` value: a list of ids means ``afterok`` on all of them."""
        if self.dependencies is None:
            return None
        if isinstance(self.dependencies, str):
            return self.dependencies
        return "afterok:" + ":".join(self.dependencies)


class JobSubmitRequest(WireModel):
    """``POST /compute/{system}/jobs`` body."""

    job: JobDescription


class JobSubmitResponse(WireModel):
    """``POST /compute/{system}/jobs`` answer: the new job's id, as a string."""

    job_id: str


class AttachRequest(WireModel):
    """``PUT /compute/{system}/jobs/{id}/attach`` body."""

    command: str


# ---------------------------------------------------------------- jobs


class JobStatus(WireModel):
    state: str
    state_reason: str | None = None
    exit_code: int | None = None
    interrupt_signal: int | None = None


class JobTime(WireModel):
    """Seconds since the epoch (start, end); seconds (elapsed, suspended); minutes (limit)."""

    elapsed: int | None = None
    start: int | None = None
    end: int | None = None
    suspended: int | None = None
    limit: int | None = None


class JobTask(WireModel):
    """A job step (``123.batch``, ``123.0``) or, in an array summary, one array task."""

    id: str
    name: str
    status: JobStatus
    time: JobTime


class Job(WireModel):
    """One job as FirecREST v2 shows it."""

    job_id: str
    name: str
    status: JobStatus
    tasks: list[JobTask] | None = None
    time: JobTime
    account: str | None = None
    allocation_nodes: int
    cluster: str
    group: str | None = None
    nodes: str
    partition: str
    kill_request_user: str | None = None
    user: str | None
    working_directory: str
    priority: int | None = None


class JobListing(list[Job]):
    """Jobs of a listing, and why it may lack some: with accounting (slurmdbd) down the
    controller's active jobs are still answered, the ended ones are ``missing``."""

    missing: str | None = None


class JobMetadata(WireModel):
    job_id: str
    script: str | None = None
    standard_input: str | None = None
    standard_output: str | None = None
    standard_error: str | None = None


# ---------------------------------------------------------------- cluster


NodeState = Literal[
    "IDLE",
    "ALLOCATED",
    "MIXED",
    "DOWN",
    "DRAIN",
    "OFFLINE",
    "RESERVED",
    "COMPLETING",
    "BUSY",
    "POWERING_DOWN",
    "POWERING_UP",
    "UNKNOWN",
]


class Node(WireModel):
    sockets: int | None = None
    cores: int | None = None
    threads: int | None = None
    cpus: int
    cpu_load: float | None = None
    free_memory: int | None = None
    features: str | list[str] | None = None
    name: str
    address: str | None = None
    hostname: str | None = None
    state: list[NodeState]
    partitions: list[str] | None = None
    weight: int | None = None
    alloc_memory: int | None = None
    alloc_cpus: int | None = None
    idle_cpus: int | None = None


class Partition(WireModel):
    """``partition`` holds the partition's state flags, e.g. ``["UP"]``."""

    name: str
    cpus: int | None = None
    total_nodes: int | None = None
    partition: str | list[str]


class Reservation(WireModel):
    name: str
    node_list: str
    end_time: int
    start_time: int
    features: str | None = None
    state: str | None = None


class PosixIdentified(WireModel):
    id: str
    name: str


class AccountInfo(WireModel):
    name: str
    default: bool


class UserInfo(WireModel):
    user: PosixIdentified
    group: PosixIdentified
    groups: list[PosixIdentified]
    accounts: list[AccountInfo] | None = None


# ---------------------------------------------------------------- envelopes


class JobsResponse(WireModel):
    jobs: list[Job] | None


class JobMetadataResponse(WireModel):
    jobs: list[JobMetadata] | None


class NodesResponse(WireModel):
    nodes: list[Node]


class PartitionsResponse(WireModel):
    partitions: list[Partition]


class ReservationsResponse(WireModel):
    reservations: list[Reservation]
