"""Slurm (22.05+) behind the ``Scheduler`` interface, driven as the user over SSH.

Every command is an argument vector; values from requests travel as whole ``argv``
elements in ``--option=value`` form, so neither a shell nor sbatch's option parser
can misread them.

Measured on the local site (Slurm 22.05, one SSH connection reused): ``squeue``
~5-7 ms, ``sbatch`` ~6 ms, ``scontrol`` ~5 ms, ``sinfo --json`` ~14 ms, ``sacct``
~90 ms, ``sacctmgr`` ~180 ms. So a job lookup asks ``squeue -t all`` first (the
controller keeps ended jobs for ``MinJobAge``, 300 s by default, exit codes
included) and only falls back to ``sacct`` for older jobs or for the steps of an
ended one; settled accounting answers are then cached for ``ended_ttl`` seconds, so
polling an ended job costs one squeue. (``squeue --json`` ignores ``-j``/``-u`` in
22.05 and reports raw wait statuses; ``squeue -O`` with a separator is used
instead.) Jobs this server submitted are remembered per user for ``recent_ttl``
seconds and answered as PENDING if the scheduler does not list them yet.

Environment variables of a job description are given to ``sbatch`` through
``env NAME=VALUE ... sbatch --export=ALL``: each assignment is one argv element, so
the value reaches the job byte for byte (quotes, ``$(...)``, backticks, ``;``,
commas) without any shell or ``--export`` list parsing, whatever the script's
interpreter, and for ``scriptPath`` jobs too; the script itself is not modified, so
``metadata`` returns it as submitted. Names that configure Slurm clients
(``SBATCH_*``, ``SLURM_*``, ...) are refused by the model. When ``PATH`` is among
the variables, sbatch is called by its absolute path, ``scheduler.sbatch_path`` from
the configuration.

Trust: everything a command prints comes through the calling user's login shell,
which that user controls. So nothing one user's commands print is kept for another
user: the ended-jobs cache, the submissions just made and the cluster name seen are
all keyed by the runner's user (the token's account, never ``id -un``), and tool
paths come from the configuration. A user can only ever mislead themselves.

Built on this package's parsers (``job_records``, ``cluster_records``, ``fields``),
``sbatch`` (options and directive checks), ``messages`` (errors) and ``caches``.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from hpcgate import errors
from hpcgate.cluster.remote import CommandResult, CommandRunner
from hpcgate.compute.jobs import (
    FINAL_STATES,
    PENDING,
    as_answer,
    is_terminal,
    job_sort_key,
    top_id,
    validate_job_id,
)
from hpcgate.compute.scheduler.base import time_window_seconds, validate_attach_command
from hpcgate.compute.scheduler.models import (
    Job,
    JobDescription,
    JobListing,
    JobMetadata,
    JobStatus,
    JobTime,
    Node,
    Partition,
    Reservation,
    UserInfo,
)
from hpcgate.compute.scheduler.reports import JobAccounting, JobPreflight
from hpcgate.compute.scheduler.slurm.accounting import (
    parse_accounting,
    sacct_accounting_argv,
    select_accounting,
)
from hpcgate.compute.scheduler.slurm.caches import RecentSubmissions, TtlCache
from hpcgate.compute.scheduler.slurm.cluster_records import (
    parse_accounts,
    parse_id,
    parse_job_metadata,
    parse_partitions,
    parse_reservations,
    parse_scontrol_records,
    parse_sinfo_nodes,
)
from hpcgate.compute.scheduler.slurm.fields import (
    FIELD_SEP,
    SlurmOutputError,
    format_fields,
    parse_time_limit,
    split_records,
)
from hpcgate.compute.scheduler.slurm.job_records import (
    SACCT_FIELDS,
    SQUEUE_FIELDS,
    ActiveJob,
    drop_stale,
    merge_jobs,
    parse_sacct,
    parse_squeue,
    select_entries,
)
from hpcgate.compute.scheduler.slurm.messages import (
    classify_sbatch_error,
    is_unavailable,
    slurm_message,
    unavailable,
    unexpected,
)
from hpcgate.compute.scheduler.slurm.preflight import MAX_OUTPUT as PREFLIGHT_MAX_OUTPUT
from hpcgate.compute.scheduler.slurm.preflight import read_test_only
from hpcgate.compute.scheduler.slurm.preflight import refused as preflight_refused
from hpcgate.compute.scheduler.slurm.sbatch import (
    PLAIN_VALUE,
    build_sbatch_options,
    forbidden_directive,
    is_test_only_answer,
    parse_sbatch_output,
)
from hpcgate.config import SchedulerSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

# Slurm prints times in this format: epoch seconds, independent of the time zone.
_EPOCH_TIMES = ("env", "SLURM_TIME_FORMAT=%s")
_CLOCK_SLACK_SECONDS = 300


def sacct_since(epoch_seconds: int, *, now: float | None = None) -> str:
    """``sacct -S`` for "since ``epoch_seconds``": relative to the cluster's own clock
    (``now-<seconds>``), widened by a few minutes for clock skew between this server and
    the cluster. Slurm rejects epoch seconds ("Invalid time specification"), and an
    absolute date would be read in the cluster's time zone, which the server does not
    know."""
    current = time.time() if now is None else now
    return f"now-{max(0, int(current) - epoch_seconds) + _CLOCK_SLACK_SECONDS}"


_INVALID_JOB = "Invalid job id specified"
_DENIED = ("Access/permission denied", "Invalid user id", "Access denied")


def _user_key(runner: CommandRunner) -> str | None:
    """The runner's user (the token's account). Never asked of the remote shell: what
    ``id -un`` prints there is the user's to forge. None for a runner that does not
    say (then nothing is remembered for it)."""
    user = getattr(runner, "username", None)
    return user if isinstance(user, str) and user else None


def _duration(seconds: int) -> str:
    """``7d``, ``36h`` or ``90m``: a window in the units ``time_window`` takes."""
    for unit, size in (("d", 86400), ("h", 3600)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds // 60}m"


def _settled(entries: Sequence[Job], accounted: Sequence[Job]) -> bool:
    """Both the controller and accounting show every entry (and step) in a final state."""
    if len(accounted) != len(entries):
        return False
    states = [job.status.state for job in [*entries, *accounted]]
    states += [task.status.state for job in accounted for task in job.tasks or []]
    return all(state in FINAL_STATES for state in states)


async def _gather(*calls: Awaitable[Any]) -> list[Any]:
    """Run ``calls`` concurrently; raise the first failure once all have finished."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


class SlurmScheduler:
    """The ``Scheduler`` for Slurm, one instance per system."""

    def __init__(
        self,
        settings: SchedulerSettings | None = None,
        *,
        recent_ttl: float = 60.0,
        ended_ttl: float = 30.0,
    ) -> None:
        self.settings = settings or SchedulerSettings()
        self.recent = RecentSubmissions(ttl=recent_ttl)
        # Accounting's settled records of ended jobs (a sacct call costs ~90 ms), by
        # (user, job id): what a user's sacct printed is that user's to forge, so it
        # only ever answers that user.
        self.ended: TtlCache[tuple[str, str], list[Job]] = TtlCache(ttl=ended_ttl)
        # The cluster name each user's squeue showed (for jobs just submitted).
        self._clusters: TtlCache[str, str] = TtlCache(ttl=3600.0)

    # ------------------------------------------------------------ plumbing

    async def _run(
        self, runner: CommandRunner, argv: Sequence[str], *, stdin: str | None = None
    ) -> CommandResult:
        return await runner.run(list(argv), stdin=stdin, timeout=self.settings.timeout)

    @staticmethod
    def _parsed(command: str, parse: Callable[[], T]) -> T:
        try:
            return parse()
        except (SlurmOutputError, ValueError) as exc:
            raise errors.BadGateway(f"Unexpected output from {command}: {exc}") from exc

    async def _squeue(self, runner: CommandRunner, *selection: str) -> list[ActiveJob]:
        argv = [*_EPOCH_TIMES, "squeue", "-h", "-r", "-t", "all", *selection]
        result = await self._run(runner, [*argv, "-O", format_fields(SQUEUE_FIELDS)])
        if not result.ok:
            if _INVALID_JOB in result.stderr:
                return []
            raise unexpected("squeue", result.exit_status, result.stderr)
        jobs = self._parsed("squeue", lambda: parse_squeue(result.stdout))
        user = _user_key(runner)
        if jobs and user is not None and jobs[0].job.cluster:
            self._clusters.put(user, jobs[0].job.cluster)
        return jobs

    async def _sacct(self, runner: CommandRunner, *selection: str) -> list[Job]:
        sacct = self.settings.sacct_path
        argv = [*_EPOCH_TIMES, sacct, "-n", "-p", f"--delimiter={FIELD_SEP}"]
        result = await self._run(runner, [*argv, "-o", ",".join(SACCT_FIELDS), *selection])
        if not result.ok:
            raise unexpected("sacct", result.exit_status, result.stderr)
        return self._parsed("sacct", lambda: parse_sacct(result.stdout))

    # ------------------------------------------------------------ jobs

    async def submit(
        self, runner: CommandRunner, description: JobDescription, *, comment: str | None = None
    ) -> str:
        """``sbatch --parsable``; the script on stdin, or ``scriptPath`` as argument.

        A script whose directives would make sbatch submit nothing or not answer
        (``#SBATCH --test-only``, ``--wait``) is a ``BadRequest`` before anything
        runs; for a ``scriptPath`` script, sbatch's "Job N to start at" answer is.
        """
        argv, sbatch = self._sbatch_argv(description, comment=comment)
        result = await self._run(runner, argv, stdin=description.script)
        if not result.ok:
            if sbatch != "sbatch" and result.exit_status in (126, 127):
                raise errors.BadGateway(
                    f"sbatch cannot be run at {sbatch} (scheduler.sbatch_path): "
                    f"{slurm_message(result.stderr)}"
                )
            raise classify_sbatch_error(result.stderr)
        try:
            job_id, cluster = parse_sbatch_output(result.stdout)
        except SlurmOutputError as exc:
            if is_test_only_answer(result.stderr):
                raise errors.BadRequest(
                    "sbatch only tested the job (--test-only in the script's #SBATCH "
                    f"lines?) and submitted nothing: {slurm_message(result.stderr)}"
                ) from None
            raise errors.BadGateway(f"Unexpected output from sbatch: {exc}") from exc
        user = _user_key(runner)
        if user is not None:
            self.recent.add(user, self._submitted(job_id, cluster, description, user))
        return job_id

    def _sbatch_argv(
        self, description: JobDescription, *, comment: str | None = None, test_only: bool = False
    ) -> tuple[list[str], str]:
        """sbatch's argv for ``description`` and the sbatch it runs; the checks of a
        submission (``BadRequest``) come first. ``test_only``: ``--test-only`` and
        start times as epoch seconds (the dry run)."""
        options = build_sbatch_options(description, self.settings.extra_sbatch_options, comment)
        if description.script is not None:
            refused = forbidden_directive(description.script)
            if refused is not None:
                raise refused
        if test_only:
            options.insert(0, "--test-only")
        sbatch = "sbatch"
        assignments = ["SLURM_TIME_FORMAT=%s"] if test_only else []
        if description.env:
            if "PATH" in description.env:  # env would look sbatch up in the job's PATH
                sbatch = self.settings.sbatch_path
            assignments += [f"{name}={value}" for name, value in description.env.items()]
            return ["env", *assignments, sbatch, "--export=ALL", *options], sbatch
        return (["env", *assignments] if assignments else []) + [sbatch, *options], sbatch

    async def preflight(self, runner: CommandRunner, description: JobDescription) -> JobPreflight:
        """``sbatch --test-only`` with a submission's argv: the controller's verdict,
        nothing submitted (``slurm.preflight``). A request a submission would refuse
        before sbatch runs is a refusal too."""
        try:
            argv, sbatch = self._sbatch_argv(description, test_only=True)
        except errors.BadRequest as exc:
            return preflight_refused(exc.message, category="request")
        result = await runner.run(
            argv,
            stdin=description.script,
            timeout=self.settings.timeout,
            max_output=PREFLIGHT_MAX_OUTPUT,
        )
        return read_test_only(result, sbatch)

    async def accounting(self, runner: CommandRunner, job_id: str) -> list[JobAccounting]:
        """``sacct -j``: the job's (an array's tasks') accounting (``slurm.accounting``)."""
        job_id = validate_job_id(job_id)
        result = await self._run(runner, sacct_accounting_argv(self.settings.sacct_path, job_id))
        if not result.ok:
            raise unexpected("sacct", result.exit_status, result.stderr)
        records = self._parsed("sacct", lambda: parse_accounting(result.stdout))
        found = select_accounting(job_id, records)
        if not found:
            raise errors.NotFound(f"Job not found: {job_id} (no accounting record yet)")
        return found

    def _submitted(
        self, job_id: str, cluster: str | None, description: JobDescription, user: str
    ) -> Job:
        """The PENDING job that a submission is, until the scheduler lists it."""
        name = description.name
        if name is None:
            name = posixpath.basename(description.script_path) if description.script_path else ""
        nodes = description.nodes
        count = int(str(nodes).split("-")[0]) if nodes is not None else 1
        return Job(
            job_id=job_id,
            name=name or "sbatch",
            status=JobStatus(state=PENDING, state_reason="Submitted"),
            time=JobTime(
                limit=parse_time_limit(description.time_limit) if description.time_limit else None
            ),
            account=description.account,
            allocation_nodes=count,
            cluster=cluster or self._clusters.get(user) or "",
            nodes="",
            partition=description.partition or "",
            user=user,
            working_directory=description.working_directory,
        )

    async def job_entries(self, runner: CommandRunner, job_id: str) -> list[Job]:
        """The job, or each task of an array, from squeue first and sacct if needed."""
        job_id = validate_job_id(job_id)
        entries = select_entries(job_id, [a.job for a in await self._squeue(runner, "-j", job_id)])
        if entries and not any(is_terminal(e) for e in entries):
            return entries
        user = _user_key(runner)
        key = (user, job_id) if user is not None else None
        settled = self.ended.get(key) if entries and key is not None else None
        if settled is not None and {e.job_id for e in settled} == {e.job_id for e in entries}:
            return merge_jobs(entries, settled)
        try:
            accounted = drop_stale(entries, await self._sacct(runner, "-j", job_id))
        except errors.ApiError:
            if not entries:
                raise
            log.warning("sacct failed; job %s answered from squeue alone", job_id)
            return entries
        accounted = select_entries(job_id, accounted)
        merged = select_entries(job_id, merge_jobs(entries, accounted))
        if merged:
            if key is not None and entries and _settled(entries, accounted):
                self.ended.put(key, accounted)
            return merged
        recent = self.recent.get((user, job_id)) if user is not None else None
        if recent is not None:
            return [recent]
        raise errors.NotFound(f"Job not found: {job_id}")

    async def job(self, runner: CommandRunner, job_id: str) -> Job:
        """One job; an array id gives a summary whose ``tasks`` are the array's tasks."""
        return as_answer(job_id, await self.job_entries(runner, job_id))

    async def jobs(
        self,
        runner: CommandRunner,
        *,
        all_users: bool = False,
        name: str | None = None,
        account: str | None = None,
        time_window: str | None = None,
    ) -> list[Job]:
        """Active jobs (squeue) and those ended within ``time_window`` (sacct), merged.

        A window longer than ``max_list_window`` is a ``BadRequest`` naming the cap (the
        default window is cut to it); so is a listing whose output is over the SSH
        output cap (the request chose its size: a shorter window or a filter helps).
        """
        seconds = time_window_seconds(time_window)
        cap = self.settings.max_list_window
        if not time_window:
            seconds = min(seconds, cap)
        elif seconds > cap:
            raise errors.BadRequest(
                f"time_window {time_window!r} is longer than this system's maximum of "
                f"{_duration(cap)} (scheduler.max_list_window)"
            )
        active_sel: list[str] = [] if all_users else ["--me"]
        accounted_sel = ["-S", f"now-{seconds}", "-E", "now", *(["-a"] if all_users else [])]
        for option, value in (("name", name), ("account", account)):
            if value is None:
                continue
            if not PLAIN_VALUE.fullmatch(value):
                raise errors.BadRequest(f"Invalid {option} filter")
            if "," not in value:  # both commands take lists: filter exactly below
                active_sel.append(f"--{option}={value}")
                accounted_sel.append(f"--{option}={value}")
        missing: str | None = None

        async def ended() -> list[Job]:
            nonlocal missing
            try:
                return await self._sacct(runner, *accounted_sel)
            except errors.ServiceUnavailable as exc:  # slurmdbd down: squeue still answers
                missing = f"ended jobs are missing: {exc.message}"
                log.warning("job listing without accounting: %s", exc.message)
                return []

        try:
            active, accounted = await _gather(self._squeue(runner, *active_sel), ended())
        except errors.OutputTooLarge as exc:
            raise errors.BadRequest(
                f"The job listing is too large: {exc.message}; narrow it with a shorter "
                "time_window or a name or account filter"
            ) from exc
        user = _user_key(runner)
        listed = JobListing(merge_jobs([a.job for a in active], accounted))
        listed.missing = missing
        known = {top_id(job.job_id) for job in listed}
        if user is not None:
            listed.extend(job for job in self.recent.of_user(user) if job.job_id not in known)
            listed.sort(key=job_sort_key)
        listed[:] = [
            job
            for job in listed
            if (name is None or job.name == name) and (account is None or job.account == account)
        ]
        return listed

    async def active_jobs(
        self,
        runner: CommandRunner,
        *,
        users: Sequence[str] = (),
        job_ids: Sequence[str] = (),
    ) -> list[ActiveJob]:
        """One ``squeue -t all`` for ``users``' jobs or for ``job_ids`` (both: AND):
        every job the controller still holds, ended ones included (``MinJobAge``)."""
        selection: list[str] = []
        if users:
            selection += ["-u", ",".join(users)]
        if job_ids:
            selection += ["-j", ",".join(validate_job_id(job_id) for job_id in job_ids)]
        return await self._squeue(runner, *selection)

    async def accounted_jobs(self, runner: CommandRunner, job_ids: Sequence[str]) -> list[Job]:
        """One ``sacct -j`` for ``job_ids`` (array ids give their tasks), steps as tasks."""
        if not job_ids:
            return []
        ids = ",".join(validate_job_id(job_id) for job_id in job_ids)
        return await self._sacct(runner, "-j", ids)

    def drop_stale(self, listed: Sequence[Job], accounted: Sequence[Job]) -> list[Job]:
        """The ``accounted`` records that the controller's ``listed`` ones do not
        supersede (sacct shows an array as one record for a moment after squeue
        lists its tasks)."""
        return drop_stale(listed, accounted)

    async def jobs_with_comment(
        self, runner: CommandRunner, comment: str, *, since: int
    ) -> list[str]:
        """Ids of the runner's user's jobs whose ``--comment`` is ``comment``: from the
        controller (jobs it holds) and from accounting since ``since`` (epoch seconds;
        found there only if the site stores comments, ``AccountingStoreFlags=job_comment``).
        """
        if not PLAIN_VALUE.fullmatch(comment):
            raise errors.BadRequest("Invalid comment")
        fields = ("ArrayJobID", "JobID", "Comment")
        squeue = [*_EPOCH_TIMES, "squeue", "-h", "-t", "all", "--me", "-O", format_fields(fields)]
        sacct = [*_EPOCH_TIMES, self.settings.sacct_path, "-n", "-X", "-p"]
        sacct += [f"--delimiter={FIELD_SEP}"]
        sacct += ["-S", sacct_since(since), "-E", "now", "-o", "JobID,Comment"]
        active, accounted = await _gather(self._run(runner, squeue), self._run(runner, sacct))
        found: set[str] = set()
        if not active.ok:
            raise unexpected("squeue", active.exit_status, active.stderr)
        for array_id, job_id, text in self._parsed(
            "squeue", lambda: split_records(active.stdout, len(fields))
        ):
            if text.strip() == comment:
                found.add(array_id.strip() if array_id.strip().isdigit() else job_id.strip())
        if accounted.ok:
            for job_id, text in self._parsed("sacct", lambda: split_records(accounted.stdout, 2)):
                if text.strip() == comment:
                    found.add(re.split(r"[_+.]", job_id.strip(), maxsplit=1)[0])
        elif not found:
            # "accounting did not answer" is not "no such job": the controller may have
            # forgotten it already, and answering none would let the caller submit twice
            raise unexpected("sacct", accounted.exit_status, accounted.stderr)
        return sorted(found, key=int)

    async def cancel(self, runner: CommandRunner, job_id: str) -> None:
        """``scancel``; unknown → NotFound, another user's job → Forbidden."""
        job_id = validate_job_id(job_id)
        # -v: without it scancel 22.05 says nothing (and exits 0) for an unknown id
        result = await self._run(runner, ["scancel", "-v", job_id])
        stderr = result.stderr
        if _INVALID_JOB in stderr:
            raise errors.NotFound(f"Job not found: {job_id}")
        if any(text in stderr for text in _DENIED):
            raise errors.Forbidden(f"Not allowed to cancel job {job_id}: {slurm_message(stderr)}")
        if is_unavailable(stderr):
            raise unavailable("scancel", stderr)
        if "already completing or completed" in stderr:
            return
        if not result.ok or "error:" in stderr:
            raise unexpected("scancel", result.exit_status, stderr)

    async def metadata(self, runner: CommandRunner, job_id: str) -> JobMetadata:
        """Paths from ``scontrol show job``, the script from ``scontrol write batch_script``.

        Both need the job in the controller's memory; for an older job the owner
        gets the id alone, anybody else Forbidden.
        """
        job_id = validate_job_id(job_id)
        shown, written = await _gather(
            self._run(runner, ["scontrol", "show", "job", "--oneliner", job_id]),
            self._run(runner, ["scontrol", "write", "batch_script", job_id, "-"]),
        )
        if not shown.ok:
            if _INVALID_JOB in shown.stderr:
                return await self._forgotten_metadata(runner, job_id)
            raise unexpected("scontrol show job", shown.exit_status, shown.stderr)
        records = self._parsed("scontrol", lambda: parse_scontrol_records(shown.stdout))
        if not records:
            raise errors.NotFound(f"Job not found: {job_id}")
        record = next((r for r in records if r.get("JobId") == job_id), records[0])
        problem = written.stderr
        if any(text in problem for text in _DENIED):
            raise errors.Forbidden(f"Not allowed to read the metadata of job {job_id}")
        if is_unavailable(problem):
            raise unavailable("scontrol write batch_script", problem)
        script = written.stdout if written.ok and written.stdout else None
        return parse_job_metadata(job_id, record, script)

    async def _forgotten_metadata(self, runner: CommandRunner, job_id: str) -> JobMetadata:
        accounted = await self._sacct(runner, "-X", "-j", job_id)
        entries = select_entries(job_id, accounted)
        if not entries:
            raise errors.NotFound(f"Job not found: {job_id}")
        user = _user_key(runner)
        if user is None or entries[0].user != user:
            raise errors.Forbidden(f"Not allowed to read the metadata of job {job_id}")
        return JobMetadata(job_id=job_id)

    async def attach(self, runner: CommandRunner, job_id: str, command: str) -> None:
        """``srun --overlap --jobid=N --nodes=1 --ntasks=1 bash -c COMMAND``, waited for.

        The command is one argv element, interpreted by bash inside the job (as the
        user asked); it must finish within the scheduler timeout. Its standard output
        goes to /dev/null inside the job (the API answers none, so none crosses SSH,
        however much it prints); its standard error feeds the error message.
        """
        job_id = validate_job_id(job_id)
        command = validate_attach_command(command)
        target = job_id
        if "_" in job_id:  # srun --jobid wants the task's own numeric id
            active = [a for a in await self._squeue(runner, "-j", job_id) if a.job.job_id == job_id]
            if not active:
                raise errors.NotFound(f"Job not found: {job_id}")
            target = active[0].raw_id
        argv = ["srun", "--overlap", f"--jobid={target}", "--nodes=1", "--ntasks=1"]
        quiet = ["bash", "-c", 'exec bash -c "$1" >/dev/null', "hpcgate-attach", command]
        result = await self._run(runner, [*argv, *quiet])
        if result.ok:
            return
        stderr = result.stderr
        message = slurm_message(stderr)
        if _INVALID_JOB in stderr or "Invalid job id" in stderr:
            raise errors.NotFound(f"Job not found: {job_id}")
        if any(text in stderr for text in _DENIED):
            raise errors.Forbidden(f"Not allowed to attach to job {job_id}: {message}")
        if is_unavailable(stderr):
            raise unavailable("srun", stderr)
        if re.search(
            r"pending execution|already (?:completing|completed|finished)|has ended"
            r"|not running|Job/step already",
            stderr,
        ):
            raise errors.BadRequest(f"Job {job_id} is not running: {message}")
        if "Unable to create step" in stderr or "Unable to confirm allocation" in stderr:
            raise errors.BadRequest(f"Cannot attach to job {job_id}: {message}")
        raise errors.BadRequest(
            f"The command failed in job {job_id} (exit status {result.exit_status}): {message}"
        )

    # ------------------------------------------------------------ cluster

    async def nodes(self, runner: CommandRunner) -> list[Node]:
        result = await self._run(runner, ["sinfo", "--json"])
        if not result.ok:
            raise unexpected("sinfo", result.exit_status, result.stderr)
        return self._parsed("sinfo", lambda: parse_sinfo_nodes(result.stdout))

    async def partitions(
        self, runner: CommandRunner, *, show_hidden: bool = False
    ) -> list[Partition]:
        argv = ["scontrol", *(["--all"] if show_hidden else []), "show", "partition", "--oneliner"]
        result = await self._run(runner, argv)
        if not result.ok:
            raise unexpected("scontrol show partition", result.exit_status, result.stderr)
        return self._parsed("scontrol", lambda: parse_partitions(result.stdout))

    async def reservations(self, runner: CommandRunner) -> list[Reservation]:
        argv = [*_EPOCH_TIMES, "scontrol", "show", "reservation", "--oneliner"]
        result = await self._run(runner, argv)
        if not result.ok:
            raise unexpected("scontrol show reservation", result.exit_status, result.stderr)
        return self._parsed("scontrol", lambda: parse_reservations(result.stdout))

    async def user_info(self, runner: CommandRunner) -> UserInfo:
        """``id`` for user and groups; the Slurm accounts from ``sacctmgr`` when it answers."""
        result = await self._run(runner, ["id"])
        if not result.ok:
            raise unexpected("id", result.exit_status, result.stderr)
        identity = self._parsed("id", lambda: parse_id(result.stdout))
        accounts = None
        name = identity.user.name
        if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,127}", name):
            argv = ["sacctmgr", "-nP", "show", "user", f"names={name}", "withassoc"]
            found = await self._run(runner, [*argv, "format=Account,DefaultAccount"])
            if found.ok:
                accounts = parse_accounts(found.stdout)
            else:
                log.info("sacctmgr failed for %s: %s", name, slurm_message(found.stderr))
        return UserInfo(
            user=identity.user, group=identity.group, groups=identity.groups, accounts=accounts
        )

    async def ping(self, runner: CommandRunner) -> None:
        """``scontrol ping``: at least one controller (primary or backup) must be UP."""
        result = await self._run(runner, ["scontrol", "ping"])
        text = f"{result.stdout}\n{result.stderr}".strip()
        if not result.ok or not re.search(r"\bis UP\b", result.stdout):
            raise errors.ServiceUnavailable(
                f"The Slurm controller (slurmctld) does not answer: {slurm_message(text)}"
            )

    async def ping_accounting(self, runner: CommandRunner) -> None:
        """``sacct`` for the runner's own jobs of the last minute (an empty answer, ~90
        ms): returns when slurmdbd answers; ``ServiceUnavailable`` naming slurmdbd
        otherwise."""
        argv = [self.settings.sacct_path, "-n", "-X", "-o", "JobID", "-S", "now-60", "-E", "now"]
        result = await self._run(runner, argv)
        if not result.ok:
            raise unavailable("sacct", result.stderr or f"exit status {result.exit_status}")
