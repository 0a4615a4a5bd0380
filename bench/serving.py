"""Start the servers a benchmark compares: ``hpcgate serve`` and the floor server.

Both run as separate processes (their CPU is read from ``/proc``), configured for the
local site, and are stopped by the caller (``Served.stop``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hpcgate.auth.localauth import LocalIssuer, create_signing_key
from hpcgate.cli import local_site_config
from tests.site import SiteEnv

BENCH = Path(__file__).resolve().parent
# high enough for the load: the bucket check stays in the path, refusing nothing
RATE_LIMIT = {"requests_per_second": 100_000, "burst": 1_000_000}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    system: str = ""
    issuer: LocalIssuer | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _wait_ready(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/status/liveness/", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{url} did not answer in 60 s:\n{log_path.read_text()}")


def _spawn(argv: list[str], workdir: Path, port: int, code: Path | None = None) -> Served:
    log_path = workdir / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if code is not None:  # another checkout's server code, ahead of this tree's
        env["PYTHONPATH"] = os.pathsep.join([str(code / "server"), str(code)])
    process = subprocess.Popen(argv, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(process, url, log_path)
    return Served(url, process, log_path)


def start_hpcgate(
    site: SiteEnv,
    workdir: Path,
    *,
    workers: int = 1,
    http: str | None = None,
    settings: dict[str, Any] | None = None,
    code: Path | None = None,
) -> Served:
    """``hpcgate serve`` for the local site (token key in ``workdir/keys``); ``code``:
    a checkout whose ``server/`` runs instead of this tree's (``ab_bench.py``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = local_site_config(site.values, workdir / "keys")
    config["state_dir"] = str(workdir / "state")
    config["rate_limit"] = RATE_LIMIT
    if http is not None:
        config["http"] = {"protocol": http}
    config.update(settings or {})
    config_path = workdir / "hpcgate.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [sys.executable, "-m", "hpcgate.cli", "serve", "--config", str(config_path)]
    argv += ["--port", str(port), "--workers", str(workers)]
    served = _spawn(argv, workdir, port, code)
    served.system = config["systems"][0]["name"]  # type: ignore[index]
    served.issuer = create_signing_key(workdir / "keys")
    return served


def start_floor(site: SiteEnv, key_dir: Path, workdir: Path, *, http: str = "h11") -> Served:
    """The floor server, trusting the same token key as the hpcgate beside it."""
    workdir.mkdir(parents=True, exist_ok=True)
    issuer = create_signing_key(key_dir)
    port = free_port()
    argv = [
        sys.executable,
        str(BENCH / "floor_server.py"),
        f"--port={port}",
        f"--http={http}",
        f"--jwks={issuer.jwks_path}",
        f"--issuer={issuer.issuer}",
        f"--audience={issuer.audience}",
        f"--system={site['HPC_SITE_CLUSTER']}",
        f"--ssh-host={site.ssh_host}",
        f"--ssh-port={site.ssh_port}",
        "--user=hpcuser1",
        f"--key={site.key('hpcuser1')}",
        f"--known-hosts={site.known_hosts}",
    ]
    served = _spawn(argv, workdir, port)
    served.system = site["HPC_SITE_CLUSTER"]
    served.issuer = issuer
    return served


@dataclass
class Redis:
    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def start_redis(workdir: Path) -> Redis:
    """A private redis-server (no persistence) for servers with several workers."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(workdir)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return Redis(f"redis://127.0.0.1:{port}/0", process)
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not start")


def shared_store(redis: Redis) -> dict[str, Any]:
    """The settings that let several workers share state through ``redis``."""
    return {"idempotency": {"backend": "redis", "redis_url": redis.url}}
