"""Airflow for the provider's integration and end-to-end tests (and ``scripts/airflow_e2e``).

- :func:`airflow_env` / :func:`migrate`: a private ``AIRFLOW_HOME`` (sqlite) with the
  example DAGs folder and the ``hpc_default`` connection in ``AIRFLOW_CONN_HPC_DEFAULT``.
- :func:`start_dagrun` / :func:`dagrun_outcome`: one example DAG run with ``dag.test()``
  in a subprocess (``tests.provider.dagrun``), its outcome as a dict.
- :class:`AirflowStack`: the real components (scheduler with the LocalExecutor,
  dag-processor, triggerer, api-server), each its own process and log file, driven
  through the public REST API (``/api/v2``).

Started separately the four components are lighter than ``airflow standalone`` (which runs
the same four under a parent that also initialises the database and relays their
output): on a 2-core machine they are healthy in about 6 s instead of 16 s.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx

from tests.server import free_port

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags_examples"
VENV_BIN = Path(sys.executable).parent
AIRFLOW = str(VENV_BIN / "airflow")
COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
FINAL_RUN_STATES = frozenset({"success", "failed"})


def airflow_env(
    home: Path,
    *,
    conn: Mapping[str, Any] | None = None,
    dags_folder: Path = DAGS,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """This process's environment without its AIRFLOW* settings, plus a private home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "PYTHONPATH": str(REPO),
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if conn is not None:
        env["AIRFLOW_CONN_HPC_DEFAULT"] = json.dumps(dict(conn))
    env.update(extra or {})
    return env


def migrate(env: Mapping[str, str], timeout: float = 300) -> None:
    """``airflow db migrate`` into ``env``'s home (sqlite: a few seconds)."""
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [AIRFLOW, "db", "migrate"], env=dict(env), capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"airflow db migrate failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )


# ---------------------------------------------------------------------- dag.test()


def start_dagrun(
    dag_id: str, env: Mapping[str, str], *args: str, conf: Mapping[str, Any] | None = None
) -> subprocess.Popen[str]:
    """Run ``dag_id`` with ``dag.test()`` in a subprocess (see ``tests.provider.dagrun``)."""
    command = [sys.executable, "-m", "tests.provider.dagrun", dag_id, *args]
    if conf:
        command += ["--conf", json.dumps(dict(conf))]
    return subprocess.Popen(
        command,
        env=dict(env),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def dagrun_outcome(process: subprocess.Popen[str], timeout: float = 300) -> dict[str, Any]:
    """Wait for a :func:`start_dagrun` process; its ``DAGRUN`` JSON line (with its log)."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(
            f"dag.test() still running after {timeout} s:\n{stdout[-6000:]}"
        ) from None
    lines = [line for line in stdout.splitlines() if line.startswith("DAGRUN ")]
    if process.returncode != 0 or not lines:
        raise AssertionError(
            f"dag.test() exited {process.returncode}:\n{stdout[-6000:]}\n{stderr[-4000:]}"
        )
    outcome = json.loads(lines[-1].removeprefix("DAGRUN "))
    outcome["log"] = stdout
    return outcome


# ---------------------------------------------------------------------- the real components


class AirflowStack:
    """Scheduler, dag-processor, triggerer and api-server for one ``AIRFLOW_HOME``.

    ``env`` comes from :func:`airflow_env` (and a migrated database). Ports are free ones,
    so that several stacks (a test run and ``scripts/main``) can run side by side.
    """

    def __init__(self, env: Mapping[str, str], *, port: int | None = None) -> None:
        self.home = Path(env["AIRFLOW_HOME"])
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **env,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            # One set of secrets for all components (each would otherwise generate its own
            # airflow.cfg on first start, racing, and reject the others' tokens).
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        }
        self.log_dir = self.home / "components"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._client: httpx.Client | None = None

    # -------------------------------------------------------------- lifecycle

    def start(self) -> AirflowStack:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in COMPONENTS:
            with (self.log_dir / f"{name}.log").open("ab") as log:
                self.processes[name] = subprocess.Popen(
                    [AIRFLOW, name],
                    env=self.env,
                    cwd=self.home,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stop() ends its children
                )
            (self.log_dir / f"{name}.pid").write_text(str(self.processes[name].pid))
        return self

    def stop(self, timeout: float = 8) -> None:
        """SIGTERM every component's process group, SIGKILL what is left after ``timeout``."""
        if self._client is not None:
            self._client.close()
            self._client = None
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process in self.processes.values():
            _signal_group(process, signal.SIGKILL)  # stragglers (workers, serve-logs)
            if process.poll() is None:
                process.wait(timeout=10)

    def __enter__(self) -> AirflowStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_ready(self, dag_ids: Iterable[str] = (), timeout: float = 120) -> float:
        """Wait until every component heartbeats and ``dag_ids`` are parsed; seconds taken."""
        start = time.monotonic()
        wanted = set(dag_ids)
        last: Any = None
        while time.monotonic() - start < timeout:
            self._check_alive()
            try:
                health = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
                healthy = all(
                    health.get(part, {}).get("status") == "healthy"
                    for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
                )
                missing = {d for d in wanted if self.client.get(f"/api/v2/dags/{d}").is_error}
                last = {"health": health, "dags missing": sorted(missing)}
                if healthy and not missing:
                    return time.monotonic() - start
            except (httpx.TransportError, ValueError) as exc:
                last = repr(exc)
            time.sleep(0.5)
        raise AssertionError(f"Airflow not ready after {timeout} s: {last}\n{self.diagnostics()}")

    def _check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.processes.items() if p.poll() is not None}
        if dead:
            raise AssertionError(f"Airflow components exited: {dead}\n{self.diagnostics()}")

    # -------------------------------------------------------------- REST API

    @property
    def client(self) -> httpx.Client:
        """An API client with a token (``simple_auth_manager_all_admins``: no password)."""
        if self._client is None:
            token = httpx.get(f"{self.url}/auth/token", timeout=10).json()["access_token"]
            self._client = httpx.Client(
                base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
        return self._client

    def _ok(self, response: httpx.Response) -> Any:
        if response.is_error:
            raise AssertionError(
                f"{response.request.method} {response.request.url} -> "
                f"{response.status_code}: {response.text[:2000]}"
            )
        return response.json() if response.content else None

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """Trigger a run of ``dag_id``; its run id."""
        body = {"logical_date": None, "conf": dict(conf or {})}
        return self._ok(self.client.post(f"/api/v2/dags/{dag_id}/dagRuns", json=body))["dag_run_id"]

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._ok(self.client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"))

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        """``{task_id (or task_id[map_index]): task instance}``."""
        answer = self._ok(self.client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"))
        return {
            t["task_id"] if t["map_index"] < 0 else f"{t['task_id']}[{t['map_index']}]": t
            for t in answer["task_instances"]
        }

    def task_tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/tries"
        return self._ok(self.client.get(path))["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        return self._ok(self.client.get(path, params={"deserialize": "true"}))["value"]

    def extra_links(self, dag_id: str, run_id: str, task_id: str) -> dict[str, str | None]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/links"
        return self._ok(self.client.get(path))["extra_links"]

    def pool(self, name: str = "default_pool") -> dict[str, Any]:
        """A pool's slots (``running_slots``, ``deferred_slots``, ``occupied_slots``...)."""
        return self._ok(self.client.get(f"/api/v2/pools/{name}"))

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 180) -> dict[str, Any]:
        """Wait until the run succeeds or fails; the run."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.dag_run(dag_id, run_id)
            if run["state"] in FINAL_RUN_STATES:
                return run
            if time.monotonic() > deadline:
                tis = {k: t["state"] for k, t in self.task_instances(dag_id, run_id).items()}
                raise AssertionError(
                    f"run {run_id} still {run['state']} after {timeout} s; tasks {tis}\n"
                    + self.diagnostics(dag_id, run_id)
                )
            self._check_alive()
            time.sleep(1)

    def wait_task(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        states: Iterable[str],
        timeout: float = 120,
        interval: float = 0.5,
    ) -> dict[str, Any]:
        """Poll one task instance until its state is one of ``states``; the task instance."""
        wanted = set(states)
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        deadline = time.monotonic() + timeout
        while True:
            ti = self._ok(self.client.get(path))
            if ti["state"] in wanted:
                return ti
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{task_id} is {ti['state']}, not one of {sorted(wanted)}, after {timeout} s\n"
                    + self.diagnostics(dag_id, run_id)
                )
            self._check_alive()
            time.sleep(interval)

    def clear_task(self, dag_id: str, run_id: str, task_id: str) -> None:
        """Clear one task instance (whatever its state), as the UI's "Clear" does."""
        body = {
            "dry_run": False,
            "dag_run_id": run_id,
            "task_ids": [task_id],
            "only_failed": False,
            "reset_dag_runs": True,
        }
        self._ok(self.client.post(f"/api/v2/dags/{dag_id}/clearTaskInstances", json=body))

    def set_task_state(self, dag_id: str, run_id: str, task_id: str, state: str) -> None:
        """Mark one task instance (``failed`` / ``success``), as the UI's "Mark as" does."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        self._ok(self.client.patch(path, json={"new_state": state}))

    # -------------------------------------------------------------- logs

    def task_log(self, dag_id: str, run_id: str, task_id: str) -> str:
        """Every log file of the task instance (each try, and its triggers' logs), in order."""
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        parts = []
        for path in sorted(folder.rglob("*.log")):
            parts.append(f"===== {path.name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    def component_log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def diagnostics(self, dag_id: str | None = None, run_id: str | None = None) -> str:
        """Tails of the component logs (and of the run's task logs) for failure messages."""
        parts = []
        for name in COMPONENTS:
            lines = [
                line
                for line in self.component_log(name).splitlines()
                if "request finished" not in line  # the api-server's access log
            ]
            parts.append(f"----- {name} (last lines)\n{_tail(chr(10).join(lines), 60)}")
        if dag_id and run_id:
            folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
            for path in sorted(folder.rglob("*.log")):
                text = path.read_text(errors="replace")
                parts.append(f"----- {path.relative_to(folder)}\n{_tail(text, 40)}")
        return "\n".join(parts)


def stop_leftovers(home: Path) -> list[int]:
    """End the process groups of a stack an earlier, killed run left in ``home``."""
    ended = []
    for pid_file in (home / "components").glob("*.pid"):
        try:
            pid = int(pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if b"airflow" in cmdline:
            try:
                os.killpg(pid, signal.SIGKILL)
                ended.append(pid)
            except (ProcessLookupError, PermissionError):
                pass
    return ended


def _tail(text: str, lines: int) -> str:
    return "\n".join(line[:600] for line in text.splitlines()[-lines:])


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def log_events(text: str) -> list[dict[str, Any]]:
    """The JSON lines of an Airflow task log (other lines skipped)."""
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events
