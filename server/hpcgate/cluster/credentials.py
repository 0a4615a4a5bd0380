"""SSH identities for authenticated users: how the server logs in to a cluster as them.

Two sources, one per system (``SystemSettings.credentials``):

* ``CertificateAuthorityIdentities``: the server holds an SSH user CA that sshd trusts
  (``TrustedUserCAKeys``). Each user gets an in-memory ed25519 key and a short-lived
  certificate for it, principal = username, renewed shortly before it expires.
* ``StaticKeyIdentities``: one private key file per user, from a ``{username}`` pattern.

Usernames are checked against the POSIX portable pattern before anything is signed or
any path is built from them. Private keys never appear in logs or reprs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import asyncssh

from hpcgate import errors
from hpcgate.config import (
    CertificateAuthorityCredentials,
    ConfigError,
    Credentials,
    StaticKeyCredentials,
)

log = logging.getLogger(__name__)

_USERNAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
CLOCK_SKEW_SECONDS = 60
"""Certificates are valid from this long before they are minted (clock skew)."""


def validate_username(username: str) -> str:
    """Return ``username`` if it is a POSIX portable user name, else raise Forbidden."""
    if not isinstance(username, str) or _USERNAME.fullmatch(username) is None:
        shown = username[:40] if isinstance(username, str) else type(username).__name__
        raise errors.Forbidden(f"Invalid username {shown!r} for SSH access")
    return username


@dataclass(frozen=True, slots=True)
class SshIdentity:
    """A private key, its certificate if any, and when the certificate expires."""

    key: asyncssh.SSHKey = field(repr=False)
    certificate: asyncssh.SSHCertificate | None = field(default=None, repr=False)
    expires_at: float | None = None
    """Epoch seconds after which sshd refuses the certificate; None: never."""

    def client_keys(
        self,
    ) -> list[asyncssh.SSHKey | tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]]:
        """The ``client_keys`` argument for ``asyncssh.connect``."""
        return [self.key if self.certificate is None else (self.key, self.certificate)]


class SshIdentityProvider(Protocol):
    """Gives the SSH identity to log in as ``username``.

    Raises ``errors.Forbidden`` for an invalid username or one without credentials.
    """

    async def identity(self, username: str) -> SshIdentity: ...


class CertificateAuthorityIdentities:
    """Short-lived user certificates signed by the server's SSH CA.

    The CA key is read once, at construction. Per user, the generated key and its
    certificate live in memory only and are re-minted when fewer than
    ``renew_before_seconds`` of validity remain; concurrent callers for one user share
    a single signing. Connections opened with an older certificate stay valid (sshd
    checks certificates only at authentication).
    """

    def __init__(
        self,
        settings: CertificateAuthorityCredentials,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        try:
            self._ca_key = asyncssh.read_private_key(settings.ca_key)
        except (OSError, asyncssh.KeyImportError) as exc:
            raise ConfigError(f"cannot read the SSH CA key {settings.ca_key}: {exc}") from exc
        self._validity = settings.certificate_minutes * 60
        self._renew_before = settings.renew_before_seconds
        self._clock = clock
        self._identities: dict[str, SshIdentity] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _fresh(self, username: str) -> SshIdentity | None:
        current = self._identities.get(username)
        if current is None or current.expires_at is None:
            return current
        if current.expires_at - self._clock() <= self._renew_before:
            return None
        return current

    async def identity(self, username: str) -> SshIdentity:
        """The user's current key and certificate, minted or renewed when needed."""
        validate_username(username)
        current = self._fresh(username)
        if current is not None:
            return current
        lock = self._locks.setdefault(username, asyncio.Lock())
        async with lock:
            current = self._fresh(username)
            if current is None:
                # signing with an RSA CA takes milliseconds: keep it off the loop
                current = await asyncio.to_thread(self._mint, username)
                self._identities[username] = current
            return current

    def _mint(self, username: str) -> SshIdentity:
        now = self._clock()
        valid_before = int(now) + self._validity
        key = asyncssh.generate_private_key("ssh-ed25519")
        serial = secrets.randbits(63)
        certificate = self._ca_key.generate_user_certificate(
            key,
            f"hpcgate:{username}:{serial:x}",
            serial=serial,
            principals=[username],
            valid_after=int(now) - CLOCK_SKEW_SECONDS,
            valid_before=valid_before,
            permit_x11_forwarding=False,
            permit_agent_forwarding=False,
            permit_port_forwarding=False,
            permit_pty=False,
            permit_user_rc=False,
        )
        log.info(
            "minted SSH certificate serial %x for %s, valid %d s", serial, username, self._validity
        )
        return SshIdentity(key=key, certificate=certificate, expires_at=float(valid_before))


class StaticKeyIdentities:
    """Per-user private key files named by a ``{username}`` pattern.

    A key is read off the event loop on first use and cached for the process's life
    (restart to pick up a rotated key). A missing file means the user has no access.
    """

    def __init__(self, settings: StaticKeyCredentials) -> None:
        self._pattern = settings.key_path
        self._identities: dict[str, SshIdentity] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def identity(self, username: str) -> SshIdentity:
        """The user's key, read from its file the first time."""
        validate_username(username)
        current = self._identities.get(username)
        if current is not None:
            return current
        async with self._locks.setdefault(username, asyncio.Lock()):
            current = self._identities.get(username)
            if current is None:
                current = SshIdentity(key=await self._read(username))
                self._identities[username] = current
            return current

    async def _read(self, username: str) -> asyncssh.SSHKey:
        path = self._pattern.replace("{username}", username)
        try:
            return await asyncio.to_thread(asyncssh.read_private_key, path)
        except FileNotFoundError:
            raise errors.Forbidden(f"No SSH credentials for user {username}") from None
        except (OSError, asyncssh.KeyImportError) as exc:
            log.error("SSH key file for %s is unusable: %s", username, type(exc).__name__)
            raise errors.InternalError(
                f"SSH credentials for user {username} are unusable"
            ) from None


def identity_provider_for(credentials: Credentials) -> SshIdentityProvider:
    """The identity provider for one system's ``credentials`` settings."""
    if isinstance(credentials, CertificateAuthorityCredentials):
        return CertificateAuthorityIdentities(credentials)
    if isinstance(credentials, StaticKeyCredentials):
        return StaticKeyIdentities(credentials)
    raise TypeError(f"unsupported credentials settings: {type(credentials).__name__}")
