"""FastAPI dependencies: who is calling, on which system, with which services.

The one way routes reach the long-lived objects of ``hpcgate.services.Services``: the
caller's ``Filesystem`` on a system, the scheduler, the runner, the transfer service.
Routes get interfaces from here; they never build a backend themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hpcgate.auth.tokens import Principal, require_scopes
from hpcgate.cluster.remote import CommandRunner
from hpcgate.compute.scheduler.base import Scheduler
from hpcgate.config import SystemSettings
from hpcgate.errors import NotFound, ServiceUnavailable, Unauthorized
from hpcgate.filesystem.base import Filesystem
from hpcgate.operations.health import ServiceType
from hpcgate.services import Services
from hpcgate.transfer.service import TransferService

_bearer = HTTPBearer(auto_error=False, description="an OIDC access token (JWT)")


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def _services(request: Request) -> Services:
    # dependencies are async: FastAPI runs a plain ``def`` one in a worker thread,
    # which cost a third of the CPU of a small request (bench/README.md)
    return get_services(request)


ServicesDep = Annotated[Services, Depends(_services)]


async def authenticated(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from a valid bearer token (401 otherwise).

    The edge (``hpcgate.api.edge``) has validated the token already and left
    the principal in the request state; without it (an app served without the
    middleware) the token is validated here.
    """
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        if credentials is None:
            raise Unauthorized("Missing bearer token (Authorization: Bearer <JWT>)")
        principal = await services.tokens.validate(credentials.credentials)
    request.state.user = principal.username
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticated)]


@dataclass(frozen=True)
class SystemContext:
    """One request's view of a system: its settings, the caller and the services."""

    system: SystemSettings
    principal: Principal
    services: Services

    @property
    def name(self) -> str:
        return self.system.name

    @property
    def username(self) -> str:
        return self.principal.username

    @property
    def runner(self) -> CommandRunner:
        """Runs commands on the system as the caller."""
        return self.services.pool.runner(self.system.name, self.principal.username)

    @property
    def scheduler(self) -> Scheduler:
        return self.services.schedulers[self.system.name]

    def filesystem(self) -> Filesystem:
        """The caller's filesystem on the system."""
        return self.services.filesystem(self.system.name, self.principal.username)

    def ensure_healthy(self, service: ServiceType) -> None:
        self.services.health.ensure_healthy(self.system.name, service)


async def system_context(
    system_name: str, request: Request, principal: PrincipalDep, services: ServicesDep
) -> SystemContext:
    """Resolve ``{system_name}`` (case-insensitive) and check the caller may use it:
    the token's scopes, then the account policy (``hpcgate.auth.accounts``), before any
    SSH connection, stream or upload is made for the caller."""
    system = services.settings.system(system_name)
    if system is None:
        raise NotFound(f"System not found: '{system_name}'")
    require_scopes(principal, system.required_scopes)
    request.state.system = system.name
    await services.accounts[system.name].check(principal.username)
    return SystemContext(system=system, principal=principal, services=services)


SystemDep = Annotated[SystemContext, Depends(system_context)]


async def get_filesystem(ctx: SystemDep) -> Filesystem:
    """The caller's filesystem on the system (503 while the filesystems are unhealthy)."""
    ctx.ensure_healthy("filesystem")
    return ctx.filesystem()


FilesystemDep = Annotated[Filesystem, Depends(get_filesystem)]


async def get_transfers(services: ServicesDep) -> TransferService:
    """The application's transfer service (``Services.transfers``)."""
    if services.transfers is None:
        raise ServiceUnavailable("Transfers are not available on this server")
    return services.transfers


TransfersDep = Annotated[TransferService, Depends(get_transfers)]
