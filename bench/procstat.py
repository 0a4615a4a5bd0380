"""What ``/proc`` says of the processes a benchmark measures: CPU seconds (of one
process, or of it and its descendants) and resident memory. One place for every
bench script."""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one live process (raises once it is gone)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def cpu_seconds_if_alive(pid: int) -> float:
    """``cpu_seconds``, or 0 for a process that is gone."""
    try:
        return cpu_seconds(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def tree_pids(pid: int) -> set[int]:
    """``pid`` and its live descendants."""
    found: set[int] = set()
    pending = [pid]
    while pending:
        current = pending.pop()
        if current not in found:
            found.add(current)
            pending.extend(_children(current))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants."""
    return sum(cpu_seconds_if_alive(p) for p in tree_pids(pid))


def rss_kb(pid: int) -> int:
    """Resident memory (``VmRSS``) of one live process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def idle_seconds() -> float:
    """All cores' idle + iowait seconds since boot (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / _TICK
