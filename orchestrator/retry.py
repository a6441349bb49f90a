"""The one retry policy, and the one polling loop.

`policy`: specific exceptions, exponential backoff with jitter, attempts AND a deadline,
re-raising the last error (SSH connects).  `ORCH_FAST_RETRY=1` shrinks its waits for tests.

`poll`: a condition checked every few seconds until a deadline (readiness, Ray joining,
staging copies): the block raises `NotReady` while the condition does not hold; any other
exception ends the loop at once; at the deadline the last `NotReady` is re-raised.

    async for attempt in poll(until=deadline, every=2.0):
        with attempt:
            if not await ready():
                raise NotReady("the API does not answer yet")
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_fixed,
    wait_random_exponential,
)

from .errors import NotReady

__all__ = ["NotReady", "RetryCallState", "poll", "policy"]


def policy(
    retry_on: Callable[[BaseException], bool],
    *,
    attempts: int = 5,
    deadline_s: float = 60.0,
    max_wait_s: float = 10.0,
) -> AsyncRetrying:
    scale = 0.05 if os.environ.get("ORCH_FAST_RETRY") else 1.0
    return AsyncRetrying(
        retry=retry_if_exception(retry_on),
        stop=stop_after_attempt(attempts) | stop_after_delay(deadline_s),
        wait=wait_random_exponential(multiplier=0.5 * scale, max=max_wait_s * scale),
        reraise=True,
    )


def poll(
    *,
    until: float,
    every: float,
    on_wait: Callable[[RetryCallState], Awaitable[None]] | None = None,
) -> AsyncRetrying:
    """Retry a block that raises NotReady every `every` seconds until time.monotonic()
    reaches `until`; `on_wait` runs before each wait (progress lines)."""

    def past_deadline(_: RetryCallState) -> bool:
        return time.monotonic() >= until

    return AsyncRetrying(
        retry=retry_if_exception_type(NotReady),
        stop=past_deadline,
        wait=wait_fixed(every),
        before_sleep=on_wait,
        reraise=True,
    )
