"""/status through the real server: systems, health, nodes, partitions, user info."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from tests.server import ApiServer, start_server

pytestmark = [pytest.mark.site, pytest.mark.e2e]


def test_systems_report_health_and_filesystems(api_server: ApiServer, site_env) -> None:
    with api_server.client() as client:
        response = client.get("/status/systems")
    assert response.status_code == 200
    [system] = response.json()["systems"]
    assert system["name"] == api_server.system
    assert system["ssh"]["port"] == site_env.ssh_port
    assert system["scheduler"]["type"] == "slurm"
    assert re.fullmatch(r"\d+\.\d+\.\d+", system["scheduler"]["version"])
    health = {(h["serviceType"], h.get("path")): h for h in system["servicesHealth"]}
    assert health[("ssh", None)]["healthy"] is True
    assert health[("scheduler", None)]["healthy"] is True
    fs_root = site_env["HPC_SITE_FS_ROOT"]
    assert health[("filesystem", f"{fs_root}/home")]["healthy"] is True
    assert all(h["lastChecked"] and h["latency"] is not None for h in health.values())
    [default] = [fs for fs in system["fileSystems"] if fs["defaultWorkDir"]]
    assert default["path"] == f"{fs_root}/home"


def test_nodes_partitions_reservations(api_server: ApiServer, site_env) -> None:
    with api_server.client() as client:
        nodes = client.get(f"/status/{api_server.system}/nodes")
        partitions = client.get(f"/status/{api_server.system}/partitions")
        reservations = client.get(f"/status/{api_server.system}/reservations")
    assert nodes.status_code == partitions.status_code == reservations.status_code == 200
    [node] = nodes.json()["nodes"]
    assert node["name"] == site_env["HPC_SITE_NODE"]
    names = {p["name"] for p in partitions.json()["partitions"]}
    assert names == {"compute", "xfer"}
    assert reservations.json()["reservations"] == []


def test_userinfo_is_the_callers(api_server: ApiServer) -> None:
    for user in ("hpcuser1", "hpcuser2"):
        with api_server.client(user) as client:
            response = client.get(f"/status/{api_server.system}/userinfo")
        assert response.status_code == 200
        info = response.json()
        assert info["user"]["name"] == user
        assert "project1" in {g["name"] for g in info["groups"]}


def test_unknown_system(api_server: ApiServer) -> None:
    with api_server.client() as client:
        response = client.get("/status/atlantis/nodes")
    assert response.status_code == 404
    assert "System not found" in response.json()["message"]


def test_required_scope_is_enforced(site_env, tmp_path) -> None:
    server = start_server(site_env, tmp_path, overrides={"required_scopes": ["hpc:compute"]})
    try:
        url = f"{server.url}/status/{server.system}/partitions"
        without = httpx.get(url, headers=server.headers(), timeout=30)
        assert without.status_code == 403
        assert "hpc:compute" in without.json()["message"]
        token = server.token(scopes=["openid", "hpc:compute"])
        with_scope = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert with_scope.status_code == 200
    finally:
        server.stop()


def test_unhealthy_scheduler_answers_503_with_reason(site_env, tmp_path) -> None:
    # the probe user cannot log in, so the checker marks ssh and scheduler unhealthy;
    # accounts come from the host's NSS (getent as nobody would fail: 503 before that)
    server = start_server(
        site_env,
        tmp_path,
        overrides={"service_user": "nobody", "accounts": {"source": "local"}},
    )
    try:
        with server.client() as client:
            systems = client.get("/status/systems").json()["systems"]
            scheduler = [h for h in systems[0]["servicesHealth"] if h["serviceType"] == "scheduler"]
            assert scheduler[0]["healthy"] is False
            # the server's own words, never sshd's or the shell's
            refused = "the system refused the service identity's SSH login"
            assert scheduler[0]["message"] == refused
            response = client.post(
                f"/compute/{server.system}/jobs",
                json={"job": {"workingDirectory": "/tmp", "script": "#!/bin/bash\ntrue\n"}},
            )
        assert response.status_code == 503
        assert "scheduler" in response.json()["message"]
        assert int(response.headers["retry-after"]) > 0
    finally:
        server.stop()


def test_openapi_and_docs_are_served(api_server: ApiServer) -> None:
    spec = httpx.get(f"{api_server.url}/openapi.json", timeout=10).json()
    for path in (
        "/status/systems",
        "/compute/{system_name}/jobs",
        "/compute/{system_name}/jobs/{job_id}",
    ):
        assert path in spec["paths"]
    assert httpx.get(f"{api_server.url}/docs", timeout=10).status_code == 200


def test_access_log_is_json_with_request_context(api_server: ApiServer) -> None:
    with api_server.client("hpcuser2") as client:
        client.get(
            f"/status/{api_server.system}/partitions", headers={"X-Request-ID": "log-probe-1"}
        )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [
            json.loads(line) for line in api_server.log().splitlines() if "log-probe-1" in line
        ]
        if lines:
            break
        time.sleep(0.1)
    [entry] = lines
    assert entry["logger"] == "hpcgate.access"
    assert entry["user"] == "hpcuser2"
    assert entry["system"] == api_server.system
    assert entry["route"] == "/status/{system_name}/partitions"
    assert entry["status"] == 200
    assert entry["duration_ms"] > 0
