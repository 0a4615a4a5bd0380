"""Running one command on a pooled connection: an exec channel within the connection's
bound, output read in bounded chunks (``hpcgate.cluster.output``), and a command that
overran, printed too much or whose caller went away stopped: SIGTERM to its process
group (srun forwards it to its job step), SIGKILL after a short grace.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from contextlib import suppress
from typing import Any

import asyncssh
from asyncssh.constants import OPEN_CONNECT_FAILED

from hpcgate import errors
from hpcgate.cluster.connection import (
    CLOSE_GRACE_SECONDS,
    LOST,
    ChannelNotOpened,
    Connection,
    unreachable,
)
from hpcgate.cluster.output import CHUNK, OutputLimits, collect_output
from hpcgate.cluster.remote import CommandResult

log = logging.getLogger(__name__)

_TERM_GRACE_SECONDS = 1.0

#: runs a best-effort background task (the pool keeps it until it ends)
Spawn = Callable[[Coroutine[Any, Any, None]], None]


async def execute(
    entry: Connection,
    command: str,
    data: bytes | None,
    limits: OutputLimits,
    spawn: Spawn,
) -> CommandResult:
    """Run ``command`` on ``entry`` and collect its output within ``limits``.

    ``ChannelNotOpened`` if the connection was dead before the command could start
    (the caller may retry on a new one); ``spawn`` runs the clean-up of a command
    abandoned midway."""
    assert entry.conn is not None
    await entry.acquire_channel()
    handed_off = False
    try:
        opening = asyncio.ensure_future(
            entry.conn.create_process(
                command,
                input=data,
                stdin=asyncssh.PIPE if data is not None else asyncssh.DEVNULL,
                encoding=None,
            )
        )
        try:
            # shielded: a cancelled open may still start the command, which must die
            process = await asyncio.shield(opening)
        except asyncio.CancelledError:
            handed_off = True
            spawn(_abandon(entry, opening))
            raise
        except (asyncssh.ChannelOpenError, *LOST) as exc:
            if _never_opened(exc):
                raise ChannelNotOpened(str(exc)) from exc
            if entry.dead_at_open(exc):  # after the exec request went out: maybe ran
                raise unreachable(
                    entry.system, "the connection was lost while the command ran"
                ) from None
            raise unreachable(entry.system, f"cannot open a channel ({exc})") from None
        try:
            stdout, stderr = await _collect(entry, process, command, limits)
        except BaseException:
            handed_off = True
            spawn(_abandon(entry, opening))
            raise
    finally:
        if not handed_off:
            entry.release_channel()
    return CommandResult(exit_status=_exit_status(entry, process), stdout=stdout, stderr=stderr)


async def _collect(
    entry: Connection,
    process: asyncssh.SSHClientProcess[bytes],
    command: str,
    limits: OutputLimits,
) -> tuple[str, str]:
    """The command's output, read within ``limits``, once it has exited."""
    try:
        output = await collect_output(process.stdout, process.stderr, limits, entry.output_budget)
        await process.wait_closed()
    except errors.OutputTooLarge as exc:
        log.warning(
            "SSH command stopped, output over %s (%d bytes): system=%s user=%s program=%.64s",
            exc.setting,
            exc.limit,
            entry.system.name,
            entry.username,
            command.split(" ", 1)[0],  # never the arguments: they may carry secrets
        )
        raise
    except (*LOST, asyncssh.Error):
        raise unreachable(entry.system, "the connection was lost while the command ran") from None
    return output


def _exit_status(entry: Connection, process: asyncssh.SSHClientProcess[bytes]) -> int:
    if process.exit_status is not None and process.exit_status >= 0:
        return process.exit_status
    if process.exit_signal is not None:
        name = process.exit_signal[0]
        number = getattr(signal.Signals, f"SIG{name}", None)
        return 128 + (number.value if number is not None else 127)
    raise unreachable(entry.system, "the connection was lost while the command ran")


async def _abandon(
    entry: Connection, opening: asyncio.Future[asyncssh.SSHClientProcess[bytes]]
) -> None:
    """Stop a command that overran, printed too much or whose caller went away, then
    free its channel.

    sshd delivers signals to the command's process group (killpg). SIGTERM first:
    srun forwards it to its job step, which SIGKILL would leave running for a while;
    what the command still prints meanwhile is read and dropped, so its exit can be
    seen. SIGKILL after ``_TERM_GRACE_SECONDS`` for a command that ignores SIGTERM.
    """
    try:
        with suppress(Exception):
            process = await opening
            with suppress(Exception):
                process.send_signal("TERM")
            with suppress(Exception):
                await _drain(process, _TERM_GRACE_SECONDS)
            with suppress(Exception):
                process.send_signal("KILL")
            process.close()
            await asyncio.wait_for(process.wait_closed(), CLOSE_GRACE_SECONDS)
    finally:
        entry.release_channel()


def _never_opened(exc: BaseException) -> bool:
    """Whether ``create_process`` failed before its channel opened, so the command cannot
    have run and may be retried: asyncssh fails the open itself with OPEN_CONNECT_FAILED
    when the connection goes; a loss reported otherwise came while the exec request was
    answered, and sshd may have started the command already."""
    return isinstance(exc, asyncssh.ChannelOpenError) and exc.code == OPEN_CONNECT_FAILED


async def _drain(process: asyncssh.SSHClientProcess[bytes], seconds: float) -> None:
    """Read and drop the rest of a stopped command's output and wait for its exit."""

    async def drop(stream: asyncssh.SSHReader[bytes]) -> None:
        while await stream.read(CHUNK):
            pass

    tasks = [
        asyncio.ensure_future(drop(process.stdout)),
        asyncio.ensure_future(drop(process.stderr)),
    ]
    try:
        async with asyncio.timeout(seconds):
            await asyncio.gather(*tasks)
            await process.wait_closed()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
