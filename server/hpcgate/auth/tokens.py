"""Bearer token validation: offline JWT checks against the issuer's JWKS.

Keys come from a JWKS file or URL (``AuthSettings``). A token naming an unknown
``kid`` triggers one re-read of the key set (rate-limited, concurrent refreshes
coalesced), so key rotation at the issuer needs no restart. Every rejection is an
``Unauthorized`` with a short reason; the token itself is never logged or echoed.

A verified token is remembered (``_Verified``) under the SHA-256 of its exact text,
in a bounded LRU (``auth.verified_cache_size``), so a client that repeats its token
pays the signature check once: the check was a fifth of the server's CPU for a
small request. Only that same token finds the entry; its expiry and not-before are
checked again at every use, and a reload of the key set forgets every entry.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from pydantic import BaseModel, ConfigDict

from hpcgate.config import AuthSettings
from hpcgate.errors import Forbidden, ServiceUnavailable, Unauthorized

__all__ = ["Principal", "TokenValidator", "require_scopes"]

log = logging.getLogger(__name__)

# The key type each accepted algorithm needs. Symmetric (HS*) algorithms are absent
# on purpose: a JWKS is public, so an HMAC "key" from it would be no secret at all.
_KEY_TYPE_FOR_ALGORITHM: dict[str, str] = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES256K": "EC",
    "ES384": "EC",
    "ES512": "EC",
    "EdDSA": "OKP",
    "Ed25519": "OKP",
}
_MAX_TOKEN_LENGTH = 32 * 1024
_JWKS_FETCH_TIMEOUT = 10.0
# What may reach SSH and path patterns as a user name.
_USERNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}")


class Principal(BaseModel):
    """The authenticated caller."""

    model_config = ConfigDict(frozen=True)

    username: str
    scopes: frozenset[str]
    claims: dict[str, Any]


def require_scopes(principal: Principal, required: list[str]) -> None:
    """Raise ``Forbidden`` naming the scopes in ``required`` the principal lacks."""
    missing = [scope for scope in dict.fromkeys(required) if scope not in principal.scopes]
    if missing:
        raise Forbidden(f"Token lacks required scope(s): {' '.join(missing)}")


class _KeySet:
    """Parsed public keys by ``kid`` (PyJWK built per algorithm on first use)."""

    def __init__(self, jwks: Any) -> None:
        keys = jwks.get("keys") if isinstance(jwks, dict) else None
        if not isinstance(keys, list):
            raise ValueError("a JWKS must be an object with a 'keys' list")
        self.raw: list[dict[str, Any]] = []
        for data in keys:
            if not isinstance(data, dict) or data.get("use", "sig") != "sig":
                continue
            try:
                jwt.PyJWK(data)  # skip what PyJWT cannot use (unknown kty, bad members)
            except jwt.PyJWTError:
                continue
            self.raw.append(dict(data))
        if not self.raw:
            raise ValueError("the JWKS holds no usable signature keys")
        self._built: dict[tuple[int, str], jwt.PyJWK] = {}

    def __len__(self) -> int:
        return len(self.raw)

    def find(self, kid: str | None) -> int | None:
        """Index of the key for ``kid``; with no kid, the only key if there is one."""
        if kid is None:
            return 0 if len(self.raw) == 1 else None
        return next((i for i, key in enumerate(self.raw) if key.get("kid") == kid), None)

    def key_for(self, index: int, algorithm: str) -> jwt.PyJWK:
        """The key at ``index`` bound to ``algorithm``; Unauthorized if they do not fit."""
        data = self.raw[index]
        if (
            data.get("kty") != _KEY_TYPE_FOR_ALGORITHM.get(algorithm)
            or data.get("alg", algorithm) != algorithm
        ):
            raise Unauthorized("Token algorithm does not match its signing key")
        cached = self._built.get((index, algorithm))
        if cached is None:
            try:
                cached = jwt.PyJWK(data, algorithm=algorithm)
            except jwt.PyJWTError as exc:
                raise Unauthorized("Token algorithm does not match its signing key") from exc
            self._built[(index, algorithm)] = cached
        return cached


@dataclass(frozen=True)
class _Verified:
    """A token that passed every check: its principal and validity window."""

    principal: Principal
    expires: float
    not_before: float | None
    generation: int


class TokenValidator:
    """Validates bearer JWTs against the key set named in ``AuthSettings``."""

    def __init__(
        self, settings: AuthSettings, *, http_client: httpx.AsyncClient | None = None
    ) -> None:
        self._settings = settings
        self._algorithms = [a for a in settings.algorithms if a in _KEY_TYPE_FOR_ALGORITHM]
        ignored = sorted(set(settings.algorithms) - set(self._algorithms))
        if ignored:
            log.warning("auth: algorithms never accepted with a JWKS, ignored: %s", ignored)
        self._client = http_client
        self._owns_client = False  # set when _load creates a client of its own
        self._keys: _KeySet | None = None
        self._generation = 0  # bumped on every successful load
        self._last_attempt: float | None = None  # monotonic time of the last load attempt
        self._lock = asyncio.Lock()
        self._verified: OrderedDict[bytes, _Verified] = OrderedDict()

    @property
    def _source(self) -> str:
        return str(self._settings.jwks_url or self._settings.jwks_file)

    async def start(self) -> None:
        """Load the key set now, so a bad source shows at startup (ServiceUnavailable)."""
        await self._ensure_keys()

    async def aclose(self) -> None:
        """Release the HTTP client if this validator created it."""
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None
            self._owns_client = False

    async def validate(self, token: str) -> Principal:
        """The principal a valid token names; ``Unauthorized`` saying why otherwise."""
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_LENGTH:
            raise Unauthorized("Malformed token")
        token = token.strip()
        size = self._settings.verified_cache_size
        if size == 0:
            return await self._verify(token)
        digest = hashlib.sha256(token.encode()).digest()
        known = self._verified.get(digest)
        if known is not None and known.generation == self._generation:
            self._check_window(known)
            self._verified.move_to_end(digest)
            return known.principal
        principal = await self._verify(token)
        self._remember(digest, principal, size)
        return principal

    def _check_window(self, known: _Verified) -> None:
        """``exp`` and ``nbf`` of a remembered token, as PyJWT checks them (with leeway)."""
        now = time.time()
        leeway = self._settings.leeway_seconds
        if now >= known.expires + leeway:
            raise Unauthorized("Token expired")
        if known.not_before is not None and now < known.not_before - leeway:
            raise Unauthorized("Token not yet valid")

    def _remember(self, digest: bytes, principal: Principal, size: int) -> None:
        claims = principal.claims
        expires, not_before = claims["exp"], claims.get("nbf")
        if not isinstance(expires, int | float) or isinstance(expires, bool):
            return  # PyJWT accepted it; not worth keeping in an unusual form
        if not_before is not None and not isinstance(not_before, int | float):
            return
        self._verified[digest] = _Verified(principal, expires, not_before, self._generation)
        self._verified.move_to_end(digest)
        while len(self._verified) > size:
            self._verified.popitem(last=False)

    async def _verify(self, token: str) -> Principal:
        """Every check of a token: header, key, signature, claims."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized("Malformed token") from exc
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            raise Unauthorized("Token algorithm not allowed")
        kid = header.get("kid")  # PyJWT has checked it is a string if present

        keys = await self._ensure_keys()
        index = keys.find(kid)
        if index is None and kid is not None:
            keys = await self._refresh(seen_generation=self._generation)
            index = keys.find(kid)
        if index is None:
            if kid is None:
                raise Unauthorized("Token names no signing key (kid) and several keys exist")
            log.info("auth: token signed with unknown key id %r", kid[:64])
            raise Unauthorized("Unknown signing key")

        claims = self._decode(token, keys.key_for(index, algorithm), algorithm)
        principal = Principal(
            username=self._username(claims),
            scopes=self._scopes(claims),
            claims=claims,
        )
        log.debug("auth: accepted token of %s (kid %r)", principal.username, kid)
        return principal

    def _decode(self, token: str, key: jwt.PyJWK, algorithm: str) -> dict[str, Any]:
        settings = self._settings
        try:
            return jwt.decode(
                token,
                key=key,
                algorithms=[algorithm],
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway_seconds,
                options={"require": ["exp", "iss", "aud"], "verify_jti": False},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("Token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthorized("Token not yet valid") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthorized("Invalid token audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthorized("Invalid token issuer") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthorized("Invalid token signature") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"Token lacks claim '{exc.claim}'") from exc
        except jwt.InvalidIssuedAtError as exc:
            raise Unauthorized("Invalid token issue time") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise Unauthorized("Token algorithm not allowed") from exc
        except jwt.InvalidKeyError as exc:
            raise Unauthorized("Invalid token signing key") from exc
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise Unauthorized("Malformed token") from exc

    def _username(self, claims: dict[str, Any]) -> str:
        name = self._settings.username_claim
        value = claims.get(name)
        if value is None or value == "":
            raise Unauthorized(f"Token lacks claim '{name}'")
        if not isinstance(value, str) or not _USERNAME_RE.fullmatch(value):
            raise Unauthorized(f"Token claim '{name}' is not a valid user name")
        return value

    def _scopes(self, claims: dict[str, Any]) -> frozenset[str]:
        name = self._settings.scope_claim
        value = claims.get(name)
        if value is None:
            return frozenset()
        if isinstance(value, str):
            return frozenset(value.split())
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return frozenset(item for item in value if item)
        raise Unauthorized(f"Token claim '{name}' must be a string or a list of strings")

    # --- the key set ---------------------------------------------------------------

    async def _ensure_keys(self) -> _KeySet:
        if self._keys is not None:
            return self._keys
        return await self._refresh(seen_generation=self._generation)

    async def _refresh(self, *, seen_generation: int) -> _KeySet:
        """Reload the key set unless another caller just did or the rate limit says no."""
        async with self._lock:
            if self._generation == seen_generation and self._may_load_now():
                self._last_attempt = time.monotonic()
                try:
                    loaded = await self._load()
                except (OSError, ValueError, httpx.HTTPError, jwt.PyJWTError) as exc:
                    log.warning("auth: cannot load the JWKS from %s: %s", self._source, exc)
                else:
                    self._keys = loaded
                    self._generation += 1
                    self._verified.clear()  # verified with the old keys
                    log.info("auth: loaded %d key(s) from %s", len(loaded), self._source)
            if self._keys is None:
                raise ServiceUnavailable("Token signing keys are unavailable")
            return self._keys

    def _may_load_now(self) -> bool:
        if self._last_attempt is None:
            return True
        elapsed = time.monotonic() - self._last_attempt
        return elapsed >= self._settings.jwks_refresh_min_seconds

    async def _load(self) -> _KeySet:
        if self._settings.jwks_file is not None:
            return await asyncio.to_thread(self._read_file)
        assert self._settings.jwks_url is not None
        if self._client is None:
            # building a client reads the CA bundle: keep that off the event loop
            self._client = await asyncio.to_thread(httpx.AsyncClient, timeout=_JWKS_FETCH_TIMEOUT)
            self._owns_client = True
        response = await self._client.get(self._settings.jwks_url, timeout=_JWKS_FETCH_TIMEOUT)
        response.raise_for_status()
        return _KeySet(response.json())

    def _read_file(self) -> _KeySet:
        assert self._settings.jwks_file is not None
        return _KeySet(json.loads(self._settings.jwks_file.read_text()))
