"""Bounded collection of a remote command's output.

Everything a command prints is under the control of the user it runs as: sshd runs it
through that user's login shell, which sources ``~/.bashrc`` first. So the output is
read in chunks, stdout and stderr at once (one receive buffer serves both streams of a
channel: leaving one unread would stall the other), and never held past its cap:

* stdout: at most ``max_output`` bytes as read, and at most ``max_output`` bytes once
  decoded (CPython stores a ``str`` with 1, 2 or 4 bytes a character, so one emoji in a
  stream of ASCII would otherwise make it four times as big: non-ASCII chunks are
  measured as they come); over either, ``errors.OutputTooLarge``. The bytes grow in one
  buffer (a large one is its own mapping, given back to the OS when freed), decoded once
  at the end: a command that prints up to the cap briefly costs twice the cap.
* stderr only feeds error messages: its head and tail are kept (``max_stderr`` bytes in
  all) with a marker for what was dropped in between; the rest is read and dropped, up
  to ``max_drain`` bytes in all, then ``errors.OutputTooLarge`` too, so a command that
  floods stderr is stopped as well.
* ``OutputBudget``: what all the running commands of one connection (one user) hold at
  once is capped too, so many concurrent floods cannot add up.

Stopping the command is the caller's business (the pool signals it, see ``sshpool``).
"""

from __future__ import annotations

import asyncio
import codecs
from dataclasses import dataclass
from typing import Protocol

from hpcgate import errors

CHUNK = 64 * 1024
"""Bytes asked for per read (asyncssh hands over what it has, up to this)."""


class ByteStream(Protocol):
    """What is read: an ``asyncssh.SSHReader`` opened with ``encoding=None``."""

    async def read(self, n: int = -1) -> bytes: ...


@dataclass(frozen=True, slots=True)
class OutputLimits:
    """The caps for one command, with the settings that set them (for the message)."""

    max_output: int
    max_stderr: int
    max_drain: int
    output_setting: str = "ssh.max_output_bytes"
    drain_setting: str = "ssh.max_output_bytes"


class OutputBudget:
    """Bytes that the running commands of one connection may hold at once."""

    def __init__(self, limit: int, setting: str = "ssh.max_output_bytes_per_user") -> None:
        self.limit = limit
        self.setting = setting
        self.held = 0

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise errors.OutputTooLarge(
                f"The output of this user's running commands exceeded {_bytes(self.limit)} "
                f"({self.setting}); the command was stopped",
                limit=self.limit,
                setting=self.setting,
            )
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size


def _bytes(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size} bytes ({size // scale} {unit})"
    return f"{size} bytes"


def _too_large(what: str, limit: int, setting: str) -> errors.OutputTooLarge:
    return errors.OutputTooLarge(
        f"The command's {what} exceeded {_bytes(limit)} ({setting}); the command was stopped",
        limit=limit,
        setting=setting,
    )


def _width(text: str) -> int:
    """Bytes a character of ``text`` takes in CPython's representation."""
    if text.isascii():
        return 1
    top = ord(max(text))
    return 1 if top < 0x100 else 2 if top < 0x10000 else 4


class _Collector:
    def __init__(self, limits: OutputLimits, budget: OutputBudget | None) -> None:
        self.limits = limits
        self.budget = budget
        self.held = 0

    def _hold(self, size: int) -> None:
        if self.budget is not None:
            self.budget.take(size)
        self.held += size

    def release(self) -> None:
        if self.budget is not None:
            self.budget.give(self.held)
        self.held = 0

    async def stdout(self, stream: ByteStream) -> str:
        limit = self.limits.max_output
        buffer = bytearray()  # one growing block: freed to the OS whole, unlike many pieces
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        chars = 0
        width = 1
        try:
            while chunk := await stream.read(CHUNK):
                if len(buffer) + len(chunk) > limit:
                    raise _too_large("output", limit, self.limits.output_setting)
                if not chunk.isascii() or decoder.getstate()[0]:
                    text = decoder.decode(chunk)  # only measured: decoded whole at the end
                    chars += len(text)
                    width = max(width, _width(text))
                else:
                    chars += len(chunk)
                if chars * width > limit:
                    raise _too_large("output", limit, self.limits.output_setting)
                self._hold(len(chunk))
                buffer += chunk
            return buffer.decode(errors="replace")
        except BaseException:
            self.release()  # at once: the other commands of the user may use it meanwhile
            raise
        finally:
            buffer.clear()  # freed now, not when the error's traceback (and this frame) goes

    async def stderr(self, stream: ByteStream) -> str:
        limits = self.limits
        tail_size = limits.max_stderr // 2
        head_size = limits.max_stderr - tail_size
        head = bytearray()
        tail = bytearray()
        read = 0
        try:
            while chunk := await stream.read(CHUNK):
                read += len(chunk)
                if read > limits.max_drain:
                    raise _too_large("error output", limits.max_drain, limits.drain_setting)
                kept = len(head) + len(tail)
                room = head_size - len(head)
                if room > 0:
                    head += chunk[:room]
                    chunk = chunk[room:]
                if chunk:
                    tail += chunk
                    if len(tail) > tail_size:
                        del tail[: len(tail) - tail_size]  # cheap: bytearray drops its front
                self._hold(len(head) + len(tail) - kept)
            text = head.decode(errors="replace")
            omitted = read - len(head) - len(tail)
            if omitted:
                text += f"\n[... {omitted} bytes of stderr omitted ...]\n"
            return text + tail.decode(errors="replace")
        except BaseException:
            self.release()
            raise
        finally:
            head.clear()
            tail.clear()


async def collect_output(
    stdout: ByteStream,
    stderr: ByteStream,
    limits: OutputLimits,
    budget: OutputBudget | None = None,
) -> tuple[str, str]:
    """Read both streams to their end: ``(stdout, stderr)`` as text.

    Raises ``errors.OutputTooLarge`` as soon as a cap is passed (the other stream is
    then no longer read); the command is still running then, and must be stopped.
    """
    collector = _Collector(limits, budget)
    tasks = [
        asyncio.ensure_future(collector.stdout(stdout)),
        asyncio.ensure_future(collector.stderr(stderr)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            failure = task.exception() if task.done() and not task.cancelled() else None
            if failure is not None:
                raise failure
        return tasks[0].result(), tasks[1].result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        collector.release()
