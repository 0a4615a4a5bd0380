"""Bearer token validation (hpcgate.auth.tokens) and the local issuer (hpcgate.auth.localauth).

Real keys, real PyJWT, a real HTTP server on loopback for the JWKS URL source.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pydantic
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from hpcgate.auth.localauth import create_signing_key, keygen_command, token_command
from hpcgate.auth.tokens import Principal, TokenValidator, require_scopes
from hpcgate.config import AuthSettings
from hpcgate.errors import Forbidden, ServiceUnavailable, Unauthorized

ISSUER = "https://idp.example.test/realms/hpc"
AUDIENCE = "hpcgate"


# --- helpers -------------------------------------------------------------------------


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        data = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        data = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**data, "kid": kid, "use": "sig"}


def jwks(*pairs: tuple[Any, str]) -> dict[str, Any]:
    return {"keys": [public_jwk(key, kid) for key, kid in pairs]}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "f3a1c2",
        "preferred_username": "hpcuser1",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: Any, kid: str | None, payload: dict[str, Any] | None = None, alg: str = "ES256"):
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload if payload is not None else claims(), key, alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return (
        f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(signature)}"
    )


async def rejected(validator: TokenValidator, token: str) -> str:
    """The Unauthorized message for ``token``; checks the token is not echoed."""
    with pytest.raises(Unauthorized) as caught:
        await validator.validate(token)
    message = caught.value.message
    if len(token) > 8:
        assert token not in message
    return message


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key_a() -> ec.EllipticCurvePrivateKey:
    return new_ec_key()


@pytest.fixture(scope="module")
def key_b() -> ec.EllipticCurvePrivateKey:
    return new_ec_key()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


MakeValidator = Callable[..., TokenValidator]


@pytest.fixture
async def make_validator() -> AsyncIterator[MakeValidator]:
    """Build validators from AuthSettings keyword arguments; close them all afterwards."""
    made: list[TokenValidator] = []

    def make(**settings: Any) -> TokenValidator:
        values: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, **settings}
        http_client = values.pop("http_client", None)
        validator = TokenValidator(AuthSettings(**values), http_client=http_client)
        made.append(validator)
        return validator

    yield make
    for validator in made:
        await validator.aclose()


@pytest.fixture
def jwks_file(tmp_path: Path, key_a: ec.EllipticCurvePrivateKey) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks((key_a, "kid-a"))))
    return path


@pytest.fixture
def validator(make_validator: MakeValidator, jwks_file: Path) -> TokenValidator:
    return make_validator(jwks_file=jwks_file)


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 in a thread, counting the requests it answers."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.requests = 0
        self.delay = 0.0
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                time.sleep(outer.delay)
                body = json.dumps(outer.document).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.thread = threading.Thread(
            target=lambda: self.httpd.serve_forever(poll_interval=0.02), daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def jwks_server(key_a: ec.EllipticCurvePrivateKey) -> Iterator[JwksServer]:
    server = JwksServer()
    server.document = jwks((key_a, "kid-a"))
    yield server
    server.close()


# --- the basics ----------------------------------------------------------------------


async def test_good_token(validator: TokenValidator, key_a: Any) -> None:
    token = sign(key_a, "kid-a", claims(scope="firecrest-v2 openid"))
    principal = await validator.validate(token)
    assert isinstance(principal, Principal)
    assert principal.username == "hpcuser1"
    assert principal.scopes == frozenset({"firecrest-v2", "openid"})
    assert principal.claims["sub"] == "f3a1c2"
    assert principal.claims["iss"] == ISSUER
    with pytest.raises(pydantic.ValidationError):
        principal.username = "root"  # type: ignore[misc]


async def test_rsa_key_and_audience_list(
    make_validator: MakeValidator, tmp_path: Path, rsa_key: Any
) -> None:
    path = tmp_path / "rsa.json"
    path.write_text(json.dumps(jwks((rsa_key, "rsa-1"))))
    validator = make_validator(jwks_file=path)
    token = sign(rsa_key, "rsa-1", claims(aud=["account", AUDIENCE]), alg="RS256")
    assert (await validator.validate(token)).username == "hpcuser1"
    # an ES256 header cannot select an RSA key
    forged = raw_token({"alg": "ES256", "kid": "rsa-1"}, claims(), b"\x00" * 64)
    assert await rejected(validator, forged) == "Token algorithm does not match its signing key"


async def test_unauthorized_is_401_with_bearer_challenge(
    validator: TokenValidator, key_a: Any
) -> None:
    with pytest.raises(Unauthorized) as caught:
        await validator.validate(sign(key_a, "kid-a", claims(exp=int(time.time()) - 600)))
    assert caught.value.status_code == 401
    assert caught.value.headers == {"WWW-Authenticate": "Bearer"}


async def test_expired(validator: TokenValidator, key_a: Any) -> None:
    now = int(time.time())
    token = sign(key_a, "kid-a", claims(iat=now - 900, nbf=now - 900, exp=now - 60))
    assert await rejected(validator, token) == "Token expired"


async def test_leeway_honoured(make_validator: MakeValidator, jwks_file: Path, key_a: Any) -> None:
    now = int(time.time())
    token = sign(key_a, "kid-a", claims(iat=now - 600, nbf=now - 600, exp=now - 10))
    lenient = make_validator(jwks_file=jwks_file, leeway_seconds=30)
    assert (await lenient.validate(token)).username == "hpcuser1"
    strict = make_validator(jwks_file=jwks_file, leeway_seconds=0)
    assert await rejected(strict, token) == "Token expired"
    # the same leeway applies to nbf
    early = sign(key_a, "kid-a", claims(nbf=now + 10))
    assert (await lenient.validate(early)).username == "hpcuser1"
    assert await rejected(strict, early) == "Token not yet valid"


async def test_not_yet_valid(validator: TokenValidator, key_a: Any) -> None:
    now = int(time.time())
    assert await rejected(validator, sign(key_a, "kid-a", claims(nbf=now + 600))) == (
        "Token not yet valid"
    )
    issued_later = sign(key_a, "kid-a", claims(iat=now + 600, nbf=None))
    assert await rejected(validator, issued_later) == "Token not yet valid"


async def test_wrong_audience(validator: TokenValidator, key_a: Any) -> None:
    assert await rejected(validator, sign(key_a, "kid-a", claims(aud="other"))) == (
        "Invalid token audience"
    )
    listed = sign(key_a, "kid-a", claims(aud=["account", "other"]))
    assert await rejected(validator, listed) == "Invalid token audience"
    assert await rejected(validator, sign(key_a, "kid-a", claims(aud=None))) == (
        "Token lacks claim 'aud'"
    )


async def test_wrong_issuer(validator: TokenValidator, key_a: Any) -> None:
    token = sign(key_a, "kid-a", claims(iss="https://evil.example.test"))
    assert await rejected(validator, token) == "Invalid token issuer"
    assert await rejected(validator, sign(key_a, "kid-a", claims(iss=None))) == (
        "Token lacks claim 'iss'"
    )


async def test_exp_required(validator: TokenValidator, key_a: Any) -> None:
    assert await rejected(validator, sign(key_a, "kid-a", claims(exp=None))) == (
        "Token lacks claim 'exp'"
    )


async def test_bad_signature(validator: TokenValidator, key_a: Any, key_b: Any) -> None:
    # signed by another key that claims the trusted kid
    assert await rejected(validator, sign(key_b, "kid-a")) == "Invalid token signature"
    # a good token with its payload swapped
    good = sign(key_a, "kid-a").split(".")
    payload = b64(json.dumps(claims(preferred_username="root")).encode())
    assert await rejected(validator, f"{good[0]}.{payload}.{good[2]}") == (
        "Invalid token signature"
    )


async def test_unknown_kid(validator: TokenValidator, key_b: Any) -> None:
    assert await rejected(validator, sign(key_b, "kid-b")) == "Unknown signing key"


async def test_token_without_kid(
    make_validator: MakeValidator, tmp_path: Path, key_a: Any, key_b: Any
) -> None:
    single = tmp_path / "single.json"
    single.write_text(json.dumps(jwks((key_a, "kid-a"))))
    assert (await make_validator(jwks_file=single).validate(sign(key_a, None))).username == (
        "hpcuser1"
    )
    double = tmp_path / "double.json"
    double.write_text(json.dumps(jwks((key_a, "kid-a"), (key_b, "kid-b"))))
    message = await rejected(make_validator(jwks_file=double), sign(key_a, None))
    assert "kid" in message


async def test_username_claim(
    make_validator: MakeValidator, validator: TokenValidator, jwks_file: Path, key_a: Any
) -> None:
    missing = sign(key_a, "kid-a", claims(preferred_username=None))
    assert await rejected(validator, missing) == "Token lacks claim 'preferred_username'"
    empty = sign(key_a, "kid-a", claims(preferred_username=""))
    assert await rejected(validator, empty) == "Token lacks claim 'preferred_username'"
    for bad in (42, ["hpcuser1"], "../etc", "-oProxyCommand=x", "a b", "x\n"):
        token = sign(key_a, "kid-a", claims(preferred_username=bad))
        assert "preferred_username" in await rejected(validator, token)
    by_sub = make_validator(jwks_file=jwks_file, username_claim="sub")
    assert (await by_sub.validate(sign(key_a, "kid-a"))).username == "f3a1c2"


async def test_scopes_from_string_and_list(
    make_validator: MakeValidator, validator: TokenValidator, jwks_file: Path, key_a: Any
) -> None:
    from_string = sign(key_a, "kid-a", claims(scope="  a  b\tc "))
    assert (await validator.validate(from_string)).scopes == frozenset({"a", "b", "c"})
    no_scope = await validator.validate(sign(key_a, "kid-a"))
    assert no_scope.scopes == frozenset()
    scp = make_validator(jwks_file=jwks_file, scope_claim="scp")
    from_list = sign(key_a, "kid-a", claims(scp=["x", "y", "x"]))
    assert (await scp.validate(from_list)).scopes == frozenset({"x", "y"})
    bad = sign(key_a, "kid-a", claims(scp=["x", 3]))
    assert "scp" in await rejected(scp, bad)


def test_require_scopes() -> None:
    principal = Principal(username="u", scopes=frozenset({"read", "write"}), claims={})
    require_scopes(principal, [])
    require_scopes(principal, ["read", "write"])
    with pytest.raises(Forbidden) as caught:
        require_scopes(principal, ["read", "admin", "jobs"])
    assert caught.value.status_code == 403
    assert "admin" in caught.value.message and "jobs" in caught.value.message
    assert "read" not in caught.value.message


@pytest.mark.parametrize(
    "token",
    [
        "",
        "   ",
        "not-a-jwt",
        "a.b",
        "a.b.c",
        "!!!.###.$$$",
        "eyJhbGciOiJFUzI1NiJ9.e30",
        f"{b64(b'[1, 2]')}.{b64(b'{}')}.",
        f"{b64(b'not json')}.{b64(b'{}')}.",
        "x" * 40_000,
    ],
)
async def test_malformed_strings(validator: TokenValidator, token: str) -> None:
    assert await rejected(validator, token) == "Malformed token"


async def test_malformed_but_signed(validator: TokenValidator, key_a: Any) -> None:
    kid_not_string = raw_token({"alg": "ES256", "kid": 7}, claims())
    assert await rejected(validator, kid_not_string) == "Malformed token"
    signer = jwt.PyJWS()
    not_json = signer.encode(b"not json", key_a, "ES256", headers={"kid": "kid-a"})
    assert await rejected(validator, not_json) == "Malformed token"
    a_list = signer.encode(b"[1, 2]", key_a, "ES256", headers={"kid": "kid-a"})
    assert await rejected(validator, a_list) == "Malformed token"
    bad_exp = sign(key_a, "kid-a", claims(exp="tomorrow"))
    assert await rejected(validator, bad_exp) == "Malformed token"


async def test_alg_none_refused(validator: TokenValidator) -> None:
    for alg in ("none", "None", "NONE"):
        token = raw_token({"alg": alg, "kid": "kid-a", "typ": "JWT"}, claims())
        assert await rejected(validator, token) == "Token algorithm not allowed"
    assert await rejected(validator, raw_token({"kid": "kid-a"}, claims())) == (
        "Token algorithm not allowed"
    )


async def test_hmac_with_public_key_refused(
    make_validator: MakeValidator, tmp_path: Path, rsa_key: Any, key_a: Any
) -> None:
    """The classic confusion: HS256 keyed with the issuer's public key material."""
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks((rsa_key, "rsa-1"), (key_a, "kid-a"))))
    # even a configuration that lists HS256 must not accept it against a JWKS
    validator = make_validator(jwks_file=path, algorithms=["RS256", "ES256", "HS256"])
    for kid, key in (("rsa-1", rsa_key), ("kid-a", key_a)):
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        secrets = [pem, json.dumps(public_jwk(key, kid)).encode()]
        for secret in secrets:
            header = b64(json.dumps({"alg": "HS256", "kid": kid}).encode())
            payload = b64(json.dumps(claims()).encode())
            mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
            token = f"{header}.{payload}.{b64(mac)}"
            assert await rejected(validator, token) == "Token algorithm not allowed"
    # and the proper RS256 token on the same validator still passes
    assert (await validator.validate(sign(rsa_key, "rsa-1", alg="RS256"))).username == "hpcuser1"


async def test_algorithm_outside_settings_refused(
    make_validator: MakeValidator, tmp_path: Path, rsa_key: Any
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks((rsa_key, "rsa-1"))))
    validator = make_validator(jwks_file=path, algorithms=["ES256"])
    token = sign(rsa_key, "rsa-1", alg="RS256")
    assert await rejected(validator, token) == "Token algorithm not allowed"


async def test_token_never_logged(
    validator: TokenValidator, key_a: Any, key_b: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hpcgate")
    tokens = [sign(key_a, "kid-a"), sign(key_b, "kid-b"), sign(key_b, "kid-a")]
    for token in tokens:
        try:
            await validator.validate(token)
        except Unauthorized:
            pass
    assert caplog.records, "expected some auth log lines"
    for token in tokens:
        for part in token.split("."):
            assert part not in caplog.text


# --- the JWKS file source ------------------------------------------------------------


async def test_file_reread_on_unknown_kid(
    make_validator: MakeValidator, jwks_file: Path, key_a: Any, key_b: Any
) -> None:
    validator = make_validator(jwks_file=jwks_file, jwks_refresh_min_seconds=0)
    assert (await validator.validate(sign(key_a, "kid-a"))).username == "hpcuser1"
    jwks_file.write_text(json.dumps(jwks((key_a, "kid-a"), (key_b, "kid-b"))))
    assert (await validator.validate(sign(key_b, "kid-b"))).username == "hpcuser1"
    assert (await validator.validate(sign(key_a, "kid-a"))).username == "hpcuser1"


async def test_file_reread_is_rate_limited(
    make_validator: MakeValidator, jwks_file: Path, key_a: Any, key_b: Any
) -> None:
    validator = make_validator(jwks_file=jwks_file, jwks_refresh_min_seconds=60)
    await validator.start()
    jwks_file.write_text(json.dumps(jwks((key_a, "kid-a"), (key_b, "kid-b"))))
    assert await rejected(validator, sign(key_b, "kid-b")) == "Unknown signing key"


async def test_broken_file_keeps_the_old_keys(
    make_validator: MakeValidator, jwks_file: Path, key_a: Any, key_b: Any
) -> None:
    validator = make_validator(jwks_file=jwks_file, jwks_refresh_min_seconds=0)
    await validator.start()
    jwks_file.write_text("{not json")
    assert await rejected(validator, sign(key_b, "kid-b")) == "Unknown signing key"
    assert (await validator.validate(sign(key_a, "kid-a"))).username == "hpcuser1"


async def test_missing_file_is_service_unavailable(
    make_validator: MakeValidator, tmp_path: Path, key_a: Any
) -> None:
    validator = make_validator(jwks_file=tmp_path / "absent.json")
    with pytest.raises(ServiceUnavailable):
        await validator.validate(sign(key_a, "kid-a"))


# --- the JWKS URL source -------------------------------------------------------------


async def test_url_rotation(
    make_validator: MakeValidator, jwks_server: JwksServer, key_a: Any, key_b: Any
) -> None:
    validator = make_validator(jwks_url=jwks_server.url, jwks_refresh_min_seconds=0)
    assert (await validator.validate(sign(key_a, "kid-a"))).username == "hpcuser1"
    assert (await validator.validate(sign(key_a, "kid-a"))).username == "hpcuser1"
    assert jwks_server.requests == 1  # cached

    jwks_server.document = jwks((key_b, "kid-b"))  # the issuer rotates
    assert (await validator.validate(sign(key_b, "kid-b"))).username == "hpcuser1"
    assert jwks_server.requests == 2
    # the old key is gone from the set now
    assert await rejected(validator, sign(key_a, "kid-a")) == "Unknown signing key"
    assert jwks_server.requests == 3


async def test_url_refresh_rate_limited(
    make_validator: MakeValidator, jwks_server: JwksServer, key_a: Any, key_b: Any
) -> None:
    validator = make_validator(jwks_url=jwks_server.url, jwks_refresh_min_seconds=0.3)
    assert (await validator.validate(sign(key_a, "kid-a"))).username == "hpcuser1"
    jwks_server.document = jwks((key_a, "kid-a"), (key_b, "kid-b"))
    for n in range(5):
        assert await rejected(validator, sign(key_b, f"junk-{n}")) == "Unknown signing key"
    assert await rejected(validator, sign(key_b, "kid-b")) == "Unknown signing key"
    assert jwks_server.requests == 1  # no refresh inside the window

    await asyncio.sleep(0.35)
    assert (await validator.validate(sign(key_b, "kid-b"))).username == "hpcuser1"
    assert jwks_server.requests == 2
    assert await rejected(validator, sign(key_b, "junk-late")) == "Unknown signing key"
    assert jwks_server.requests == 2


async def test_url_concurrent_refreshes_coalesce(
    make_validator: MakeValidator, jwks_server: JwksServer, key_a: Any, key_b: Any
) -> None:
    validator = make_validator(jwks_url=jwks_server.url, jwks_refresh_min_seconds=0)
    jwks_server.delay = 0.05
    await validator.start()
    assert jwks_server.requests == 1
    jwks_server.document = jwks((key_a, "kid-a"), (key_b, "kid-b"))
    token = sign(key_b, "kid-b")
    principals = await asyncio.gather(*(validator.validate(token) for _ in range(20)))
    assert {p.username for p in principals} == {"hpcuser1"}
    assert jwks_server.requests == 2


async def test_url_with_given_client_and_outage(
    make_validator: MakeValidator, jwks_server: JwksServer, key_a: Any, key_b: Any
) -> None:
    async with httpx.AsyncClient() as client:
        validator = make_validator(
            jwks_url=jwks_server.url, jwks_refresh_min_seconds=0, http_client=client
        )
        assert (await validator.validate(sign(key_a, "kid-a"))).username == "hpcuser1"
        jwks_server.status = 500  # the issuer fails: the cached keys keep working
        assert await rejected(validator, sign(key_b, "kid-b")) == "Unknown signing key"
        assert (await validator.validate(sign(key_a, "kid-a"))).username == "hpcuser1"
        await validator.aclose()
        assert not client.is_closed  # not ours to close


async def test_url_unreachable_is_service_unavailable(
    make_validator: MakeValidator, key_a: Any
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    validator = make_validator(jwks_url=f"http://127.0.0.1:{port}/jwks.json")
    with pytest.raises(ServiceUnavailable):
        await validator.validate(sign(key_a, "kid-a"))


# --- the local issuer and its commands -----------------------------------------------


def thumbprint(jwk: dict[str, Any]) -> str:
    members = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    return b64(hashlib.sha256(canonical).digest())


async def test_local_issuer(make_validator: MakeValidator, tmp_path: Path) -> None:
    issuer = create_signing_key(tmp_path / "keys")
    assert issuer.issuer == "hpcgate-local" and issuer.audience == "hpcgate"
    assert issuer.key_path.stat().st_mode & 0o777 == 0o600
    published = json.loads(issuer.jwks_path.read_text())["keys"]
    assert len(published) == 1
    assert published[0]["kid"] == thumbprint(published[0]) == issuer.kid
    assert "d" not in published[0]  # no private member in the JWKS

    again = create_signing_key(tmp_path / "keys")  # idempotent: same key
    assert again.key_path.read_bytes() == issuer.key_path.read_bytes()
    assert json.loads(again.jwks_path.read_text())["keys"] == published

    token = issuer.mint("hpcuser2", lifetime_seconds=120, scopes=["a", "b"])
    assert jwt.get_unverified_header(token)["kid"] == issuer.kid
    validator = make_validator(
        issuer=issuer.issuer, audience=issuer.audience, jwks_file=issuer.jwks_path
    )
    principal = await validator.validate(token)
    assert principal.username == "hpcuser2"
    assert principal.scopes == frozenset({"a", "b"})
    got = principal.claims
    assert got["sub"] == "hpcuser2" and got["exp"] - got["iat"] == 120
    assert got["nbf"] == got["iat"] and got["jti"]
    other = issuer.mint("hpcuser2")
    assert jwt.decode(other, options={"verify_signature": False})["jti"] != got["jti"]


def test_keygen_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "k"
    assert keygen_command(["--key-dir", str(directory)]) == 0
    lines = capsys.readouterr().out.split()
    assert lines == [str(directory / "signing-key.pem"), str(directory / "jwks.json")]
    first = (directory / "signing-key.pem").read_bytes()
    assert keygen_command(["--key-dir", str(directory)]) == 0
    assert (directory / "signing-key.pem").read_bytes() == first


async def test_token_command_prints_a_valid_token(
    make_validator: MakeValidator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HPCGATE_LOCAL_KEYS", str(tmp_path / "env-keys"))
    argv = ["--user", "hpcuser1", "--lifetime", "600", "--scope", "s1", "--scope", "s2"]
    assert token_command(argv) == 0
    out = capsys.readouterr().out
    token = out.strip()
    assert out == token + "\n" and token.count(".") == 2
    validator = make_validator(
        issuer="hpcgate-local",
        audience="hpcgate",
        jwks_file=tmp_path / "env-keys" / "jwks.json",
    )
    principal = await validator.validate(token)
    assert principal.username == "hpcuser1"
    assert principal.scopes == frozenset({"s1", "s2"})
    assert principal.claims["exp"] - principal.claims["iat"] == 600

    argv = ["--user", "u2", "--key-dir", str(tmp_path / "k2"), "--audience", "x"]
    assert token_command(argv) == 0
    other = capsys.readouterr().out.strip()
    assert jwt.decode(other, options={"verify_signature": False})["aud"] == "x"
