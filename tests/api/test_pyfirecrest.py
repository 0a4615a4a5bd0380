"""pyfirecrest's v2 client, unchanged, against the running server."""

from __future__ import annotations

import shlex
import uuid

import firecrest
import pytest

from tests.server import ApiServer

pytestmark = [pytest.mark.site, pytest.mark.e2e]


class Token:
    def __init__(self, server: ApiServer, user: str) -> None:
        self.server, self.user = server, user

    def get_access_token(self) -> str:
        return self.server.token(self.user)


@pytest.fixture(scope="module")
def client(api_server: ApiServer) -> firecrest.v2.Firecrest:
    return firecrest.v2.Firecrest(
        firecrest_url=api_server.url, authorization=Token(api_server, "hpcuser1")
    )


def test_status_calls(client, api_server, site_env) -> None:
    [system] = client.systems()
    assert system["name"] == api_server.system
    assert [n["name"] for n in client.nodes(api_server.system)] == [site_env["HPC_SITE_NODE"]]
    assert {p["name"] for p in client.partitions(api_server.system)} == {"compute", "xfer"}
    assert client.reservations(api_server.system) == []
    assert client.userinfo(api_server.system)["user"]["name"] == "hpcuser1"


def test_submit_wait_and_metadata(client, api_server, site_env) -> None:
    workdir = site_env.scratch("hpcuser1")
    script = "#!/bin/bash\n#SBATCH --job-name=pyfc\necho $GREETING\n"
    job = client.submit(
        api_server.system, working_dir=workdir, script_str=script, env_vars={"GREETING": "hi"}
    )
    job_id = job["jobId"]
    [info] = client.wait_for_job(api_server.system, job_id, timeout=120)
    assert info["status"]["state"] == "COMPLETED"
    assert info["status"]["exitCode"] == 0
    [listed] = client.job_info(api_server.system, job_id)
    assert str(listed["jobId"]) == str(job_id)
    [meta] = client.job_metadata(api_server.system, job_id)
    assert meta["script"].startswith("#!/bin/bash")
    assert meta["standardOutput"].startswith(workdir)


async def test_submit_remote_script_and_cancel(client, api_server, site_env, ssh_as) -> None:
    path = f"{site_env.scratch('hpcuser1')}/remote-{uuid.uuid4().hex[:8]}.sh"
    conn = await ssh_as("hpcuser1")
    await conn.run(shlex.join(["tee", path]), input="#!/bin/bash\nsleep 120\n", check=True)
    job_id = client.submit(
        api_server.system, working_dir=site_env.scratch("hpcuser1"), script_remote_path=path
    )["jobId"]
    client.cancel_job(api_server.system, job_id)
    [info] = client.wait_for_job(api_server.system, job_id, timeout=60)
    assert info["status"]["state"] == "CANCELLED"
