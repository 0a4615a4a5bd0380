"""``HpcSubmitJobOperator``: submit a batch job exactly once, wait for it, show its output."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf

from airflow_provider_hpc.exceptions import HpcError, HpcJobError
from airflow_provider_hpc.hooks.hpc import HpcHook, UsesHpcHook
from airflow_provider_hpc.hooks.models import JobSpec, JobSummary, format_time_limit
from airflow_provider_hpc.identity import TaskIdentity
from airflow_provider_hpc.links.job import XCOM_JOB_ID, XCOM_JOB_URL, HpcJobLink
from airflow_provider_hpc.operators.output import OutputFollower, report_job_output
from airflow_provider_hpc.operators.submission import (
    LOOKUP_WINDOW,
    STATE_KEY,
    ExactlyOnceSubmission,
)
from airflow_provider_hpc.triggers.job import FAILED, SUCCESS, TIMEOUT, HpcJobTrigger

if TYPE_CHECKING:
    import jinja2
    from airflow.sdk import Context

DEFAULT_JOB_TIMEOUT = timedelta(days=7)
_JOB_ID = re.compile(r"\d+(_\d+)?")


def default_deferrable() -> bool:
    """``[operators] default_deferrable`` (read when an operator is built, not at import)."""
    return conf.getboolean("operators", "default_deferrable", fallback=False)


def _seconds(value: timedelta | float | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _job_ids(value: Any) -> list[str]:
    """Job ids from ids, ``{"job_id": ...}`` results (XComArg of this operator) or lists of them."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        return _job_ids(value.get("job_id"))
    if isinstance(value, (list, tuple, set)):
        return [job_id for item in value for job_id in _job_ids(item)]
    return [str(value)]


def _dependencies(value: Any) -> list[str] | str | None:
    """A Slurm expression ("afterany:12") passes through; anything else becomes job ids."""
    if isinstance(value, str) and not _JOB_ID.fullmatch(value.strip()):
        return value
    return _job_ids(value) or None


class HpcSubmitJobOperator(ExactlyOnceSubmission, UsesHpcHook, BaseOperator):
    """Submit a Slurm batch job through the API and (by default) wait until it ends.

    Exactly once: the job is recorded in the task state store and named
    ``<job_name>-<task instance hash>-g<try group>``. A retry of the task re-attaches to
    that job (running, pending or COMPLETED) instead of submitting another; it submits anew
    only if the earlier job failed. Clearing the task starts a new job (and cancels an old
    one that still runs). The ``Idempotency-Key`` header lets the server dedupe too.

    :param script: batch script text, or a ``.sh`` / ``.sbatch`` template file in the DAG folder.
    :param script_path: path of a script on the cluster (instead of ``script``).
    :param working_directory: job working directory on the cluster (required by the API).
    :param system: cluster name; default the connection's ``system``.
    :param job_name: prefix of the Slurm job name (the operator appends its identity).
    :param env: environment variables for the job.
    :param time_limit: ``timedelta``, minutes, or Slurm time text.
    :param nodes, tasks, cpus_per_task, memory, partition, account, qos, reservation,
        constraints, array: resources and placement (``array`` as Slurm text, "0-9%2").
    :param dependencies: job ids (or results / XComArgs of other submit tasks) that must
        complete first (``afterok``), or a full Slurm dependency expression.
    :param extra_options: further sbatch long options the server allows (no leading ``--``).
    :param wait_for_completion: False returns right after submission.
    :param deferrable: wait in the triggerer; default ``[operators] default_deferrable``.
    :param poll_interval: seconds between status checks.
    :param job_timeout: give up waiting after this long (default ``execution_timeout`` or
        7 days); the job is cancelled if ``cancel_on_timeout``.
    :param cancel_on_kill: cancel the job when the task is killed (``on_kill`` / trigger kill).
    :param log_tail_lines: lines of stdout/stderr written to the task log at the end.
    """

    template_fields: Sequence[str] = (
        "script",
        "working_directory",
        "system",
        "job_name",
        "env",
        "account",
        "partition",
        "reservation",
        "qos",
        "constraints",
        "time_limit",
        "nodes",
        "tasks",
        "cpus_per_task",
        "memory",
        "array",
        "dependencies",
        "standard_input",
        "standard_output",
        "standard_error",
        "extra_options",
    )
    template_ext: Sequence[str] = (".sh", ".bash", ".sbatch", ".slurm")
    template_fields_renderers = {"script": "bash", "env": "json", "extra_options": "json"}
    operator_extra_links = (HpcJobLink(),)
    ui_color = "#d6e9f8"

    def __init__(
        self,
        *,
        working_directory: str,
        script: str | None = None,
        script_path: str | None = None,
        system: str | None = None,
        hpc_conn_id: str = HpcHook.default_conn_name,
        job_name: str | None = None,
        env: dict[str, Any] | None = None,
        account: str | None = None,
        partition: str | None = None,
        reservation: str | None = None,
        qos: str | None = None,
        constraints: str | None = None,
        time_limit: timedelta | int | str | None = None,
        nodes: int | None = None,
        tasks: int | None = None,
        cpus_per_task: int | None = None,
        memory: str | None = None,
        array: str | None = None,
        dependencies: Any = None,
        standard_input: str | None = None,
        standard_output: str | None = None,
        standard_error: str | None = None,
        extra_options: dict[str, Any] | None = None,
        wait_for_completion: bool = True,
        deferrable: bool | None = None,
        poll_interval: float = 30.0,
        job_timeout: timedelta | float | None = None,
        cancel_on_kill: bool = True,
        cancel_on_timeout: bool = True,
        log_tail_lines: int = 50,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (script is None) == (script_path is None):
            raise ValueError("give exactly one of script and script_path")
        self.script = script
        self.script_path = script_path
        self.working_directory = working_directory
        self.system = system
        self.hpc_conn_id = hpc_conn_id
        self.job_name = job_name
        self.env = env
        self.account = account
        self.partition = partition
        self.reservation = reservation
        self.qos = qos
        self.constraints = constraints
        self.time_limit = time_limit
        self.nodes = nodes
        self.tasks = tasks
        self.cpus_per_task = cpus_per_task
        self.memory = memory
        self.array = array
        self.dependencies = dependencies
        self.standard_input = standard_input
        self.standard_output = standard_output
        self.standard_error = standard_error
        self.extra_options = extra_options
        self.wait_for_completion = wait_for_completion
        self.deferrable = default_deferrable() if deferrable is None else deferrable
        self.poll_interval = poll_interval
        self.job_timeout = job_timeout
        self.cancel_on_kill = cancel_on_kill
        self.cancel_on_timeout = cancel_on_timeout
        self.log_tail_lines = log_tail_lines
        self._job_id: str | None = None
        self._system: str | None = None

    def render_template_fields(
        self, context: Context, jinja_env: jinja2.Environment | None = None
    ) -> None:
        """Render ``script_path`` as an inline template: a remote ``.sh`` path is not a file
        in the DAG folder (``template_ext`` applies to ``script`` only)."""
        super().render_template_fields(context, jinja_env)
        if isinstance(self.script_path, str) and "{" in self.script_path:
            env = jinja_env or self.get_template_env()
            self.script_path = env.from_string(self.script_path).render(**context)

    # ------------------------------------------------------------------ building the job

    def build_job_spec(self, name: str) -> JobSpec:
        """The ``job`` object to submit (after templates are rendered)."""
        return JobSpec(
            name=name,
            working_directory=self.working_directory,
            script=self.script,
            script_path=self.script_path,
            env=self.env,
            account=self.account,
            partition=self.partition,
            reservation=self.reservation,
            qos=self.qos,
            constraints=self.constraints,
            time_limit=format_time_limit(self.time_limit),
            nodes=self.nodes,
            tasks=self.tasks,
            cpus_per_task=self.cpus_per_task,
            memory=str(self.memory) if self.memory is not None else None,
            array=str(self.array) if self.array is not None else None,
            dependencies=_dependencies(self.dependencies),
            standard_input=self.standard_input,
            standard_output=self.standard_output,
            standard_error=self.standard_error,
            extra_options=self.extra_options,
        )

    # ------------------------------------------------------------------ execution

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        system = hook.resolve_system(self.system)
        self._system = system
        identity = TaskIdentity.from_context(context)
        job_id, summary = self.submit_or_attach(context, system, identity)
        self._job_id = job_id
        ti = context["ti"]
        ti.xcom_push(key=XCOM_JOB_ID, value=job_id)
        ti.xcom_push(key=XCOM_JOB_URL, value=hook.get_job_url(job_id, system=system))
        if not self.wait_for_completion:
            return self._result(job_id, system, summary)
        if summary is not None and summary.terminal:
            return self._finish(system, job_id, summary.state, summary.exit_code)
        timeout = self._timeout_seconds()
        if self.deferrable:
            self.defer(
                trigger=HpcJobTrigger(
                    job_id=job_id,
                    system=system,
                    hpc_conn_id=self.hpc_conn_id,
                    deadline=time.time() + timeout,
                    poll_interval=self.poll_interval,
                    cancel_on_kill=self.cancel_on_kill,
                    not_found_until=time.time() + 120,
                ),
                method_name="execute_complete",
            )
        follower = OutputFollower(hook, system, job_id, self.log)
        try:
            summary = hook.wait_for_job(
                job_id,
                system=system,
                poll_interval=self.poll_interval,
                timeout=timeout,
                on_poll=follower.on_poll,
            )
        except HpcJobError as exc:
            self._on_timeout(system, job_id)
            raise exc
        return self._finish(system, job_id, summary.state, summary.exit_code, follower)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after :class:`HpcJobTrigger` fired (a new operator instance)."""
        job_id, system = str(event["job_id"]), str(event["system"])
        self._job_id, self._system = job_id, system
        status = event.get("status")
        if status in (SUCCESS, FAILED):
            return self._finish(
                system, job_id, event.get("state") or "UNKNOWN", event.get("exit_code")
            )
        if status == TIMEOUT:
            self._on_timeout(system, job_id)
            raise HpcJobError(
                f"job {job_id} did not finish in time: {event.get('message')}",
                job_id=job_id,
                state=event.get("state"),
            )
        # ERROR: the status could not be read; the job may still run. A retry re-attaches.
        raise HpcJobError(
            f"lost track of job {job_id}: {event.get('message')}",
            job_id=job_id,
            state=event.get("state"),
        )

    def on_kill(self) -> None:
        """Cancel the job when the running task is killed (the trigger does it while deferred)."""
        if not (self.cancel_on_kill and self._job_id and self._system):
            return
        try:
            # A fresh client: on_kill runs in a signal handler that may have interrupted
            # a request of self.hook's client (and its pool lock).
            self.hook.fresh().cancel_job(self._job_id, system=self._system)
            self.log.info("Cancelled job %s on %s", self._job_id, self._system)
        except HpcError as exc:
            self.log.warning("Could not cancel job %s: %s", self._job_id, exc)

    # ------------------------------------------------------------------ helpers

    def _timeout_seconds(self) -> float:
        return (
            _seconds(self.job_timeout)
            or _seconds(self.execution_timeout)
            or DEFAULT_JOB_TIMEOUT.total_seconds()
        )

    def _on_timeout(self, system: str, job_id: str) -> None:
        if self.cancel_on_timeout:
            self.log.warning("Cancelling job %s: it did not finish in time", job_id)
            self._cancel_quietly(system, job_id)

    def _result(self, job_id: str, system: str, summary: JobSummary | None) -> dict[str, Any]:
        return {
            "job_id": job_id,
            "system": system,
            "state": summary.state if summary else "SUBMITTED",
            "exit_code": summary.exit_code if summary else None,
        }

    def _finish(
        self,
        system: str,
        job_id: str,
        state: str,
        exit_code: int | None,
        follower: OutputFollower | None = None,
    ) -> dict[str, Any]:
        """Write the output tails to the log; return the result or raise for a failed job."""
        stderr_tail = report_job_output(
            self.hook, system, job_id, self.log, lines=self.log_tail_lines, follower=follower
        )
        if state == "COMPLETED":
            self.log.info("Job %s COMPLETED (exit code %s)", job_id, exit_code)
            return self._result(
                job_id, system, JobSummary(job_id=job_id, state=state, exit_code=exit_code)
            )
        message = f"job {job_id} on {system} ended {state} (exit code {exit_code})"
        if stderr_tail:
            message += "\n--- stderr (tail) ---\n" + "\n".join(stderr_tail.splitlines()[-20:])
        raise HpcJobError(message, job_id=job_id, state=state, exit_code=exit_code)


__all__ = [
    "DEFAULT_JOB_TIMEOUT",
    "LOOKUP_WINDOW",
    "STATE_KEY",
    "HpcSubmitJobOperator",
    "default_deferrable",
    "report_job_output",
]
