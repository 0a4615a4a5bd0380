"""Floods of remote output, as a hostile user makes them, against a real server process.

Everything a command prints over SSH is the user's to choose: a command they attach
to their own job, or their ``~/.bashrc``, which sshd's login shell runs before every
command. The server must read a bounded amount (``ssh.max_output_bytes``, 64 MiB by
default), answer with an error naming the cap, stop the remote command and keep its
memory flat, while other users are served as usual.

The server's peak memory is read from /proc (VmHWM, reset before each flood through
``clear_refs``); figures are printed (``pytest -s``).
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.api.helpers import submit, wait_state
from tests.security.hostile import hostile_bashrc, rss_kib
from tests.server import ApiServer, start_server
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e]

CAP = 64 * 1024**2  # the default ssh.max_output_bytes
MARGIN_KIB = 32 * 1024  # interpreter, TLS-free HTTP, asyncssh window: well under this


@pytest.fixture(scope="module")
def server(site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A server of its own with the default caps, so its memory is ours to measure."""
    server = start_server(site_env, tmp_path_factory.mktemp("remote-output"))
    yield server
    server.stop()


class Peak:
    """The server's resident memory before a block and its peak during it (KiB)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        self.before, _ = rss_kib(pid)
        self.after = self.peak = self.before

    def stop(self) -> Peak:
        self.after, self.peak = rss_kib(self.pid)
        return self

    @property
    def growth(self) -> int:
        return self.peak - self.before

    def __str__(self) -> str:
        return (
            f"VmRSS {self.before / 1024:.1f} MiB before -> {self.after / 1024:.1f} MiB after, "
            f"VmHWM peak {self.peak / 1024:.1f} MiB (+{self.growth / 1024:.1f} MiB)"
        )


def processes(user: str, pattern: str) -> str:
    found = subprocess.run(["pgrep", "-a", "-u", user, "-f", pattern], capture_output=True)
    return found.stdout.decode(errors="replace")


def gone(user: str, pattern: str, seconds: float = 5.0) -> bool:
    """No process of ``user`` matches ``pattern`` within ``seconds``."""
    deadline = time.monotonic() + seconds
    while processes(user, pattern):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def assert_names_the_cap(
    response: httpx.Response, what: str = "output", statuses: tuple[int, ...] = (502,)
) -> None:
    assert response.status_code in statuses, response.text
    message = response.json()["message"]
    assert f"The command's {what} exceeded {CAP} bytes (64 MiB)" in message, message
    assert "(ssh.max_output_bytes)" in message and "stopped" in message, message


def assert_names_a_cap(response: httpx.Response) -> None:
    """The per-command cap or the user's budget (several floods at once), named; a
    job listing says so as a 400 (a narrower listing may fit)."""
    assert response.status_code in (400, 502), response.text
    message = response.json()["message"]
    assert re.search(
        r"exceeded \d+ bytes \(\d+ MiB\) \(ssh\.max_output_bytes(_per_user)?\)", message
    ), message


@pytest.fixture(scope="module")
def running_job(server: ApiServer, site_env: SiteEnv) -> Iterator[str]:
    """A running job of hpcuser2's, to attach to."""
    bob = server.client("hpcuser2")
    job = {
        "workingDirectory": site_env.scratch("hpcuser2"),
        "script": "#!/bin/bash\nsleep 120\n",
        "timeLimit": 3,  # short: backfill may start it on a node other suites keep busy
    }
    job_id = submit(bob, server.system, job)
    try:
        wait_state(bob, server.system, job_id, "RUNNING", limit=180)  # the node is shared
        yield job_id
    finally:
        bob.delete(f"/compute/{server.system}/jobs/{job_id}")


def attach(server: ApiServer, job_id: str, command: str) -> tuple[httpx.Response, Peak, float]:
    """hpcuser2 attaches ``command`` to their job: the answer, the server's memory, seconds."""
    memory = Peak(server.process.pid)
    started = time.monotonic()
    response = server.client("hpcuser2").put(
        f"/compute/{server.system}/jobs/{job_id}/attach", json={"command": command}
    )
    return response, memory.stop(), time.monotonic() - started


def test_attach_printing_300_mb_on_stderr_is_stopped_at_the_cap(
    server: ApiServer, running_job: str
) -> None:
    """The attached command's stderr crosses SSH (it feeds the error message): 300 MB of
    it is read up to the cap, 1 MiB of it kept, and the command (srun, its step) stopped."""
    tag = f"flood{uuid.uuid4().hex[:10]}"
    command = f"head -c 300000000 /dev/zero | tr '\\0' x >&2  # {tag}"
    response, memory, took = attach(server, running_job, command)
    print(f"\nattach, 300 MB on stderr: {response.status_code} in {took:.1f} s; {memory}")
    # 502 from the pool; the scheduler may answer 400/413 for the caller's own command
    assert_names_the_cap(response, "error output", statuses=(400, 413, 502))
    assert took < 20
    assert memory.growth < MARGIN_KIB, str(memory)
    # srun, its step's bash (both name the tag) and the printers are all gone
    assert gone("hpcuser2", tag), processes("hpcuser2", tag)
    assert gone("hpcuser2", "head -c 300000000"), processes("hpcuser2", "head -c 300000000")


def test_attach_printing_300_mb_on_stdout_is_never_held(
    server: ApiServer, running_job: str
) -> None:
    """The attached command's stdout is of no use to the API: whatever route it takes
    (dropped inside the job, or read up to the cap and stopped), the server never holds
    more than the cap of it."""
    command = "head -c 300000000 /dev/zero | tr '\\0' x"
    response, memory, took = attach(server, running_job, command)
    print(f"\nattach, 300 MB on stdout: {response.status_code} in {took:.1f} s; {memory}")
    if response.status_code != 204:
        assert_names_the_cap(response, statuses=(400, 413, 502))
    assert took < 20
    assert memory.growth < CAP // 1024 + MARGIN_KIB, str(memory)
    assert gone("hpcuser2", "head -c 300000000"), processes("hpcuser2", "head -c 300000000")


def test_bashrc_printing_200_mb_one_command_holds_at_most_the_cap(server: ApiServer) -> None:
    """One job lookup (squeue) through a login shell printing 200 MB first: 502 naming
    the cap, the server's peak grows by about the cap, and the memory goes back."""
    flood = "head -c 200000000 /dev/zero | tr '\\0' x\n"
    with hostile_bashrc("hpcuser2", flood):
        memory = Peak(server.process.pid)
        response = server.client("hpcuser2").get(f"/compute/{server.system}/jobs/1")
        memory.stop()
        print(f"\n.bashrc printing 200 MB, one job lookup: {response.status_code}; {memory}")
        assert_names_the_cap(response)
        assert memory.growth < CAP // 1024 + MARGIN_KIB, str(memory)
        assert memory.after - memory.before < MARGIN_KIB, str(memory)
        assert gone("hpcuser2", "head -c 200000000"), processes("hpcuser2", "head -c 2000")


def test_bashrc_printing_200_mb_fails_its_owner_only(server: ApiServer) -> None:
    """hpcuser2's login shell prints 200 MB before every command: hpcuser2's requests
    fail with the cap named, hpcuser1 is served meanwhile, and the memory stays flat:
    bounded by the user's budget during a round, not growing over repeated rounds."""
    alice, bob = server.client("hpcuser1"), server.client("hpcuser2")
    path = f"/compute/{server.system}/jobs"
    assert alice.get(path).status_code == 200  # hpcuser1's connection is up already
    flood = "head -c 200000000 /dev/zero | tr '\\0' x\n"
    start = rss_kib(server.process.pid)[0]
    peaks: list[int] = []
    with hostile_bashrc("hpcuser2", flood), ThreadPoolExecutor(6) as threads:
        for round in range(3):
            memory = Peak(server.process.pid)
            started = time.monotonic()
            hostile = [threads.submit(bob.get, path) for _ in range(2)]
            served = [threads.submit(alice.get, path) for _ in range(4)]
            victims = [future.result() for future in served]
            victim_time = time.monotonic() - started
            attacked = [future.result() for future in hostile]
            memory.stop()
            peaks.append(memory.peak)
            print(
                f"\n.bashrc printing 200 MB, round {round}, 2 listings (squeue + sacct "
                f"each): {[r.status_code for r in attacked]} in "
                f"{time.monotonic() - started:.1f} s, hpcuser1 "
                f"{[r.status_code for r in victims]} in {victim_time:.1f} s; {memory}"
            )
            for response in attacked:
                assert_names_a_cap(response)
            assert [r.status_code for r in victims] == [200] * 4
            # four floods at once hold at most the user's budget together
            # (ssh.max_output_bytes_per_user, 128 MiB = 2 caps)
            assert memory.peak - start < 2 * CAP // 1024 + MARGIN_KIB, str(memory)
            assert gone("hpcuser2", "head -c 200000000"), processes("hpcuser2", "head -c 2000")
    assert max(peaks) - peaks[0] < MARGIN_KIB, f"the peak grows with every round: {peaks}"


def test_bashrc_flooding_stderr_is_stopped_too(server: ApiServer) -> None:
    """200 MB on stderr: at most 1 MiB of it is kept, the command is stopped once
    64 MiB have been read, and the message names the cap."""
    bob = server.client("hpcuser2")
    flood = "head -c 200000000 /dev/zero | tr '\\0' e >&2\n"
    with hostile_bashrc("hpcuser2", flood):
        memory = Peak(server.process.pid)
        response = bob.get(f"/compute/{server.system}/jobs/1")
        memory.stop()
        print(f"\n.bashrc printing 200 MB on stderr: {response.status_code}; {memory}")
        assert_names_the_cap(response, "error output")
        assert len(response.text) < 2000
        assert memory.growth < MARGIN_KIB, str(memory)
        assert gone("hpcuser2", "head -c 200000000"), processes("hpcuser2", "head -c 2000")
