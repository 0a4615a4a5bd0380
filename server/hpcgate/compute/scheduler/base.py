"""The scheduler interface the routes use, whatever the workload manager.

Every method takes the calling user's ``CommandRunner`` first: commands run as that
user, so the scheduler's own access rules apply. Errors are ``hpcgate.errors``
types: ``NotFound("Job not found")`` for an unknown or invisible job, ``Forbidden``
when the scheduler refuses the user, ``BadRequest`` when it rejects the request,
``ServiceUnavailable`` when its controller cannot be reached, ``BadGateway`` when it
answers with something unexpected. Job states, ids and array summaries follow
``hpcgate.compute.jobs``, whatever the backend.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from hpcgate import errors
from hpcgate.cluster.remote import CommandRunner
from hpcgate.compute.scheduler.models import (
    Job,
    JobDescription,
    JobMetadata,
    Node,
    Partition,
    Reservation,
    UserInfo,
)
from hpcgate.compute.scheduler.reports import JobAccounting, JobPreflight

TIME_WINDOWS: dict[str, int] = {
    "1h": 3600,
    "8h": 8 * 3600,
    "24h": 24 * 3600,
    "3d": 3 * 86400,
    "7d": 7 * 86400,
}
DEFAULT_TIME_WINDOW = "24h"
_WINDOW = re.compile(r"([1-9]\d{0,3})([mhd])")
_WINDOW_UNIT = {"m": 60, "h": 3600, "d": 86400}

MAX_ATTACH_COMMAND = 64 * 1024


def time_window_seconds(window: str | None) -> int:
    """Seconds of history for ``time_window`` (``1h``, ``8h``, ``24h``, ``3d``, ``7d``;
    also any ``<n>m``/``<n>h``/``<n>d`` up to 9999); None means 24 hours."""
    if window is None or window == "":
        window = DEFAULT_TIME_WINDOW
    if window in TIME_WINDOWS:
        return TIME_WINDOWS[window]
    match = _WINDOW.fullmatch(window)
    if not match:
        raise errors.BadRequest(
            f"Invalid time_window {window!r}: use one of {', '.join(TIME_WINDOWS)}"
        )
    return int(match.group(1)) * _WINDOW_UNIT[match.group(2)]


def validate_attach_command(command: str) -> str:
    """A command for ``attach``: non-empty, bounded, without NUL."""
    if not isinstance(command, str) or not command.strip():
        raise errors.BadRequest("The command is empty")
    if "\x00" in command:
        raise errors.BadRequest("The command must not contain NUL characters")
    if len(command) > MAX_ATTACH_COMMAND:
        raise errors.BadRequest(f"The command is longer than {MAX_ATTACH_COMMAND} characters")
    return command


class ListedJob(Protocol):
    """A job as the controller lists it, with its own numeric id (``raw_id``: an array
    task's id, not ``123_4``)."""

    @property
    def raw_id(self) -> str: ...

    @property
    def job(self) -> Job: ...


class Scheduler(Protocol):
    """A workload manager, driven through the calling user's runner."""

    async def submit(
        self, runner: CommandRunner, description: JobDescription, *, comment: str | None = None
    ) -> str:
        """Submit a batch job, with ``comment`` stamped on it if given; return its id."""
        ...

    async def preflight(self, runner: CommandRunner, description: JobDescription) -> JobPreflight:
        """The scheduler's verdict on ``description`` as a submission (would it be
        accepted, when would it start), submitting nothing."""
        ...

    async def accounting(self, runner: CommandRunner, job_id: str) -> list[JobAccounting]:
        """The accounting records ``job_id`` names (an array id: its tasks)."""
        ...

    async def active_jobs(
        self, runner: CommandRunner, *, users: Sequence[str] = (), job_ids: Sequence[str] = ()
    ) -> Sequence[ListedJob]:
        """Every job the controller holds (ended ones too) of ``users`` / ``job_ids``."""
        ...

    async def accounted_jobs(self, runner: CommandRunner, job_ids: Sequence[str]) -> list[Job]:
        """Accounting records of ``job_ids`` (array ids: their tasks), steps as tasks."""
        ...

    def drop_stale(self, listed: Sequence[Job], accounted: Sequence[Job]) -> list[Job]:
        """The ``accounted`` records that the controller's ``listed`` records do not
        supersede (accounting may lag the controller): what may be merged with them
        (``hpcgate.compute.jobs.merge_records``)."""
        ...

    async def jobs_with_comment(
        self, runner: CommandRunner, comment: str, *, since: int
    ) -> list[str]:
        """Ids of the runner's user's jobs stamped with ``comment`` (submitted since)."""
        ...

    async def jobs(
        self,
        runner: CommandRunner,
        *,
        all_users: bool = False,
        name: str | None = None,
        account: str | None = None,
        time_window: str | None = None,
    ) -> list[Job]:
        """Active jobs plus those that ended within ``time_window`` (default 24h, cut to
        the system's ``max_list_window``; a longer window is a ``BadRequest``).

        Only the user's own jobs unless ``all_users`` (then all the scheduler shows
        the user; the routes apply ``hpcgate.compute.scheduler.visibility`` on top). ``name``
        and ``account`` filter by exact match.
        """
        ...

    async def job(self, runner: CommandRunner, job_id: str) -> Job:
        """One job; for an array id, a summary of the array (its tasks in ``tasks``)."""
        ...

    async def job_entries(self, runner: CommandRunner, job_id: str) -> list[Job]:
        """One entry per array task for an array id; a one-element list otherwise."""
        ...

    async def cancel(self, runner: CommandRunner, job_id: str) -> None:
        """Cancel a job; cancelling a job that already ended is not an error."""
        ...

    async def metadata(self, runner: CommandRunner, job_id: str) -> JobMetadata:
        """The job's script and standard input/output/error paths."""
        ...

    async def attach(self, runner: CommandRunner, job_id: str, command: str) -> None:
        """Run ``command`` (a shell command line) inside the running job's allocation."""
        ...

    async def nodes(self, runner: CommandRunner) -> list[Node]: ...

    async def partitions(
        self, runner: CommandRunner, *, show_hidden: bool = False
    ) -> list[Partition]: ...

    async def reservations(self, runner: CommandRunner) -> list[Reservation]: ...

    async def user_info(self, runner: CommandRunner) -> UserInfo: ...

    async def ping(self, runner: CommandRunner) -> None:
        """Return when the controller answers; raise ``ServiceUnavailable`` otherwise."""
        ...

    async def ping_accounting(self, runner: CommandRunner) -> None:
        """Return when job accounting answers; raise ``ServiceUnavailable`` otherwise."""
        ...
