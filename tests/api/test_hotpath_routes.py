"""The lean path (``hpcgate.api.hotpath``) recognises every hot route (no site needed).

A route whose dependencies or query parameters change is left to FastAPI by the
lean path; this test makes such a change visible rather than a silent slowdown.
The answers themselves are compared with FastAPI's in tests/filesystem/test_hotpath.py.
"""

from __future__ import annotations

from pathlib import Path

from hpcgate.api import hotpath
from hpcgate.api.app import create_app
from hpcgate.config import Settings


def test_every_hot_route_is_recognised(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "auth": {
                "issuer": "https://idp.example",
                "audience": "hpc",
                "jwks_url": "https://idp/j",
            },
            "systems": [
                {
                    "name": "cluster",
                    "ssh": {"host": "login", "known_hosts": "/etc/ssh/known_hosts"},
                    "credentials": {"kind": "ca", "ca_key": "/etc/hpcgate/ca"},
                }
            ],
            "state_dir": tmp_path,
        }
    )
    app = create_app(settings)
    routes = {hot.route.path for hot in hotpath._hot_routes(app)}
    assert routes == {
        "/compute/{system_name}/jobs/{job_id}",
        "/filesystem/{system_name}/ops/stat",
        "/filesystem/{system_name}/ops/ls",
    }
