"""Slurm's output fields: the separator we ask for, and each field's format.

``squeue -O`` and ``sacct -p`` print every field followed by ``FIELD_SEP`` (the ASCII
unit separator), which neither Slurm nor our validation lets into a field, so names,
paths and reasons with ``|``, spaces or commas parse exactly. Times are requested as
epoch seconds (``SLURM_TIME_FORMAT=%s``), so the login node's time zone is irrelevant.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

FIELD_SEP = "\x1f"

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
