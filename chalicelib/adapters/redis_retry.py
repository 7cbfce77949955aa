"""Redis that is briefly not usable (failing over, restarting, loading its data): which errors say
so, and the one retry policy every caller of ours uses while it lasts.

Two callers, one policy with their own knobs: the rate limiter (generation/ratelimit) retries
until its caller says stop, never letting a request through unthrottled; the job's duplicate
index (generation/checks) retries a few times, then keeps the opener without the check. Both
wait ``initial`` seconds, then twice as long each time, up to ``maximum``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from redis import exceptions as redis_exc

# Errors that mean "Redis is not usable right now" (down, unreachable, failing over), not a bug:
# any other error (a script's, a wrong type) is raised at once.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis_exc.ConnectionError,  # includes BusyLoadingError
    redis_exc.TimeoutError,
    redis_exc.ReadOnlyError,  # replica promoted / failover in progress
    redis_exc.MasterDownError,
    redis_exc.TryAgainError,
    redis_exc.ClusterError,  # Redis Cluster: cluster down, or redirections exhausted while slots move
    redis_exc.SlotNotCoveredError,  # Redis Cluster: a slot without a primary during a failover
    OSError,  # a socket error that reached us unwrapped
)

T = TypeVar("T")


def retry_while_unavailable(call: Callable[[], T], *, initial: float, maximum: float, attempts: int | None = None,
                            jitter: float = 0.0, sleep: Callable[[float], object] = time.sleep,
                            before_sleep: Callable[[int, BaseException, float], None] | None = None,
                            ) -> tuple[T, float]:
    """``call()``, called again while it raises one of ``UNAVAILABLE``; (its result, seconds waited).

    Waits ``initial`` seconds after the first failure, twice as long after each next one, at most
    ``maximum``; each wait is multiplied by a random factor in [1 - ``jitter``, 1] (so processes
    that lost Redis together do not all come back at once). After ``attempts`` calls (None: no
    limit) the last error is raised. ``before_sleep(attempt, error, pause)`` runs before each
    wait: to log it, or to stop by raising (the limiter's ``should_stop``)."""
    if attempts is not None and attempts < 1:
        raise ValueError("attempts must be at least 1")
    delay = initial
    waited = 0.0
    attempt = 0
    while True:
        try:
            return call(), waited
        except UNAVAILABLE as exc:
            attempt += 1
            if attempts is not None and attempt >= attempts:
                raise
            pause = delay * random.uniform(1.0 - jitter, 1.0) if jitter else delay
            if before_sleep is not None:
                before_sleep(attempt, exc, pause)
            sleep(pause)
            waited += pause
            delay = min(delay * 2, maximum)
