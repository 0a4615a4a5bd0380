"""Imports flow one way: the import-linter contracts in pyproject.toml hold, and cover
every package of the server (docs/architecture.md)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def contract(contract_id: str) -> dict[str, Any]:
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    [found] = [c for c in config["contracts"] if c["id"] == contract_id]
    return dict(found)


def server_packages() -> set[str]:
    """The top-level packages and modules of ``hpcgate``, as imported."""
    top = REPO / "server" / "hpcgate"
    return {
        f"hpcgate.{path.stem}"
        for path in top.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").exists()
    }


def test_import_contracts_hold() -> None:
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(PYPROJECT)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_server_package_has_a_layer() -> None:
    """A new top-level package or module cannot escape the layering rule."""
    layered = {
        name.strip()
        for layer in contract("layers")["layers"]
        for name in layer.replace(":", "|").split("|")
    }
    assert layered == server_packages()


@pytest.mark.parametrize(
    ("contract_id", "allowed"),
    [
        ("ssh", {"hpcgate.cluster", "hpcgate.filesystem"}),
        ("http", {"hpcgate.cli", "hpcgate.api"}),
    ],
)
def test_every_other_package_is_forbidden_the_library(contract_id: str, allowed: set[str]) -> None:
    """Only ``allowed`` may import SSH (HTTP): every other package is a source of the
    contract, new ones included."""
    assert set(contract(contract_id)["source_modules"]) == server_packages() - allowed
