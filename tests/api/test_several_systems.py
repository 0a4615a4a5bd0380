"""Several systems in one configuration: each listed, checked and addressed by name."""

from __future__ import annotations

import copy

import httpx
import pytest

from hpcgate.api.app import create_app
from hpcgate.auth.localauth import create_signing_key
from hpcgate.cli import local_site_config
from hpcgate.config import Settings
from tests.api.helpers import submit, wait_final
from tests.server import serve_in_thread

pytestmark = [pytest.mark.site, pytest.mark.e2e]


def test_two_systems_are_served_side_by_side(site_env, tmp_path) -> None:
    config = local_site_config(site_env.values, tmp_path / "keys")
    config["state_dir"] = str(tmp_path / "state")
    first = config["systems"][0]
    second = copy.deepcopy(first)
    second["name"] = "second"
    # the second system logs in with static keys instead of certificates
    second["credentials"] = {
        "kind": "static_keys",
        "key_path": f"{site_env['HPC_SITE_KEYS_DIR']}/{{username}}",
    }
    second["required_scopes"] = ["hpc:second"]
    config["systems"] = [first, second]
    settings = Settings(**config)
    issuer = create_signing_key(tmp_path / "keys")
    with serve_in_thread(create_app(settings), "two-systems") as url:
        token = issuer.mint("hpcuser1", scopes=["hpc:second"])
        client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        systems = client.get("/status/systems").json()["systems"]
        assert [s["name"] for s in systems] == [first["name"], "second"]
        for system in systems:
            assert all(h["healthy"] for h in system["servicesHealth"]), system
        for name in (first["name"], "SECOND"):
            job_id = submit(
                client,
                name,
                {"workingDirectory": site_env.scratch("hpcuser1"), "script": "#!/bin/bash\ntrue\n"},
            )
            assert wait_final(client, name, job_id)["status"]["state"] == "COMPLETED"
        # the scope is required on the second system only
        plain = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {issuer.mint('hpcuser1')}"}, timeout=60
        )
        assert plain.get(f"/status/{first['name']}/partitions").status_code == 200
        assert plain.get("/status/second/partitions").status_code == 403
