"""What the SQLite and Redis round coordinators share (see ``lease``).

Both hold or seek one lease per system every tick, publish the follower's interest,
read the followers' interests while leading, pass rounds on and fall back to
polling alone while their store fails. Only the store differs: a subclass says how to
hold the lease, publish an interest, read the others' and hear rounds and wake-ups.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable

from hpcgate.compute.watcher.lease import (
    Interest,
    RemoteInterest,
    WatcherPeer,
    interest_from_json,
    interest_json,
    merge_interests,
)
from hpcgate.compute.watcher.results import RoundResult

log = logging.getLogger(__name__)


class SharedCoordinator(ABC):
    """One system's lease and round sharing through a store other processes reach."""

    member = "replica"
    """What the processes sharing the store are called in the log."""
    store_errors: tuple[type[Exception], ...] = ()
    """The store's failures: logged, and this process polls for itself meanwhile."""

    def __init__(self, *, system: str, lease_seconds: float) -> None:
        self.replica = uuid.uuid4().hex
        self._system = system
        self._lease = max(1.0, lease_seconds)
        self._tick = self._lease / 4
        self._leading = True  # until the store says otherwise
        self._gen = 0
        self._urgent = False
        self._poke = asyncio.Event()
        self._peer: WatcherPeer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._down = False

    # ------------------------------------------------------------ the store's side

    @abstractmethod
    def _where(self) -> str:
        """The store, for the log (never a secret)."""

    @abstractmethod
    async def _hold(self) -> bool:
        """Hold or seek the lease: whether this process holds it."""

    @abstractmethod
    async def _publish(self, text: str, *, urgent: bool) -> None:
        """Store this follower's interest ``text``; ``urgent``: ask for a round now."""

    @abstractmethod
    async def _interest_texts(self) -> Iterable[tuple[str, str | bytes | None]]:
        """The other processes' unexpired interests: (process id, text)."""

    @abstractmethod
    async def _listen(self) -> None:
        """Hear rounds (following) and wake-ups (leading) until cancelled."""

    # ------------------------------------------------------------ the watcher's side

    def leads(self) -> bool:
        return self._leading

    def start(self, peer: WatcherPeer) -> None:
        self._peer = peer
        self._tasks = [
            asyncio.create_task(self._keep(), name=f"watcher-lease-{self._system}"),
            asyncio.create_task(self._listen(), name=f"watcher-share-{self._system}"),
        ]

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def interest_changed(self, *, urgent: bool) -> int:
        self._urgent = self._urgent or urgent
        self._poke.set()
        return self._gen + 1

    async def remote_interest(self) -> RemoteInterest:
        remote = RemoteInterest()
        if self._down:
            return remote
        try:
            rows = await self._interest_texts()
        except self.store_errors as exc:
            self._failed(exc)
            return remote
        found: dict[str, list[Interest]] = {}
        for replica, text in rows:
            if text is None:
                continue
            try:
                raw = json.loads(text)
                gen = int(raw["gen"])
                scopes = [(str(name), interest_from_json(s)) for name, s in raw["scopes"].items()]
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("watcher: malformed interest of %s %s ignored", self.member, replica)
                continue
            remote.gens[replica] = gen
            for name, interest in scopes:
                found.setdefault(name, []).append(interest)
        remote.scopes = {name: merge_interests(interests) for name, interests in found.items()}
        return remote

    # ------------------------------------------------------------ internals

    async def _keep(self) -> None:
        """Hold or seek the lease every tick; publish this process's interest while
        following, read the others' while leading."""
        assert self._peer is not None
        while True:
            try:
                held = await self._hold()
                if self._down:
                    log.info("watcher: the shared store %s is back", self._where())
                    self._down = False
                self._set_leading(held)
                if self._leading:
                    self._peer.set_remote(await self.remote_interest(), set())
                else:
                    await self._publish_interest()
            except self.store_errors as exc:
                self._failed(exc)
            self._poke.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._tick):
                    await self._poke.wait()

    async def _publish_interest(self) -> None:
        assert self._peer is not None
        self._gen += 1
        urgent, self._urgent = self._urgent, False
        scopes = {name: interest_json(i) for name, i in self._peer.local_interest().items()}
        text = json.dumps({"gen": self._gen, "scopes": scopes}, separators=(",", ":"))
        await self._publish(text, urgent=urgent)

    async def _woken(self) -> None:
        """A follower asked for a round now."""
        assert self._peer is not None
        if self._leading:
            self._peer.set_remote(await self.remote_interest(), {"*"})

    def _apply_round(self, data: str) -> None:
        """Apply another process's round result (following only)."""
        assert self._peer is not None
        if self._leading:
            return
        try:
            sender, result = RoundResult.from_json(data)
        except ValueError as exc:
            log.warning("watcher: malformed round result ignored: %s", str(exc)[:200])
            return
        if sender != self.replica:
            self._peer.apply_remote(result)

    def _failed(self, exc: Exception) -> None:
        if not self._down:
            log.warning(
                "watcher: the shared store %s failed (%s): this %s polls for itself",
                self._where(),
                type(exc).__name__,
                self.member,
            )
        self._down = True
        self._set_leading(True)

    def _set_leading(self, leading: bool) -> None:
        if leading != self._leading:
            self._leading = leading
            log.info(
                "watcher: %s the round lease of %s",
                "took" if leading else f"follows; another {self.member} holds",
                self._system,
            )
            if self._peer is not None:
                self._peer.leadership_changed()
