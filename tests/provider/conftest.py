"""Fixtures for the provider's unit tests: no site, no metadata database.

``api`` serves the real server application in process over a fake cluster
(``realapi.py``, ``cluster.py``) and wires it into every ``HpcHook`` created during the
test; ``fake_api`` is the scripted job-event stream the event-hub tests need
(``fakeapi.py``). ``hpc_default`` (static token) and ``hpc_oauth`` (client credentials)
connections come from ``AIRFLOW_CONN_*`` variables.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

# Before anything imports airflow: keep its home (config, logs) out of the user's.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="hpc-provider-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from airflow_provider_hpc.hooks import retry as retry_module
from airflow_provider_hpc.hooks.auth import TOKEN_CACHE
from airflow_provider_hpc.hooks.hpc import HpcHook
from airflow_provider_hpc.operators import submission as submission_module
from airflow_provider_hpc.triggers.events import reset_hubs
from tests.provider.airflow_stack import airflow_env, migrate
from tests.provider.fakeapi import BASE_URL, SYSTEM, TOKEN_URL, FakeHpcApi
from tests.provider.realapi import RealApi, real_api

STATIC_CONN = {
    "conn_type": "hpc",
    "host": BASE_URL,
    "password": "static-token-123",
    "extra": {"system": SYSTEM},
}
OAUTH_CONN = {
    "conn_type": "hpc",
    "host": BASE_URL,
    "extra": {
        "system": SYSTEM,
        "auth_method": "oauth2",
        "token_url": TOKEN_URL,
        "client_id": "airflow",
        "client_secret": "s3cret-value",
    },
}


@pytest.fixture(autouse=True)
def hpc_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_HPC_DEFAULT", json.dumps(STATIC_CONN))
    monkeypatch.setenv("AIRFLOW_CONN_HPC_OAUTH", json.dumps(OAUTH_CONN))
    TOKEN_CACHE.clear()
    reset_hubs()  # job-event hubs and "no events endpoint" answers are per test


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the hook's and operator's back-off sleeps instead of sleeping."""
    slept: list[float] = []

    async def asleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(retry_module, "sleep", slept.append)
    monkeypatch.setattr(retry_module, "asleep", asleep)
    monkeypatch.setattr(submission_module, "_sleep", slept.append)
    return slept


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> Iterator[FakeHpcApi]:
    api = FakeHpcApi()
    monkeypatch.setattr(HpcHook, "transport", api.transport)
    yield api


@pytest.fixture
def api(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    sleeps: list[float],
) -> Iterator[RealApi]:
    """The real server application over a fake cluster, wired into every ``HpcHook``:
    ``hpc_default`` holds a token its issuer minted, ``hpc_oauth`` gets one from the
    stand-in IdP."""
    with real_api(tmp_path_factory.mktemp("hpcgate")) as served:
        monkeypatch.setattr(HpcHook, "transport", served.transport)
        static = {**STATIC_CONN, "host": served.url, "password": served.token}
        monkeypatch.setenv("AIRFLOW_CONN_HPC_DEFAULT", json.dumps(static))
        monkeypatch.setenv("AIRFLOW_CONN_HPC_OAUTH", json.dumps({**OAUTH_CONN, "host": served.url}))
        yield served


@pytest.fixture
def hook(api: RealApi) -> Iterator[HpcHook]:
    hook = HpcHook()
    yield hook
    hook.close()


class FakeStore:
    """The task state store: a dict that survives "retries" within a test."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        self.data[key] = json.loads(json.dumps(value))


class FakeTI:
    """What the provider reads of a RuntimeTaskInstance. ``max_tries`` and the task's
    ``retries`` give the try group (a clear sets ``max_tries = try_number + retries``)."""

    def __init__(
        self,
        task_id: str = "submit",
        map_index: int = -1,
        try_number: int = 1,
        max_tries: int = 2,
        retries: int = 2,
    ) -> None:
        self.dag_id, self.task_id, self.run_id = "example", task_id, "manual__2026-01-01"
        self.map_index, self.try_number, self.max_tries = map_index, try_number, max_tries
        self.task = SimpleNamespace(retries=retries)
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value

    def xcom_pull(self, task_ids: Any = None, key: str = "return_value", **_: Any) -> Any:
        return self.xcoms.get(key)


def make_context(
    store: FakeStore | None = None, *, clear_number: int = 0, ti: FakeTI | None = None
) -> dict[str, Any]:
    """A task context with what the provider reads (ti, task, dag_run, task_state_store)."""
    ti = ti or FakeTI()
    return {
        "ti": ti,
        "task": ti.task,
        "dag_run": SimpleNamespace(clear_number=clear_number, run_id="manual__2026-01-01"),
        "task_state_store": store if store is not None else FakeStore(),
    }


# ---------------------------------------------------------------------- metadata database


@pytest.fixture(scope="session")
def migrated_airflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``airflow db migrate`` per session: a sqlite file to copy into each home."""
    home = tmp_path_factory.mktemp("airflow-db")
    migrate(airflow_env(home))
    return home / "airflow.db"


@pytest.fixture(scope="session")
def airflow_home(
    tmp_path_factory: pytest.TempPathFactory, migrated_airflow_db: Path
) -> Callable[[str], Path]:
    """``airflow_home(name)``: a fresh AIRFLOW_HOME holding a copy of the migrated database."""

    def make(name: str) -> Path:
        home = tmp_path_factory.mktemp(name)
        shutil.copy(migrated_airflow_db, home / "airflow.db")
        return home

    return make
