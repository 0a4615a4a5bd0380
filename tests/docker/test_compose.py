"""docker/compose.yaml: validated by the compose tool, then brought up once for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import httpx
import pytest
import yaml

from tests.docker.stack import COMPOSE, REPO, engine

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
COMPOSE_FILE = REPO / "docker" / "compose.yaml"


def compose_command() -> list[str]:
    """``docker compose`` (v2 plugin) when the CLI has it, else Debian's ``docker-compose``."""
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if probe.returncode == 0:
        return ["docker", "compose"]
    tool = shutil.which("docker-compose")
    assert tool, "no compose tool: scripts/docker-engine up installs Debian's docker-compose"
    return [tool]


def compose_env() -> dict[str, str]:
    return {
        **os.environ,
        **COMPOSE.site_env,
        "HPCGATE_PORT": str(COMPOSE.server),
        "AIRFLOW_PORT": str(COMPOSE.airflow),
        "AIRFLOW_LOG_PORTS": COMPOSE.log_ports,
    }


def compose(project: str, *args: str, timeout: float = 600) -> str:
    command = [*compose_command(), "-p", project, "-f", str(COMPOSE_FILE), *args]
    result = subprocess.run(
        command, env=compose_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{command}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result.stdout


def test_compose_config_is_valid() -> None:
    """The tool validates the file against the Compose specification's schema."""
    config = yaml.safe_load(compose("hpcgate-config", "config"))
    services = config["services"]
    assert set(services) == {"site", "server", "airflow"}
    assert {s["network_mode"] for s in services.values()} == {"host"}
    assert all(s["build"]["network"] == "host" for s in services.values())
    assert services["site"]["environment"]["HPC_SITE_SSH_PORT"] == str(COMPOSE.ssh)
    assert services["airflow"]["environment"]["HPCGATE_URL"].endswith(f":{COMPOSE.server}")


def wait_http(url: str, timeout: float, headers: dict[str, str] | None = None) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = httpx.get(url, headers=headers, timeout=10)
            if answer.status_code == 200:
                return answer
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer 200 within {timeout} s"
        time.sleep(1)


def test_compose_up_brings_a_working_demo(docker_images: dict[str, str]) -> None:
    """``up``: site, API and Airflow answer; a job runs through the API; ``down -v``."""
    COMPOSE.check_free()
    project = f"hpcgate-test-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    try:
        compose(project, "up", "-d", "--no-build")
        server = f"http://127.0.0.1:{COMPOSE.server}"
        wait_http(f"{server}/status/liveness/", 300)
        token = compose(project, "exec", "-T", "server", "cat", "/shared/token/token").strip()
        auth = {"Authorization": f"Bearer {token}"}
        systems = wait_http(f"{server}/status/systems", 60, auth).json()
        assert [s["name"] for s in systems["systems"]] == [COMPOSE.cluster]
        health = wait_http(f"http://127.0.0.1:{COMPOSE.airflow}/api/v2/monitor/health", 400)
        assert health.json()["metadatabase"]["status"] == "healthy"
        print(f"docker: compose demo up in {time.monotonic() - start:.1f} s")
        job = {
            "job": {
                "name": "compose-demo",
                "script": "#!/bin/bash\necho demo\n",
                "workingDirectory": "/var/lib/hpcsite/fs/scratch/hpcuser1",
            }
        }
        answer = httpx.post(
            f"{server}/compute/{COMPOSE.cluster}/jobs", json=job, headers=auth, timeout=60
        )
        assert answer.status_code == 201, answer.text
        job_id = str(answer.json()["jobId"])
        deadline = time.monotonic() + 180
        while True:
            sacct = ["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State"]
            state = compose(project, "exec", "-T", "site", *sacct).strip()
            if state == "COMPLETED" or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert state == "COMPLETED"
    finally:
        compose(project, "down", "-v", "--timeout", "60")
        left = engine().containers.list(
            all=True, filters={"label": f"com.docker.compose.project={project}"}
        )
        assert not left, f"containers left by compose down: {left}"
