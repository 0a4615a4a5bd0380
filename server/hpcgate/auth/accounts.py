"""Account policy: which Unix account a token may act as, decided before any SSH.

A token names an account; the server would log in as it. Before anything per-user
happens (an SSH connection, a stream, an upload), ``AccountPolicy.check`` refuses:

* names that are not POSIX user names, ``root``, the system's ``service_user``;
* names outside ``accounts.allow`` (when set) or inside ``accounts.deny``;
* unknown accounts, and accounts whose uid is below ``min_uid``, above ``max_uid``,
  an overflow id (nobody), or the service identity's uid (an alias of it).

Uids come from a trusted source only, never from the caller's own session (whose
login shell the caller controls): ``getent passwd`` run as the service identity,
or the gateway host's NSS. Lookups are cached (found and unknown names, each with
its TTL, bounded in size) and concurrent lookups of one name share one command.

Every refusal answers the same 403 text, whatever the reason: a token holder learns
nothing about which accounts exist; the reason is logged server-side. A lookup that
fails (the directory does not answer) is a 503, never a pass.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import pwd
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from hpcgate.cluster.credentials import validate_username
from hpcgate.cluster.remote import CommandRunner
from hpcgate.config import SystemSettings
from hpcgate.errors import ApiError, Forbidden, ServiceUnavailable
from hpcgate.operations.metrics import command_source

__all__ = [
    "Account",
    "AccountLookupError",
    "AccountPolicy",
    "AccountSource",
    "CachedSource",
    "LocalSource",
    "ServiceSource",
    "parse_passwd",
]

log = logging.getLogger(__name__)

OVERFLOW_UIDS = frozenset({65534, 65535, 2**32 - 2, 2**32 - 1})
"""nobody/nfsnobody and the "no uid" values: never a person, whatever max_uid says."""

_UID = re.compile(r"[0-9]{1,10}")
_GETENT_NOT_FOUND = 2
_DETAIL_CHARS = 300


@dataclass(frozen=True, slots=True)
class Account:
    """A Unix account as the trusted directory knows it."""

    name: str
    uid: int


class AccountLookupError(Exception):
    """The directory could not be asked (or answered nonsense): neither yes nor no."""


class AccountSource(Protocol):
    """Finds an account by name: ``None`` when it does not exist."""

    async def lookup(self, name: str) -> Account | None: ...


def parse_passwd(output: str, name: str) -> Account:
    """The ``Account`` in ``getent passwd <name>``'s output, parsed strictly.

    Exactly one passwd line, seven fields, the name field equal to ``name`` (so a
    lookup by number, a case-folding directory or an alias cannot stand in for it),
    the uid a plain integer. Anything else raises ``ValueError``.
    """
    text = output[:-1] if output.endswith("\n") else output
    if not text or "\n" in text or "\r" in text:
        raise ValueError("not exactly one line")
    fields = text.split(":")
    if len(fields) != 7:
        raise ValueError(f"{len(fields)} fields instead of 7")
    if fields[0] != name:
        raise ValueError("the name field is not the name asked for")
    if _UID.fullmatch(fields[2]) is None or int(fields[2]) > 2**32 - 1:
        raise ValueError("the uid is not an unsigned 32-bit integer")
    return Account(name, int(fields[2]))


class ServiceSource:
    """``getent passwd <name>`` run as the system's service identity.

    The service identity's login shell is the operator's, never a caller's, so its
    output can be trusted as the cluster's directory. Exit status 2 means unknown.
    """

    def __init__(self, runner: CommandRunner, timeout: float) -> None:
        self._runner = runner
        self._timeout = timeout

    async def lookup(self, name: str) -> Account | None:
        label = command_source.set("accounts")
        try:
            result = await self._runner.run(["getent", "passwd", name], timeout=self._timeout)
        except ApiError as exc:
            raise AccountLookupError(f"getent as {self._runner.username}: {exc.message}") from exc
        finally:
            command_source.reset(label)
        if result.exit_status == _GETENT_NOT_FOUND:
            return None
        if not result.ok:
            raise AccountLookupError(
                f"getent as {self._runner.username} exited {result.exit_status}: "
                f"{result.stderr.strip()[:_DETAIL_CHARS]}"
            )
        try:
            return parse_passwd(result.stdout, name)
        except ValueError as exc:
            raise AccountLookupError(
                f"getent as {self._runner.username} answered no usable passwd line ({exc}): "
                f"{result.stdout[:_DETAIL_CHARS]!r}"
            ) from None


class LocalSource:
    """The gateway host's NSS (``getpwnam``, in a thread: NSS may block on LDAP).

    Only right where the gateway host shares the cluster's account directory.
    """

    async def lookup(self, name: str) -> Account | None:
        try:
            entry = await asyncio.to_thread(pwd.getpwnam, name)
        except KeyError:
            return None
        except OSError as exc:
            raise AccountLookupError(f"getpwnam: {exc}") from exc
        if entry.pw_name != name:
            raise AccountLookupError("getpwnam answered another name")
        return Account(entry.pw_name, entry.pw_uid)


class CachedSource:
    """A source behind a bounded TTL cache; concurrent lookups of a name share one.

    Failed lookups are not cached. A lookup keeps running if its callers go away,
    so its answer still lands in the cache.
    """

    def __init__(
        self,
        source: AccountSource,
        *,
        positive_ttl: float,
        negative_ttl: float,
        size: int,
        concurrency: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._positive_ttl = positive_ttl
        self._negative_ttl = negative_ttl
        self._size = size
        self._clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._cache: OrderedDict[str, tuple[float, Account | None]] = OrderedDict()
        self._pending: dict[str, asyncio.Task[Account | None]] = {}
        self.lookups = 0
        """Lookups that reached the source (for tests and metrics)."""

    def cached(self, name: str) -> tuple[bool, Account | None]:
        """(True, the answer) while a cached answer for ``name`` is fresh, else (False, None)."""
        cached = self._cache.get(name)
        if cached is not None:
            expires, account = cached
            if self._clock() < expires:
                return True, account
            del self._cache[name]
        return False, None

    async def lookup(self, name: str) -> Account | None:
        known, account = self.cached(name)
        if known:
            return account
        task = self._pending.get(name)
        if task is None:
            task = asyncio.create_task(self._fetch(name), name=f"account-lookup-{name}")
            self._pending[name] = task
            task.add_done_callback(functools.partial(self._done, name))
        return await asyncio.shield(task)

    def _done(self, name: str, task: asyncio.Task[Account | None]) -> None:
        if self._pending.get(name) is task:
            del self._pending[name]
        if not task.cancelled():
            task.exception()  # retrieved: callers may all have gone (logged by them)

    async def _fetch(self, name: str) -> Account | None:
        async with self._slots:
            self.lookups += 1
            account = await self._source.lookup(name)
        ttl = self._positive_ttl if account is not None else self._negative_ttl
        if ttl > 0:
            self._cache[name] = (self._clock() + ttl, account)
            self._cache.move_to_end(name)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return account

    async def close(self) -> None:
        """Cancel the lookups still running."""
        tasks = list(self._pending.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class AccountPolicy:
    """One system's account policy (``SystemSettings.accounts``)."""

    def __init__(self, system: SystemSettings, source: CachedSource | None) -> None:
        """``source`` is None for ``accounts.source: none`` (lists only)."""
        self._system = system
        self._settings = system.accounts
        self._source = source
        self._allow = frozenset(self._settings.allow) if self._settings.allow is not None else None
        self._deny = frozenset(self._settings.deny)
        self._service = system.service_user

    @property
    def source(self) -> CachedSource | None:
        return self._source

    async def check(self, username: str) -> None:
        """Return if ``username`` may be served on the system; raise ``Forbidden``
        (any refusal, one text) or ``ServiceUnavailable`` (the directory failed)."""
        reason = self._by_name(username)
        if reason is None and self._source is not None:
            reason = await self._by_uid(username)
        if reason is not None:
            log.info(
                "account refused: system=%s user=%s reason=%s", self._system.name, username, reason
            )
            raise Forbidden(
                f"Account '{username}' is not allowed on system '{self._system.name}': "
                "it is not a user account this gateway serves"
            )

    def _by_name(self, username: str) -> str | None:
        try:
            validate_username(username)
        except Forbidden:
            return "not a POSIX user name"
        if username == "root":
            return "root"
        if username == self._service:
            return "the service identity"
        if username in self._deny:
            return "in accounts.deny"
        if self._allow is not None and username not in self._allow:
            return "not in accounts.allow"
        return None

    async def _by_uid(self, username: str) -> str | None:
        account = await self._lookup(username, username)
        if account is None:
            return "unknown account"
        settings = self._settings
        if account.uid in OVERFLOW_UIDS:
            return f"uid {account.uid} is an overflow id"
        if account.uid < settings.min_uid:
            return f"uid {account.uid} below accounts.min_uid {settings.min_uid}"
        if account.uid > settings.max_uid:
            return f"uid {account.uid} above accounts.max_uid {settings.max_uid}"
        if self._service is not None:
            service = await self._lookup(self._service, username)
            if service is not None and service.uid == account.uid:
                return "shares the service identity's uid"
        return None

    async def _lookup(self, name: str, username: str) -> Account | None:
        """``name``'s account, for a request of ``username`` (503 if the lookup fails:
        the detail, which may hold remote text, goes to the log only)."""
        assert self._source is not None
        known, account = self._source.cached(name)
        if known:
            return account  # no timer to arm for a cached answer (a hot path's cost)
        try:
            async with asyncio.timeout(self._settings.lookup_timeout):
                return await self._source.lookup(name)
        except (AccountLookupError, TimeoutError) as exc:
            detail = str(exc) or f"no answer within {self._settings.lookup_timeout:g} s"
            log.warning(
                "account lookup failed: system=%s user=%s: %s", self._system.name, name, detail
            )
            raise ServiceUnavailable(
                f"Cannot check account '{username}' on system '{self._system.name}' right "
                "now: the account directory did not answer",
                retry_after=5,
            ) from None

    async def close(self) -> None:
        if self._source is not None:
            await self._source.close()


def build_policy(
    system: SystemSettings, service_runner: Callable[[str], CommandRunner]
) -> AccountPolicy:
    """The policy ``system.accounts`` describes; ``service_runner(user)`` runs commands
    as ``user`` (only ever called with the system's service identity)."""
    settings = system.accounts
    kind = settings.resolved_source(system.service_user)
    source: AccountSource
    if kind == "none":
        return AccountPolicy(system, None)
    if kind == "service":
        assert system.service_user is not None  # the configuration checks it
        source = ServiceSource(service_runner(system.service_user), settings.lookup_timeout)
    else:
        source = LocalSource()
    cached = CachedSource(
        source,
        positive_ttl=settings.positive_ttl_seconds,
        negative_ttl=settings.negative_ttl_seconds,
        size=settings.cache_size,
        concurrency=settings.max_concurrent_lookups,
    )
    return AccountPolicy(system, cached)
