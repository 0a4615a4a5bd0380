"""The distribution: package list, import independence, configuration errors."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

from hpcgate.config import ConfigError, load_settings

REPO = Path(__file__).resolve().parents[1]


def declared_packages() -> set[str]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    return {line.strip() for line in config["options"]["packages"].splitlines() if line.strip()}


def package_folders() -> set[str]:
    found = set()
    for root, name in ((REPO / "server", "hpcgate"), (REPO / "airflow_provider_hpc", None)):
        base = name or root.name
        for init in root.rglob("__init__.py"):
            relative = init.parent.relative_to(root).parts
            found.add(".".join((base, *relative)))
    return found


def test_every_package_folder_is_declared() -> None:
    assert package_folders() == declared_packages()


def test_server_imports_without_airflow() -> None:
    code = (
        "import sys; sys.modules['airflow'] = None\n"
        "import hpcgate.app, hpcgate.cli, hpcgate.services\n"
        "assert not any(m == 'airflow' or m.startswith('airflow.') for m in sys.modules"
        " if sys.modules[m] is not None)\n"
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


VALID = """
auth: {issuer: https://idp.example, audience: hpcgate, jwks_file: /etc/hpcgate/jwks.json}
systems:
  - name: cluster
    ssh: {host: login.example, known_hosts: /etc/hpcgate/known_hosts}
    credentials: {kind: ca, ca_key: /etc/hpcgate/user_ca}
"""


def test_valid_configuration_loads(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(VALID)
    settings = load_settings(path)
    assert settings.system("CLUSTER") is settings.systems[0]


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (("port: 22", "port: 70000"), "systems.0.ssh.port", "less than or equal"),
        (("kind: ca", "kind: password"), "systems.0.credentials", "kind"),
        (("audience: hpcgate, ", ""), "auth.audience", "Field required"),
        (("name: cluster", "name: 'bad name'"), "systems.0.name", "pattern"),
    ],
)
def test_bad_configuration_names_field_and_reason(tmp_path, change, field, reason) -> None:
    text = VALID.replace("known_hosts:", "port: 22, known_hosts:")
    old, new = change
    assert old in text
    path = tmp_path / "c.yaml"
    path.write_text(text.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert field in str(info.value)
    assert reason.lower() in str(info.value).lower()


def test_serve_refuses_bad_configuration(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("systems: []\n")
    result = subprocess.run(
        [sys.executable, "-m", "hpcgate.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "auth" in result.stderr and "systems" in result.stderr
