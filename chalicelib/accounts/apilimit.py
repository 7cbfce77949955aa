"""API request limits shared through Redis: per account (requests per minute) and per client
address (/health and failed authentications).

Failed authentications are checked before the key is looked up (`wait_if_over`, which counts
nothing) and counted only when one fails (`check`): an address flooding us with made-up keys
is refused without a database query for each.

A window opens with the first request of a scope and lasts `window_s` seconds (a counter with a
TTL), so a burst is never split across a clock-minute boundary. Keys live under the limiter's
configurable prefix (`RATELIMIT_PREFIX`), so tests and a running `make dev` never share them.
If Redis is unreachable the API stays up (the limit is protection, not correctness).
"""

from __future__ import annotations

import redis

from chalicelib.logs import get_logger

log = get_logger("apilimit")


def scope_key(prefix: str, scope: str) -> str:
    """The Redis key counting one scope; the hash tag keeps it whole on a cluster."""
    return f"{prefix}:api:{{{scope}}}"


def check(client: redis.Redis, prefix: str, scope: str, limit: int, window_s: int = 60) -> int | None:
    """Count one request of `scope` (e.g. "account:<id>", "ip:<addr>"); returns seconds to wait
    when over `limit` per window, else None. A limit of 0 means no limit."""
    if limit <= 0:
        return None
    key = scope_key(prefix, scope)
    try:
        pipe = client.pipeline(transaction=True)
        pipe.set(key, 0, ex=window_s, nx=True)
        pipe.incr(key)
        pipe.ttl(key)
        _, count, ttl = pipe.execute()
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:  # a cluster without the slot too
        log.warning("API rate limit unavailable", extra={"error": str(exc)})
        return None
    if count > limit:
        return max(1, int(ttl))
    return None


def wait_if_over(client: redis.Redis, prefix: str, scope: str, limit: int) -> int | None:
    """Seconds to wait when `scope` has already used its `limit` in its current window, else
    None; counts nothing. A limit of 0 means no limit."""
    if limit <= 0:
        return None
    try:
        pipe = client.pipeline(transaction=True)
        pipe.get(scope_key(prefix, scope))
        pipe.ttl(scope_key(prefix, scope))
        count, ttl = pipe.execute()
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        log.warning("API rate limit unavailable", extra={"error": str(exc)})
        return None
    if count is not None and int(count) >= limit:
        return max(1, int(ttl))
    return None
