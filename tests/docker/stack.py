"""The container images and stacks for tests/docker: build, start, wait, clean up.

Every container runs with host networking (the engine runs with ``--bridge=none``:
scripts/docker-engine), so the containers' daemons listen on 127.0.0.1 beside a local
site on the same machine; each stack here gets its own ports (:class:`Ports`).
testcontainers' reaper container would come from a registry: it is disabled
(``TESTCONTAINERS_RYUK_DISABLED``) and every container and volume is removed here.
"""

from __future__ import annotations

import os

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from testcontainers.core.container import DockerContainer
from testcontainers.core.docker_client import DockerClient

REPO = Path(__file__).resolve().parents[2]
TAG = os.environ.get("HPCGATE_IMAGE_TAG", "local")
IMAGES = {name: f"hpcgate/{name}:{TAG}" for name in ("site", "server", "airflow")}
SHARED = "/shared"


@dataclass(frozen=True)
class Ports:
    """One stack's ports (the site's HPC_SITE_*_PORT knobs, hpcgate, Airflow)."""

    ssh: int
    ctld: int
    db: int
    server: int
    airflow: int
    cluster: str

    @property
    def site_env(self) -> dict[str, str]:
        return {
            "HPC_SITE_SSH_PORT": str(self.ssh),
            "HPC_SITE_CTLD_PORT": str(self.ctld),
            "HPC_SITE_SLURMD_PORT": str(self.ctld + 1),
            "HPC_SITE_DBD_PORT": str(self.ctld + 2),
            "HPC_SITE_DB_PORT": str(self.db),
            "HPC_SITE_CLUSTER": self.cluster,
        }

    @property
    def log_ports(self) -> str:
        return f"{self.airflow + 713} {self.airflow + 714}"

    def all(self) -> list[int]:
        extra = [int(p) for p in self.log_ports.split()]
        return [self.ssh, self.ctld, self.ctld + 1, self.ctld + 2, self.db, self.server,
                self.airflow, *extra]  # fmt: skip

    def check_free(self) -> None:
        """Fail early and clearly when something (a demo left running?) holds a port."""
        busy = []
        for port in self.all():
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    busy.append(port)
        assert not busy, f"ports {busy} are in use on 127.0.0.1 (a compose demo still up?)"


# the testcontainers stack, and the compose stack (both may run in one session)
CONTAINERS = Ports(ssh=2422, ctld=7017, db=3507, server=18000, airflow=18080, cluster="dockersite")
COMPOSE = Ports(ssh=2522, ctld=7117, db=3607, server=18100, airflow=18180, cluster="composesite")


def engine() -> Any:
    """The Docker SDK's client (through testcontainers: the repository's docker/ folder
    would shadow ``import docker`` for the linters)."""
    try:
        client = DockerClient().client
        client.ping()
    except Exception as exc:  # the SDK's DockerException, or a refused connection
        raise AssertionError(
            f"no Docker engine answers ({exc}): run scripts/docker-engine up "
            '(or deselect these tests: -m "not docker")'
        ) from exc
    return client


def build_images() -> float:
    """docker/build (wheels, base image, the three images); seconds taken."""
    start = time.monotonic()
    result = subprocess.run(
        [str(REPO / "docker" / "build")], cwd=REPO, capture_output=True, text=True, timeout=1800
    )
    if result.returncode != 0:
        raise AssertionError(
            f"docker/build failed:\n{result.stdout[-4000:]}{result.stderr[-6000:]}"
        )
    print(result.stdout)
    return time.monotonic() - start


def wait_healthy(container: DockerContainer, timeout: float) -> float:
    """Wait for the image's HEALTHCHECK to say healthy; seconds taken."""
    start = time.monotonic()
    wrapped = container.get_wrapped_container()
    while True:
        wrapped.reload()
        state = wrapped.attrs["State"]
        if state.get("Health", {}).get("Status") == "healthy":
            return time.monotonic() - start
        if state["Status"] in ("exited", "dead") or time.monotonic() - start > timeout:
            logs = wrapped.logs(tail=80).decode(errors="replace")
            raise AssertionError(f"{wrapped.name}: {state['Status']}, not healthy:\n{logs}")
        time.sleep(1)


def run(container: DockerContainer, *command: str, user: str = "") -> str:
    """Run a command in a container (no shell; as its user, or ``user``); its output,
    asserting exit status 0."""
    code, output = container.get_wrapped_container().exec_run(list(command), user=user)
    text = str(output.decode(errors="replace"))
    assert code == 0, f"{command} exited {code}: {text}"
    return text


def sacct(site: DockerContainer, job_id: str) -> dict[str, str]:
    """The job's accounting record (``sacct`` in the site container)."""
    text = run(
        site, "sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,User,State,ExitCode",
    )  # fmt: skip
    fields = text.strip().splitlines()[0].split("|")
    return dict(zip(("id", "user", "state", "exit_code"), fields, strict=True))


@dataclass
class Stack:
    ports: Ports
    site: DockerContainer
    server: DockerContainer
    airflow: DockerContainer | None
    timings: dict[str, float]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.server}"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.airflow}"

    def token(self) -> str:
        """The demo token the server container minted for hpcuser1."""
        return run(self.server, "cat", f"{SHARED}/token/token").strip()

    def slurm_env(self) -> str:
        return run(self.site, "/opt/hpcgate/deploy/local/site", "env")


def _container(image: str, name: str, env: Mapping[str, str], volume: str) -> DockerContainer:
    container = DockerContainer(image).with_name(name)
    container.with_envs(**dict(env)).with_volume_mapping(volume, SHARED, "rw")
    return container.with_kwargs(network_mode="host")


@contextmanager
def container_stack(ports: Ports, *, airflow: bool = True) -> Iterator[Stack]:
    """Site, server (and Airflow) containers sharing one volume; all removed at the end."""
    client = engine()
    ports.check_free()
    suffix = uuid.uuid4().hex[:8]
    volume = client.volumes.create(f"hpcgate-test-{suffix}")
    started: list[DockerContainer] = []
    timings: dict[str, float] = {}
    try:
        start = time.monotonic()
        site = _container(
            IMAGES["site"], f"hpcgate-site-{suffix}",
            {**ports.site_env, "HPC_SITE_EXPORT": SHARED}, volume.name,
        )  # fmt: skip
        started.append(site.start())
        server = _container(
            IMAGES["server"], f"hpcgate-server-{suffix}",
            {"HPCGATE_DEMO_DIR": SHARED, "HPCGATE_HOST": "127.0.0.1",
             "HPCGATE_PORT": str(ports.server)}, volume.name,
        )  # fmt: skip
        started.append(server.start())
        flow = None
        if airflow:
            flow = _container(
                IMAGES["airflow"], f"hpcgate-airflow-{suffix}",
                {"HPCGATE_DEMO_DIR": SHARED, "HPCGATE_URL": f"http://127.0.0.1:{ports.server}",
                 "HPC_SYSTEM": ports.cluster, "AIRFLOW_HOST": "127.0.0.1",
                 "AIRFLOW_PORT": str(ports.airflow), "AIRFLOW_LOG_PORTS": ports.log_ports,
                 "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True"}, volume.name,
            )  # fmt: skip
            started.append(flow.start())
        timings["site healthy"] = wait_healthy(site, 300)
        timings["server healthy"] = wait_healthy(server, 300)
        if flow is not None:
            timings["airflow healthy"] = wait_healthy(flow, 400)
        timings["stack up"] = time.monotonic() - start
        yield Stack(ports, site, server, flow, timings)
    finally:
        for container in reversed(started):
            wrapped = container.get_wrapped_container()
            with suppress(Exception):  # already gone: removed just below anyway
                wrapped.stop(timeout=60)  # the site's entrypoint runs `site down`
            container.stop(force=True, delete_volume=True)
        volume.remove(force=True)


# ------------------------------------------------------------------ Airflow's REST API


class AirflowApi:
    """Airflow's public REST API (``/api/v2``) with a token of the simple auth manager."""

    def __init__(self, url: str) -> None:
        token = httpx.get(f"{url}/auth/token", timeout=30).json()["access_token"]
        self.client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def ok(self, response: httpx.Response) -> Any:
        assert not response.is_error, (
            f"{response.request.url}: {response.status_code} {response.text}"
        )
        return response.json()

    def wait_dag(self, dag_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.client.get(f"/api/v2/dags/{dag_id}").is_error:
            assert time.monotonic() < deadline, f"DAG {dag_id} not parsed after {timeout} s"
            time.sleep(1)

    def trigger(self, dag_id: str, conf: Mapping[str, Any]) -> str:
        body = {"logical_date": None, "conf": dict(conf)}
        return str(
            self.ok(self.client.post(f"/api/v2/dags/{dag_id}/dagRuns", json=body))["dag_run_id"]
        )

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.ok(self.client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"))
            if run["state"] in ("success", "failed") or time.monotonic() > deadline:
                return dict(run)
            time.sleep(1)

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        answer = self.ok(self.client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"))
        return {t["task_id"]: t["state"] for t in answer["task_instances"]}

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        value = self.ok(self.client.get(path, params={"deserialize": "true"}))["value"]
        return json.loads(value) if isinstance(value, str) and value.startswith("{") else value
