"""A private second site, for tests that disturb a site (stop daemons, kill servers).

The shared site (``site_env``) must never be stopped or disturbed: other tests use it
at the same time. A test that stops sshd, slurmctld or slurmdbd, or lets the
controller forget jobs in seconds, uses this one instead: a second instance of
``deploy/local/site`` with its own state directory (``.site-private/``), its own ports
and its own cluster name, brought up once per session (~10 s; a no-op when it is
already running) and brought down at the end (``down`` + ``check-stopped``, for this
site only: the shared site keeps running).

API (import from ``tests.private_site``; the fixtures are registered in
``tests/conftest.py`` as ``private_site`` and ``private_server``):

``private_site`` (session fixture) -> ``PrivateSite``
    ``.env``                 a ``SiteEnv`` (``site env`` of the private site): pass it
                             wherever the shared ``site_env`` goes (``start_server``...).
    ``.cluster``             its cluster name (``privsite``), also the hpcgate system name.
    ``.stop(d)``, ``.start(d)``, ``.restart(d)``
                             one daemon (munged, mariadbd, slurmdbd, slurmctld, slurmd,
                             sshd): ``deploy/local/site stop|start|restart d``.
    ``.stopped(d)``          context manager: the daemon is stopped inside, started after.
    ``.running()``           ``{daemon: bool}`` from ``site status``.
    ``.ensure_up()``         ``site up``: a no-op when all run; a partial site is restarted
                             as a whole. Call it to repair after a drill.
    ``.slurm(*argv)``        a Slurm command as root against this cluster (e.g.
                             ``.slurm("sacct", "-X", "-n", "-a", "-S", "now-1hours", ...)``);
                             ``.sacct_names(since)`` the job names accounting knows.
    ``.run(*args)``          ``deploy/local/site ARGS`` with this site's knobs.
``private_server`` (function fixture) -> ``start(workdir, **kw) -> PrivateServer``
    Starts ``hpcgate serve`` (or ``launcher``, e.g. ``"tests.faults"``) against the private
    site; every server it started is stopped at the end of the test. A ``PrivateServer``
    is an ``ApiServer`` (``url``, ``system``, ``token``, ``headers``, ``client``, ``log``,
    ``stop``) plus ``kill()`` (SIGKILL) and ``restart()`` (same configuration, state
    directory and port, so clients keep their URL and the idempotency store survives).
    Keywords: ``overrides`` (on the system), ``settings_overrides`` (top level),
    ``launcher``, as for ``tests.server.start_server``.

The private site shares the Unix users (``hpcuser1``, ``hpcuser2``, ``hpcsvc``) and
their homes with the shared site: homes are per host (``/etc/passwd``), so it is
brought up with ``HPC_SITE_HOME_ROOT``/``HPC_SITE_SERVICE_HOME`` set to the shared
site's, and ``up`` leaves ``/etc/passwd`` as it is. Its scratch and project
directories, keys, munge key, database and Slurm state are its own.

Its controller forgets an ended job after ``MIN_JOB_AGE`` seconds (``MinJobAge``;
300 on the shared site): jobs that ended a few seconds ago are known to accounting
only. Under pytest-xdist, each worker gets its own private site (ports, directory and
cluster name offset by the worker's number).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hpcgate.auth.localauth import create_signing_key
from tests.server import ApiServer, free_port, spawn, wait_live, write_config
from tests.site import REPO, SITE_COMMAND, SiteEnv

__all__ = [
    "DAEMONS",
    "MIN_JOB_AGE",
    "PrivateServer",
    "PrivateSite",
    "private_knobs",
    "private_server",
    "private_site",
    "start_private_server",
]

DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sshd")
MIN_JOB_AGE = 5
"""Seconds the private controller keeps an ended job (the shared site: 300)."""

_PORTS = {"SSH": 2322, "CTLD": 6917, "SLURMD": 6918, "DBD": 6919, "DB": 3407}


def _worker() -> int:
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0


def private_knobs(shared: SiteEnv | None = None) -> dict[str, str]:
    """The environment that makes ``deploy/local/site`` act on the private site."""
    n = _worker()
    suffix = f"-{n}" if n else ""
    knobs = {f"HPC_SITE_{name}_PORT": str(port + 100 * n) for name, port in _PORTS.items()}
    knobs |= {
        "HPC_SITE_DIR": str(REPO / f".site-private{suffix}"),
        "HPC_SITE_CLUSTER": f"privsite{n or ''}",
        "HPC_SITE_MIN_JOB_AGE": str(MIN_JOB_AGE),
    }
    if shared is not None:
        # the users' homes are the shared site's: /etc/passwd has one home per user
        knobs["HPC_SITE_HOME_ROOT"] = shared["HPC_SITE_HOME_ROOT"]
        knobs["HPC_SITE_SERVICE_HOME"] = shared.values.get(
            "HPC_SITE_SERVICE_HOME", f"{shared['HPC_SITE_DIR']}/service-home"
        )
    return knobs


def _parse_env(text: str) -> SiteEnv:
    return SiteEnv(dict(line.split("=", 1) for line in text.splitlines() if "=" in line))


@dataclass
class PrivateSite:
    """The private site: ``deploy/local/site`` with its own knobs (see the module doc)."""

    knobs: dict[str, str]
    env: SiteEnv = field(init=False)

    def __post_init__(self) -> None:
        self.env = _parse_env(self.run("env").stdout)

    @property
    def cluster(self) -> str:
        return self.env["HPC_SITE_CLUSTER"]

    def run(
        self, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        if os.environ.get("HPCGATE_TEST_NO_SITE"):
            raise RuntimeError(f"HPCGATE_TEST_NO_SITE is set, yet a test ran the site {args}")
        result = subprocess.run(
            [str(SITE_COMMAND), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.knobs},
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"site {' '.join(args)} (private) exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def ensure_up(self) -> None:
        self.run("up")

    def running(self) -> dict[str, bool]:
        lines = self.run("status", check=False).stdout.splitlines()
        state = dict(line.split(": ", 1) for line in lines if ": " in line)
        return {d: state.get(d, "").startswith("running") for d in DAEMONS}

    def stop(self, daemon: str) -> None:
        self.run("stop", daemon)

    def start(self, daemon: str) -> None:
        self.run("start", daemon)

    def restart(self, daemon: str) -> None:
        self.run("restart", daemon)

    @contextlib.contextmanager
    def stopped(self, daemon: str) -> Iterator[None]:
        self.stop(daemon)
        try:
            yield
        finally:
            self.start(daemon)

    def slurm(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A Slurm command as root against this cluster (its ``SLURM_CONF``)."""
        return subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=120,
            check=check,
            env={**os.environ, "SLURM_CONF": self.env.slurm_conf},
        )

    def sacct_names(self, since: str = "now-1hours") -> list[str]:
        """Job names accounting knows (one per job allocation; steps left out)."""
        out = self.slurm("sacct", "-X", "-n", "-a", "-P", "-S", since, "-o", "JobName%200")
        return [line for line in out.stdout.splitlines() if line]

    def down(self) -> None:
        """``down``, then fail if any process of this site is left."""
        self.run("down")
        left = self.run("check-stopped", check=False)
        if left.returncode != 0:
            raise RuntimeError(f"the private site left processes behind:\n{left.stdout}")


def bring_up(shared: SiteEnv) -> PrivateSite:
    site = PrivateSite(private_knobs(shared))
    site.ensure_up()
    return site


@dataclass
class PrivateServer(ApiServer):
    """An ``hpcgate serve`` of the private site that can be killed and restarted."""

    config_path: Path
    port: int
    launcher: str

    def kill(self) -> None:
        """SIGKILL: no shutdown, no cleanup (a crash)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=15)

    def restart(self) -> None:
        """Start again with the same configuration, state and port (after kill/stop)."""
        if self.process.poll() is None:
            self.stop()
        self.process = spawn(self.config_path, self.port, self.launcher, self.log_path)
        wait_live(self.url, self.process, self.log_path)


def start_private_server(
    site_env: SiteEnv,
    workdir: Path,
    *,
    overrides: dict[str, Any] | None = None,
    settings_overrides: dict[str, Any] | None = None,
    launcher: str = "hpcgate.cli",
) -> PrivateServer:
    """Like ``tests.server.start_server``, but restartable on the same port."""
    config_path, system = write_config(
        site_env, workdir, overrides=overrides, settings_overrides=settings_overrides
    )
    port = free_port()
    log_path = workdir / "hpcgate.log"
    process = spawn(config_path, port, launcher, log_path)
    url = f"http://127.0.0.1:{port}"
    wait_live(url, process, log_path)
    issuer = create_signing_key(workdir / "keys")
    return PrivateServer(url, system, issuer, process, log_path, config_path, port, launcher)


@pytest.fixture(scope="session")
def private_site(site_env: SiteEnv) -> Iterator[PrivateSite]:
    """The private site, up for the session and down (and checked stopped) after it.

    It needs the shared site's environment (``site_env``) for the users' homes."""
    site = bring_up(site_env)
    yield site
    site.down()


@pytest.fixture
def private_server(private_site: PrivateSite) -> Iterator[Callable[..., PrivateServer]]:
    """``start(workdir, **kw)``: an ``hpcgate serve`` of the private site (stopped after)."""
    servers: list[PrivateServer] = []

    def start(workdir: Path, **kwargs: Any) -> PrivateServer:
        server = start_private_server(private_site.env, workdir, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.stop()
