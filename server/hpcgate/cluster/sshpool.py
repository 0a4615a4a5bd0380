"""Pooled SSH connections to the clusters, one per (system, user), reused across requests.

Every request that touches a cluster goes through ``SshPool``: ``runner()`` for
commands (a ``hpcgate.cluster.remote.CommandRunner``) and ``sftp()`` for file access.

* One connection per (system, username), opened on first use; concurrent first uses
  share one connection attempt. The identity comes from the system's
  ``SshIdentityProvider`` at each connect, so renewed certificates are used by new
  connections while open ones stay valid (sshd checks certificates only at login).
* Exec channels on a connection are bounded by ``ssh.max_channels_per_connection``
  (an ``asyncio.Semaphore``); keep it below sshd's ``MaxSessions``. The one SFTP
  channel per connection comes on top of that bound.
* Host keys are always verified against ``ssh.known_hosts``; no agent, no
  ``~/.ssh/config``, public-key authentication only.
* A connection found dead when a channel is opened is replaced once, transparently;
  a command that had started when the connection dropped is never re-run.
* A background reaper (``start()``/``close()``) closes connections idle for
  ``ssh.idle_timeout``.

Errors: ``ClusterUnreachable`` (424) for network, host-key and protocol failures;
``Forbidden`` (403) when sshd refuses the login: the user has no account on the
cluster or the cluster does not accept the credentials, which a retry will not fix.
``RequestTimeout`` (408) when a command overruns; ``OutputTooLarge`` (502) when it
prints more than ``ssh.max_output_bytes`` (see ``hpcgate.cluster.output``: both streams are
read in bounded chunks, never whole). Either way the remote command is stopped: SIGTERM
to its process group (srun forwards it to its job step), SIGKILL after a short grace.

Here: leasing, connecting, reaping and the SFTP session of the pool; one connection
is ``hpcgate.cluster.connection``, running one command on it ``hpcgate.cluster.commands``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shlex
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import asyncssh

from hpcgate import errors
from hpcgate.cluster.coalescing import CoalescingConnector
from hpcgate.cluster.commands import execute
from hpcgate.cluster.connection import (
    CLOSE_GRACE_SECONDS,
    LOST,
    ChannelNotOpened,
    Client,
    Connection,
    unreachable,
)
from hpcgate.cluster.credentials import (
    SshIdentityProvider,
    identity_provider_for,
    validate_username,
)
from hpcgate.cluster.output import OutputLimits
from hpcgate.cluster.remote import CommandResult, CommandRunner
from hpcgate.config import Settings, SystemSettings

log = logging.getLogger(__name__)
_COALESCING = CoalescingConnector()
_Key = tuple[str, str]

CommandObserver = Callable[[str, Sequence[str], float, "int | None"], None]


class SshPool:
    """SSH connections to every configured system, one per (system, username).

    Call ``await start()`` once the event loop runs (starts the idle reaper) and
    ``await close()`` at shutdown.
    """

    def __init__(
        self,
        systems: Settings | Sequence[SystemSettings],
        identities: Mapping[str, SshIdentityProvider] | None = None,
        *,
        on_command: CommandObserver | None = None,
    ) -> None:
        """``on_command(system, argv, seconds, exit_status)`` is called after every
        command (``exit_status`` None when it raised); metrics use it."""
        self.on_command = on_command
        listed = systems.systems if isinstance(systems, Settings) else list(systems)
        self._systems = {system.name.lower(): system for system in listed}
        given = {name.lower(): provider for name, provider in (identities or {}).items()}
        self._identities: dict[str, SshIdentityProvider] = {
            key: given.get(key) or identity_provider_for(system.credentials)
            for key, system in self._systems.items()
        }
        self._connections: dict[_Key, Connection] = {}
        self._connecting: dict[_Key, asyncio.Task[Connection]] = {}
        self._connects: Counter[str] = Counter()
        self._background: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    # -- public API ---------------------------------------------------------------

    def runner(self, system: str, username: str) -> CommandRunner:
        """A ``CommandRunner`` for ``username`` on ``system`` (cheap; make one per request)."""
        return _PooledRunner(self, self._system(system), validate_username(username))

    @asynccontextmanager
    async def sftp(self, system: str, username: str) -> AsyncIterator[asyncssh.SFTPClient]:
        """The SFTP session of ``username``'s connection to ``system``.

        There is one SFTP session per connection, opened lazily and shared: concurrent
        users of this context manager multiplex their SFTP requests over that one
        channel (asyncssh matches replies by request id), so do not ``exit()`` it.
        ``asyncssh.SFTPError``s from the body pass through; a dropped connection
        becomes ``ClusterUnreachable``.
        """
        settings = self._system(system)
        validate_username(username)
        entry, client = await self._open_sftp(settings, username)
        try:
            yield client
        except LOST as exc:
            raise unreachable(settings, "the connection was lost") from exc
        finally:
            self._release(entry)

    async def start(self) -> None:
        """Start the background task that closes idle connections."""
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name="sshpool-reaper")

    async def close(self) -> None:
        """Stop the reaper and close every connection."""
        self._closed = True
        tasks: list[asyncio.Task[Any]] = [*self._connecting.values(), *self._background]
        if self._reaper is not None:
            tasks.append(self._reaper)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        entries = list(self._connections.values())
        self._connections.clear()
        for entry in entries:
            entry.close()
        closing = [entry.conn.wait_closed() for entry in entries if entry.conn is not None]
        with suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*closing, return_exceptions=True), CLOSE_GRACE_SECONDS
            )

    def stats(self) -> dict[str, dict[str, int]]:
        """Per system: connections open and opening, channels in use, SFTP sessions,
        and connections opened since start."""
        result = {
            system.name: {
                "connections": 0,
                "connecting": 0,
                "channels_in_use": 0,
                "sftp_sessions": 0,
                "connects_total": self._connects[key],
            }
            for key, system in self._systems.items()
        }
        for (key, _user), entry in self._connections.items():
            row = result[self._systems[key].name]
            row["connections"] += 1
            row["channels_in_use"] += entry.channels_in_use
            row["sftp_sessions"] += int(entry.has_sftp)
        for key, _user in self._connecting:
            result[self._systems[key].name]["connecting"] += 1
        return result

    # -- connections --------------------------------------------------------------

    def _system(self, name: str) -> SystemSettings:
        system = self._systems.get(name.lower())
        if system is None:
            raise errors.NotFound(f"System '{name}' does not exist")
        return system

    async def _lease(self, system: SystemSettings, username: str) -> Connection:
        """A live connection for the user, with a lease that keeps the reaper off it."""
        key = (system.name.lower(), username)
        fresh = False
        while True:
            if self._closed:
                raise errors.ServiceUnavailable("The server is shutting down")
            entry = self._connections.get(key)
            if entry is not None and entry.usable:
                entry.leases += 1
                return entry
            if fresh:
                raise unreachable(system, "the connection closed right after login")
            task = self._connecting.get(key)
            if task is None:
                task = asyncio.create_task(self._connect(system, username))
                self._connecting[key] = task
                task.add_done_callback(functools.partial(self._connect_done, key))
            await asyncio.shield(task)
            fresh = True

    def _connect_done(self, key: _Key, task: asyncio.Task[Connection]) -> None:
        if self._connecting.get(key) is task:
            del self._connecting[key]
        if not task.cancelled():
            task.exception()  # retrieved here so an unawaited failure is not reported

    async def _connect(self, system: SystemSettings, username: str) -> Connection:
        ssh = system.ssh
        identity = await self._identities[system.name.lower()].identity(username)
        entry = Connection(system, username, identity)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            conn, _ = await asyncssh.create_connection(
                lambda: Client(lambda exc: self._lost(entry, exc)),
                ssh.host,
                ssh.port,
                username=username,
                client_keys=identity.client_keys(),
                known_hosts=str(ssh.known_hosts),
                preferred_auth="publickey",
                agent_path=None,
                config=None,
                x509_trusted_certs=None,
                x509_trusted_cert_paths=None,
                connect_timeout=ssh.connect_timeout,
                keepalive_interval=ssh.keepalive_interval,
                encryption_algs=ssh.ciphers,
                # packets written once per loop pass (half the syscalls; see the module)
                tunnel=_COALESCING,
            )
        except asyncssh.PermissionDenied:
            log.warning("SSH login refused: system=%s user=%s", system.name, username)
            raise errors.Forbidden(
                f"System {system.name} refused the SSH login of user {username}: "
                "the user has no account there or its credentials are not accepted"
            ) from None
        except asyncssh.HostKeyNotVerifiable as exc:
            log.error("SSH host key not verified: system=%s: %s", system.name, exc.reason)
            raise unreachable(system, f"host key not verifiable ({exc.reason})") from None
        except asyncssh.DisconnectError as exc:
            raise unreachable(system, exc.reason or type(exc).__name__) from None
        except TimeoutError:
            raise unreachable(system, f"no connection within {ssh.connect_timeout:g} s") from None
        except OSError as exc:
            log.warning("SSH connect failed: system=%s: %s", system.name, exc)
            raise unreachable(system, exc.strerror or type(exc).__name__) from None
        except asyncssh.Error as exc:
            raise unreachable(system, exc.reason or type(exc).__name__) from None
        entry.conn = conn
        self._connects[system.name.lower()] += 1
        if self._closed:
            entry.close()
        else:
            self._connections[(system.name.lower(), username)] = entry
        log.info(
            "SSH connection opened: system=%s user=%s in %.0f ms",
            system.name,
            username,
            (loop.time() - started) * 1000,
        )
        return entry

    def _lost(self, entry: Connection, exc: Exception | None) -> None:
        key = (entry.system.name.lower(), entry.username)
        if self._connections.get(key) is entry:
            del self._connections[key]
        if exc is not None and not entry.closed:
            log.warning(
                "SSH connection lost: system=%s user=%s: %s",
                entry.system.name,
                entry.username,
                exc,
            )
        entry.closed = True

    def _discard(self, entry: Connection, why: str) -> None:
        key = (entry.system.name.lower(), entry.username)
        if self._connections.get(key) is entry:
            del self._connections[key]
        if not entry.closed:
            log.info(
                "SSH connection closed (%s): system=%s user=%s",
                why,
                entry.system.name,
                entry.username,
            )
        entry.close()

    def _release(self, entry: Connection) -> None:
        entry.leases -= 1
        entry.last_used = asyncio.get_running_loop().time()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _open_sftp(
        self, system: SystemSettings, username: str
    ) -> tuple[Connection, asyncssh.SFTPClient]:
        for attempt in range(2):
            entry = await self._lease(system, username)
            try:
                async with asyncio.timeout(system.ssh.connect_timeout):
                    return entry, await entry.sftp(self._spawn)
            except ChannelNotOpened as exc:
                self._release(entry)
                self._discard(entry, "dead at SFTP open")
                if attempt:
                    raise unreachable(system, "the connection was lost") from exc
            except TimeoutError:
                self._release(entry)
                raise unreachable(system, "the SFTP session did not open in time") from None
            except (asyncssh.Error, OSError) as exc:
                self._release(entry)
                raise unreachable(system, f"cannot start SFTP ({exc})") from None
            except BaseException:
                self._release(entry)
                raise
        raise AssertionError("unreachable")

    async def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        shortest = min((s.ssh.idle_timeout for s in self._systems.values()), default=300.0)
        interval = min(max(shortest / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for entry in list(self._connections.values()):
                idle = now - entry.last_used
                if entry.leases == 0 and entry.channels_in_use == 0:
                    if idle >= entry.system.ssh.idle_timeout:
                        self._discard(entry, f"idle {idle:.0f} s")

    # -- commands -----------------------------------------------------------------

    async def _run(
        self,
        system: SystemSettings,
        username: str,
        argv: Sequence[str],
        stdin: str | bytes | None,
        timeout: float | None,
        max_output: int | None = None,
    ) -> CommandResult:
        if isinstance(argv, str) or not argv:
            raise ValueError("argv must be a non-empty sequence of arguments")
        if max_output is not None and max_output < 1:
            raise ValueError("max_output must be a positive number of bytes")
        command = shlex.join(argv)
        ssh = system.ssh
        limits = OutputLimits(
            max_output=ssh.max_output_bytes if max_output is None else max_output,
            max_stderr=ssh.max_stderr_bytes,
            max_drain=ssh.max_output_bytes,
            output_setting="ssh.max_output_bytes" if max_output is None else "this command's cap",
        )
        data = stdin.encode() if isinstance(stdin, str) else stdin
        data = data or None  # empty input: the command sees EOF at once
        limit = system.ssh.command_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                for attempt in range(2):
                    entry = await self._lease(system, username)
                    try:
                        return await execute(entry, command, data, limits, self._spawn)
                    except ChannelNotOpened as exc:
                        self._discard(entry, "dead at channel open")
                        if attempt:
                            raise unreachable(system, "the connection was lost") from exc
                    finally:
                        self._release(entry)
        except TimeoutError:
            raise errors.RequestTimeout(f"Command timed out after {limit:g} s") from None
        raise AssertionError("unreachable")


class _PooledRunner:
    """``CommandRunner`` for one user on one system, backed by the pool."""

    def __init__(self, pool: SshPool, system: SystemSettings, username: str) -> None:
        self._pool = pool
        self._system = system
        self._username = username

    @property
    def username(self) -> str:
        return self._username

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | bytes | None = None,
        timeout: float | None = None,
        max_output: int | None = None,
    ) -> CommandResult:
        """Run ``argv`` (quoted with ``shlex.join``) and collect its output."""
        pool, system, user = self._pool, self._system, self._username
        observer = pool.on_command
        if observer is None:
            return await pool._run(system, user, argv, stdin, timeout, max_output)
        started = time.perf_counter()
        status: int | None = None
        try:
            result = await pool._run(system, user, argv, stdin, timeout, max_output)
            status = result.exit_status
            return result
        finally:
            observer(self._system.name, argv, time.perf_counter() - started, status)
