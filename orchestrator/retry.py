"""The one retry policy: specific exceptions, exponential backoff with jitter, attempts AND a
deadline, re-raising the last error.  `ORCH_FAST_RETRY=1` shrinks the waits for tests."""

from __future__ import annotations

import os
from collections.abc import Callable

from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)


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
