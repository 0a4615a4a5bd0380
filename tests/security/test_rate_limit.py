"""Per-user token buckets (hpcgate.api.ratelimit): one user cannot starve another.

The buckets themselves with a clock the test drives, then a real server with a
tiny bucket: one user empties theirs and gets 429 with Retry-After while another
user, in the same second, is served; an event stream takes one token when it opens,
not one per event.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hpcgate.api.ratelimit import TokenBuckets, retry_after_seconds
from tests.server import ApiServer, start_server
from tests.site import SiteEnv

# -- the buckets (unit) ---------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_grants_its_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, max_users=10, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token every 0.5 s
    clock.now += 0.25
    assert buckets.take("a") == pytest.approx(0.25)
    clock.now += 0.25
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0


def test_users_have_buckets_of_their_own() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1.0, burst=2, max_users=10, clock=clock)
    assert buckets.take("attacker") == buckets.take("attacker") == 0.0
    assert buckets.take("attacker") > 0
    assert buckets.take("victim") == 0.0


def test_refilled_buckets_are_dropped_and_memory_is_bounded() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=10.0, burst=5, max_users=100, clock=clock)
    for n in range(100):
        buckets.take(f"user{n}")
    assert len(buckets) == 100
    buckets.take("one-more")  # over max_users: the least recently used goes
    assert len(buckets) == 100
    clock.now += 0.5  # burst / rate: every bucket is full again, i.e. idle
    buckets.take("fresh")
    assert len(buckets) == 1


def test_dropping_a_refilled_bucket_changes_nothing_for_its_user() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1.0, burst=2, max_users=10, clock=clock)
    buckets.take("a")
    buckets.take("a")
    clock.now += 1.0  # half refilled: kept
    buckets.take("b")
    assert len(buckets) == 2
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0  # the partial refill was remembered


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert retry_after_seconds(0.01) == 1
    assert retry_after_seconds(1.0) == 1
    assert retry_after_seconds(1.2) == 2


def test_bad_bucket_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        TokenBuckets(rate=0, burst=1, max_users=1)


# -- a real server ------------------------------------------------------------------------


BURST = 3
RATE = 0.2  # a token every 5 s: nothing refills noticeably during a test


@pytest.fixture
def limited_server(site_env: SiteEnv, tmp_path: Path) -> Iterator[ApiServer]:
    """A server of its own per test: every user starts with a full bucket."""
    server = start_server(
        site_env,
        tmp_path,
        overrides={"watcher": {"heartbeat_seconds": 0.2}},
        settings_overrides={"rate_limit": {"requests_per_second": RATE, "burst": BURST}},
    )
    yield server
    server.stop()


@pytest.mark.site
@pytest.mark.e2e
def test_one_user_exhausting_the_bucket_gets_429_while_another_is_served(
    limited_server: ApiServer,
) -> None:
    with limited_server.client("hpcuser2") as attacker, limited_server.client("hpcuser1") as victim:
        statuses = [attacker.get("/status/systems").status_code for _ in range(BURST)]
        assert statuses == [200] * BURST
        refused = attacker.get("/status/systems")
        started = time.monotonic()
        assert refused.status_code == 429, refused.text
        retry_after = refused.headers["retry-after"]
        assert retry_after.isdigit() and int(retry_after) >= 1
        body = refused.json()
        assert body["errorType"] == "error"
        assert body["user"] == "hpcuser2"
        assert "per second per user" in body["message"]
        # the same second: the other user is served, the attacker still refused
        assert victim.get("/status/systems").status_code == 200
        assert attacker.get(f"/compute/{limited_server.system}/jobs").status_code == 429
        assert time.monotonic() - started < 1.0
        # requests without a token, or to public routes, take no one's tokens
        assert httpx.get(f"{limited_server.url}/status/liveness/", timeout=10).status_code == 200
        assert httpx.get(f"{limited_server.url}/status/systems", timeout=10).status_code == 401


@pytest.mark.site
@pytest.mark.e2e
def test_an_event_stream_takes_one_token_when_it_opens_not_one_per_event(
    limited_server: ApiServer,
) -> None:
    url = f"/compute/{limited_server.system}/events"
    with limited_server.client("hpcuser1") as client:
        with client.stream("GET", url) as stream:
            assert stream.status_code == 200
            events = 0
            for line in stream.iter_lines():
                if line.startswith(":"):  # a heartbeat every 0.2 s
                    events += 1
                if events >= BURST + 2:
                    break
        assert events >= BURST + 2
        # the stream took one token: the rest of the burst is still there
        statuses = [client.get("/status/systems").status_code for _ in range(BURST - 1)]
        assert statuses == [200] * (BURST - 1)
        assert client.get("/status/systems").status_code == 429
