"""The one rule for seeing other users' jobs, used by every job route and event stream.

``own`` (the default): a caller sees only jobs whose owner is the caller, whatever
the scheduler itself would show; another user's job answers exactly like a job that
does not exist (404), so ids cannot be probed. ``scheduler``: the caller sees what
the scheduler shows the caller (Slurm's ``PrivateData``); the site opts into this.
Changing, cancelling and attaching to a job always stays with its owner: the
scheduler, running as the caller, refuses the rest.
"""

from __future__ import annotations

from typing import Literal

from hpcgate import errors

JobVisibility = Literal["own", "scheduler"]


def may_see(caller: str, owner: str | None, visibility: JobVisibility) -> bool:
    """Whether ``caller`` may see a job owned by ``owner`` (None: owner unknown)."""
    if visibility == "scheduler":
        return True
    return owner is not None and owner == caller


def ensure_visible(caller: str, owner: str | None, visibility: JobVisibility, job_id: str) -> None:
    """``NotFound`` (the same answer as for an unknown job) unless ``caller`` may see it."""
    if not may_see(caller, owner, visibility):
        raise errors.NotFound(f"Job not found: {job_id}")
