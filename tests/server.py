"""A real hpcgate server process for tests, configured for the local site."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

from hpcgate.auth.localauth import LocalIssuer, create_signing_key
from hpcgate.cli import local_site_config
from tests.site import SiteEnv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app: Any, name: str = "api-server") -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread (its own event loop); yield its base URL.

    For tests that need the app object itself (to instrument or inspect it) and sync
    clients such as pyfirecrest; `start_server` runs a separate process instead.
    """
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@dataclass
class ApiServer:
    """A running `hpcgate serve` and the means to call it as any site user."""

    url: str
    system: str
    issuer: LocalIssuer
    process: subprocess.Popen[bytes]
    log_path: Path

    def token(self, user: str = "hpcuser1", **kwargs: Any) -> str:
        return self.issuer.mint(user, **kwargs)

    def headers(self, user: str = "hpcuser1") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}

    def client(self, user: str = "hpcuser1", **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(user), timeout=60, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def write_config(
    site_env: SiteEnv,
    workdir: Path,
    *,
    overrides: dict[str, Any] | None = None,
    settings_overrides: dict[str, Any] | None = None,
) -> tuple[Path, str]:
    """Write ``workdir/hpcgate.yaml`` for the site (plus ``overrides`` on the system and
    ``settings_overrides`` at the top level; state in ``workdir``): its path and the
    system's name. The token signing key is in ``workdir/keys``."""
    config = local_site_config(site_env.values, workdir / "keys")
    config.setdefault("state_dir", str(workdir / "state"))
    config.update(settings_overrides or {})
    system = config["systems"][0]  # type: ignore[index]
    system.update(overrides or {})
    config_path = workdir / "hpcgate.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return config_path, str(system["name"])


def spawn(config_path: Path, port: int, launcher: str, log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m <launcher> serve`` on ``port``, its output appended to ``log_path``."""
    argv = [sys.executable, "-m", launcher, "serve", "--config", str(config_path)]
    return subprocess.Popen(
        [*argv, "--port", str(port), *(["--workers", "1"] if launcher == "hpcgate.cli" else [])],
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_live(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Return once ``/status/liveness/`` answers 200; raise with the log if the process
    exits or 30 s pass."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"hpcgate exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/status/liveness/", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"hpcgate did not answer in 30 s:\n{log_path.read_text()}")


def start_server(
    site_env: SiteEnv,
    workdir: Path,
    *,
    overrides: dict[str, Any] | None = None,
    settings_overrides: dict[str, Any] | None = None,
    launcher: str = "hpcgate.cli",
) -> ApiServer:
    """Write a configuration for the site (``write_config``) and serve it.
    ``launcher``: the module run as ``python -m <launcher> serve`` (``tests.faults``
    serves the application with injected faults)."""
    config_path, system = write_config(
        site_env, workdir, overrides=overrides, settings_overrides=settings_overrides
    )
    port = free_port()
    log_path = workdir / "hpcgate.log"
    url = f"http://127.0.0.1:{port}"
    process = spawn(config_path, port, launcher, log_path)
    wait_live(url, process, log_path)
    issuer = create_signing_key(workdir / "keys")
    return ApiServer(url, system, issuer, process, log_path)
