"""The browser job page: what it shows of one job, and its HTML.

A person opens it from a link (``hpcgate.api.routers.jobpage`` signs and checks the
link); this module gathers the job's state and the tails of its output through the
scheduler interface and a tail reader, both acting as the link's user, and renders
them. Everything shown comes from that user's session (job names and output are theirs
to choose), so every value is HTML-escaped and control characters are dropped; the page
has no script, no form and no external resource, and its Content-Security-Policy says
so.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import posixpath
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from hpcgate import errors
from hpcgate.cluster.remote import CommandRunner
from hpcgate.compute.jobs import TERMINAL_STATES
from hpcgate.compute.scheduler.base import Scheduler
from hpcgate.compute.scheduler.models import Job, JobMetadata

#: Seconds between reloads of a page whose job has not ended (``<meta refresh>``).
REFRESH_SECONDS = 30
#: Array tasks listed at most.
MAX_TASKS = 200

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5rem;max-width:70rem;color:#1b1f24}"
    "h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.5rem}"
    "table{border-collapse:collapse}th,td{text-align:left;padding:.2rem .8rem .2rem 0;"
    "vertical-align:top}th{color:#57606a;font-weight:600}"
    "pre{background:#f6f8fa;border:1px solid #d0d7de;padding:.6rem;overflow:auto;"
    "max-height:32rem;white-space:pre-wrap;word-break:break-all}"
    ".state{font-weight:700}.ok{color:#1a7f37}.bad{color:#cf222e}.run{color:#0969da}"
    ".note{color:#57606a;font-size:.9rem}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

#: Headers of every page and message: no script, no fetch, no framing, not cached,
#: the URL (its signature) never sent on as a referrer.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class OutputPaths:
    """Where the job writes stdout and stderr (None: unknown), as at the link's minting."""

    stdout: str | None = None
    stderr: str | None = None

    def encoded(self) -> str:
        """One unambiguous string to sign (JSON: a newline in a path cannot shift fields)."""
        return json.dumps([self.stdout, self.stderr], separators=(",", ":"))


@dataclass
class OutputTail:
    """The end of one output file, or why it is not shown."""

    path: str | None
    text: str = ""
    note: str | None = None


@dataclass
class JobPage:
    """Everything the page shows."""

    system: str
    user: str
    job: Job
    stdout: OutputTail
    stderr: OutputTail
    expires: int
    rendered_at: float = field(default_factory=time.time)


def output_paths(metadata: JobMetadata, job: Job) -> OutputPaths:
    """The job's output files, resolved like Slurm does for the common patterns; when the
    controller no longer knows them, Slurm's default ``slurm-<id>.out`` in the working
    directory. A path that stays ambiguous (other ``%`` patterns, control characters) is
    left out: the page then says the output is unknown."""

    def resolve(path: str | None) -> str | None:
        if not path:
            return None
        top = job.job_id.split("_")[0]
        path = path.replace("%j", job.job_id).replace("%J", job.job_id).replace("%A", top)
        path = path.replace("%u", job.user or "").replace("%x", job.name)
        if "%" in path.replace("%%", "") or _CONTROL.search(path):
            return None
        path = path.replace("%%", "%")
        if not path.startswith("/"):
            if not job.working_directory.startswith("/"):
                return None
            path = posixpath.join(job.working_directory, path)
        return posixpath.normpath(path)

    stdout = resolve(metadata.standard_output)
    stderr = resolve(metadata.standard_error)
    if stdout is None and stderr is None and metadata.standard_output is None:
        stdout = resolve(f"slurm-{job.job_id}.out")
    return OutputPaths(stdout, stderr or stdout)


async def find_job(
    scheduler: Scheduler, runner: CommandRunner, job_id: str, user: str, cached: Job | None
) -> Job:
    """``user``'s job ``job_id``; ``NotFound`` (as for an unknown id) when it is another's."""
    job = cached if cached is not None else await scheduler.job(runner, job_id)
    if job.user != user:
        raise errors.NotFound(f"Job not found: {job_id}")
    return job


async def gather(
    job: Job,
    paths: OutputPaths,
    read_tail: Callable[[str], Awaitable[str]],
    *,
    lines: int,
) -> tuple[OutputTail, OutputTail]:
    """The tails of stdout and stderr (read once when they are the same file)."""

    async def one(path: str | None) -> OutputTail:
        if path is None:
            return OutputTail(None, note="The output file is not known for this job.")
        if lines == 0:
            return OutputTail(path, note="Output is not shown on this server.")
        try:
            text = await read_tail(path)
        except errors.NotFound:
            note = "No output yet." if job.status.state not in TERMINAL_STATES else "No file."
            return OutputTail(path, note=note)
        except errors.ApiError as exc:
            return OutputTail(path, note=f"The output could not be read: {exc.message}")
        kept = text.splitlines()[-lines:]
        return OutputTail(path, text="\n".join(kept))

    if paths.stderr == paths.stdout:
        out = await one(paths.stdout)
        return out, OutputTail(paths.stderr, note="Written to the same file as stdout.")
    out, err = await asyncio.gather(one(paths.stdout), one(paths.stderr))
    return out, err


class PageCache:
    """Rendered pages for ``ttl`` seconds per link, one render at a time per link.

    A link is public to whoever holds it: however often it is opened, its user's
    scheduler and filesystem are asked at most once per ``ttl``. Bounded in entries.
    """

    def __init__(self, ttl: float, max_entries: int = 1024) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, tuple[float, int, str]] = OrderedDict()
        self._locks: dict[Hashable, asyncio.Lock] = {}

    def _fresh(self, key: Hashable) -> tuple[int, str] | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1], entry[2]

    async def get(
        self, key: Hashable, render: Callable[[], Awaitable[tuple[int, str]]]
    ) -> tuple[int, str]:
        """The cached (status, page) of ``key``, else ``render()``'s, kept for ``ttl``."""
        if (hit := self._fresh(key)) is not None:
            return hit
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if (hit := self._fresh(key)) is not None:
                return hit
            try:
                status, page = await render()
            finally:
                self._locks.pop(key, None)
            if self.ttl > 0:
                self._entries[key] = (time.monotonic() + self.ttl, status, page)
                self._entries.move_to_end(key)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
            return status, page


# ---------------------------------------------------------------------- HTML


def _e(value: object) -> str:
    """Escaped text of any value, without control characters."""
    return html.escape(_CONTROL.sub("", "" if value is None else str(value)), quote=True)


def _when(epoch: int | float | None) -> str:
    if not epoch:
        return "—"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "—"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _state_class(state: str) -> str:
    if state == "COMPLETED":
        return "ok"
    if state in TERMINAL_STATES:
        return "bad"
    return "run"


def _document(title: str, body: str, *, refresh: bool = False) -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta name="referrer" content="no-referrer">{meta}<title>{_e(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _rows(rows: Iterable[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{_e(name)}</th><td>{value}</td></tr>" for name, value in rows)


def _output(title: str, tail: OutputTail) -> str:
    where = f' <span class="note">{_e(tail.path)}</span>' if tail.path else ""
    body = f"<pre>{_e(tail.text)}</pre>" if tail.note is None else ""
    note = f'<p class="note">{_e(tail.note)}</p>' if tail.note else ""
    return f"<h2>{_e(title)}{where}</h2>{note}{body}"


def render_page(page: JobPage) -> str:
    """The job page: state, times, exit code, tasks of an array, output tails."""
    job, status = page.job, page.job.status
    state = status.state
    ended = state in TERMINAL_STATES
    rows = [
        ("State", f'<span class="state {_state_class(state)}">{_e(state)}</span>'),
        ("Reason", _e(status.state_reason or "—")),
        ("Exit code", _e("—" if status.exit_code is None else status.exit_code)),
        ("Signal", _e(status.interrupt_signal)) if status.interrupt_signal else None,
        ("Name", _e(job.name)),
        ("User", _e(job.user)),
        ("Account", _e(job.account or "—")),
        ("Partition", _e(job.partition or "—")),
        ("Nodes", _e(job.nodes or "—")),
        ("Started", _e(_when(job.time.start))),
        ("Ended", _e(_when(job.time.end))),
        ("Elapsed", _e(_duration(job.time.elapsed))),
        ("Time limit", _e("—" if job.time.limit is None else f"{job.time.limit} min")),
        ("Working directory", _e(job.working_directory)),
    ]
    table = _rows(row for row in rows if row is not None)
    tasks = ""
    if job.tasks:
        shown = job.tasks[:MAX_TASKS]
        task_rows = "".join(
            f"<tr><td>{_e(task.id)}</td><td>{_e(task.name)}</td>"
            f'<td class="{_state_class(task.status.state)}">{_e(task.status.state)}</td>'
            f"<td>{_e('—' if task.status.exit_code is None else task.status.exit_code)}</td></tr>"
            for task in shown
        )
        more = (
            f'<p class="note">{len(job.tasks) - MAX_TASKS} more not shown.</p>'
            if len(job.tasks) > MAX_TASKS
            else ""
        )
        tasks = (
            "<h2>Steps and tasks</h2><table><tr><th>Id</th><th>Name</th><th>State</th>"
            f"<th>Exit code</th></tr>{task_rows}</table>{more}"
        )
    refresh = "" if ended else f" It reloads every {REFRESH_SECONDS} s while the job runs."
    footer = (
        f'<p class="note">Read-only view for {_e(page.user)}, as of '
        f"{_e(_when(page.rendered_at))}.{_e(refresh)} "
        f"This link works until {_e(_when(page.expires))}.</p>"
    )
    body = (
        f"<h1>Job {_e(job.job_id)} on {_e(page.system)}</h1><table>{table}</table>{tasks}"
        f"{_output('Standard output', page.stdout)}{_output('Standard error', page.stderr)}"
        f"{footer}"
    )
    return _document(f"Job {job.job_id} on {page.system}: {state}", body, refresh=not ended)


def render_message(title: str, *paragraphs: str) -> str:
    """A page that only explains something (an expired or invalid link, an error)."""
    text = "".join(f"<p>{_e(paragraph)}</p>" for paragraph in paragraphs)
    return _document(title, f"<h1>{_e(title)}</h1>{text}")
