"""Bearer tokens over HTTP: every way a token can be wrong answers 401 with a reason."""

from __future__ import annotations

import time
from dataclasses import replace

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from hpcgate.auth.localauth import create_signing_key
from tests.server import ApiServer

pytestmark = [pytest.mark.site, pytest.mark.e2e]


def call(server: ApiServer, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(f"{server.url}/status/systems", headers=headers, timeout=30)


def assert_unauthorized(response: httpx.Response, fragment: str) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["errorType"] == "error"
    assert fragment.lower() in body["message"].lower()
    assert response.headers["www-authenticate"] == "Bearer"


def test_valid_token_is_accepted(api_server: ApiServer) -> None:
    response = call(api_server, api_server.token("hpcuser1"))
    assert response.status_code == 200
    assert response.headers["f7t-appversion"] == "2.6.0"


def test_missing_token(api_server: ApiServer) -> None:
    assert_unauthorized(call(api_server, None), "missing bearer token")


def test_expired_token(api_server: ApiServer) -> None:
    now = int(time.time())
    token = api_server.token(extra_claims={"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600})
    assert_unauthorized(call(api_server, token), "expired")


def test_wrong_audience(api_server: ApiServer) -> None:
    token = replace(api_server.issuer, audience="someone-else").mint("hpcuser1")
    assert_unauthorized(call(api_server, token), "audience")


def test_wrong_issuer(api_server: ApiServer) -> None:
    token = replace(api_server.issuer, issuer="https://evil.example").mint("hpcuser1")
    assert_unauthorized(call(api_server, token), "issuer")


def test_bad_signature(api_server: ApiServer) -> None:
    other_key = ec.generate_private_key(ec.SECP256R1())
    claims = jwt.decode(api_server.token(), options={"verify_signature": False})
    forged = jwt.encode(
        claims, other_key, algorithm="ES256", headers={"kid": api_server.issuer.kid}
    )
    assert_unauthorized(call(api_server, forged), "signature")


def test_unknown_kid(api_server: ApiServer, tmp_path) -> None:
    stranger = create_signing_key(tmp_path)
    token = replace(
        stranger, issuer=api_server.issuer.issuer, audience=api_server.issuer.audience
    ).mint("hpcuser1")
    assert_unauthorized(call(api_server, token), "unknown signing key")


def test_missing_username_claim(api_server: ApiServer) -> None:
    claims = jwt.decode(api_server.token(), options={"verify_signature": False})
    del claims["preferred_username"]
    token = jwt.encode(
        claims,
        api_server.issuer._load(),
        algorithm="ES256",
        headers={"kid": api_server.issuer.kid},
    )
    assert_unauthorized(call(api_server, token), "preferred_username")


def test_garbage_token(api_server: ApiServer) -> None:
    assert_unauthorized(call(api_server, "not-a-jwt"), "malformed")


def test_token_never_logged(api_server: ApiServer) -> None:
    token = api_server.token("hpcuser2")
    call(api_server, token)
    expired = api_server.token(extra_claims={"exp": int(time.time()) - 3600})
    call(api_server, expired)
    log = api_server.log()
    assert token not in log
    assert expired not in log
    assert token.split(".")[2] not in log


def test_liveness_needs_no_token(api_server: ApiServer) -> None:
    response = httpx.get(f"{api_server.url}/status/liveness/", timeout=10)
    assert response.status_code == 200
    assert api_server.system in response.json()["healthcheckRuns"]
