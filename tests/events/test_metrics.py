"""/metrics in Prometheus text format."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server import ApiServer, start_server
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e]

FAMILIES = {
    "hpcgate_http_requests",
    "hpcgate_http_request_duration_seconds",
    "hpcgate_scheduler_commands",
    "hpcgate_scheduler_command_duration_seconds",
    "hpcgate_ssh_connections",
    "hpcgate_ssh_channels_in_use",
    "hpcgate_watcher_interval_seconds",
    "hpcgate_watcher_lag_seconds",
    "hpcgate_watcher_jobs_tracked",
    "hpcgate_watcher_rounds",
    "hpcgate_sse_subscribers",
    "hpcgate_longpoll_waiters",
}


def test_metrics_text_format(events_server: ApiServer) -> None:
    with events_server.client() as c:
        assert c.get(f"/compute/{events_server.system}/jobs").status_code == 200
        assert c.get("/no/such/path/12345").status_code == 404
    answer = httpx.get(f"{events_server.url}/metrics")  # no token needed by default
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    assert FAMILIES <= set(families)
    routes = {
        s.labels["route"] for s in families["hpcgate_http_requests"].samples if "route" in s.labels
    }
    assert "/compute/{system_name}/jobs" in routes
    assert "<unmatched>" in routes
    assert not any("12345" in route for route in routes)
    kinds = {s.labels["command"] for s in families["hpcgate_scheduler_commands"].samples}
    assert {"squeue", "sacct"} <= kinds
    # no user names anywhere
    assert "hpcuser" not in answer.text


def test_metrics_scrape_token(site_env: SiteEnv, tmp_path: Path) -> None:
    token_file = tmp_path / "scrape-token"
    token_file.write_text("s3cret-token\n")
    server = start_server(
        site_env, tmp_path, settings_overrides={"metrics": {"bearer_token_file": str(token_file)}}
    )
    try:
        assert httpx.get(f"{server.url}/metrics").status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.get(f"{server.url}/metrics", headers=wrong).status_code == 401
        right = {"Authorization": "Bearer s3cret-token"}
        assert httpx.get(f"{server.url}/metrics", headers=right).status_code == 200
    finally:
        server.stop()
