"""What the shared limiter's tests (tests/integration/generation/test_ratelimit.py, test_fairshare.py,
test_cluster.py, test_learned_limits.py) have in common: a Redis client and a per-test key prefix
(the bodies of their `client` and `prefix` fixtures; tests/conftest.py's `client` is the API's, so
each module names its own), the Redis clock, a bucket's stored state, reservations without
sleeping, the documented bucket as a reference, and sleep hooks; and NoLimit, the limiter of a test or
benchmark that measures tokens, not rates.

Times are the limiter's own: its Lua scripts run on the Redis server clock, and after a
reservation the bucket hash ``{level, ts}`` holds the script's ``now`` in ``ts``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator

import redis
from redis.cluster import RedisCluster

from chalicelib.generation.ratelimit import RateLimiter
from tests.support.teststack import require_test_stack

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
EXACT = 0.01  # ms: the scripts report waits to the microsecond; this is rounding, not a timing margin


def redis_client() -> Iterator[redis.Redis]:
    """A client of REDIS_URL, closed after (`make test` always has Redis: no skip when it is down)."""
    require_test_stack()
    c = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    c.ping()
    yield c
    c.close()


def key_prefix(client: redis.Redis, name: str) -> Iterator[str]:
    """A limiter prefix of its own for one test, under the run's own (RATELIMIT_PREFIX, set by
    `make test`), so a test never writes a key another run or `make dev` reads; deleted after."""
    p = f"{os.environ['RATELIMIT_PREFIX']}:test:{name}:{uuid.uuid4().hex}"
    yield p
    keys = list(client.scan_iter(match=f"{{{p}}}:*"))
    if keys:
        client.delete(*keys)


def server_ms(client: redis.Redis | RedisCluster, key: str | None = None) -> float:
    """The Redis clock in ms; on a cluster, the clock of the node that owns `key` (for a limiter's
    key: the clock its scripts read)."""
    if isinstance(client, RedisCluster):
        sec, usec = client.time(target_nodes=client.get_node_from_key(key))
    else:
        sec, usec = client.time()
    return sec * 1000 + usec / 1000


def per_ms(limit: int) -> float:
    """A bucket's refill per millisecond, computed as the script computes it."""
    return limit / 60000


def bucket(client: redis.Redis | RedisCluster, limiter: RateLimiter, name: str = "requests") -> tuple[float, float]:
    """A bucket's stored (level, ts)."""
    level, ts = client.hmget(f"{limiter.prefix}:{name}", "level", "ts")
    return float(level), float(ts)


def reserve(limiter: RateLimiter, client: redis.Redis | RedisCluster, tokens: int = 1,
            name: str = "requests") -> tuple[float, float]:
    """Reserve without sleeping; return (the script's now, when the reservation is due), both on the
    script's own clock (outside a cooldown the bucket's `ts` is the `now` the script ran at)."""
    wait = limiter._reserve_ms(tokens)
    now = bucket(client, limiter, name)[1]
    return now, now + wait


def expected_dues(stamps: list[float], rate: float, burst: float, need: float = 1,
                  start: tuple[float, float] | None = None) -> list[float]:
    """The documented bucket, as a reference: full at the first reservation (or, with `start`, at
    (level, ts) then), refilled at `rate` per ms up to `burst`, `need` taken by each reservation
    at the script times `stamps`; each is due when the level it leaves behind has refilled to zero."""
    level, last = start if start is not None else (burst, stamps[0])
    dues = []
    for t in stamps:
        level = min(burst, level + (t - last) * rate) - need
        last = t
        dues.append(t - min(level, 0) / rate)
    return dues


def due_of_last(level: float, ts: float, rate: float) -> float:
    """When the last reservation taken from a bucket in state (level, ts) is due."""
    return ts - min(level, 0) / rate


def recording_sleep(slept: list[float]):
    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    return sleep


def no_sleep(_seconds: float) -> None:
    raise AssertionError("this test expects no sleeping")


def fair_turns(limiter: RateLimiter, clock: Callable[[], float], seconds: float = 3) -> dict[str, int]:
    """Accounts a and b asking in turn for `seconds` of the Redis clock (`clock`, ms): the
    reservations each was granted (with max_ahead_ms 0: only what is due at once)."""
    counts = {"a": 0, "b": 0}
    end = clock() + seconds * 1000
    while clock() < end:
        for account in ("a", "b"):
            if limiter._reserve(1, account)[0]:
                counts[account] += 1
    return counts


class NoLimit:
    """A limiter that never waits: for a test or benchmark that measures tokens, not rates."""

    def acquire(self, *args, **kwargs) -> float:
        return 0.0

    def refund(self, *args, **kwargs) -> None:
        pass

    def cooldown(self, *args, **kwargs) -> None:
        pass

    def observe(self, *args, **kwargs) -> None:
        pass
