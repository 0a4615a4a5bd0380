"""The attacker's swap loop: a group member toggling an entry of a shared directory
between the victim's original and the attacker's symlink, for as long as a test needs.

Runs as hpcuser2 for real (``runuser`` + the system's python), so the kernel checks
every rename against the attacker's own permissions. Each swap is atomic (rename(2));
the original is put back when the loop stops.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tests.security.shared_dirs import ATTACKER

_PYTHON = "/usr/bin/python3"

_LOOP = r"""
import os, signal, sys, time
target, link_to, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
directory, name = os.path.split(target)
aside = os.path.join(directory, "." + name + ".attacker-aside")
spare = os.path.join(directory, "." + name + ".attacker-link")
stop = False
def halt(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, halt)
swaps = 0
deadline = time.monotonic() + seconds
print("ready", flush=True)
while not stop and time.monotonic() < deadline:
    try:
        if not os.path.islink(target):
            os.symlink(link_to, spare)
            if os.path.lexists(target):
                os.rename(target, aside)
            os.rename(spare, target)
        else:
            os.rename(target, spare)
            if os.path.lexists(aside):
                os.rename(aside, target)
            os.unlink(spare)
        swaps += 1
    except OSError:
        for leftover in (spare,):
            try:
                os.unlink(leftover)
            except OSError:
                pass
    time.sleep(0.0002)
try:
    if os.path.islink(target) and os.path.lexists(aside):
        os.unlink(target)
    if os.path.lexists(aside):
        os.rename(aside, target)
except OSError:
    pass
print(swaps, flush=True)
"""


@dataclass
class Swaps:
    count: int = 0


@contextlib.contextmanager
def swapping(target: str, link_to: str, *, seconds: float) -> Iterator[Swaps]:
    """hpcuser2 toggles ``target`` and a symlink to ``link_to`` during the block (at most
    ``seconds``); ``count`` is the number of swaps made, known after the block."""
    swaps = Swaps()
    process = subprocess.Popen(
        ["runuser", "-u", ATTACKER, "--", _PYTHON, "-c", _LOOP, target, link_to, str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        time.sleep(0.02)
        yield swaps
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            stdout, _ = process.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, _ = process.communicate()
        lines = stdout.split()
        swaps.count = int(lines[-1]) if lines and lines[-1].isdigit() else 0
