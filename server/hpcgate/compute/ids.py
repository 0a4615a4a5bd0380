"""The job-id grammar, written once: the pieces every job-id check is built from.

A leaf module (no imports of its own) so that both the request models and the job
rules (``hpcgate.compute.jobs``) can use it.
"""

from __future__ import annotations

JOB_NUMBER = r"\d{1,20}"
"""A job's number (``123``)."""

JOB_OR_TASK_ID = rf"{JOB_NUMBER}(?:_\d{{1,10}})?"
"""A job (``123``) or an array task (``123_4``): what a dependency may name."""

JOB_ID = rf"{JOB_NUMBER}(?:_\d{{1,10}}|\+\d{{1,5}})?"
"""A job, an array task, or a heterogeneous job's component (``123+1``): what the
job routes accept."""
