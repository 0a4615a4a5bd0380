"""Submit a job through the API with pyfirecrest, wait for it, print its output."""

from __future__ import annotations

import os
import sys

import firecrest


class StaticToken:
    def __init__(self, token: str) -> None:
        self.token = token

    def get_access_token(self) -> str:
        return self.token


def main() -> int:
    client = firecrest.v2.Firecrest(
        firecrest_url=os.environ["HPCGATE_URL"],
        authorization=StaticToken(os.environ["HPCGATE_TOKEN"]),
    )
    [system] = client.systems()
    name = system["name"]
    health = ", ".join(
        f"{h['serviceType']}={'ok' if h['healthy'] else 'DOWN'}" for h in system["servicesHealth"]
    )
    print(f"system {name}: {health}")
    user = client.userinfo(name)["user"]["name"]
    workdir = next(fs["path"] for fs in system["fileSystems"] if fs["defaultWorkDir"]) + f"/{user}"
    script = (
        '#!/bin/bash\n#SBATCH --job-name=hpcgate-demo\necho "hello from $(hostname) as $(whoami)"\n'
    )
    job_id = client.submit(name, working_dir=workdir, script_str=script)["jobId"]
    print(f"submitted job {job_id} as {user} in {workdir}")
    [job] = client.wait_for_job(name, job_id)
    state, exit_code = job["status"]["state"], job["status"]["exitCode"]
    print(f"job {job_id}: {state}, exit code {exit_code}")
    output = client.job_metadata(name, job_id)[0]["standardOutput"]
    print(f"{output}: {client.view(name, output).strip()}")
    return 0 if state == "COMPLETED" and exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
