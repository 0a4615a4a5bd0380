"""OpenLineage for the submit operator, when Airflow's OpenLineage provider is installed.

The task's jobs are run facets: ``externalQuery`` (the last job's id, the standard facet
for work done in another system) and ``hpc_job`` (every job the task made: id, state,
reason, action, resources and accounting). The ``inputs`` / ``outputs`` paths on the
cluster are datasets in the namespace ``hpc://<system>``, named by absolute path (the
OpenLineage naming of files: ``<scheme>://<authority>`` plus the path).

The staging operators (upload / download) report what they read and wrote: the cluster
side as above, the worker side as a local file (namespace ``file``, absolute path:
Airflow's naming of a host-less file asset) or as object storage (its namespace and key).

Without the provider (or its client library) :func:`job_lineage` answers None and
nothing is imported.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from typing import Any

import attr

try:
    from airflow.providers.common.compat.openlineage.facet import (
        Dataset,
        ExternalQueryRunFacet,
        RunFacet,
    )
    from airflow.providers.openlineage.extractors import OperatorLineage

    AVAILABLE = True
except ImportError:  # pragma: no cover - the provider is optional
    AVAILABLE = False

_SCHEMA = "https://github.com/hpcgate/hpcgate/blob/main/docs/HpcJobRunFacet.json"


if AVAILABLE:

    @attr.define
    class HpcJobRunFacet(RunFacet):
        """The jobs one task made on an HPC system (``run.facets.hpc_job``)."""

        system: str
        jobs: list[dict[str, Any]]

        @staticmethod
        def _get_schema() -> str:
            return _SCHEMA


def namespace(system: str) -> str:
    """The OpenLineage namespace of paths on ``system``."""
    return f"hpc://{system}"


def datasets(system: str, paths: Sequence[str] | None, workdir: str | None) -> list[Any]:
    """``Dataset`` s for cluster ``paths`` (relative ones under ``workdir``)."""
    found = []
    for path in paths or ():
        if not path.startswith("/") and workdir:
            path = posixpath.join(workdir, path)
        found.append(Dataset(namespace=namespace(system), name=posixpath.normpath(path)))
    return found


def start_lineage(operator: Any) -> Any:
    """``OperatorLineage`` when the task starts (before ``execute``): the datasets, no jobs
    yet. Only the operator's own (rendered) ``system``: the START event is built in a
    forked child, which must not look the connection up through the task's supervisor
    channel (None without it; the COMPLETE event has the datasets then)."""
    if not AVAILABLE:
        return None
    system = getattr(operator, "_system", None) or getattr(operator, "system", None)
    if not system:
        return None
    workdir = getattr(operator, "working_directory", None)
    return OperatorLineage(
        inputs=datasets(system, getattr(operator, "inputs", None), workdir),
        outputs=datasets(system, getattr(operator, "outputs", None), workdir),
    )


def job_lineage(operator: Any) -> Any:
    """``OperatorLineage`` of a submit operator after its task ran (None without the
    OpenLineage provider, or before the operator knew its system)."""
    if not AVAILABLE:
        return None
    system = getattr(operator, "_system", None)
    if not system:
        return None
    ledger = getattr(operator, "_ledger", None)
    jobs = [dict(job) for job in ledger.jobs] if ledger is not None else []
    job_id = getattr(operator, "_job_id", None)
    run_facets: dict[str, Any] = {"hpc_job": HpcJobRunFacet(system=system, jobs=jobs)}
    if job_id:
        run_facets["externalQuery"] = ExternalQueryRunFacet(
            externalQueryId=str(job_id), source=namespace(system)
        )
    workdir = getattr(operator, "working_directory", None)
    return OperatorLineage(
        inputs=datasets(system, getattr(operator, "inputs", None), workdir),
        outputs=datasets(system, getattr(operator, "outputs", None), workdir),
        run_facets=run_facets,
    )


def _dataset(path: Any) -> Any:
    """A ``Dataset`` for ``(system, path)`` on a cluster, else a worker path or URL /
    ``ObjectStoragePath``."""
    if isinstance(path, tuple):
        system, remote = path
        return Dataset(namespace=namespace(system), name=posixpath.normpath(remote))
    from airflow.sdk import ObjectStoragePath

    text = str(path)
    if not isinstance(path, ObjectStoragePath) and "://" not in text:
        return Dataset(namespace="file", name=os.path.abspath(text))
    storage = path if isinstance(path, ObjectStoragePath) else ObjectStoragePath(text)
    if storage.protocol in ("", "file", "local"):
        return Dataset(namespace="file", name=os.path.abspath(str(storage.path)))
    if storage.protocol == "hpc":  # "system/abs/path"
        system, _, remote = str(storage.path).partition("/")
        return _dataset((system, "/" + remote))
    return Dataset(namespace=storage.namespace, name=storage.key)


def staged(read: Any, written: Any) -> Any:
    """``OperatorLineage`` of one staging transfer (None without the provider): ``read``
    and ``written`` are ``(system, path)`` on a cluster, or a worker path / URL."""
    if not AVAILABLE:
        return None
    return OperatorLineage(inputs=[_dataset(read)], outputs=[_dataset(written)])
