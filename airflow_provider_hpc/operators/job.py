"""``HpcSubmitJobOperator``: submit a batch job exactly once, wait for it, show its output."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_hpc.exceptions import HpcError, HpcJobError
from airflow_provider_hpc.hooks.hpc import HpcHook, UsesHpcHook
from airflow_provider_hpc.hooks.models import JobSpec, JobSummary, format_time_limit
from airflow_provider_hpc.identity import TaskIdentity
from airflow_provider_hpc.links.job import (
    XCOM_JOB_ID,
    HpcJobApiLink,
    HpcJobLink,
    push_job_links,
)
from airflow_provider_hpc.operators.ending import JobEnding
from airflow_provider_hpc.operators.lineage import job_lineage, start_lineage
from airflow_provider_hpc.operators.output import report_job_output
from airflow_provider_hpc.operators.resubmission import (
    JobLedger,
    load_ledger,
    save_ledger,
)
from airflow_provider_hpc.operators.submission import (
    LOOKUP_WINDOW,
    STATE_KEY,
    ExactlyOnceSubmission,
)
from airflow_provider_hpc.operators.waiting import DEFAULT_JOB_TIMEOUT, JobWaiting
from airflow_provider_hpc.triggers.job import (
    FAILED,
    SUCCESS,
    TIMEOUT,
)

if TYPE_CHECKING:
    import jinja2
    from airflow.sdk import Context

_JOB_ID = re.compile(r"\d+(_\d+)?")


def default_deferrable() -> bool:
    """``[operators] default_deferrable`` (read when an operator is built, not at import)."""
    return conf.getboolean("operators", "default_deferrable", fallback=False)


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


class HpcSubmitJobOperator(JobEnding, JobWaiting, ExactlyOnceSubmission, UsesHpcHook, BaseOperator):
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
    :param preflight: before submitting, ask the scheduler whether it would accept the
        job (``sbatch --test-only`` through the API) and fail at once, without retries,
        with its reason (bad account, partition, QOS, time limit).
    :param max_resubmits: resubmit a job that the machine ended (NODE_FAIL, BOOT_FAIL,
        PREEMPTED, a requeue Slurm gave up on) up to this many times per task instance,
        without using Airflow retries; 0 turns resubmission off.
    :param oom_memory_factor, oom_max_memory: opt-in: resubmit OUT_OF_MEMORY with the
        memory times the factor, up to the cap (e.g. ``2``, ``"64G"``).
    :param timeout_factor, timeout_max_time_limit: opt-in: resubmit TIMEOUT with the time
        limit times the factor, up to the cap.
    :param inputs, outputs: paths on the cluster the job reads / writes (relative ones
        under ``working_directory``): OpenLineage datasets when its provider is installed.
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
        "inputs",
        "outputs",
    )
    template_ext: Sequence[str] = (".sh", ".bash", ".sbatch", ".slurm")
    template_fields_renderers = {"script": "bash", "env": "json", "extra_options": "json"}
    operator_extra_links = (HpcJobLink(), HpcJobApiLink())
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
        preflight: bool = False,
        max_resubmits: int = 2,
        oom_memory_factor: float | None = None,
        oom_max_memory: str | None = None,
        timeout_factor: float | None = None,
        timeout_max_time_limit: timedelta | int | str | None = None,
        inputs: Sequence[str] | None = None,
        outputs: Sequence[str] | None = None,
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
        self.preflight = preflight
        self.max_resubmits = max_resubmits
        self.oom_memory_factor = oom_memory_factor
        self.oom_max_memory = oom_max_memory
        self.timeout_factor = timeout_factor
        self.timeout_max_time_limit = timeout_max_time_limit
        self.inputs = list(inputs) if inputs is not None else None
        self.outputs = list(outputs) if outputs is not None else None
        _ = self.policy  # validate the resubmission arguments now
        self._job_id: str | None = None
        self._system: str | None = None
        self._ledger: JobLedger | None = None

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
            # a template that rendered empty ("{{ params.account or '' }}") means "not set"
            account=self.account or None,
            partition=self.partition or None,
            reservation=self.reservation or None,
            qos=self.qos or None,
            constraints=self.constraints or None,
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
        ledger = load_ledger(context, identity)
        if self.preflight:
            self._preflight(system, identity, ledger)
        job_id, summary = self._submit(context, system, identity, ledger)
        if not self.wait_for_completion:
            return self._result(job_id, system, summary)
        return self._follow(context, system, job_id, summary, ledger)

    def execute_complete(
        self, context: Context, event: dict[str, Any], ledger: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Resume after :class:`HpcJobTrigger` fired (a new operator instance); ``ledger``
        (the trigger's ``kwargs``) carries the jobs and resubmissions so far."""
        job_id, system = str(event["job_id"]), str(event["system"])
        self._job_id, self._system = job_id, system
        identity = TaskIdentity.from_context(context)
        book = (
            JobLedger.from_dict(ledger, identity.generation)
            if ledger is not None
            else load_ledger(context, identity)
        )
        status = event.get("status")
        if status in (SUCCESS, FAILED):
            state = event.get("state") or "UNKNOWN"
            summary = JobSummary(
                job_id=job_id,
                state=state,
                exit_code=event.get("exit_code"),
                state_reason=event.get("state_reason"),
            )
            return self._ended(context, system, summary, book)
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

    # ------------------------------------------------------------------ lineage

    def get_openlineage_facets_on_start(self) -> Any:
        """OpenLineage START: the ``inputs`` / ``outputs`` datasets (no job yet)."""
        return start_lineage(self)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (when its provider is installed): the jobs as run facets, the
        ``inputs`` / ``outputs`` paths as datasets on the cluster."""
        return job_lineage(self)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        return job_lineage(self)

    # ------------------------------------------------------------------ the steps

    def _preflight(self, system: str, identity: TaskIdentity, ledger: JobLedger) -> None:
        """Ask the scheduler whether it would accept the job (``sbatch --test-only``);
        fail the task at once, without retries, when it would not."""
        spec = self.build_job_spec(identity.job_name(self.job_name))
        if ledger.next_resources:
            spec = spec.model_copy(update=ledger.next_resources)
        started = time.monotonic()
        verdict = self.hook.preflight_job(spec, system=system)
        took = time.monotonic() - started
        if not verdict.valid:
            raise AirflowFailException(
                f"pre-flight on {system}: the scheduler would refuse this job "
                f"({verdict.category or 'other'}): "
                f"{verdict.reason or verdict.message or 'no reason given'}"
            )
        self.log.info("Pre-flight on %s (%.1f s): %s", system, took, verdict.describe())

    def _submit(
        self,
        context: Context,
        system: str,
        identity: TaskIdentity,
        ledger: JobLedger,
        replace: str | None = None,
    ) -> tuple[str, JobSummary | None]:
        """Submit (or re-attach to) the task's job; record it in the ledger and XCom."""
        resources = ledger.next_resources
        job_id, summary = self.submit_or_attach(
            context, system, identity, replace=replace, overrides=resources
        )
        self._job_id = job_id
        ledger.attach(job_id, resources)
        save_ledger(context, ledger)
        ti = context["ti"]
        ti.xcom_push(key=XCOM_JOB_ID, value=job_id)
        push_job_links(ti, self.hook, job_id, system, self.log)
        return job_id, summary


__all__ = [
    "DEFAULT_JOB_TIMEOUT",
    "LOOKUP_WINDOW",
    "STATE_KEY",
    "HpcSubmitJobOperator",
    "default_deferrable",
    "report_job_output",
]
