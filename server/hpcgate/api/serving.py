"""How ``hpcgate serve`` runs: uvicorn with the bounded protocol, in one or several
worker processes.

Several workers (``--workers N``) each run the whole application in their own
process, on their own listening socket bound to the same address with
``SO_REUSEPORT``: the kernel spreads new connections over them, no process hands
sockets to another, and the request path is the same as with one process (the
bounded HTTP protocol, the edge). The parent only reserves the port, starts the
workers, replaces one that dies and stops them all on SIGTERM/SIGINT.

Workers are replicas of one server, so they share what replicas share, here through
the state directory of this host, or through Redis when it is configured: idempotency
keys (the SQLite file, a lease per key being submitted:
``hpcgate.compute.idempotency``), unfinished transfers (the SQLite transfer state,
claims by process), the watcher's lease (one round per interval for all of them,
results passed to all: ``hpcgate.compute.watcher.lease_sqlite``) and the metrics
(``/metrics`` from any worker sums all of them: prometheus_client's multiprocess
mode in ``<state_dir>/metrics``, emptied at start; a worker that dies has its live
figures removed before it is replaced). The transfer signing key is made
once, atomically, in the same directory. Replicas on several hosts need the Redis
store (``idempotency.backend: redis``) and ``transfer.signing_key``.

Per-user budgets that are about fairness are split between the workers so that
they are never looser than configured: each worker allows ``1/N`` of
``rate_limit`` (rate and burst), of the watcher's subscriber caps and of
``filesystem_limits.max_streams_per_user`` (a user's open streamed transfers: a
bound on memory, but one a user would otherwise multiply by N). (A user whose
connections all land on one worker gets less, never more.) The other memory bounds
(output caps, caches) stay per process, as before.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from types import FrameType
from typing import Any

from hpcgate.api.connection import protocol_class
from hpcgate.api.connection_httptools import httptools_protocol_class
from hpcgate.compute.watcher.lease import WORKERS_ENV
from hpcgate.config import Settings, load_settings
from hpcgate.operations.logs import configure_logging
from hpcgate.operations.metrics import MULTIPROC_ENV, forget_process

__all__ = [
    "WorkersRefused",
    "default_workers",
    "serve_workers",
    "shared_state_problem",
    "uvicorn_options",
]

log = logging.getLogger(__name__)

_RESTART_PAUSE = 1.0  # seconds between replacing a worker that died
_STOP_SECONDS = 20.0  # the graceful shutdown (10 s) and some


class WorkersRefused(Exception):
    """The configuration cannot be served by several processes."""


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's settings for ``hpcgate serve``: our logging, and the request head bounded
    in size and time (``settings.http``) by the protocol ``http.protocol`` names."""
    http = settings.http
    options: dict[str, Any] = {
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 10,
        "timeout_keep_alive": http.keep_alive_timeout_seconds,
    }
    if http.protocol == "httptools":
        options["http"] = httptools_protocol_class(http)
    else:
        options["http"] = protocol_class(http)
        options["h11_max_incomplete_event_size"] = http.max_header_bytes
    return options


def default_workers() -> int:
    """``--workers`` unless given: one per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def shared_state_problem(settings: Settings) -> str | None:
    """Why ``settings`` cannot be served by several workers; None if it can."""
    if settings.transfer.store == "redis" and settings.idempotency.redis_url is None:
        return "transfer.store redis needs idempotency.redis_url"
    return None


def _prepare_shared(settings: Settings, workers: int) -> None:
    """What the workers inherit: their count (the watcher's lease) and an empty
    directory for the multiprocess metrics, set before any of them starts."""
    state = settings.state_path()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    metrics = state / "metrics"
    shutil.rmtree(metrics, ignore_errors=True)  # the last run's counts are not ours
    metrics.mkdir(mode=0o700)
    os.environ[MULTIPROC_ENV] = str(metrics)
    os.environ[WORKERS_ENV] = str(workers)


def worker_settings(settings: Settings, workers: int) -> Settings:
    """``settings`` with the per-user fairness budgets split between ``workers``."""
    limits = settings.rate_limit
    rate_limit = limits.model_copy(
        update={
            "requests_per_second": limits.requests_per_second / workers,
            "burst": max(1, limits.burst // workers),
        }
    )
    systems = []
    for system in settings.systems:
        watcher = system.watcher
        streams = system.filesystem_limits.max_streams_per_user
        systems.append(
            system.model_copy(
                update={
                    "watcher": watcher.model_copy(
                        update={
                            "max_subscribers": max(1, watcher.max_subscribers // workers),
                            "max_subscribers_per_user": max(
                                1, watcher.max_subscribers_per_user // workers
                            ),
                        }
                    ),
                    "filesystem_limits": system.filesystem_limits.model_copy(
                        update={"max_streams_per_user": max(1, streams // workers)}
                    ),
                }
            )
        )
    return settings.model_copy(update={"rate_limit": rate_limit, "systems": systems})


def _reuseport_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _worker(config_path: str, host: str, port: int, workers: int, index: int) -> None:
    """One worker process: the whole application on its own SO_REUSEPORT socket."""
    import uvicorn

    from hpcgate.api.app import create_app

    settings = worker_settings(load_settings(config_path), workers)
    configure_logging(settings.log_level)
    sock = _reuseport_socket(host, port)
    sock.listen(2048)
    config = uvicorn.Config(create_app(settings), **uvicorn_options(settings))
    log.info("worker %d of %d serving on %s:%d", index + 1, workers, host, port)
    uvicorn.Server(config).run(sockets=[sock])


def serve_workers(
    config_path: str | Path, settings: Settings, *, host: str, port: int, workers: int
) -> int:
    """Serve with ``workers`` processes until SIGTERM or SIGINT; the exit status."""
    problem = shared_state_problem(settings)
    if problem is not None:
        raise WorkersRefused(problem)
    configure_logging(settings.log_level)
    _prepare_shared(settings, workers)
    # reserve the port (and fail now if it is taken); never listens, so the kernel
    # gives it no connections
    reserved = _reuseport_socket(host, port)
    port = reserved.getsockname()[1]  # port 0: the one the kernel chose
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start(index: int) -> multiprocessing.process.BaseProcess:
        process = context.Process(
            target=_worker,
            args=(str(config_path), host, port, workers, index),
            name=f"hpcgate-worker-{index + 1}",
        )
        process.start()
        return process

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    processes = [start(index) for index in range(workers)]
    log.info("serving on %s:%d with %d worker processes", host, port, workers)
    try:
        while not stopping:
            time.sleep(0.2)
            for index, process in enumerate(processes):
                if not process.is_alive() and not stopping:
                    log.error(
                        "worker %d exited with %s; starting another", index + 1, process.exitcode
                    )
                    if process.pid is not None:
                        forget_process(process.pid)  # its streams and connections are gone
                    time.sleep(_RESTART_PAUSE)
                    processes[index] = start(index)
    finally:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                process.terminate()  # SIGTERM: uvicorn's graceful shutdown
        deadline = time.monotonic() + _STOP_SECONDS
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
            if process.pid is not None:
                forget_process(process.pid)
        reserved.close()
    return 0
