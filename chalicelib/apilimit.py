"""Per-client API request limit, shared through Redis (fixed one-minute windows).

If Redis is unreachable the API stays up (the limit is protection, not correctness).
"""

from __future__ import annotations

import time

import redis

from chalicelib.logs import get_logger

log = get_logger("apilimit")


def check(client: redis.Redis, client_id: str, per_minute: int, now: float | None = None) -> int | None:
    """Count one request; returns seconds to wait when over the limit, else None."""
    if per_minute <= 0:
        return None
    now = time.time() if now is None else now
    window = int(now // 60)
    key = f"csv-opener:api:{client_id}:{window}"
    try:
        pipe = client.pipeline()
        pipe.incr(key)
        pipe.expire(key, 120)
        count, _ = pipe.execute()
    except redis.RedisError as exc:
        log.warning("API rate limit unavailable", extra={"error": str(exc)})
        return None
    if count > per_minute:
        return max(1, int((window + 1) * 60 - now))
    return None
