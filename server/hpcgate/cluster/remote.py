"""How the server runs a program on a cluster as a user: the one interface for it.

A command is an argument vector, never a shell string: implementations quote every
element (``shlex.join``) before it reaches the remote login shell, so no value that
came from a request can be interpreted by a shell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What a finished remote command left behind."""

    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class CommandRunner(Protocol):
    """Runs commands on one cluster as one user.

    A non-zero exit status is returned, not raised. Implementations raise
    ``errors.RequestTimeout`` when ``timeout`` expires,
    ``errors.ClusterUnreachable`` when the cluster cannot be reached and
    ``errors.OutputTooLarge`` (502) when the command prints more than its cap: the
    system's ``ssh.max_output_bytes`` on stdout, or ``max_output`` bytes when given
    (for a caller that needs a larger cap, or wants a smaller one because its request
    chose the command). Output is bounded because the user controls it (their login
    shell prints into it); stderr is kept in part (``ssh.max_stderr_bytes``, head and
    tail), it only feeds error messages. A stopped command is killed remotely.
    """

    @property
    def username(self) -> str:
        """The user the commands run as."""
        ...

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | bytes | None = None,
        timeout: float | None = None,
        max_output: int | None = None,
    ) -> CommandResult: ...
