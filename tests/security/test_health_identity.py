"""Health runs as the service identity, and callers never read what the cluster printed.

A co-tenant's hostile ``.bashrc`` (exit 1, garbage on every stream, a forged Slurm
version) changes nobody's health: the probes log in as ``hpcsvc``, never as an API
user. When the service identity's own probes fail, ``/status/systems`` and 503 bodies
carry only the server's fixed words; the remote text lands in the server log.
"""

from __future__ import annotations

import copy
import re
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from hpcgate.api.app import create_app
from hpcgate.auth.localauth import create_signing_key
from hpcgate.cli import local_site_config
from hpcgate.config import Settings
from hpcgate.services import parse_sinfo_version
from tests.security.hostile import hostile_bashrc
from tests.server import ApiServer, serve_in_thread, start_server
from tests.site import SiteEnv

FAST_HEALTH = {"health": {"interval_seconds": 0.5, "timeout_seconds": 10}}


def _health(server: ApiServer, user: str = "hpcuser1") -> dict[str, Any]:
    with server.client(user) as client:
        [system] = client.get("/status/systems").json()["systems"]
    return system


def _wait(predicate: Callable[[], bool], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _checked_after(server: ApiServer, moment: datetime, rounds: int = 2) -> Callable[[], bool]:
    """True once every probe has run ``rounds`` intervals after ``moment``."""
    interval = FAST_HEALTH["health"]["interval_seconds"]

    def done() -> bool:
        services = _health(server)["servicesHealth"]
        return all(
            (datetime.fromisoformat(h["lastChecked"]) - moment).total_seconds() > rounds * interval
            for h in services
        )

    return done


def test_sinfo_version_parser_passes_only_a_version() -> None:
    assert parse_sinfo_version("slurm-wlm 22.05.8\n") == "22.05.8"
    assert parse_sinfo_version("slurm 23.11.4-1\n") == "23.11.4-1"
    for forged in ("", "garbage", "slurm 22.05.8 extra", "slurm <script>", "x\nslurm 1.2.3"):
        assert parse_sinfo_version(forged) is None, forged


@pytest.mark.site
def test_a_users_hostile_shell_changes_no_ones_health(site_env: SiteEnv, tmp_path: Path) -> None:
    server = start_server(site_env, tmp_path, settings_overrides=FAST_HEALTH)
    try:
        system = server.system
        hostile = (
            'echo "slurm 0.0.0"; echo "scontrol ping: is DOWN" >&2; echo garbage >&2; exit 1\n'
        )
        with hostile_bashrc("hpcuser2", hostile):
            moment = datetime.fromisoformat(_health(server)["lastHealthCheck"])
            with server.client("hpcuser2") as client:  # the attacker uses the API meanwhile
                for _ in range(3):
                    # the planting is live: hpcuser2's own commands fail
                    assert client.get(f"/status/{system}/partitions").status_code != 200
                    assert client.get(f"/status/{system}/userinfo").status_code != 200
            _wait(_checked_after(server, moment))
            for user in ("hpcuser1", "hpcuser2"):
                seen = _health(server, user)
                assert all(h["healthy"] for h in seen["servicesHealth"]), seen
                assert re.fullmatch(r"\d+\.\d+\.\d+", seen["scheduler"]["version"])
                assert seen["scheduler"]["version"] != "0.0.0"
            with server.client("hpcuser1") as client:
                assert client.get(f"/status/{system}/partitions").status_code == 200
        assert "health probe failed" not in server.log()
    finally:
        server.stop()


@pytest.mark.site
def test_failed_probes_show_callers_no_remote_text(site_env: SiteEnv, tmp_path: Path) -> None:
    marker = f"remote-text-{uuid.uuid4().hex[:12]}"
    fs_root = site_env["HPC_SITE_FS_ROOT"]
    bogus = f"{fs_root}/no-such-fs-{marker}"
    filesystems = [
        {"path": f"{fs_root}/home", "data_type": "users", "default_work_dir": True},
        {"path": bogus, "data_type": "scratch"},
    ]
    # hpcuser2 stands in for a service identity whose shell fails (hpcsvc's is shared
    # with every other server on the site); accounts come from the host's NSS here
    probed = start_server(
        site_env,
        tmp_path / "probed",
        overrides={
            "service_user": "hpcuser2",
            "accounts": {"source": "local"},
            "filesystems": filesystems,
        },
        settings_overrides=FAST_HEALTH,
    )
    # and here from getent as that same failing identity
    looked_up = start_server(
        site_env,
        tmp_path / "looked-up",
        overrides={"service_user": "hpcuser2", "accounts": {"source": "service"}},
    )
    try:
        hostile = f'echo "{marker}-out"; echo "{marker}-err" >&2; exit 3\n'
        with hostile_bashrc("hpcuser2", hostile):
            moment = datetime.fromisoformat(_health(probed)["lastHealthCheck"])
            _wait(_checked_after(probed, moment))
            system = _health(probed)
            with probed.client() as client:
                body = client.get("/status/systems").text
                submit = client.post(
                    f"/compute/{probed.system}/jobs",
                    json={"job": {"workingDirectory": "/tmp", "script": "#!/bin/bash\ntrue\n"}},
                )
            with looked_up.client() as client:
                lookup = client.get(f"/status/{looked_up.system}/partitions")

        health = {(h["serviceType"], h.get("path")): h for h in system["servicesHealth"]}
        assert health[("ssh", None)]["healthy"] is False
        assert health[("ssh", None)]["message"] == "login as the service identity failed"
        assert health[("scheduler", None)]["message"] == "the scheduler did not answer"
        assert health[("filesystem", bogus)]["healthy"] is False
        assert health[("filesystem", bogus)]["message"] == (
            "the filesystem is not accessible to the service identity"
        )
        assert health[("filesystem", f"{fs_root}/home")]["healthy"] is True  # SFTP: no shell
        assert marker not in body.replace(bogus, "")
        assert "No such file" not in body

        assert submit.status_code == 503
        assert submit.json()["message"].endswith(": the scheduler did not answer")
        assert marker not in submit.text

        assert lookup.status_code == 503
        assert lookup.json()["message"].startswith("Cannot check account 'hpcuser1'")
        assert marker not in lookup.text

        # the operator still reads what went wrong
        assert f"{marker}-err" in probed.log()
        assert "No such file" in probed.log()
        assert marker in looked_up.log()
    finally:
        probed.stop()
        looked_up.stop()


@pytest.mark.site
def test_status_lists_only_systems_whose_scopes_the_token_holds(
    site_env: SiteEnv, tmp_path: Path
) -> None:
    config = local_site_config(site_env.values, tmp_path / "keys")
    config["state_dir"] = str(tmp_path / "state")
    first = config["systems"][0]  # type: ignore[index]
    second = copy.deepcopy(first)
    second["name"] = "restricted"
    second["required_scopes"] = ["hpc:restricted"]
    config["systems"] = [first, second]
    issuer = create_signing_key(tmp_path / "keys")
    with serve_in_thread(create_app(Settings(**config)), "scoped-status") as url:

        def names(*scopes: str) -> list[str]:
            token = issuer.mint("hpcuser1", scopes=["openid", *scopes])
            response = httpx.get(
                f"{url}/status/systems", headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
            assert response.status_code == 200
            return [s["name"] for s in response.json()["systems"]]

        assert names() == [first["name"]]
        assert "restricted" not in httpx.get(f"{url}/status/systems", timeout=30).text  # 401
        assert names("hpc:restricted") == [first["name"], "restricted"]
        # the per-system routes refuse it too, and the unauthenticated liveness omits it
        plain = {"Authorization": f"Bearer {issuer.mint('hpcuser1')}"}
        for path in ("nodes", "partitions", "reservations", "userinfo"):
            assert httpx.get(f"{url}/status/restricted/{path}", headers=plain).status_code == 403
        runs = httpx.get(f"{url}/status/liveness/", timeout=30).json()["healthcheckRuns"]
        assert list(runs) == [first["name"]]
