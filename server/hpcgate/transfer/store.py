"""In-memory state of unfinished transfers, with expiry.

Transfers live in this process only: a restart forgets every transfer in flight.
Their signed URLs then answer 404, resumable uploads must start again, and the
Slurm job of a multipart upload gives up at the transfer's deadline (its log says
the upload did not complete). Files already renamed into place are unaffected;
the private staging directories of unfinished uploads (``.hpcgate-upload-<random>``,
see ``hpcgate.filesystem.staging``) are left behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from hpcgate.errors import NotFound, TooManyRequests
from hpcgate.filesystem.identity import FileIdentity
from hpcgate.filesystem.staging import Staged
from hpcgate.transfer.signing import Binding

State = Literal["open", "completed", "failed"]
T = TypeVar("T", bound="Transfer")


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

    id: str
    system: str
    user: str
    target: str
    size: int
    expires_at: float
    state: State = "open"
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

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


@dataclass(eq=False)
class MultipartUpload(Transfer):
    """transfer/upload: parts written at their offsets into a staged file (its secret
    name lives only here), renamed over the target on completion."""

    staged: Staged | None = None
    part_size: int = 0
    marker: str = ""
    job_id: str = ""
    marked: bool = False
    parts: dict[int, Part] = field(default_factory=dict)
    writing: Counter[int] = field(default_factory=Counter)

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

    job_id: str = ""
    identity: FileIdentity | None = None

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint if self.identity is not None else ""


@dataclass(eq=False)
class ResumableUpload(Transfer):
    """A tus upload: bytes committed in order into a staged file; SHA-256 checked at
    the end."""

    staged: Staged | None = None
    sha256: bytes = b""
    offset: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)


class TransferStore:
    """Transfers by id, at most ``max_per_user`` unfinished ones per (system, user)."""

    def __init__(self, *, max_per_user: int, clock: Callable[[], float] = time.time) -> None:
        self._items: dict[str, Transfer] = {}
        self._max_per_user = max_per_user
        self._clock = clock

    def __len__(self) -> int:
        return len(self._items)

    def add(self, transfer: Transfer) -> None:
        """Remember ``transfer``; 503 when its user holds too many unfinished ones.

        Uploads (which hold a temporary file, and a job for multipart ones) count
        against ``max_per_user``; downloads, mere records, against 16 times that.
        """
        upload = not isinstance(transfer, Download)
        limit = self._max_per_user if upload else 16 * self._max_per_user
        active = sum(
            1
            for item in self._items.values()
            if item.state == "open"
            and (item.system, item.user) == (transfer.system, transfer.user)
            and isinstance(item, Download) != upload
            and item.expires_at >= self._clock()
        )
        if active >= limit:
            kind = "uploads" if upload else "downloads"
            setting = "transfer.max_active_per_user" + ("" if upload else " x 16")
            raise TooManyRequests(
                f"Too many unfinished {kind} ({active}, at most {limit}: {setting}); "
                "finish or let some expire first",
                retry_after=60,
            )
        self._items[transfer.id] = transfer

    def get(self, transfer_id: str) -> Transfer | None:
        """The transfer, unless unknown or expired."""
        item = self._items.get(transfer_id)
        if item is None or item.expires_at < self._clock():
            return None
        return item

    def owned(self, transfer_id: str, kind: type[T], system: str, user: str) -> T:
        """The caller's transfer of type ``kind``; ``NotFound`` for anyone else's."""
        item = self.get(transfer_id)
        if not isinstance(item, kind) or (item.system, item.user) != (system, user):
            raise NotFound(f"No such transfer: {transfer_id[:64]}")
        return item

    def remove(self, transfer_id: str) -> None:
        self._items.pop(transfer_id, None)

    def expired(self) -> list[Transfer]:
        """Remove and return the transfers whose time is up."""
        now = self._clock()
        gone = [item for item in self._items.values() if item.expires_at < now]
        for item in gone:
            del self._items[item.id]
        return gone
