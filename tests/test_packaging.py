"""The distribution: package list, import independence, configuration errors."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hpcgate.config import ConfigError, load_settings

REPO = Path(__file__).resolve().parents[1]


def package_folders() -> set[str]:
    """Every folder with an ``__init__.py``, named as it imports: by its folder names."""
    found = set()
    for top in (REPO / "server" / "hpcgate", REPO / "airflow_provider_hpc"):
        for init in top.rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(top.parent).parts))
    return found


@pytest.mark.slow
def test_the_wheel_holds_every_package_folder(tmp_path: Path) -> None:
    """setuptools' discovery finds every package: nothing is listed by hand."""
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps"]
    result = subprocess.run(
        [*build, "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("hpcgate-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packages = {
            name.rsplit("/", 1)[0].replace("/", ".")
            for name in archive.namelist()
            if name.endswith("/__init__.py")
        }
        typed = {name for name in archive.namelist() if name.endswith("py.typed")}
    assert packages == package_folders()
    assert typed == {"hpcgate/py.typed", "airflow_provider_hpc/py.typed"}


def test_server_folder_is_no_package() -> None:
    """The server imports as ``hpcgate`` only; ``server`` itself is no second name."""
    assert not (REPO / "server" / "__init__.py").exists()


def test_server_imports_without_airflow() -> None:
    code = (
        "import sys; sys.modules['airflow'] = None\n"
        "import hpcgate.api.app, hpcgate.cli, hpcgate.services\n"
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
