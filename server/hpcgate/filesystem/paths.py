"""The path policy: which paths a request may name, checked before anything is touched.

Always on, for every filesystem operation:

* a path is a non-empty absolute POSIX path without NUL, CR or LF, at most
  ``MAX_PATH_BYTES`` bytes of UTF-8 and ``MAX_COMPONENT_BYTES`` per component;
* it never contains a ``..`` component: the cluster resolves ``..`` after following
  symlinks, so a lexical fix-up could name a different file than the one checked;
  such paths are refused (400), not rewritten. ``.`` components, repeated and
  trailing slashes are normalised away;
* it lies inside one of the system's configured filesystems, compared component
  by component (``/home`` admits ``/home/x``, not ``/homework``); otherwise 403.

For operations that write, ``WriteGuard`` also resolves the path on the cluster as
the user (SFTP ``realpath``) and refuses (403) when a symlink leads outside the
configured filesystems. That check and the write are two steps, so it is a guard
against mistakes and confused deputies, not a sandbox: the cluster's own
permissions, under which every operation runs as the user, remain the authority.
What the guard learns (the roots' real paths, the user's uid) is kept per SFTP
session, so per user. For deletes and attribute changes it also refuses paths that
pass through a symlink of another user (``refuse_foreign_links``); the operations
that can be raced for real re-check at use (``shellops``, lsetstat).
"""

from __future__ import annotations

import asyncio
import posixpath
import weakref
from collections.abc import Iterable, Sequence
from typing import Protocol

import asyncssh

from hpcgate.errors import BadRequest, Conflict, Forbidden

MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255
_FORBIDDEN_CHARACTERS = {"\x00": "NUL", "\n": "newline", "\r": "carriage return"}
_SHOWN_CHARACTERS = 200


def shown(path: str) -> str:
    """``path`` made safe and short enough to quote in an error message."""
    text = path if len(path) <= _SHOWN_CHARACTERS else path[:_SHOWN_CHARACTERS] + "..."
    return text.encode("unicode_escape", errors="backslashreplace").decode("ascii")


def normalise(raw: str, *, what: str = "path") -> str:
    """``raw`` as a normal absolute path, or ``BadRequest`` saying why it is malformed."""
    if not isinstance(raw, str) or not raw:
        raise BadRequest(f"The {what} must not be empty")
    for character, name in _FORBIDDEN_CHARACTERS.items():
        if character in raw:
            raise BadRequest(f"The {what} must not contain a {name}: {shown(raw)}")
    try:
        encoded = raw.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"The {what} is not valid UTF-8: {shown(raw)}") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise BadRequest(f"The {what} is longer than {MAX_PATH_BYTES} bytes")
    if not raw.startswith("/"):
        raise BadRequest(f"The {what} must be absolute: {shown(raw)}")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise BadRequest(f"The {what} must not contain '..': {shown(raw)}")
    for part in parts:
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise BadRequest(
                f"A component of the {what} is longer than {MAX_COMPONENT_BYTES} bytes"
            )
    return "/" + "/".join(parts)


def validate_filename(raw: str) -> str:
    """A single path component (an uploaded file's name), or ``BadRequest``."""
    if not raw or raw in (".", ".."):
        raise BadRequest(f"Invalid file name: {shown(raw)!r}")
    if "/" in raw:
        raise BadRequest(f"A file name must not contain '/': {shown(raw)}")
    for character, name in _FORBIDDEN_CHARACTERS.items():
        if character in raw:
            raise BadRequest(f"A file name must not contain a {name}: {shown(raw)}")
    if len(raw.encode("utf-8", errors="surrogatepass")) > MAX_COMPONENT_BYTES:
        raise BadRequest(f"A file name must be at most {MAX_COMPONENT_BYTES} bytes")
    return raw


def is_within(path: str, root: str) -> bool:
    """Whether normal path ``path`` is ``root`` or below it, component-wise."""
    if root == "/":
        return True
    return path == root or path.startswith(root + "/")


def join(directory: str, name: str) -> str:
    """``directory/name`` for a normal directory and a validated file name."""
    return directory.rstrip("/") + "/" + name


def parent(path: str) -> str:
    return posixpath.dirname(path) or "/"


class PathPolicy:
    """The lexical policy of one system: its configured filesystem roots."""

    def __init__(self, system_name: str, roots: Iterable[str]) -> None:
        self.system_name = system_name
        self.roots: tuple[str, ...] = tuple(sorted({normalise(root) for root in roots}))

    def root_of(self, path: str) -> str | None:
        """The longest configured root containing normal ``path``, if any."""
        inside = [root for root in self.roots if is_within(path, root)]
        return max(inside, key=len) if inside else None

    def check(self, raw: str, *, what: str = "path") -> str:
        """``raw`` normalised, after checking it is well formed (400) and inside (403)."""
        path = normalise(raw, what=what)
        if self.root_of(path) is None:
            if not self.roots:
                raise Forbidden(f"System {self.system_name} has no filesystems configured")
            raise Forbidden(
                f"The {what} is outside the filesystems of system {self.system_name}: "
                f"{shown(path)} (allowed: {', '.join(self.roots)})"
            )
        return path


class RealpathClient(Protocol):
    """What ``WriteGuard`` needs from an SFTP session (``asyncssh.SFTPClient``)."""

    async def realpath(self, path: str) -> str: ...

    async def lstat(self, path: str) -> asyncssh.SFTPAttrs: ...


class WriteGuard:
    """Refuses writes whose target or parents resolve outside the configured roots.

    One per system is fine: the policy is configuration. The real paths of the roots
    (a root may itself be a symlink, say ``/home`` -> ``/gpfs/home``) are learned
    through each SFTP session and kept for that session only (a weak map keyed by
    the session): a session is one user's, and what one user's session answered is
    never used for another user's writes.
    """

    def __init__(self, policy: PathPolicy) -> None:
        self.policy = policy
        self._real_roots: weakref.WeakKeyDictionary[object, tuple[str, ...]] = (
            weakref.WeakKeyDictionary()
        )
        self._owners: weakref.WeakKeyDictionary[object, int | None] = weakref.WeakKeyDictionary()

    async def _allowed_roots(self, sftp: RealpathClient) -> tuple[str, ...]:
        found = self._real_roots.get(sftp)
        if found is not None:
            return found
        resolved: set[str] = set(self.policy.roots)
        complete = True
        for root in self.policy.roots:
            try:
                resolved.add(normalise(await sftp.realpath(root)))
            except (asyncssh.SFTPError, BadRequest):
                complete = False  # missing or unreadable now: ask again next time
        if complete:
            self._real_roots[sftp] = tuple(sorted(resolved))
        return tuple(sorted(resolved))

    async def check(self, sftp: RealpathClient, path: str, *, follow_final: bool) -> None:
        """Check normal, policy-checked ``path`` for a write.

        With ``follow_final`` the operation follows a symlink at ``path`` itself
        (open for writing, chmod, tar -C): the target must resolve inside, and a
        dangling symlink is refused. Otherwise only the parents are resolved (rm,
        mkdir, symlink and rename act on the final component itself). Missing parents
        are skipped up to the nearest existing one. ``Forbidden`` when outside,
        ``Conflict`` when an entry changed while it was resolved; other SFTP errors
        (permission denied) pass through.
        """
        roots = await self._allowed_roots(sftp)
        root = self.policy.root_of(path)
        assert root is not None, "check the path with the policy first"
        for candidate in _candidates(path, root, follow_final=follow_final):
            try:
                real = await sftp.realpath(candidate)
            except asyncssh.SFTPNoSuchFile:
                if not await _exists_as_link(sftp, candidate):
                    continue
                # a link where nothing resolved: dangling, or put there meanwhile
                if await _resolves_now(sftp, candidate):
                    raise _changed(candidate) from None
                raise Forbidden(
                    f"Refusing to write through a dangling symlink: {shown(candidate)}"
                ) from None
            except asyncssh.SFTPBadMessage:
                # EINVAL: OpenSSH's sftp-server resolves with lstat, then readlink; an
                # entry swapped between the two (a link, then a directory) fails the
                # readlink. The path is bounded (MAX_PATH_BYTES), so this is the race.
                raise _changed(candidate) from None
            if not any(is_within(normalise(real), allowed) for allowed in roots):
                raise Forbidden(
                    f"Refusing to write through a symlink that leads outside the "
                    f"filesystems of system {self.policy.system_name}: {shown(path)}"
                )
            return

    async def refuse_foreign_links(
        self, sftp: RealpathClient, path: str, *, include_final: bool
    ) -> None:
        """``Forbidden`` when a component of ``path`` below its root is a symlink that
        belongs to neither the user nor root.

        The rule of the kernel's ``fs.protected_symlinks``, for every directory: a
        group member may put a symlink in a shared directory, but the server never
        follows it on the user's behalf for a delete or an attribute change. The
        user is the owner of the session's home (its first directory). One round of
        concurrent ``lstat``; a check before the operation, so the operations that
        walk trees re-check as they go (``shellops``).
        """
        root = self.policy.root_of(path)
        assert root is not None, "check the path with the policy first"
        prefixes = [p for p in _candidates(path, root, follow_final=include_final) if p != root]
        if not prefixes:
            return
        owner = await self._owner(sftp)
        found = await asyncio.gather(*(_lstat_or_none(sftp, prefix) for prefix in prefixes))
        for prefix, attrs in zip(prefixes, found, strict=True):
            if (
                attrs is not None
                and attrs.type == asyncssh.FILEXFER_TYPE_SYMLINK
                and attrs.uid not in (0, owner)
            ):
                raise Forbidden(
                    "Refusing to follow a symbolic link that belongs to another user: "
                    f"{shown(prefix)}"
                )

    async def _owner(self, sftp: RealpathClient) -> int | None:
        """The uid of the session's user: the owner of its home, once per session."""
        if sftp in self._owners:
            return self._owners[sftp]
        try:
            uid = (await sftp.lstat(await sftp.realpath("."))).uid
        except asyncssh.SFTPError:
            uid = None
        self._owners[sftp] = uid
        return uid


def _candidates(path: str, root: str, *, follow_final: bool) -> Sequence[str]:
    """``path`` (when followed) and then its parents, up to and including ``root``."""
    found = [path] if follow_final else []
    current = path
    while current != root:
        current = parent(current)
        found.append(current)
    return found


async def _lstat_or_none(sftp: RealpathClient, path: str) -> asyncssh.SFTPAttrs | None:
    try:
        return await sftp.lstat(path)
    except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPPermissionDenied):
        return None


async def _exists_as_link(sftp: RealpathClient, path: str) -> bool:
    try:
        attrs = await sftp.lstat(path)
    except asyncssh.SFTPNoSuchFile:
        return False
    return attrs.type == asyncssh.FILEXFER_TYPE_SYMLINK


async def _resolves_now(sftp: RealpathClient, path: str) -> bool:
    """Whether ``path`` resolves on a second look (or changes again while it does)."""
    try:
        await sftp.realpath(path)
    except asyncssh.SFTPNoSuchFile:
        return False
    except asyncssh.SFTPBadMessage:
        return True
    return True


def _changed(path: str) -> Conflict:
    return Conflict(f"A path changed during the request: {shown(path)}")
