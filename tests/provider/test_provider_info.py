"""Provider metadata: schema-valid, complete, discoverable; imports are side-effect free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path

import jsonschema
import pytest

from airflow_provider_hpc.get_provider_info import get_provider_info

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
AIRFLOW_PKG = Path(import_module("airflow").__file__).parent  # type: ignore[arg-type]


def _classes(info: dict) -> list[str]:
    hooks = [c["hook-class-name"] for c in info["connection-types"]]
    return hooks + info["extra-links"]


def test_matches_airflows_provider_info_schema() -> None:
    schema = json.loads((AIRFLOW_PKG / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_connection_form_matches_the_provider_yaml_schema() -> None:
    """The declarative conn-fields / ui-field-behaviour are checked by the stricter schema."""
    yaml_schema = json.loads((AIRFLOW_PKG / "provider.yaml.schema.json").read_text())
    schema = {
        **yaml_schema["properties"]["connection-types"],
        "definitions": yaml_schema.get("definitions", {}),
    }
    jsonschema.validate(get_provider_info()["connection-types"], schema)


def test_everything_listed_imports() -> None:
    info = get_provider_info()
    assert info["package-name"] == "hpcgate"
    integrations = {i["integration-name"] for i in info["integrations"]}
    for section in ("hooks", "operators", "sensors", "triggers"):
        for entry in info[section]:
            assert entry["integration-name"] in integrations
            for module in entry["python-modules"]:
                import_module(module)
    for classpath in _classes(info):
        module, _, name = classpath.rpartition(".")
        assert hasattr(import_module(module), name), classpath


def test_connection_type_and_secret_fields() -> None:
    from airflow_provider_hpc.hooks.hpc import HpcHook

    [conn_type] = get_provider_info()["connection-types"]
    assert conn_type["connection-type"] == HpcHook.conn_type == "hpc"
    assert HpcHook.conn_name_attr == "hpc_conn_id" and HpcHook.default_conn_name == "hpc_default"
    fields = conn_type["conn-fields"]
    assert fields["client_secret"]["schema"]["format"] == "password"
    assert {"system", "auth_method", "token_url", "client_id", "verify_tls"} <= set(fields)
    assert conn_type["ui-field-behaviour"]["relabeling"]["host"] == "API URL"


def test_entry_point_is_declared() -> None:
    [ep] = [
        e
        for e in entry_points(group="apache_airflow_provider")
        if e.value.startswith("airflow_provider_hpc")
    ]
    assert ep.load() is get_provider_info


def test_imports_need_no_network_environment_or_connections(tmp_path: Path) -> None:
    """Import every provider module with sockets disabled and no connection defined."""
    info = get_provider_info()
    sections = ("hooks", "operators", "sensors", "triggers")
    modules = [m for s in sections for entry in info[s] for m in entry["python-modules"]]
    modules.append("airflow_provider_hpc.links.job")
    code = (
        "import socket\n"
        "def refuse(*a, **k):\n    raise RuntimeError('network at import time')\n"
        "socket.socket.connect = refuse\nsocket.create_connection = refuse\n"
        "import importlib\n"
        f"for m in {modules!r}:\n    importlib.import_module(m)\n"
        "from airflow_provider_hpc.operators.job import HpcSubmitJobOperator\n"
        "HpcSubmitJobOperator(task_id='t', script='x', working_directory='/w', hpc_conn_id='no')\n"
        "print('clean')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env["AIRFLOW_HOME"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("clean")


@pytest.mark.slow
def test_airflow_providers_list_shows_the_provider(tmp_path: Path) -> None:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    result = subprocess.run(
        [str(VENV_BIN / "airflow"), "providers", "list", "--output", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    listed = {p["package_name"]: p for p in json.loads(result.stdout[result.stdout.index("[") :])}
    assert "hpcgate" in listed, listed.keys()
    assert listed["hpcgate"]["version"] == "0.1.0"
    hooks = subprocess.run(
        [str(VENV_BIN / "airflow"), "providers", "hooks", "--output", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert hooks.returncode == 0, hooks.stderr[-2000:]
    assert "airflow_provider_hpc.hooks.hpc.HpcHook" in hooks.stdout
