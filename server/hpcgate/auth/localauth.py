"""The embedded identity for local use: an ES256 key pair that mints bearer tokens.

``hpcgate keygen`` creates the key and its JWKS; ``hpcgate token --user NAME`` prints
a token that a server configured with ``auth.jwks_file`` pointing at that JWKS accepts.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "DEFAULT_AUDIENCE",
    "DEFAULT_ISSUER",
    "LocalIssuer",
    "create_signing_key",
    "default_key_dir",
    "keygen_command",
    "token_command",
]

DEFAULT_ISSUER = "hpcgate-local"
DEFAULT_AUDIENCE = "hpcgate"
KEY_FILE = "signing-key.pem"
JWKS_FILE = "jwks.json"
_ALGORITHM = "ES256"


def default_key_dir() -> Path:
    """``$HPCGATE_LOCAL_KEYS``, else ``./.site/hpcgate-keys``."""
    return Path(os.environ.get("HPCGATE_LOCAL_KEYS") or Path(".site") / "hpcgate-keys")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """The public JWK of a P-256 key, ``kid`` being its RFC 7638 thumbprint."""
    numbers = key.public_key().public_numbers()
    size = (key.curve.key_size + 7) // 8
    members = {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64url(numbers.x.to_bytes(size, "big")),
        "y": _b64url(numbers.y.to_bytes(size, "big")),
    }
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    kid = _b64url(hashlib.sha256(canonical).digest())
    return {**members, "kid": kid, "use": "sig", "alg": _ALGORITHM}


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{path} is not an EC P-256 private key")
    return key


def _write_new_key(path: Path) -> None:
    """Create the private key file (0600) unless it exists; a concurrent creator wins."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


def _write_if_changed(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(path)


@dataclass
class LocalIssuer:
    """Mints tokens signed with the local key; its JWKS file verifies them."""

    key_path: Path
    jwks_path: Path
    issuer: str = DEFAULT_ISSUER
    audience: str = DEFAULT_AUDIENCE
    _key: ec.EllipticCurvePrivateKey | None = field(default=None, init=False, repr=False)
    _kid: str | None = field(default=None, init=False, repr=False)

    @property
    def kid(self) -> str:
        """The key id (RFC 7638 thumbprint) tokens carry in their header."""
        self._load()
        assert self._kid is not None
        return self._kid

    def _load(self) -> ec.EllipticCurvePrivateKey:
        if self._key is None:
            self._key = _load_key(self.key_path)
            self._kid = _public_jwk(self._key)["kid"]
        return self._key

    def mint(
        self,
        username: str,
        *,
        lifetime_seconds: int = 3600,
        scopes: list[str] | None = None,
        extra_claims: dict[str, Any] | None = None,
    ) -> str:
        """A signed token for ``username`` valid for ``lifetime_seconds`` from now."""
        if not username:
            raise ValueError("username must not be empty")
        if lifetime_seconds <= 0:
            raise ValueError("lifetime_seconds must be positive")
        key = self._load()
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": username,
            "preferred_username": username,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime_seconds,
            "jti": uuid.uuid4().hex,
        }
        if scopes:
            claims["scope"] = " ".join(scopes)
        claims.update(extra_claims or {})
        return jwt.encode(claims, key, algorithm=_ALGORITHM, headers={"kid": self.kid})


def create_signing_key(
    directory: Path,
    *,
    issuer: str = DEFAULT_ISSUER,
    audience: str = DEFAULT_AUDIENCE,
) -> LocalIssuer:
    """Create (or reuse) ``signing-key.pem`` and ``jwks.json`` in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path = directory / KEY_FILE
    jwks_path = directory / JWKS_FILE
    if not key_path.exists():
        _write_new_key(key_path)
    key = _load_key(key_path)
    jwks = {"keys": [_public_jwk(key)]}
    _write_if_changed(jwks_path, json.dumps(jwks, indent=2) + "\n")
    return LocalIssuer(key_path=key_path, jwks_path=jwks_path, issuer=issuer, audience=audience)


def _key_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key-dir",
        type=Path,
        default=None,
        help="directory of signing-key.pem and jwks.json "
        "(default: $HPCGATE_LOCAL_KEYS, else ./.site/hpcgate-keys)",
    )


def token_command(argv: list[str] | None = None) -> int:
    """``hpcgate token``: print a locally signed bearer token on stdout."""
    parser = argparse.ArgumentParser(
        prog="hpcgate token", description="Print a bearer token signed with the local key."
    )
    parser.add_argument("--user", required=True, help="user name (preferred_username, sub)")
    _key_dir_argument(parser)
    parser.add_argument("--lifetime", type=int, default=3600, help="seconds (default 3600)")
    parser.add_argument(
        "--scope", action="append", default=[], help="a scope to grant (repeatable)"
    )
    parser.add_argument("--issuer", default=DEFAULT_ISSUER)
    parser.add_argument("--audience", default=DEFAULT_AUDIENCE)
    args = parser.parse_args(argv)
    if args.lifetime <= 0:
        parser.error("--lifetime must be positive")
    try:
        issuer = create_signing_key(
            args.key_dir or default_key_dir(), issuer=args.issuer, audience=args.audience
        )
        token = issuer.mint(args.user, lifetime_seconds=args.lifetime, scopes=args.scope)
    except (OSError, ValueError) as exc:
        print(f"hpcgate token: {exc}", file=sys.stderr)
        return 1
    print(token)
    return 0


def keygen_command(argv: list[str] | None = None) -> int:
    """``hpcgate keygen``: create the local key pair (if missing) and print its paths."""
    parser = argparse.ArgumentParser(
        prog="hpcgate keygen",
        description="Create the local signing key and JWKS (kept if present); "
        "print the key path, then the JWKS path.",
    )
    _key_dir_argument(parser)
    args = parser.parse_args(argv)
    try:
        issuer = create_signing_key(args.key_dir or default_key_dir())
    except (OSError, ValueError) as exc:
        print(f"hpcgate keygen: {exc}", file=sys.stderr)
        return 1
    print(issuer.key_path)
    print(issuer.jwks_path)
    return 0
