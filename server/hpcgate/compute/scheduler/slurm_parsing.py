"""Pure functions that turn Slurm 22.05+ command output into wire models.

``squeue -O`` and ``sacct -p`` print every field followed by ``FIELD_SEP`` (the ASCII
unit separator), which neither Slurm nor our validation lets into a field, so names,
paths and reasons with ``|``, spaces or commas parse exactly. Times are requested as
epoch seconds (``SLURM_TIME_FORMAT=%s``), so the login node's time zone is irrelevant.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from hpcgate import errors
from hpcgate.compute.scheduler.models import (
    AccountInfo,
    Job,
    JobMetadata,
    JobStatus,
    JobTask,
    JobTime,
    Node,
    NodeState,
    Partition,
    PosixIdentified,
    Reservation,
)

FIELD_SEP = "\x1f"

TERMINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)

_NONE_WORDS = frozenset({"", "None", "NONE", "none", "N/A", "n/a", "Unknown", "(null)", "INVALID"})


class SlurmOutputError(ValueError):
    """Output that does not have the shape we asked Slurm for."""


# ---------------------------------------------------------------- scalar fields


def none_if_empty(text: str) -> str | None:
    """``None`` for Slurm's placeholders (``""``, ``None``, ``N/A``, ``(null)``...)."""
    return None if text.strip() in _NONE_WORDS else text


def parse_int(text: str) -> int | None:
    """An integer field, or None for placeholders and non-numbers."""
    text = text.strip()
    return int(text) if text.isdigit() else None


def parse_epoch(text: str) -> int | None:
    """Epoch seconds (``SLURM_TIME_FORMAT=%s``); 0 and placeholders are None."""
    value = parse_int(text)
    return value if value else None


_DURATION = re.compile(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)(?:\.\d+)?")


def parse_duration(text: str) -> int | None:
    """Seconds of ``[D-][HH:]MM:SS`` (``squeue %M``, ``sacct Elapsed``)."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def parse_time_limit(text: str) -> int | None:
    """Minutes of a time limit (``UNLIMITED`` and ``Partition_Limit`` are None).

    Accepts plain minutes (``TimelimitRaw``) and Slurm's ``D-HH:MM:SS`` display.
    """
    text = text.strip()
    if text.isdigit():
        return int(text)
    seconds = parse_duration(text)
    if seconds is None:
        match = re.fullmatch(r"(\d+)-(\d+)", text)
        if not match:
            return None
        return (int(match.group(1)) * 24 + int(match.group(2))) * 60
    return seconds // 60


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """``sacct``'s ``"3:0"`` as (exit code 3, signal 0)."""
    match = re.fullmatch(r"(\d+):(\d+)", text.strip())
    if not match:
        return None, None
    return int(match.group(1)), int(match.group(2))


def decode_wait_status(text: str) -> tuple[int | None, int | None]:
    """``squeue``'s raw wait status (768 for exit 3, 9 for SIGKILL) as (exit, signal)."""
    value = parse_int(text)
    if value is None:
        return None, None
    return (value >> 8) & 0xFF, value & 0x7F


def parse_state(text: str) -> tuple[str, str | None]:
    """``"CANCELLED by 1001"`` as ("CANCELLED", "1001"); other states unchanged."""
    parts = text.strip().split()
    if not parts:
        return "UNKNOWN", None
    if len(parts) == 3 and parts[1] == "by":
        return parts[0], parts[2]
    return parts[0], None


def split_records(output: str, width: int) -> list[list[str]]:
    """Records of ``width`` fields, each field followed by ``FIELD_SEP``.

    Records are separated by a newline after the last separator; a field itself may
    contain anything but the separator (even a newline).
    """
    if not output.strip():
        return []
    tokens = output.split(FIELD_SEP)
    tail = tokens.pop()
    if tail.strip() or len(tokens) % width:
        raise SlurmOutputError(
            f"expected records of {width} fields, got {len(tokens)} fields and {tail[:40]!r}"
        )
    records = [tokens[i : i + width] for i in range(0, len(tokens), width)]
    for record in records[1:]:
        if not record[0].startswith("\n"):
            raise SlurmOutputError("a record does not start on a new line")
        record[0] = record[0][1:]
    return records


def format_fields(names: Sequence[str]) -> str:
    """The ``squeue -O`` format printing ``names`` each followed by ``FIELD_SEP``."""
    return ",".join(f"{name}:{FIELD_SEP}" for name in names)


# ---------------------------------------------------------------- squeue

SQUEUE_FIELDS: tuple[str, ...] = (
    "JobID",
    "ArrayJobID",
    "ArrayTaskID",
    "Name",
    "State",
    "Reason",
    "exit_code",
    "TimeUsed",
    "StartTime",
    "EndTime",
    "TimeLimit",
    "Account",
    "NumNodes",
    "Cluster",
    "GroupName",
    "NodeList",
    "Partition",
    "UserName",
    "WorkDir",
    "PriorityLong",
)


@dataclass(frozen=True, slots=True)
class ActiveJob:
    """A job as the controller lists it, with the raw id ``srun --jobid`` needs."""

    raw_id: str
    job: Job


def _canonical_id(job_id: str, array_job_id: str, array_task_id: str) -> str:
    if array_task_id.strip().isdigit() and array_job_id.strip().isdigit():
        return f"{array_job_id.strip()}_{array_task_id.strip()}"
    return job_id.strip()


def _reason(text: str) -> str | None:
    return none_if_empty(text)


def parse_squeue(output: str) -> list[ActiveJob]:
    """Jobs from ``squeue -h -r -O format_fields(SQUEUE_FIELDS)``."""
    jobs = []
    for f in split_records(output, len(SQUEUE_FIELDS)):
        row = dict(zip(SQUEUE_FIELDS, f, strict=True))
        state, _ = parse_state(row["State"])
        terminal = state in TERMINAL_STATES
        exit_code, signal = decode_wait_status(row["exit_code"]) if terminal else (None, None)
        job = Job(
            job_id=_canonical_id(row["JobID"], row["ArrayJobID"], row["ArrayTaskID"]),
            name=row["Name"],
            status=JobStatus(
                state=state,
                state_reason=_reason(row["Reason"]),
                exit_code=exit_code,
                interrupt_signal=signal,
            ),
            time=JobTime(
                elapsed=parse_duration(row["TimeUsed"]),
                # a pending job's StartTime/EndTime are forecasts, not facts
                start=parse_epoch(row["StartTime"]) if state != "PENDING" else None,
                end=parse_epoch(row["EndTime"]) if terminal else None,
                limit=parse_time_limit(row["TimeLimit"]),
            ),
            account=none_if_empty(row["Account"]),
            allocation_nodes=parse_int(row["NumNodes"]) or 0,
            cluster=row["Cluster"],
            group=none_if_empty(row["GroupName"]),
            nodes=none_if_empty(row["NodeList"]) or "",
            partition=row["Partition"],
            user=none_if_empty(row["UserName"]),
            working_directory=row["WorkDir"],
            priority=parse_int(row["PriorityLong"]),
        )
        jobs.append(ActiveJob(raw_id=row["JobID"].strip(), job=job))
    return jobs


# ---------------------------------------------------------------- sacct

SACCT_FIELDS: tuple[str, ...] = (
    "JobID",
    "JobName",
    "State",
    "ExitCode",
    "Reason",
    "ElapsedRaw",
    "Start",
    "End",
    "Suspended",
    "TimelimitRaw",
    "Account",
    "NNodes",
    "Cluster",
    "Group",
    "NodeList",
    "Partition",
    "User",
    "UID",
    "WorkDir",
    "Priority",
)


def _sacct_time(row: dict[str, str], *, limit: bool) -> JobTime:
    return JobTime(
        elapsed=parse_int(row["ElapsedRaw"]),
        start=parse_epoch(row["Start"]),
        end=parse_epoch(row["End"]),
        suspended=parse_duration(row["Suspended"]),
        limit=parse_time_limit(row["TimelimitRaw"]) if limit else None,
    )


def _sacct_status(row: dict[str, str]) -> tuple[JobStatus, str | None]:
    state, killer = parse_state(row["State"])
    ended = state in TERMINAL_STATES
    exit_code, signal = parse_exit_code(row["ExitCode"]) if ended else (None, None)
    status = JobStatus(
        state=state,
        state_reason=_reason(row["Reason"]),
        exit_code=exit_code,
        interrupt_signal=signal,
    )
    return status, killer


def parse_sacct(output: str) -> list[Job]:
    """Jobs, with their steps as ``tasks``, from ``sacct -n -p --delimiter=FIELD_SEP``."""
    jobs: dict[str, Job] = {}
    steps: dict[str, list[JobTask]] = {}
    for f in split_records(output, len(SACCT_FIELDS)):
        row = dict(zip(SACCT_FIELDS, f, strict=True))
        job_id = row["JobID"].strip()
        status, killer = _sacct_status(row)
        if "." in job_id:
            parent = job_id.split(".", 1)[0]
            task = JobTask(
                id=job_id, name=row["JobName"], status=status, time=_sacct_time(row, limit=False)
            )
            steps.setdefault(parent, []).append(task)
            continue
        kill_user = None
        if killer is not None:
            kill_user = row["User"] if killer == row["UID"].strip() else killer
        jobs[job_id] = Job(
            job_id=job_id,
            name=row["JobName"],
            status=status,
            time=_sacct_time(row, limit=True),
            account=none_if_empty(row["Account"]),
            allocation_nodes=parse_int(row["NNodes"]) or 0,
            cluster=row["Cluster"],
            group=none_if_empty(row["Group"]),
            nodes=(none_if_empty(row["NodeList"]) or "").replace("None assigned", ""),
            partition=row["Partition"],
            kill_request_user=kill_user,
            user=none_if_empty(row["User"]),
            working_directory=row["WorkDir"],
            priority=parse_int(row["Priority"]),
        )
    for job_id, tasks in steps.items():
        if job_id in jobs:
            jobs[job_id] = jobs[job_id].model_copy(update={"tasks": tasks})
    return list(jobs.values())


# ---------------------------------------------------------------- combining


def _fill(primary: JobTime, secondary: JobTime) -> JobTime:
    merged = {
        name: value if value is not None else getattr(secondary, name)
        for name, value in primary.model_dump(by_alias=False).items()
    }
    return JobTime(**merged)


def drop_stale(active: Iterable[Job], accounted: Iterable[Job]) -> list[Job]:
    """Accounting rows that do not contradict the controller.

    For a second or so after an array's tasks start, sacct still shows the array as
    one record (``47`` or ``47_[0-2]``) while squeue lists ``47_0``, ``47_1``...:
    such a record is dropped when the controller lists tasks of that array.
    """
    arrays = {job.job_id.split("_", 1)[0] for job in active if "_" in job.job_id}
    return [
        job
        for job in accounted
        if not (job.job_id in arrays or job.job_id.split("_[", 1)[0] in arrays)
    ]


def merge_jobs(active: Iterable[Job], accounted: Iterable[Job]) -> list[Job]:
    """Controller records win; accounting adds jobs it no longer holds, steps and
    the fields the controller does not report (``suspended``, ``killRequestUser``)."""
    active = list(active)
    by_id = {job.job_id: job for job in drop_stale(active, accounted)}
    merged = []
    for job in active:
        old = by_id.pop(job.job_id, None)
        if old is not None:
            job = job.model_copy(
                update={
                    "tasks": old.tasks,
                    "time": _fill(job.time, old.time),
                    "kill_request_user": job.kill_request_user or old.kill_request_user,
                }
            )
        merged.append(job)
    merged.extend(by_id.values())
    return sorted(merged, key=job_sort_key)


def job_sort_key(job: Job) -> tuple[int, int]:
    """Order by job id, array tasks by index."""
    base, _, index = job.job_id.partition("_")
    head = re.match(r"\d+", base)
    return (int(head.group()) if head else 0, int(index) if index.isdigit() else -1)


def summarize_array(job_id: str, elements: Sequence[Job]) -> Job:
    """One ``Job`` for a whole array: its tasks listed in ``tasks``.

    The state is the most advanced active one (RUNNING before PENDING) while any
    task is active; once all ended, COMPLETED if all completed, else the first
    task's failure state. Exit code and signal are the highest of the tasks.
    """
    elements = sorted(elements, key=job_sort_key)
    first = elements[0]
    states = [e.status.state for e in elements]
    active = [e for e in elements if e.status.state not in TERMINAL_STATES]
    if active:
        lead = next((e for e in active if e.status.state != "PENDING"), active[0])
    else:
        lead = next((e for e in elements if e.status.state != "COMPLETED"), first)
    exits = [e.status.exit_code for e in elements if e.status.exit_code is not None]
    signals = [e.status.interrupt_signal for e in elements if e.status.interrupt_signal is not None]
    starts = [e.time.start for e in elements if e.time.start is not None]
    ends = [e.time.end for e in elements if e.time.end is not None]
    elapsed = [e.time.elapsed for e in elements if e.time.elapsed is not None]
    nodes = list(dict.fromkeys(n for e in elements for n in [e.nodes] if n))
    priorities = [e.priority for e in elements if e.priority is not None]
    return first.model_copy(
        update={
            "job_id": job_id,
            "status": JobStatus(
                state=lead.status.state if states else "UNKNOWN",
                state_reason=lead.status.state_reason,
                exit_code=max(exits) if exits else None,
                interrupt_signal=max(signals) if signals else None,
            ),
            "tasks": [
                JobTask(id=e.job_id, name=e.name, status=e.status, time=e.time) for e in elements
            ],
            "time": JobTime(
                elapsed=max(elapsed) if elapsed else None,
                start=min(starts) if starts else None,
                end=max(ends) if ends and not active else None,
                suspended=first.time.suspended,
                limit=first.time.limit,
            ),
            "allocation_nodes": max(e.allocation_nodes for e in elements),
            "nodes": ",".join(nodes),
            "priority": max(priorities) if priorities else None,
            "kill_request_user": lead.kill_request_user,
        }
    )


def select_entries(job_id: str, jobs: Iterable[Job]) -> list[Job]:
    """The records that ``job_id`` names: the job, or all tasks of an array."""
    jobs = list(jobs)
    exact = [job for job in jobs if job.job_id == job_id]
    if exact:
        return exact
    if "_" not in job_id:
        prefix = f"{job_id}_"
        array = [job for job in jobs if job.job_id.startswith(prefix)]
        if array:
            return sorted(array, key=job_sort_key)
    # Slurm also answers to an array task's own numeric id
    return sorted(jobs, key=job_sort_key) if len(jobs) == 1 else []


# ---------------------------------------------------------------- sbatch


def parse_sbatch_output(stdout: str) -> tuple[str, str | None]:
    """``sbatch --parsable``'s ``"123"`` or ``"123;cluster"`` as (id, cluster)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise SlurmOutputError("sbatch printed no job id")
    match = re.fullmatch(r"(\d+)(?:;(\S+))?", lines[-1])
    if not match:
        raise SlurmOutputError(f"unexpected sbatch output {lines[-1][:80]!r}")
    return match.group(1), match.group(2)


_TESTED_ONLY = re.compile(r"\bJob \d+ to start at\b")


def is_test_only_answer(stderr: str) -> bool:
    """sbatch only tested the job (``--test-only``, e.g. from a script's directives):
    it exits 0, prints no job id and says when the job would start."""
    return bool(_TESTED_ONLY.search(stderr))


DIRECTIVE_PREFIXES = ("#SBATCH", "#SLURM")


def script_directives(script: str) -> list[str]:
    """The arguments sbatch takes from the script's ``#SBATCH`` (and ``#SLURM``) lines.

    As sbatch 22.05 reads them: a line that starts with the magic word (no space
    needed after it) gives arguments; the first line whose first non-blank character
    is not ``#`` ends the directives; quotes group, a backslash escapes the next
    character and an unquoted ``#`` starts a comment.
    """
    arguments: list[str] = []
    for line in script.split("\n"):
        prefix = next((p for p in DIRECTIVE_PREFIXES if line.startswith(p)), None)
        if prefix is None:
            stripped = line.lstrip()
            if stripped and not stripped.startswith("#"):
                break
            continue
        arguments.extend(_directive_arguments(line[len(prefix) :]))
    return arguments


def _directive_arguments(text: str) -> list[str]:
    arguments: list[str] = []
    current: list[str] | None = None
    quote = ""
    escaped = False
    for char in text:
        if current is None:
            if char.isspace():
                continue
            current = []
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
            continue
        elif quote:
            if char == quote:
                quote = ""
                continue
        elif char in "\"'":
            quote = char
            continue
        elif char == "#":
            break
        elif char.isspace():
            arguments.append("".join(current))
            current = None
            continue
        current.append(char)
    if current is not None and (current or quote):
        arguments.append("".join(current))
    return arguments


# ---------------------------------------------------------------- errors

_UNAVAILABLE = (
    "Unable to contact slurm controller",
    "Socket timed out on send/recv",
    "Zero Bytes were transmitted or received",
    "Slurm backup controller in standby mode",
    "Communication connection failure",
    "Transport endpoint is not connected",
    "Connection refused",
    "Problem talking to the database",
    "Unable to connect to database",
    "slurmdbd: Connection",
    "Slurm controller not responding",
    "Slurmctld not responding",
    "Unable to establish controller machine",
)

_SBATCH_CALLER_FAULTS = (
    "Batch job submission failed",
    "unrecognized option",
    "invalid option",
    "option requires an argument",
    "Invalid --",
    "error: Invalid",
    "error: invalid",
    "Invalid directive",
    "This does not look like a batch script",
    "Unable to open file",
    "DOS line breaks",
    "can not be satisfied",
    "Invalid numeric value",
    "not a valid",
    "script is empty",
    "exceeds the limit",
    "is ambiguous",
    "doesn't allow an argument",
    "requires an argument",
)

_PROGRAM = re.compile(r"^(?:sbatch|srun|salloc|scancel|squeue|sacct|scontrol|sinfo|sacctmgr): ")
_LEVEL = re.compile(r"^(?:error|fatal|warning): ")
_NOISE = re.compile(r"^(?:Try \"|[\w-]+/[\w-]+: |Terminating job|Signal \d+ to job)")


def slurm_message(stderr: str, *, limit: int = 1000) -> str:
    """Slurm's error lines, without ``sbatch: error:`` prefixes, help hints or
    plugin chatter, joined with ``; ``."""
    lines = []
    for raw in stderr.splitlines():
        line = _LEVEL.sub("", _PROGRAM.sub("", raw.strip()))
        if line and not _NOISE.match(line):
            lines.append(line)
    message = "; ".join(dict.fromkeys(lines)) or "no error message"
    return message if len(message) <= limit else message[: limit - 3] + "..."


def is_unavailable(stderr: str) -> bool:
    """The message says the controller or the accounting database is unreachable."""
    return any(pattern in stderr for pattern in _UNAVAILABLE)


def unavailable(command: str, stderr: str) -> errors.ServiceUnavailable:
    return errors.ServiceUnavailable(
        f"The Slurm controller is not reachable ({command}): {slurm_message(stderr)}"
    )


def classify_sbatch_error(stderr: str) -> errors.ApiError:
    """The API error for a failed ``sbatch``, carrying Slurm's message."""
    if is_unavailable(stderr):
        return unavailable("sbatch", stderr)
    message = slurm_message(stderr)
    if any(pattern in stderr for pattern in _SBATCH_CALLER_FAULTS):
        return errors.BadRequest(f"Job submission rejected: {message}")
    return errors.BadGateway(f"sbatch failed: {message}")


def unexpected(command: str, exit_status: int, stderr: str) -> errors.ApiError:
    """The error for a Slurm command that failed in a way we do not recognise."""
    if is_unavailable(stderr):
        return unavailable(command, stderr)
    return errors.BadGateway(
        f"{command} failed (exit status {exit_status}): {slurm_message(stderr)}"
    )


# ---------------------------------------------------------------- scontrol

_KEY = re.compile(r"(?:^|(?<=\s))([A-Za-z_][A-Za-z0-9_:/().]*)=")


def parse_scontrol_record(line: str) -> dict[str, str]:
    """``Key=value Key2=value with spaces ...`` of ``scontrol show ... --oneliner``.

    A value runs until the next `` Key=``; the first occurrence of a key wins.
    """
    matches = list(_KEY.finditer(line))
    record: dict[str, str] = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        record.setdefault(match.group(1), line[match.end() : end].strip())
    return record


def parse_scontrol_records(output: str) -> list[dict[str, str]]:
    """One dict per non-empty line (``No ... in the system`` gives none)."""
    records = []
    for line in output.splitlines():
        if not line.strip() or (line.startswith("No ") and line.rstrip().endswith("in the system")):
            continue
        records.append(parse_scontrol_record(line))
    return records


def parse_job_metadata(job_id: str, record: dict[str, str], script: str | None) -> JobMetadata:
    """Metadata from ``scontrol show job --oneliner`` (paths already expanded)."""
    return JobMetadata(
        job_id=job_id,
        script=script,
        standard_input=none_if_empty(record.get("StdIn", "")),
        standard_output=none_if_empty(record.get("StdOut", "")),
        standard_error=none_if_empty(record.get("StdErr", "")),
    )


def parse_partitions(output: str) -> list[Partition]:
    """Partitions from ``scontrol show partition --oneliner``."""
    partitions = []
    for record in parse_scontrol_records(output):
        name = record.get("PartitionName")
        if not name:
            continue
        state = none_if_empty(record.get("State", "")) or "UNKNOWN"
        partitions.append(
            Partition(
                name=name,
                cpus=parse_int(record.get("TotalCPUs", "")),
                total_nodes=parse_int(record.get("TotalNodes", "")),
                partition=state.split(","),
            )
        )
    return partitions


def parse_reservations(output: str) -> list[Reservation]:
    """Reservations from ``SLURM_TIME_FORMAT=%s scontrol show reservation --oneliner``."""
    reservations = []
    for record in parse_scontrol_records(output):
        name = record.get("ReservationName")
        if not name:
            continue
        reservations.append(
            Reservation(
                name=name,
                node_list=none_if_empty(record.get("Nodes", "")) or "",
                start_time=parse_epoch(record.get("StartTime", "")) or 0,
                end_time=parse_epoch(record.get("EndTime", "")) or 0,
                features=none_if_empty(record.get("Features", "")),
                state=none_if_empty(record.get("State", "")),
            )
        )
    return reservations


# ---------------------------------------------------------------- sinfo --json

_NODE_STATES: dict[str, NodeState] = {
    "IDLE": "IDLE",
    "ALLOCATED": "ALLOCATED",
    "ALLOC": "ALLOCATED",
    "MIXED": "MIXED",
    "DOWN": "DOWN",
    "ERROR": "DOWN",
    "FAIL": "DRAIN",
    "DRAIN": "DRAIN",
    "DRAINED": "DRAIN",
    "DRAINING": "DRAIN",
    "OFFLINE": "OFFLINE",
    "RESERVED": "RESERVED",
    "MAINTENANCE": "RESERVED",
    "COMPLETING": "COMPLETING",
    "BUSY": "BUSY",
    "POWERING_DOWN": "POWERING_DOWN",
    "POWER_DOWN": "POWERING_DOWN",
    "POWERED_DOWN": "POWERING_DOWN",
    "POWERING_UP": "POWERING_UP",
    "POWER_UP": "POWERING_UP",
    "UNKNOWN": "UNKNOWN",
    "FUTURE": "UNKNOWN",
}


def node_states(base: str, flags: Iterable[str]) -> list[NodeState]:
    """The API's node states for Slurm's base state and flags (unknown flags dropped)."""
    states: list[NodeState] = [_NODE_STATES.get(base.strip().upper(), "UNKNOWN")]
    for flag in flags:
        mapped = _NODE_STATES.get(flag.strip().upper())
        if mapped is not None and mapped not in states:
            states.append(mapped)
    return states


def _opt_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, dict) and value.get("set") and not value.get("infinite"):
        number = value.get("number")
        return number if isinstance(number, int) else None
    return None


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_sinfo_nodes(output: str) -> list[Node]:
    """Nodes from ``sinfo --json`` (Slurm 22.05: openapi v0.0.38; later versions too)."""
    try:
        document = json.loads(output)
    except json.JSONDecodeError as exc:
        raise SlurmOutputError(f"sinfo --json is not JSON: {exc}") from exc
    raw_nodes = document.get("nodes") if isinstance(document, dict) else None
    if not isinstance(raw_nodes, list):
        raise SlurmOutputError("sinfo --json has no 'nodes' list")
    nodes: dict[str, Node] = {}
    for raw in raw_nodes:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            continue
        state = raw.get("state", "UNKNOWN")
        if isinstance(state, list):  # newer Slurm: ["IDLE", "DRAIN"]
            base, flags = (state[0] if state else "UNKNOWN"), state[1:]
        else:
            base, flags = str(state), raw.get("state_flags") or []
        features = _opt_str(raw.get("features"))
        load = _opt_int(raw.get("cpu_load"))
        nodes.setdefault(
            raw["name"],
            Node(
                name=raw["name"],
                sockets=_opt_int(raw.get("sockets")),
                cores=_opt_int(raw.get("cores")),
                threads=_opt_int(raw.get("threads")),
                cpus=_opt_int(raw.get("cpus")) or 0,
                cpu_load=load / 100 if load is not None else None,
                free_memory=_opt_int(raw.get("free_memory")),
                features=features.split(",") if features else None,
                address=_opt_str(raw.get("address")),
                hostname=_opt_str(raw.get("hostname")),
                state=node_states(base, [str(f) for f in flags]),
                partitions=[str(p) for p in raw.get("partitions") or []] or None,
                weight=_opt_int(raw.get("weight")),
                alloc_memory=_opt_int(raw.get("alloc_memory")),
                alloc_cpus=_opt_int(raw.get("alloc_cpus")),
                idle_cpus=_opt_int(raw.get("idle_cpus")),
            ),
        )
    return list(nodes.values())


# ---------------------------------------------------------------- id, sacctmgr

_ID_PART = re.compile(r"(\d+)\((.*?)\)(?=,\d+\(|$)")


@dataclass(frozen=True, slots=True)
class Identity:
    """The user and groups printed by ``id``."""

    user: PosixIdentified
    group: PosixIdentified
    groups: list[PosixIdentified] = field(default_factory=list)


def _id_pairs(text: str) -> list[PosixIdentified]:
    return [PosixIdentified(id=m.group(1), name=m.group(2)) for m in _ID_PART.finditer(text)]


def parse_id(output: str) -> Identity:
    """``uid=1001(alice) gid=1002(alice) groups=1002(alice),1001(project1)``."""
    text = output.strip()
    match = re.fullmatch(r"uid=(.*?) gid=(.*?)(?: groups=(.*))?", text)
    if not match:
        raise SlurmOutputError(f"unexpected id output {text[:80]!r}")
    users, groups = _id_pairs(match.group(1)), _id_pairs(match.group(2))
    if not users or not groups:
        raise SlurmOutputError(f"unexpected id output {text[:80]!r}")
    return Identity(user=users[0], group=groups[0], groups=_id_pairs(match.group(3) or ""))


def parse_accounts(output: str) -> list[AccountInfo]:
    """``sacctmgr -nP show user NAME withassoc format=Account,DefaultAccount``."""
    accounts: dict[str, bool] = {}
    for line in output.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        account, default = parts[0], parts[1]
        accounts[account] = accounts.get(account, False) or account == default
    return [AccountInfo(name=name, default=default) for name, default in accounts.items()]
