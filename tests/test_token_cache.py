"""The verified-token cache of hpcgate.auth.tokens: a repeated token skips the
signature check, and nothing else changes what validation answers.

Real keys and real PyJWT: tokens signed by the local issuer, verified against its
JWKS file; time is moved by minting tokens whose window is in the past or future.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from hpcgate.auth.localauth import LocalIssuer, create_signing_key
from hpcgate.auth.tokens import TokenValidator
from hpcgate.config import AuthSettings
from hpcgate.errors import Unauthorized


@pytest.fixture
def issuer(tmp_path: Path) -> LocalIssuer:
    return create_signing_key(tmp_path / "keys")


def validator(issuer: LocalIssuer, **settings: Any) -> TokenValidator:
    return TokenValidator(
        AuthSettings(
            issuer=issuer.issuer,
            audience=issuer.audience,
            jwks_file=issuer.jwks_path,
            **settings,
        )
    )


def signatures_checked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count PyJWT decodes (the signature checks) by wrapping the real function."""
    seen: list[str] = []
    real = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return seen


async def test_a_repeated_token_is_verified_once(
    issuer: LocalIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = signatures_checked(monkeypatch)
    tokens = validator(issuer)
    token = issuer.mint("hpcuser1", scopes=["a", "b"])
    first = await tokens.validate(token)
    for _ in range(5):
        assert await tokens.validate(token) == first
    assert len(checks) == 1
    assert first.username == "hpcuser1" and first.scopes == {"a", "b"}
    # another token of the same user is checked on its own
    other = issuer.mint("hpcuser1")
    await tokens.validate(other)
    assert len(checks) == 2


async def test_a_tampered_token_is_not_the_cached_one(issuer: LocalIssuer) -> None:
    tokens = validator(issuer)
    token = issuer.mint("hpcuser1")
    await tokens.validate(token)
    head, payload, signature = token.split(".")
    forged = ".".join(
        [head, payload, signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")]
    )
    with pytest.raises(Unauthorized):
        await tokens.validate(forged)


async def test_expiry_is_checked_at_every_use(
    issuer: LocalIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = validator(issuer, leeway_seconds=0)
    token = issuer.mint("hpcuser1", lifetime_seconds=2)
    await tokens.validate(token)
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    monkeypatch.setattr(time, "time", lambda: expires + 1.0)
    with pytest.raises(Unauthorized, match="expired"):
        await tokens.validate(token)


async def test_leeway_applies_to_cached_tokens(
    issuer: LocalIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = validator(issuer, leeway_seconds=30)
    token = issuer.mint("hpcuser1", lifetime_seconds=2)
    await tokens.validate(token)
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    monkeypatch.setattr(time, "time", lambda: expires + 10.0)
    assert (await tokens.validate(token)).username == "hpcuser1"  # within the leeway
    monkeypatch.setattr(time, "time", lambda: expires + 31.0)
    with pytest.raises(Unauthorized, match="expired"):
        await tokens.validate(token)


async def test_not_before_is_checked_at_use(
    issuer: LocalIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = validator(issuer, leeway_seconds=0)
    token = issuer.mint("hpcuser1")
    await tokens.validate(token)
    not_before = jwt.decode(token, options={"verify_signature": False})["nbf"]
    monkeypatch.setattr(time, "time", lambda: not_before - 5.0)  # the clock went back
    with pytest.raises(Unauthorized, match="not yet valid"):
        await tokens.validate(token)


async def test_bounded_and_off(issuer: LocalIssuer, monkeypatch: pytest.MonkeyPatch) -> None:
    checks = signatures_checked(monkeypatch)
    tokens = validator(issuer, verified_cache_size=2)
    minted = [issuer.mint("hpcuser1") for _ in range(3)]
    for token in minted:
        await tokens.validate(token)
    assert len(tokens._verified) == 2
    await tokens.validate(minted[0])  # the oldest was dropped: checked again
    assert len(checks) == 4
    off = validator(issuer, verified_cache_size=0)
    for _ in range(3):
        await off.validate(minted[1])
    assert len(checks) == 7 and not off._verified


async def test_a_new_key_set_forgets_verified_tokens(
    issuer: LocalIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = validator(issuer, jwks_refresh_min_seconds=0)
    token = issuer.mint("hpcuser1")
    await tokens.validate(token)
    # a token with an unknown kid makes the validator reload the key set
    other = create_signing_key(issuer.key_path.parent.parent / "other")
    with pytest.raises(Unauthorized):
        await tokens.validate(other.mint("hpcuser1"))
    assert not tokens._verified
    checks = signatures_checked(monkeypatch)
    await tokens.validate(token)
    assert len(checks) == 1
