"""The filesystem interface: every file operation the API offers, on one system as one user.

Every method takes paths exactly as a request gave them and applies the path policy
(``hpcgate.filesystem.paths``) before touching the cluster: 400 for malformed paths,
403 outside the configured filesystems or, for writes, through a symlink that
leads outside. Errors are ``hpcgate.errors`` types: ``NotFound`` ("No such file or
directory: ..."), ``Forbidden`` (permission denied), ``BadRequest`` (the operation
failed: exists already, not a directory, ...), ``RequestTimeout``,
``PayloadTooLarge``, ``ClusterUnreachable``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

from hpcgate.config import FilesystemLimits
from hpcgate.filesystem.identity import FileIdentity
from hpcgate.filesystem.models import CompressionType, File, FileChecksum, FileContent, FileStat
from hpcgate.filesystem.paths import PathPolicy
from hpcgate.filesystem.staging import Staged


class ReadStream(ABC):
    """An open file being read in chunks; ``aclose()`` it when done (idempotent)."""

    #: bytes the stream yields (fixed when opened)
    length: int
    #: offset of the first byte
    offset: int
    #: the file's size when opened
    file_size: int

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[bytes]: ...

    @abstractmethod
    async def aclose(self) -> None: ...


class Filesystem(ABC):
    """File operations on one system as one user."""

    #: the system's path policy (callers may check paths early with it)
    policy: PathPolicy
    #: the system's bounds on direct operations
    limits: FilesystemLimits

    # -- reading ------------------------------------------------------------------

    @abstractmethod
    async def ls(
        self,
        path: str,
        *,
        show_hidden: bool = False,
        numeric_uid: bool = False,
        recursive: bool = False,
        dereference: bool = False,
    ) -> list[File]:
        """A directory's entries (names relative to it), or the one entry of a file."""

    @abstractmethod
    async def describe(
        self, path: str, *, numeric_uid: bool = False, dereference: bool = False
    ) -> File:
        """One path as ``ls -ld`` shows it (``name`` is the path)."""

    @abstractmethod
    async def stat(self, path: str, *, dereference: bool = False) -> FileStat:
        """``stat`` (``dereference``) or ``lstat`` of a path."""

    @abstractmethod
    async def readlink(self, path: str) -> str: ...

    @abstractmethod
    async def head(
        self,
        path: str,
        *,
        bytes_: int | None = None,
        lines: int | None = None,
        skip_trailing: bool = False,
    ) -> FileContent: ...

    @abstractmethod
    async def tail(
        self,
        path: str,
        *,
        bytes_: int | None = None,
        lines: int | None = None,
        skip_heading: bool = False,
    ) -> FileContent: ...

    @abstractmethod
    async def view(self, path: str, *, offset: int = 0, size: int | None = None) -> str:
        """Up to ``size`` bytes from ``offset``, as text (bounded by the content cap)."""

    @abstractmethod
    async def read_range(self, path: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (bounded by the content cap)."""

    @abstractmethod
    async def open_read(
        self,
        path: str,
        *,
        offset: int = 0,
        length: int | None = None,
        bound: FileIdentity | None = None,
    ) -> ReadStream:
        """Open a regular file for a streamed read of ``length`` bytes (to the end).

        ``bound``: only the file ``identify`` saw (409 for another one at ``path``).
        """

    @abstractmethod
    async def identify(self, path: str) -> FileIdentity:
        """The regular file at ``path`` as an opened handle sees it, to bind a URL to."""

    @abstractmethod
    async def home(self) -> str:
        """The user's home directory, as the cluster resolves it."""

    @abstractmethod
    async def checksum(self, path: str) -> FileChecksum: ...

    @abstractmethod
    async def file_type(self, path: str) -> str:
        """What ``file -b`` says about the path."""

    # -- writing ------------------------------------------------------------------

    @abstractmethod
    async def write_stream(
        self,
        path: str,
        chunks: AsyncIterable[bytes],
        *,
        offset: int = 0,
        truncate: bool = True,
        max_size: int | None = None,
        keep_partial: bool = False,
    ) -> int:
        """Write ``chunks`` into ``path`` from ``offset``; return the bytes written.

        ``truncate`` empties an existing file first (otherwise bytes beyond the
        written range stay). A file this call created is removed if the call fails,
        unless ``keep_partial`` (resumable uploads continue from what was written).
        ``max_size`` (default: the direct-transfer cap) bounds the bytes written.
        """

    @abstractmethod
    async def check_writable(self, path: str, *, follow_final: bool, what: str = "path") -> str:
        """The policy-checked path, after the write guard (no symlink escapes)."""

    @abstractmethod
    async def stage(self, path: str, size: int) -> tuple[str, Staged]:
        """A new private staged file of ``size`` bytes for ``path`` (checked first), to
        be written in parts and put in place later: (the checked path, the file)."""

    @abstractmethod
    async def write_staged(
        self,
        staged: Staged,
        chunks: AsyncIterable[bytes],
        *,
        offset: int,
        max_size: int,
        on_written: Callable[[bytes, int], Awaitable[None]] | None = None,
    ) -> int:
        """Write ``chunks`` at ``offset`` into a staged file (409 if it was swapped)."""

    @abstractmethod
    async def commit_staged(self, staged: Staged, target: str) -> None:
        """Rename a staged file over ``target`` once it checks out (409 if swapped)."""

    @abstractmethod
    async def discard_staged(self, staged: Staged) -> None:
        """Remove a staged file and its directory."""

    @abstractmethod
    async def publish(self, path: str, data: bytes) -> None:
        """Put a small file in place whole (written aside, renamed over ``path``)."""

    @abstractmethod
    async def mkdir(self, path: str, *, parents: bool = False) -> File: ...

    @abstractmethod
    async def remove(self, path: str) -> None:
        """Remove a file, a symlink (not its target) or a directory tree."""

    @abstractmethod
    async def rename(self, source: str, target: str) -> None:
        """Rename ``source`` to ``target``, replacing a file there."""

    @abstractmethod
    async def chmod(self, path: str, mode: str) -> File:
        """Apply an octal or symbolic mode; ``BadRequest`` for an invalid one."""

    @abstractmethod
    async def chown(self, path: str, owner: str = "", group: str = "") -> File: ...

    @abstractmethod
    async def symlink(self, target: str, link: str) -> File:
        """Create symlink ``link`` pointing at ``target``."""

    @abstractmethod
    async def copy(self, source: str, target: str) -> None:
        """Copy a file or tree (``cp -R``), symlinks as symlinks."""

    @abstractmethod
    async def compress(
        self,
        source: str,
        target: str,
        *,
        match_pattern: str | None = None,
        dereference: bool = False,
        compression: CompressionType = "gzip",
    ) -> None:
        """Archive ``source`` (relative to its parent) into ``target`` with tar."""

    @abstractmethod
    async def extract(
        self, source: str, target: str, *, compression: CompressionType = "gzip"
    ) -> None:
        """Unpack archive ``source`` into directory ``target`` with tar."""
