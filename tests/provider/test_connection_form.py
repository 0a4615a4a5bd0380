"""The connection as a person fills it in: the form's metadata, the API URL as typed,
and what Test says when something is wrong (real sockets on loopback, no fakes)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from airflow_provider_hpc.get_provider_info import NAME, get_provider_info
from airflow_provider_hpc.hooks.config import HpcConfigError, HpcConnectionConfig
from airflow_provider_hpc.hooks.hpc import HpcHook
from airflow_provider_hpc.hooks.retry import RetryPolicy


def _conn(**kw: object) -> SimpleNamespace:
    base = {"conn_id": "c", "host": "api.test", "schema": None, "port": None, "login": None}
    return SimpleNamespace(**{**base, "password": None, **kw})


def test_the_form_offers_no_null_choice_and_explains_every_field() -> None:
    [conn_type] = get_provider_info()["connection-types"]
    fields = conn_type["conn-fields"]
    auth = fields["auth_method"]["schema"]
    assert auth["enum"] == ["token", "oauth2"] and None not in auth["enum"]
    assert set(auth["values_display"]) == set(auth["enum"])
    for name, field in fields.items():
        assert field.get("description"), f"{name} has no description"
    for name in ("token_url", "client_id", "client_secret", "scope", "audience"):
        assert fields[name]["label"].startswith("OAuth2 ")
        assert "Only with Auth method oauth2" in fields[name]["description"]
    # Airflow 3.3's form shows no placeholder for extra fields: examples are in the text
    for name in ("system", "token_url", "client_id", "ca_bundle"):
        assert "e.g." in fields[name]["description"], name


def test_one_name_for_provider_integration_connection_type_and_hook() -> None:
    info = get_provider_info()
    [conn_type] = info["connection-types"]
    assert info["name"] == NAME == conn_type["hook-name"] == HpcHook.hook_name
    assert {i["integration-name"] for i in info["integrations"]} == {NAME}
    assert info["description"].startswith(NAME)


@pytest.mark.parametrize(
    ("fields", "url", "guessed"),
    [
        ({"host": "127.0.0.1", "port": 8000}, "http://127.0.0.1:8000", True),
        ({"host": "localhost:8000/api/"}, "http://localhost:8000/api", True),
        ({"host": "[::1]", "port": 8000}, "http://[::1]:8000", True),
        ({"host": "hpc.example.org"}, "https://hpc.example.org", True),
        ({"host": "hpc.example.org/v2", "port": 8443}, "https://hpc.example.org:8443/v2", True),
        (
            {"host": "hpc.example.org", "schema": "http", "port": 80},
            "http://hpc.example.org:80",
            True,
        ),
        ({"host": "http://127.0.0.1:8000", "port": 0}, "http://127.0.0.1:8000", False),
        ({"host": "127.0.0.1:8000", "port": 0}, "http://127.0.0.1:8000", True),
    ],
)
def test_an_api_url_without_a_scheme_gets_a_sane_one(
    fields: dict[str, object], url: str, guessed: bool
) -> None:
    config = HpcConnectionConfig.from_connection(_conn(**fields), {})
    assert (config.base_url, config.scheme_guessed) == (url, guessed)


@pytest.mark.parametrize(
    ("host", "match"),
    [("", "set the API URL"), ("ftp://h", "must be http"), ("http://h:port", "not a URL")],
)
def test_a_bad_api_url_is_refused_with_the_fix(host: str, match: str) -> None:
    with pytest.raises(HpcConfigError, match=match):
        HpcConnectionConfig.from_connection(_conn(host=host), {})


def _hook(monkeypatch: pytest.MonkeyPatch, conn_id: str, **conn: object) -> HpcHook:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "hpc", **conn}))
    return HpcHook(conn_id, retry=RetryPolicy(max_retries=0))


def test_test_never_names_airflows_temporary_connection_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The UI's Test button runs under a random id: the message is about the fields."""
    hook = _hook(
        monkeypatch,
        "tmpx7q2k9zr",
        host="https://hpc.example.org",
        extra={"auth_method": "oauth2", "client_id": "airflow"},
    )
    ok, message = hook.test_connection()
    assert not ok
    assert "tmpx7q2k9zr" not in message
    assert "OAuth2 token URL" in message and "OAuth2 client secret" in message


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_refused_connection_names_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()
    hook = _hook(monkeypatch, "refused", host=f"http://127.0.0.1:{port}/api", password="t")
    ok, message = hook.test_connection()
    assert not ok
    assert f"http://127.0.0.1:{port}/api/status/systems" in message
    assert "connection refused" in message


@pytest.fixture
def plain_http() -> Iterator[int]:
    """A plain-HTTP server on loopback (what a TLS client must not mistake for a TLS bug)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_https_spoken_to_plain_http_says_to_write_http(
    monkeypatch: pytest.MonkeyPatch, plain_http: int
) -> None:
    hook = _hook(monkeypatch, "tls", host=f"https://127.0.0.1:{plain_http}", password="t")
    ok, message = hook.test_connection()
    assert not ok
    assert f"https://127.0.0.1:{plain_http}/status/systems" in message
    assert "does not speak HTTPS" in message and "http://" in message
    assert "WRONG_VERSION_NUMBER" not in message
