"""``sbatch --test-only``'s answer read as a verdict (``JobPreflight``).

sbatch tests the job with the controller and submits nothing: on success it exits 0
and says on stderr ``Job N to start at T using P processors on nodes X in partition
Y`` (``N`` is not a job); on refusal it exits non-zero with the reason (``allocation
failure: Invalid account ...``). Its output comes through the user's login shell:
only that one line shape is believed (never a job id on stdout), each value is
checked and every text is bounded.
"""

from __future__ import annotations

import re

from hpcgate import errors
from hpcgate.cluster.remote import CommandResult
from hpcgate.compute.scheduler.reports import JobPreflight, PreflightCategory
from hpcgate.compute.scheduler.slurm.messages import (
    classify_sbatch_error,
    is_unavailable,
    slurm_message,
    unavailable,
)

MAX_OUTPUT = 16 * 1024
"""Bytes of stdout a dry run may print (sbatch prints none)."""
MAX_MESSAGE = 500

_WOULD_START = re.compile(
    r"Job \d{1,12} to start at (\S{1,40}) using (\d{1,9}) processors? on nodes? "
    r"([A-Za-z0-9_.,\[\]-]{1,1024}) in partition ([A-Za-z0-9_.@+-]{1,128})"
)
_FAILURE_PREFIX = re.compile(r"^(?:allocation failure|sbatch: error|error): ", re.MULTILINE)
_CATEGORIES: tuple[tuple[PreflightCategory, re.Pattern[str]], ...] = (
    ("account", re.compile(r"account|association", re.IGNORECASE)),
    ("qos", re.compile(r"\bqos\b", re.IGNORECASE)),
    ("partition", re.compile(r"partition", re.IGNORECASE)),
    ("time_limit", re.compile(r"time limit|timelimit|--time", re.IGNORECASE)),
    (
        "resources",
        re.compile(
            r"node configuration|node count|memory|cpu count|processors|gres|"
            r"can not be satisfied|feature|constraint|nodes? .*not available",
            re.IGNORECASE,
        ),
    ),
)


def _bounded(text: str) -> str:
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def category_of(reason: str) -> PreflightCategory | None:
    """What a refusal is about (account, qos, partition, time limit, resources)."""
    return next((name for name, pattern in _CATEGORIES if pattern.search(reason)), None)


def refused(reason: str, *, category: PreflightCategory | None = None) -> JobPreflight:
    """The verdict for a job the scheduler (or this gateway) would refuse."""
    reason = _bounded(reason)
    return JobPreflight(valid=False, reason=reason, category=category or category_of(reason))


def read_test_only(result: CommandResult, sbatch: str) -> JobPreflight:
    """The verdict in ``sbatch --test-only``'s result; ``ServiceUnavailable`` when the
    controller is out of reach, ``BadGateway`` when the answer makes no sense."""
    stderr = result.stderr
    if result.ok:
        match = _WOULD_START.search(stderr)
        if match is None:
            raise errors.BadGateway(
                f"Unexpected answer from sbatch --test-only: {slurm_message(stderr, limit=200)}"
            )
        start, processors, nodes, partition = match.groups()
        return JobPreflight(
            valid=True,
            expected_start=int(start) if start.isdigit() else None,
            processors=int(processors),
            nodes=nodes,
            partition=partition,
            message=_bounded(match.group(0)),
        )
    if is_unavailable(stderr):
        raise unavailable("sbatch", stderr)
    if sbatch != "sbatch" and result.exit_status in (126, 127):
        raise errors.BadGateway(
            f"sbatch cannot be run at {sbatch} (scheduler.sbatch_path): {slurm_message(stderr)}"
        )
    if _FAILURE_PREFIX.search(stderr) is None:
        error = classify_sbatch_error(stderr)
        if not isinstance(error, errors.BadRequest):
            raise error
    lines = [
        _FAILURE_PREFIX.sub("", line) for line in stderr.splitlines() if _FAILURE_PREFIX.match(line)
    ]
    reason = slurm_message("\n".join(lines) or stderr, limit=MAX_MESSAGE)
    return JobPreflight(
        valid=False,
        reason=_bounded(reason),
        category=category_of(reason),
        message=_bounded(slurm_message(stderr, limit=MAX_MESSAGE)),
    )
