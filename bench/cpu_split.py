"""Where a benchmark point's CPU went: the server's processes, the site's sshd
sessions that serve them, the machine's idle time.

An SSH session serving the server is selected by its socket: ``ss -tnp`` lists the
server tree's connections to the SSH port and, on the other side, the sshd
processes holding the peer socket (the privileged monitor and the user's session
process, which runs ``internal-sftp`` or spawns ``sftp-server``); their children
count too. Other users of the site (other tests, other helpers) are left out. Needs
to see other users' sockets (root), else the sshd figure is 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass

from bench.procstat import cpu_seconds_if_alive, idle_seconds, tree_cpu_seconds, tree_pids

_PIDS = re.compile(r"pid=(\d+)")


def ssh_sessions(server_pid: int, ssh_port: int) -> set[int]:
    """The sshd processes (and their children) at the far end of the SSH
    connections of ``server_pid``'s process tree."""
    server = tree_pids(server_pid)
    listing = subprocess.run(
        ["ss", "-tnpH", "state", "established"], capture_output=True, text=True, check=True
    ).stdout
    rows = []
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        local = int(fields[2].rsplit(":", 1)[1])
        peer = int(fields[3].rsplit(":", 1)[1])
        rows.append((local, peer, {int(p) for p in _PIDS.findall(line)}))
    ours = {local for local, peer, pids in rows if peer == ssh_port and pids & server}
    sessions: set[int] = set()
    for local, peer, pids in rows:
        if local == ssh_port and peer in ours:
            for pid in pids:
                sessions |= tree_pids(pid)
    return sessions


@dataclass
class Split:
    """One point's CPU, in percent of one core over its wall time."""

    server: float
    sshd: float
    idle: float
    elapsed: float

    def with_client(self, client_seconds: float) -> dict[str, float]:
        client = client_seconds / self.elapsed * 100
        cores = (os.cpu_count() or 1) * 100
        other = cores - self.server - self.sshd - client - self.idle
        return {
            "server": self.server,
            "sshd": self.sshd,
            "client": client,
            "idle": self.idle,
            "other": other,
        }


class CpuSplit:
    """Readings before and after a point; sessions are those at either end."""

    def __init__(self, server_pid: int, ssh_port: int) -> None:
        self._server = server_pid
        self._port = ssh_port
        self._sessions = ssh_sessions(server_pid, ssh_port)
        self._before = {pid: cpu_seconds_if_alive(pid) for pid in self._sessions}
        self._tree = tree_cpu_seconds(server_pid)
        self._idle = idle_seconds()
        self._start = time.monotonic()

    def done(self) -> Split:
        elapsed = time.monotonic() - self._start
        idle = idle_seconds() - self._idle
        tree = tree_cpu_seconds(self._server) - self._tree
        sessions = self._sessions | ssh_sessions(self._server, self._port)
        sshd = sum(cpu_seconds_if_alive(pid) - self._before.get(pid, 0.0) for pid in sessions)
        return Split(
            server=tree / elapsed * 100,
            sshd=sshd / elapsed * 100,
            idle=idle / elapsed * 100,
            elapsed=elapsed,
        )
