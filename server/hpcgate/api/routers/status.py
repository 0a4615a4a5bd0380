"""/status: the systems, their health, and what the scheduler says about them.

A system whose ``required_scopes`` the token lacks is not listed: a caller learns of
the systems they may use, no more. ``/status/liveness/`` (no token) names only the
systems that require no scope. The per-system routes check scopes and the account
policy through ``system_context``.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter

from hpcgate.api.dependencies import PrincipalDep, ServicesDep, SystemDep
from hpcgate.auth.tokens import Principal
from hpcgate.compute.scheduler.models import (
    NodesResponse,
    PartitionsResponse,
    ReservationsResponse,
    UserInfo,
)
from hpcgate.config import SystemSettings
from hpcgate.operations.health import ServiceHealth
from hpcgate.services import Services
from hpcgate.wire import WireModel

router = APIRouter(prefix="/status", tags=["status"])


class SshTimeouts(WireModel):
    connection: float
    command_execution: float
    idle_timeout: float
    keep_alive: float


class SshInfo(WireModel):
    host: str
    port: int
    max_clients: int
    timeout: SshTimeouts


class SchedulerInfo(WireModel):
    type: str
    version: str
    connection_mode: str = "ssh"
    timeout: float


class FileSystemInfo(WireModel):
    path: str
    data_type: str
    default_work_dir: bool


class DataOperation(WireModel):
    max_ops_file_size: int | None = None
    datatransfer_jobs_directives: list[str] = []


class System(WireModel):
    name: str
    ssh: SshInfo
    scheduler: SchedulerInfo
    services_health: list[ServiceHealth] | None
    last_health_check: datetime | None
    file_systems: list[FileSystemInfo]
    data_operation: DataOperation


class SystemsResponse(WireModel):
    systems: list[System]


class Liveness(WireModel):
    healthcheck_runs: dict[str, datetime]
    last_update: int | None


def _describe(system: SystemSettings, services: Services) -> System:
    ssh, scheduler = system.ssh, system.scheduler
    partition = scheduler.transfer_partition
    return System(
        name=system.name,
        ssh=SshInfo(
            host=ssh.host,
            port=ssh.port,
            max_clients=ssh.max_channels_per_connection,
            timeout=SshTimeouts(
                connection=ssh.connect_timeout,
                command_execution=ssh.command_timeout,
                idle_timeout=ssh.idle_timeout,
                keep_alive=ssh.keepalive_interval,
            ),
        ),
        scheduler=SchedulerInfo(
            type=scheduler.type,
            version=services.scheduler_versions.get(system.name, "unknown"),
            timeout=scheduler.timeout,
        ),
        services_health=services.health.health(system.name),
        last_health_check=services.health.last_run(system.name),
        file_systems=[
            FileSystemInfo(
                path=fs.path, data_type=fs.data_type, default_work_dir=fs.default_work_dir
            )
            for fs in system.filesystems
        ],
        data_operation=DataOperation(
            max_ops_file_size=system.filesystem_limits.max_ops_file_size,
            datatransfer_jobs_directives=[f"--partition={partition}"] if partition else [],
        ),
    )


def _visible(system: SystemSettings, principal: Principal | None) -> bool:
    """Whether ``system`` may be named to this caller (None: no token)."""
    if principal is None:
        return not system.required_scopes
    return all(scope in principal.scopes for scope in system.required_scopes)


@router.get("/systems", response_model=SystemsResponse, response_model_exclude_none=False)
async def get_systems(principal: PrincipalDep, services: ServicesDep) -> SystemsResponse:
    """The systems whose scopes the token holds, with their last health checks."""
    return SystemsResponse(
        systems=[
            _describe(s, services) for s in services.settings.systems if _visible(s, principal)
        ]
    )


@router.get("/liveness/", response_model=Liveness)
async def get_liveness(services: ServicesDep) -> Liveness:
    """Unauthenticated: the server runs; when each system needing no scope was last
    health-checked (``lastUpdate``: the latest check of any system)."""
    runs = services.health.runs
    last = max(runs.values(), default=None)
    shown = {
        s.name: runs[s.name]
        for s in services.settings.systems
        if s.name in runs and _visible(s, None)
    }
    return Liveness(
        healthcheck_runs=shown, last_update=int(last.timestamp() * 1000) if last else None
    )


@router.get("/{system_name}/nodes", response_model=NodesResponse)
async def get_nodes(ctx: SystemDep) -> NodesResponse:
    ctx.ensure_healthy("scheduler")
    return NodesResponse(nodes=await ctx.scheduler.nodes(ctx.runner))


@router.get("/{system_name}/partitions", response_model=PartitionsResponse)
async def get_partitions(ctx: SystemDep) -> PartitionsResponse:
    ctx.ensure_healthy("scheduler")
    return PartitionsResponse(partitions=await ctx.scheduler.partitions(ctx.runner))


@router.get("/{system_name}/reservations", response_model=ReservationsResponse)
async def get_reservations(ctx: SystemDep) -> ReservationsResponse:
    ctx.ensure_healthy("scheduler")
    return ReservationsResponse(reservations=await ctx.scheduler.reservations(ctx.runner))


@router.get("/{system_name}/userinfo", response_model=UserInfo)
async def get_userinfo(ctx: SystemDep) -> UserInfo:
    ctx.ensure_healthy("ssh")
    return await ctx.scheduler.user_info(ctx.runner)
