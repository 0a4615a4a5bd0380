"""Debug-only: loaded by ``clients_bench.py --tracemalloc DIR`` through PYTHONPATH into
the server it starts (never by ``hpcgate serve`` otherwise). With tracemalloc on
(``PYTHONTRACEMALLOC``), SIGUSR1 writes a snapshot to ``$HPCGATE_BENCH_SNAPSHOTS``."""

import os
import signal
import tracemalloc
from itertools import count

_DIR = os.environ.get("HPCGATE_BENCH_SNAPSHOTS")
_N = count(1)


def _dump(signum: int, frame: object) -> None:
    if _DIR and tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(os.path.join(_DIR, f"snap-{next(_N)}.pickle"))
        open(os.path.join(_DIR, "done"), "a").write("x")


if _DIR:
    signal.signal(signal.SIGUSR1, _dump)
