"""A job's output in the task log: stdout followed while a worker polls, the tails of
stdout and stderr at the end."""

from __future__ import annotations

import posixpath
from typing import Any

from airflow_provider_hpc.exceptions import HpcError, HpcNotFoundError
from airflow_provider_hpc.hooks.hpc import HpcHook
from airflow_provider_hpc.hooks.models import JobSummary


def _output_paths(hook: HpcHook, system: str, job_id: str) -> tuple[str | None, str | None]:
    """Resolved stdout/stderr paths from the job metadata (None when unknown)."""
    records = hook.get_job_metadata(job_id, system=system)
    if not records:
        return None, None
    meta = records[0]
    workdir = None
    try:
        jobs = hook.get_job(job_id, system=system)
        workdir = jobs[0].working_directory if jobs else None
    except HpcError:
        pass

    def resolve(path: str | None) -> str | None:
        if not path:
            return None
        path = path.replace("%j", job_id).replace("%J", job_id).replace("%A", job_id.split("_")[0])
        if "%" in path.replace("%%", ""):
            return None
        path = path.replace("%%", "%")
        if not path.startswith("/"):
            if not workdir:
                return None
            path = posixpath.join(workdir, path)
        return path

    stdout = resolve(meta.standard_output)
    stderr = resolve(meta.standard_error) or stdout
    return stdout, stderr


class OutputFollower:
    """Stream new stdout lines into the task log while the worker polls (best effort)."""

    CHUNK = 1 << 20
    #: Stop following after this much output (the tail is still logged at the end).
    LIMIT = 16 << 20

    def __init__(self, hook: HpcHook, system: str, job_id: str, log: Any) -> None:
        self.hook, self.system, self.job_id, self.log = hook, system, job_id, log
        self.path: str | None = None
        self.offset = 0
        self.enabled = True
        self.started = False

    def on_poll(self, summary: JobSummary) -> None:
        if summary.state == "PENDING":
            return
        self.follow()

    def follow(self) -> None:
        if not self.enabled:
            return
        try:
            if self.path is None:
                self.path = _output_paths(self.hook, self.system, self.job_id)[0]
                if self.path is None:
                    self.enabled = False
                    return
            size = self.hook.stat(self.path, system=self.system).size
            if size > self.LIMIT:
                self.log.info("Job output is over %d bytes: no longer following it", self.LIMIT)
                self.enabled = False
                return
            while self.offset < size:
                text = self.hook.view(
                    self.path,
                    system=self.system,
                    offset=self.offset,
                    size=min(self.CHUNK, size - self.offset),
                )
                if not text:
                    break
                self.started = True
                self.offset += len(text.encode())
                for line in text.splitlines():
                    self.log.info("[job %s stdout] %s", self.job_id, line)
        except HpcNotFoundError:
            return  # not created yet
        except HpcError as exc:
            self.log.info("Not following the job's output (%s)", exc)
            self.enabled = False


def report_job_output(
    hook: HpcHook,
    system: str,
    job_id: str,
    log: Any,
    *,
    lines: int = 50,
    follower: OutputFollower | None = None,
) -> str:
    """Write the tail of stdout and stderr into the task log; return the stderr tail
    (the stdout tail when both go to one file)."""
    if lines <= 0:
        return ""
    try:
        stdout, stderr = _output_paths(hook, system, job_id)
    except HpcError as exc:
        log.info("No output paths for job %s (%s)", job_id, exc)
        return ""
    tails: dict[str, str] = {}
    for label, path in (("stdout", stdout), ("stderr", stderr)):
        if path is None:
            continue
        if label == "stderr" and path == stdout:
            return tails.get("stdout", "")
        if label == "stdout" and follower is not None and follower.started and follower.enabled:
            follower.follow()
            continue
        try:
            text = hook.tail(path, system=system, lines=lines).content
        except HpcError as exc:
            log.info("Cannot read %s of job %s at %s (%s)", label, job_id, path, exc)
            continue
        tails[label] = text
        if text.strip():
            log.info(
                "--- job %s %s (last %d lines of %s) ---\n%s",
                job_id,
                label,
                lines,
                path,
                text.rstrip(),
            )
    return tails.get("stderr", "")
