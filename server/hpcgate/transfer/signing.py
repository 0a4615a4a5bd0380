"""Signed, expiring URLs: the credential of the part, complete and download URLs.

A signature is HMAC-SHA256 over one line per field::

    hpcgate-transfer-v1, METHOD, URL path, part number (0: none), expiry (epoch s),
    transfer id, user, system, target path, file fingerprint (downloads; else empty)

so a URL is good for one method on one path of one transfer, bound to the user and
the file it was issued for (for a download, the identity of the opened file: size,
mtime, owner, group, mode; see ``hpcgate.filesystem.identity``), until it expires.
The URL carries ``expires`` and ``signature`` (hex) in its query; everything else is
taken from the request and the transfer record, never from the URL's say-so.
Comparison is constant-time.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from hpcgate.errors import Forbidden

_VERSION = "hpcgate-transfer-v1"
_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True, slots=True)
class Binding:
    """What a URL is bound to besides its method, path and part."""

    transfer_id: str
    user: str
    system: str
    target: str
    fingerprint: str = ""


class UrlSigner:
    """Signs and checks transfer URLs with one secret key (never shown in ``repr``)."""

    def __init__(self, key: bytes | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)
        self._clock = clock

    def __repr__(self) -> str:
        return "UrlSigner(key=<hidden>)"

    def _mac(self, method: str, path: str, part: int, expires: int, binding: Binding) -> str:
        message = "\n".join(
            (
                _VERSION,
                method.upper(),
                path,
                str(part),
                str(expires),
                binding.transfer_id,
                binding.user,
                binding.system,
                binding.target,
                binding.fingerprint,
            )
        ).encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def query(
        self, method: str, path: str, binding: Binding, *, expires: int, part: int = 0
    ) -> str:
        """The query string (``expires=...&signature=...``) that authorises the URL."""
        signature = self._mac(method, path, part, expires, binding)
        return urlencode({"expires": expires, "signature": signature})

    def check_expiry(self, expires: str | None) -> int:
        """The URL's expiry as an int; ``Forbidden`` when missing, malformed or past."""
        if not expires or not expires.isdigit() or len(expires) > 12:
            raise Forbidden("The URL is not signed: give its expires and signature parameters")
        value = int(expires)
        if value < self._clock():
            raise Forbidden("The signed URL has expired")
        return value

    def verify(
        self,
        method: str,
        path: str,
        binding: Binding,
        *,
        expires: int,
        signature: str | None,
        part: int = 0,
    ) -> None:
        """Return if ``signature`` signs this request; ``Forbidden`` otherwise."""
        if signature is None or not _SIGNATURE.fullmatch(signature):
            raise Forbidden("The URL's signature is invalid")
        expected = self._mac(method, path, part, expires, binding)
        if not hmac.compare_digest(expected, signature.lower()):
            raise Forbidden("The URL's signature is invalid")


KEY_FILE = "transfer-signing.key"
KEY_BYTES = 32


def load_or_create_key(directory: Path) -> bytes:
    """The signing key kept in ``directory`` (the state directory), made once.

    Created atomically: 32 random bytes go into a new private file (``O_EXCL``, mode
    0600), which is then hard-linked to its name; if another process linked its key
    first, that one is used. A key file that is not a regular file of this user, is
    open to others or has the wrong size is refused (``RuntimeError``): better no
    start than URLs signed with a key others can read. The key is never logged.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / KEY_FILE
    if not path.exists() and not path.is_symlink():
        temporary = directory / f".{KEY_FILE}.{secrets.token_hex(8)}"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(secrets.token_bytes(KEY_BYTES))
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_uid != os.geteuid()
            or info.st_mode & 0o077
            or info.st_size != KEY_BYTES
        ):
            raise RuntimeError(
                f"{path}: the transfer signing key must be a {KEY_BYTES}-byte file of this "
                "user with mode 0600; remove it to have a new one made (URLs signed with "
                "the old key stop working)"
            )
        return handle.read(KEY_BYTES)
