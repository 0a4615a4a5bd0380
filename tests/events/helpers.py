"""Client-side helpers for the event tests: SSE parsing, metrics sampling."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

TERMINAL = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
}


@dataclass
class SseEvent:
    event: str = "message"
    id: str | None = None
    data: str = ""
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.data)

    @property
    def state(self) -> str:
        return self.json()["status"]["state"]


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[SseEvent]:
    """Events (and heartbeat comments, as events named ``comment``) from SSE lines."""
    current = SseEvent()
    data: list[str] = []
    async for line in lines:
        if line == "":
            if data or current.id is not None or current.event != "message":
                current.data = "\n".join(data)
                yield current
            current, data = SseEvent(), []
        elif line.startswith(":"):
            yield SseEvent(event="comment", data=line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "id":
                current.id = value
            elif name == "event":
                current.event = value


def metric_values(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        pairs = dict(
            part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part
        )
        if all(pairs.get(k) == f'"{v}"' for k, v in labels.items()):
            total += float(value)
    return total


async def scrape(client: httpx.AsyncClient, url: str) -> str:
    response = await client.get(f"{url}/metrics")
    assert response.status_code == 200, response.text
    return response.text


def commands(text: str, command: str, **labels: str) -> float:
    return metric_values(text, "hpcgate_scheduler_commands_total", command=command, **labels)


def rounds(text: str) -> float:
    return metric_values(text, "hpcgate_watcher_rounds_total")
