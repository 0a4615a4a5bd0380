"""Slurm's error messages read as the API's errors.

A controller or accounting database out of reach is ``ServiceUnavailable``, naming
the daemon that is out of reach (``slurmdbd`` for accounting, ``slurmctld`` for
the controller: an operator must know which to look at); a job sbatch rejects for
the caller's request is ``BadRequest``; anything else unexpected is
``BadGateway``, always with Slurm's own lines (without prefixes and chatter).
"""

from __future__ import annotations

import re

from hpcgate import errors

_UNAVAILABLE = (
    "Unable to contact slurm controller",
    "Socket timed out on send/recv",
    "Zero Bytes were transmitted or received",
    "Slurm backup controller in standby mode",
    "slurm_persist_conn_open",
    "Sending PersistInit msg",
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


ACCOUNTING_COMMANDS = frozenset({"sacct", "sacctmgr", "sreport"})
"""Clients that talk to slurmdbd (the accounting daemon), not to slurmctld."""

_ACCOUNTING_SIGNS = (
    "Problem talking to the database",
    "Unable to connect to database",
    "slurmdbd",
    "slurm_persist_conn_open",
    "Sending PersistInit msg",
)


def unreachable_daemon(command: str, stderr: str) -> str:
    """Which daemon a failed ``command`` could not reach: accounting clients and
    database errors mean slurmdbd, everything else the controller."""
    if command.split()[0] in ACCOUNTING_COMMANDS or any(s in stderr for s in _ACCOUNTING_SIGNS):
        return "Slurm accounting daemon (slurmdbd)"
    return "Slurm controller (slurmctld)"


def unavailable(command: str, stderr: str) -> errors.ServiceUnavailable:
    return errors.ServiceUnavailable(
        f"The {unreachable_daemon(command, stderr)} is not reachable ({command}): "
        f"{slurm_message(stderr)}"
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
