"""The caller's working directory on a system, asked of the API (for DAG defaults).

A DAG whose ``workdir`` param is left empty resolves it at run time: the user the
connection's token stands for (``status/{system}/userinfo``) and the system's
filesystems (``status/systems``): the first of ``<scratch>/<user>``, ``<default work
dir>/<user>``, ``<other filesystem>/<user>`` that exists. Cached per process.
"""

from __future__ import annotations

import functools

from airflow_provider_hpc.exceptions import HpcError, HpcNotFoundError
from airflow_provider_hpc.hooks import api
from airflow_provider_hpc.hooks.hpc import HpcHook
from airflow_provider_hpc.hooks.models import WireModel


class _Named(WireModel):
    name: str


class _UserInfo(WireModel):
    user: _Named


def hpc_workdir(
    workdir: str | None, system: str | None = None, conn_id: str = "hpc_default"
) -> str:
    """``workdir`` if given, else :func:`default_workdir` (a Jinja macro for DAGs)."""
    return workdir.rstrip("/") if workdir else default_workdir(conn_id, system or None)


@functools.lru_cache(maxsize=32)
def default_workdir(conn_id: str = "hpc_default", system: str | None = None) -> str:
    """The caller's directory on ``system`` (see the module docstring)."""
    hook = HpcHook(conn_id)
    try:
        name = hook.resolve_system(system)
        call = api.ApiCall(
            "GET",
            f"/status/{api._seg(name)}/userinfo",
            lambda r: _UserInfo.model_validate(r.json()).user.name,
        )
        user: str = hook._run(call)
        filesystems = [
            fs for s in hook.list_systems() if s.name == name for fs in s.file_systems or []
        ]
        ranked = sorted(
            filesystems,
            key=lambda fs: (fs.data_type != "scratch", not fs.default_work_dir),
        )
        for fs in ranked:
            candidate = f"{fs.path.rstrip('/')}/{user}"
            try:
                hook.stat(candidate, system=name, dereference=True)
            except HpcNotFoundError:
                continue
            return candidate
        raise HpcError(
            f"no directory of {user} on {name} among {[fs.path for fs in filesystems]}: "
            "set the DAG's workdir param"
        )
    finally:
        hook.close()
