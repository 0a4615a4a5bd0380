"""The cluster as Slurm describes it: ``scontrol`` records (job metadata, partitions,
reservations), ``sinfo --json`` nodes, and the user's ``id`` and ``sacctmgr`` accounts."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from hpcgate.compute.scheduler.models import (
    AccountInfo,
    JobMetadata,
    Node,
    NodeState,
    Partition,
    PosixIdentified,
    Reservation,
)
from hpcgate.compute.scheduler.slurm.fields import (
    SlurmOutputError,
    none_if_empty,
    parse_epoch,
    parse_int,
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
