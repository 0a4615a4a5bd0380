"""The server's access log as the tests read it: every record ``hpcgate.access``
writes, captured while a test runs (the ``access`` fixture in ``tests/conftest.py``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class AccessLines(logging.Handler):
    """The access log's records, as the server writes them."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def of(self, request_id: str) -> list[logging.LogRecord]:
        return [r for r in self.records if getattr(r, "request_id", None) == request_id]


@contextlib.contextmanager
def captured() -> Iterator[AccessLines]:
    """Every access log record written inside the block (INFO and up)."""
    lines = AccessLines()
    logger = logging.getLogger("hpcgate.access")
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
