"""A benchmark's table: printed, and appended to ``--output`` when given."""

from __future__ import annotations


def publish(table: str, output: str | None) -> None:
    print(table)
    if output:
        with open(output, "a") as handle:
            handle.write(table + "\n\n")
