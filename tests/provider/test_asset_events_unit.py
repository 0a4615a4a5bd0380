"""``HpcJobEventTrigger``'s own logic without a stream: filter, payload, serialisation,
the cursor it stores only for events Airflow has stored (the end-to-end behaviour is
``test_asset_watcher``)."""

from __future__ import annotations

from typing import Any

import pytest
from airflow.triggers.shared_stream import AdvanceItem, AdvanceOutcome

from airflow_provider_hpc.exceptions import HpcError
from airflow_provider_hpc.triggers.asset_events import (
    CURSOR_KEY,
    HpcJobEventTrigger,
    JobEnded,
    _EventProducer,
    load_cursor,
    trigger_digest,
)


def job(name: str, state: str, job_id: str = "7") -> dict[str, Any]:
    return {
        "jobId": job_id,
        "name": name,
        "status": {"state": state, "exitCode": 0},
        "user": "u",
        "time": {"end": 100},
    }


class Store:
    """An asset's state store accessor (``aget``/``aset``) in memory."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def aget(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    async def aset(self, key: str, value: Any) -> None:
        self.values[key] = value


def test_filter_and_payload() -> None:
    trigger = HpcJobEventTrigger(name_pattern="sim-*", states=["completed", "FAILED"])
    assert trigger.matches(job("sim-1", "COMPLETED"))
    assert trigger.matches(job("sim-2", "FAILED"))
    assert not trigger.matches(job("sim-3", "TIMEOUT"))
    assert not trigger.matches(job("other", "COMPLETED"))
    assert not trigger.matches(job("sim-4", "RUNNING"))
    anything = HpcJobEventTrigger()
    assert anything.matches(job("x", "CANCELLED by 1000")) and not anything.matches(
        job("x", "PENDING")
    )
    payload = trigger.payload(JobEnded(42, job("sim-1", "COMPLETED")))
    assert payload == {
        "job_id": "7",
        "name": "sim-1",
        "state": "COMPLETED",
        "exit_code": 0,
        "user": "u",
        "system": None,
        "end": 100,
        "event_id": 42,
    }
    with pytest.raises(ValueError, match="not end states"):
        HpcJobEventTrigger(states=["RUNNING"])


def test_serialisation_is_stable_and_names_the_cursor() -> None:
    one = HpcJobEventTrigger(system="s", name_pattern="a*", states=["FAILED", "COMPLETED"])
    two = HpcJobEventTrigger(system="s", name_pattern="a*", states=["COMPLETED", "FAILED"])
    classpath, kwargs = one.serialize()
    assert classpath == "airflow_provider_hpc.triggers.asset_events.HpcJobEventTrigger"
    assert kwargs == two.serialize()[1] and HpcJobEventTrigger(**kwargs).serialize() == (
        classpath,
        kwargs,
    )
    assert one.shared_stream_key() == ("hpcgate-job-events", trigger_digest(kwargs))
    other = HpcJobEventTrigger(system="s", name_pattern="b*")
    assert other.shared_stream_key() != one.shared_stream_key()  # a cursor each


async def test_cursor_advances_only_past_stored_events() -> None:
    trigger = HpcJobEventTrigger(name_pattern="x")
    producer = trigger.create_shared_stream_producer(trigger.serialize()[1])
    assert isinstance(producer, _EventProducer)
    store = producer.store = Store()
    key = f"{CURSOR_KEY}.{trigger.digest}"
    clean, failed = AdvanceOutcome(acked=1, failed=0), AdvanceOutcome(acked=0, failed=1)
    await producer.advance([AdvanceItem(5, clean), AdvanceItem(9, clean)])
    assert store.values == {key: 9} and await load_cursor(store, key) == 9
    with pytest.raises(HpcError, match="not stored by Airflow"):
        await producer.advance(
            [AdvanceItem(12, clean), AdvanceItem(15, failed), AdvanceItem(20, clean)]
        )
    assert store.values[key] == 12  # up to the event Airflow did not store, not past it
