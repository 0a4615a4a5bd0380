"""The one retry layer: an httpx transport wrapper, sync and async, around one policy.

Every request of the hook (API calls, token requests, the job-event stream's connects)
goes through :class:`RetryTransport` / :class:`AsyncRetryTransport`, so one
:class:`RetryPolicy` decides what is retried (429, 5xx but 501, transport errors) and for
how long (``Retry-After`` wins over the exponential back-off; bounded attempts). A
request that is not idempotent (``request.extensions["hpc_idempotent"] = False``) is
retried only where the server cannot have acted: the connection was never made, 429, 503.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

log = logging.getLogger(__name__)

#: Indirections so that tests can skip the waiting (patch ``sleep`` / ``asleep``).
sleep = time.sleep
asleep = asyncio.sleep

#: ``request.extensions`` key: False for a request the server may not see twice.
IDEMPOTENT = "hpc_idempotent"

_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds from ``Retry-After`` (delta or HTTP date) or ``RateLimit-Reset``; None if absent."""
    for name in ("retry-after", "ratelimit-reset"):
        value = headers.get(name)
        if not value:
            continue
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            continue
        return max(0.0, when - (time.time() if now is None else now))
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter on 429/5xx/transport errors; ``Retry-After`` wins."""

    max_retries: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 300.0

    def backoff(self, attempt: int) -> float:
        """Equal jitter: half of the exponential step, plus up to the other half at random."""
        step = min(self.backoff_max, self.backoff_base * 2.0**attempt)
        return step / 2 + random.uniform(0, step / 2)  # noqa: S311 - jitter, not crypto

    def wait(self, attempt: int, headers: Mapping[str, str]) -> float:
        hinted = retry_after_seconds(headers)
        if hinted is not None:
            return min(hinted, self.retry_after_max)
        return self.backoff(attempt)

    def delay(
        self,
        request: httpx.Request,
        attempt: int,
        *,
        response: httpx.Response | None = None,
        error: Exception | None = None,
    ) -> float | None:
        """Seconds to wait before sending ``request`` again, or None to give up."""
        if attempt >= self.max_retries:
            return None
        idempotent = bool(request.extensions.get(IDEMPOTENT, True))
        if error is not None:
            if idempotent or isinstance(error, _NEVER_SENT):
                return self.backoff(attempt)
            return None
        assert response is not None
        status = response.status_code
        if idempotent:
            retryable = status == 429 or (status >= 500 and status != 501)
        else:
            retryable = status in (429, 503)
        return self.wait(attempt, response.headers) if retryable else None


def _log_retry(request: httpx.Request, outcome: object, delay: float) -> None:
    log.warning("%s %s -> %s; retry in %.1f s", request.method, request.url.path, outcome, delay)


class RetryTransport(httpx.BaseTransport):
    """Sends through ``inner``, again per :class:`RetryPolicy` (the request body is
    replayed: bytes, forms and multipart files, which httpx rewinds)."""

    def __init__(self, inner: httpx.BaseTransport, policy: RetryPolicy) -> None:
        self.inner = inner
        self.policy = policy

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self.inner.handle_request(request)
            except httpx.TransportError as exc:
                delay = self.policy.delay(request, attempt, error=exc)
                if delay is None:
                    raise
                _log_retry(request, repr(exc), delay)
            else:
                delay = self.policy.delay(request, attempt, response=response)
                if delay is None:
                    return response
                response.close()
                _log_retry(request, response.status_code, delay)
            sleep(delay)
            attempt += 1

    def close(self) -> None:
        self.inner.close()


class AsyncRetryTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`RetryTransport` (same policy, same decisions)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, policy: RetryPolicy) -> None:
        self.inner = inner
        self.policy = policy

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self.inner.handle_async_request(request)
            except httpx.TransportError as exc:
                delay = self.policy.delay(request, attempt, error=exc)
                if delay is None:
                    raise
                _log_retry(request, repr(exc), delay)
            else:
                delay = self.policy.delay(request, attempt, response=response)
                if delay is None:
                    return response
                await response.aclose()
                _log_retry(request, response.status_code, delay)
            await asleep(delay)
            attempt += 1

    async def aclose(self) -> None:
        await self.inner.aclose()
