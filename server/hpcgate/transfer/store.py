"""Unfinished transfers: their records, kept in a durable backend, and their claims.

A transfer is a dataclass built from its record for each request (``load``) and
written back field by field (``save``): nothing of it lives only in this process, so
a restarted server, or another replica sharing the backend, serves it on. The
backend (``hpcgate.transfer.state``: SQLite by default, Redis for replicas) makes
each step atomic; ``claimed`` holds a claim (a tus PATCH, a part being written, a
completion) in place of a lock, and a claim of a dead process counts for nothing.

Records hold the staged file's secret name (``Staged``), never shown anywhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from hpcgate.errors import Conflict, NotFound, TooManyRequests
from hpcgate.filesystem.identity import FileIdentity
from hpcgate.filesystem.staging import Staged
from hpcgate.transfer.sha256state import ResumableSha256
from hpcgate.transfer.signing import Binding
from hpcgate.transfer.state import Instance, Record, StateBackend, dead_instances

State = Literal["creating", "open", "completed", "failed"]
T = TypeVar("T", bound="Transfer")

#: how often an instance says it is alive; after STALE_SECONDS without, it is dead
BEAT_SECONDS = 5.0
STALE_SECONDS = 20.0
_CLAIM_POLL_FIRST = 0.02
_CLAIM_POLL_MAX = 0.5


def new_id() -> str:
    """A transfer id: 128 random bits, URL-safe."""
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class Part:
    """A received part of a multipart upload."""

    size: int
    etag: str  # hex MD5 of the part, unquoted


@dataclass(eq=False)
class Transfer:
    """What every transfer has: who, where, until when."""

    kind: ClassVar[str] = ""

    id: str
    system: str
    user: str
    target: str
    size: int
    expires_at: float
    state: State = "creating"
    #: the instance that created it (a transfer still "creating" dies with it)
    owner: str = ""

    @property
    def binding(self) -> Binding:
        return Binding(self.id, self.user, self.system, self.target, self.fingerprint)

    @property
    def fingerprint(self) -> str:
        """What else the URLs are bound to (a download: the file's identity)."""
        return ""

    @property
    def expires(self) -> int:
        return int(self.expires_at)

    def record(self) -> Record:
        """Every field as JSON-able values (the backend's record)."""
        found = {
            "kind": self.kind,
            "id": self.id,
            "system": self.system,
            "user": self.user,
            "target": self.target,
            "size": self.size,
            "expires_at": self.expires_at,
            "state": self.state,
            "owner": self.owner,
        }
        for name in self._extra:
            found[name] = _encode(getattr(self, name))
        return found

    _extra: ClassVar[tuple[str, ...]] = ()


@dataclass(eq=False)
class MultipartUpload(Transfer):
    """transfer/upload: parts written at their offsets into a staged file (its secret
    name lives only in the record), renamed over the target on completion."""

    kind: ClassVar[str] = "multipart"
    _extra: ClassVar[tuple[str, ...]] = ("staged", "part_size", "marker", "job_id", "marked")

    staged: Staged | None = None
    part_size: int = 0
    marker: str = ""
    job_id: str = ""
    marked: bool = False
    parts: dict[int, Part] = field(default_factory=dict)

    @property
    def part_count(self) -> int:
        return max(1, -(-self.size // self.part_size))

    def part_range(self, number: int) -> tuple[int, int]:
        """(offset, length) of part ``number`` (1-based)."""
        offset = (number - 1) * self.part_size
        return offset, max(0, min(self.part_size, self.size - offset))


@dataclass(eq=False)
class Download(Transfer):
    """transfer/download: the file is streamed from the cluster on GET, if it is still
    the file ``identity`` describes (what an opened handle saw when the URL was made)."""

    kind: ClassVar[str] = "download"
    _extra: ClassVar[tuple[str, ...]] = ("job_id", "identity")

    job_id: str = ""
    identity: FileIdentity | None = None

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint if self.identity is not None else ""


@dataclass(eq=False)
class ResumableUpload(Transfer):
    """A tus upload: bytes committed in order into a staged file; SHA-256 checked at
    the end. ``hasher`` has hashed exactly the ``offset`` committed bytes."""

    kind: ClassVar[str] = "tus"
    _extra: ClassVar[tuple[str, ...]] = ("staged", "sha256", "offset", "hasher")

    staged: Staged | None = None
    sha256: bytes = b""
    offset: int = 0
    hasher: ResumableSha256 = field(default_factory=ResumableSha256)


_KINDS: dict[str, type[Transfer]] = {
    cls.kind: cls for cls in (MultipartUpload, Download, ResumableUpload)
}


def _encode(value: Any) -> Any:
    if isinstance(value, Staged):
        return {
            "directory": value.directory,
            "secret": value.secret,
            "uid": value.uid,
            "gid": value.gid,
            "size": value.size,
            "default_mode": value.default_mode,
        }
    if isinstance(value, FileIdentity):
        return asdict(value)
    if isinstance(value, ResumableSha256):
        return value.state().hex()
    if isinstance(value, bytes):
        return value.hex()
    return value


def from_record(record: Record, parts: dict[int, tuple[int, str]]) -> Transfer:
    """The transfer a backend record describes."""
    cls = _KINDS[record["kind"]]
    values: dict[str, Any] = {
        name: record[name] for name in ("id", "system", "user", "target", "size")
    }
    values |= {"expires_at": float(record["expires_at"]), "state": record["state"]}
    values["owner"] = record.get("owner", "")
    extra: dict[str, Any] = {
        name: record[name] for name in cls._extra if record.get(name) is not None
    }
    if "staged" in extra:
        extra["staged"] = Staged(**extra["staged"])
    if "identity" in extra:
        extra["identity"] = FileIdentity(**extra["identity"])
    if "sha256" in extra:
        extra["sha256"] = bytes.fromhex(extra["sha256"])
    if "hasher" in extra:
        extra["hasher"] = ResumableSha256.restore(bytes.fromhex(extra["hasher"]))
    transfer = cls(**values, **extra)
    if isinstance(transfer, MultipartUpload):
        transfer.parts = {n: Part(size, etag) for n, (size, etag) in parts.items()}
    return transfer


class TransferStore:
    """Transfers by id in ``backend``; at most ``max_per_user`` unfinished uploads per
    (system, user) and 16 times as many downloads."""

    def __init__(
        self,
        backend: StateBackend,
        *,
        max_per_user: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self._max_per_user = max_per_user
        self._clock = clock
        self.instance = Instance.me(clock())
        self._dead: set[str] = set()

    # -- this process ---------------------------------------------------------------

    async def open(self) -> None:
        await self.backend.open()
        await self.beat()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.backend.retire(self.instance)
        await self.backend.close()

    async def beat(self) -> None:
        """Say this process is alive; learn which others are gone."""
        self.instance = Instance(
            self.instance.id, self.instance.host, self.instance.pid, self._clock()
        )
        await self.backend.beat(self.instance, STALE_SECONDS)
        self._dead = dead_instances(
            await self.backend.instances(), self.instance, self._clock(), STALE_SECONDS
        )

    async def alive(self, instance_id: str) -> bool:
        """Whether the instance ``instance_id`` is still running."""
        if instance_id == self.instance.id:
            return True
        others = {i.id: i for i in await self.backend.instances()}
        found = others.get(instance_id)
        return found is not None and not dead_instances(
            [found], self.instance, self._clock(), STALE_SECONDS
        )

    # -- records --------------------------------------------------------------------

    async def add(self, transfer: Transfer) -> None:
        """Record ``transfer`` (owned by this process); 429 when its user holds too many
        unfinished ones.

        Uploads (which hold a temporary file, and a job for multipart ones) count
        against ``max_per_user``; downloads, mere records, against 16 times that.
        """
        upload = not isinstance(transfer, Download)
        limit = self._max_per_user if upload else 16 * self._max_per_user
        transfer.owner = self.instance.id
        held = await self.backend.insert(transfer.record(), limit=limit, now=self._clock())
        if held is not None:
            kind = "uploads" if upload else "downloads"
            setting = "transfer.max_active_per_user" + ("" if upload else " x 16")
            raise TooManyRequests(
                f"Too many unfinished {kind} ({held}, at most {limit}: {setting}); "
                "finish or let some expire first",
                retry_after=60,
            )

    async def save(self, transfer: Transfer, *names: str) -> None:
        """Write the fields ``names`` of ``transfer`` to its record."""
        record = transfer.record()
        await self.backend.update(transfer.id, {name: record[name] for name in names})

    async def set_part(self, upload: MultipartUpload, number: int, part: Part) -> None:
        upload.parts[number] = part
        await self.backend.set_part(upload.id, number, part.size, part.etag)

    async def get(self, transfer_id: str) -> Transfer | None:
        """The transfer, unless unknown or expired."""
        loaded = await self.backend.load(transfer_id)
        if loaded is None:
            return None
        transfer = from_record(*loaded)
        if transfer.expires_at < self._clock() or transfer.state == "creating":
            return None
        return transfer

    async def owned(self, transfer_id: str, kind: type[T], system: str, user: str) -> T:
        """The caller's transfer of type ``kind``; ``NotFound`` for anyone else's."""
        item = await self.get(transfer_id)
        if not isinstance(item, kind) or (item.system, item.user) != (system, user):
            raise NotFound(f"No such transfer: {transfer_id[:64]}")
        return item

    async def reload(self, transfer: T) -> T:
        """``transfer`` as its record says now (``NotFound`` if it is gone)."""
        loaded = await self.backend.load(transfer.id)
        if loaded is None:
            raise NotFound(f"No such transfer: {transfer.id}")
        fresh = from_record(*loaded)
        assert isinstance(fresh, type(transfer))
        return fresh

    async def remove(self, transfer_id: str) -> None:
        await self.backend.delete(transfer_id)

    async def due(self, limit: int) -> list[Transfer]:
        """At most ``2 * limit`` transfers to look at: expired, or still being created."""
        loaded = await self.backend.due(self._clock(), limit)
        return [from_record(record, {}) for record in loaded]

    # -- claims ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def claimed(
        self,
        transfer: Transfer,
        slot: str,
        *,
        blockers: Sequence[str],
        open_only: bool = False,
        wait: float = 0.0,
    ) -> AsyncIterator[None]:
        """Hold ``slot`` of ``transfer`` for the block.

        Raises ``Conflict`` (message ``busy:<slot>`` or ``closed``) when a live claim on
        a ``blockers`` slot stays for ``wait`` seconds or the transfer is not open
        (with ``open_only``); ``NotFound`` when it is gone. Callers give their own words.
        """
        holder = secrets.token_hex(8)
        deadline = self._clock() + wait
        pause = _CLAIM_POLL_FIRST
        while True:
            result = await self.backend.claim(
                transfer.id,
                slot,
                holder,
                self.instance.id,
                blockers=blockers,
                open_only=open_only,
                dead=sorted(self._dead),
            )
            if result == "ok":
                break
            if result == "gone":
                raise NotFound(f"No such transfer: {transfer.id}")
            if result == "closed" or self._clock() >= deadline:
                raise Conflict(result)
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, _CLAIM_POLL_MAX)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # a claim left over dies with this process
                await asyncio.shield(self.backend.release(transfer.id, slot, holder))
