"""The configuration of the HTTP edge: ``http:``, ``rate_limit:`` and ``auth.jwks_url``.

Each bad value fails at load with the field's dotted name; the defaults are safe.
``jwks_url`` is checked on the host a fetch would connect to, not on a string prefix.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcgate.config import AuthSettings, ConfigError, HttpSettings, RateLimitSettings, load_settings

BASE: dict[str, Any] = {
    "auth": {"issuer": "https://idp.example", "audience": "hpc", "jwks_url": "https://idp/jwks"},
    "systems": [
        {
            "name": "cluster",
            "ssh": {"host": "login", "known_hosts": "/etc/ssh/known_hosts"},
            "credentials": {"kind": "ca", "ca_key": "/etc/hpcgate/ca"},
        }
    ],
}


def load(tmp_path: Path, **sections: Any) -> Any:
    path = tmp_path / "hpcgate.yaml"
    path.write_text(yaml.safe_dump({**BASE, **sections}))
    return load_settings(path)


def test_defaults_are_bounded() -> None:
    http = HttpSettings()
    assert http.max_json_body_bytes == 1024**2
    assert http.max_header_bytes == 64 * 1024
    assert http.max_headers == 100
    assert 0 < http.header_read_timeout_seconds <= 60
    assert 0 < http.body_read_timeout_seconds <= 60
    limits = RateLimitSettings()
    assert limits.enabled and limits.requests_per_second > 0 and limits.burst >= 1000


@pytest.mark.parametrize(
    ("section", "values", "field"),
    [
        ("http", {"max_json_body_bytes": 10}, "http.max_json_body_bytes"),
        ("http", {"max_json_body_bytes": 2 * 1024**3}, "http.max_json_body_bytes"),
        ("http", {"max_header_bytes": 100}, "http.max_header_bytes"),
        ("http", {"max_headers": 0}, "http.max_headers"),
        ("http", {"header_read_timeout_seconds": 0}, "http.header_read_timeout_seconds"),
        ("http", {"body_read_timeout_seconds": -1}, "http.body_read_timeout_seconds"),
        ("http", {"keep_alive_timeout_seconds": 0}, "http.keep_alive_timeout_seconds"),
        ("http", {"max_body": 1}, "http.max_body"),  # unknown fields are errors too
        ("rate_limit", {"requests_per_second": 0}, "rate_limit.requests_per_second"),
        ("rate_limit", {"burst": 0}, "rate_limit.burst"),
        ("rate_limit", {"max_users": 0}, "rate_limit.max_users"),
    ],
)
def test_a_bad_value_names_its_field(
    tmp_path: Path, section: str, values: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load(tmp_path, **{section: values})
    assert f"  {field}: " in str(error.value)


def test_good_values_load(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        http={"max_json_body_bytes": 4096, "body_read_timeout_seconds": 0.5},
        rate_limit={"enabled": False},
    )
    assert settings.http.max_json_body_bytes == 4096
    assert not settings.rate_limit.enabled


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1.evil.com/jwks",  # a prefix check passes this one
        "http://localhost@evil.example/jwks",  # and this one: the host is evil.example
        "http://localhost:80@evil.example/jwks",
        "http://127.0.0.1\\@evil.example/jwks",
        "http://evil.example#@127.0.0.1/",
        "http://evil.example?@127.0.0.1/",
        "http://evil\\@127.0.0.1/jwks",  # loopback to httpx, but user info: refused
        "http://localhost.evil.example/jwks",
        "http://idp.example/jwks",
        "http://10.0.0.1/jwks",
        "http://[::ffff:127.0.0.1]/jwks",
        "ftp://127.0.0.1/jwks",
        "https:///jwks",
        "not a url",
    ],
)
def test_jwks_url_must_be_https_or_a_parsed_loopback_host(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError) as error:
        load(tmp_path, auth={**BASE["auth"], "jwks_url": url})
    assert "  auth.jwks_url: " in str(error.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example/realms/hpc/protocol/openid-connect/certs",
        "http://127.0.0.1:8080/jwks",
        "http://127.8.9.10/jwks",
        "http://localhost:9000/jwks",
        "http://LOCALHOST/jwks",
        "http://[::1]:9000/jwks",
    ],
)
def test_jwks_url_https_or_loopback_is_accepted(url: str) -> None:
    settings = AuthSettings(issuer="i", audience="a", jwks_url=url)
    assert settings.jwks_url == url


def test_check_config_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, "http": {"max_headers": 1}}))
    result = subprocess.run(
        [sys.executable, "-m", "hpcgate.cli", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "http.max_headers" in result.stderr


def test_worker_settings_split_every_per_user_budget(tmp_path: Path) -> None:
    """Several workers never allow a user more than configured: each gets 1/N (at
    least 1) of the rate limit, the subscriber caps and the open streamed transfers."""
    from hpcgate.api.serving import worker_settings

    system = {
        **BASE["systems"][0],
        "watcher": {"max_subscribers": 1000, "max_subscribers_per_user": 100},
        "filesystem_limits": {"max_streams_per_user": 16},
    }
    settings = load(
        tmp_path, rate_limit={"requests_per_second": 50, "burst": 100}, systems=[system]
    )
    split = worker_settings(settings, 3)
    assert split.rate_limit.requests_per_second == pytest.approx(50 / 3)
    assert split.rate_limit.burst == 33
    (cluster,) = split.systems
    assert cluster.watcher.max_subscribers == 333
    assert cluster.watcher.max_subscribers_per_user == 33
    assert cluster.filesystem_limits.max_streams_per_user == 5
    tiny = worker_settings(settings.model_copy(), 64)
    assert tiny.systems[0].filesystem_limits.max_streams_per_user == 1
