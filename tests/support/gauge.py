"""What the tests of the rate gauged from remaining/reset headers share (tests/integration/
generation/test_remaining_reset.py, test_remaining_tokens.py, test_fixed_window.py): a limiter
with no ceiling, the model's limits hash as it is stored, and one answer's headers reported as
another process would (no local throttle)."""

from __future__ import annotations

import redis

from chalicelib.generation.ratelimit import RateLimiter


def make(client: redis.Redis, prefix: str, period_ms: float = 0.0, tpm: int = 0) -> RateLimiter:
    """A limiter with no request ceiling (``tpm``: the token ceiling), the cautious start of the
    app, and a rate-controller period of ``period_ms`` (0: every signal acts)."""
    limiter = RateLimiter(client, rpm=0, tpm=tpm, prefix=prefix, start_rpm=180)
    limiter.aimd_period_ms = period_ms
    return limiter


def state(limiter: RateLimiter, model: str = "m") -> dict[str, str]:
    """The model's limits hash (learned limits and the rate controller's fields)."""
    return {k.decode(): v.decode() for k, v in limiter._redis.hgetall(limiter._keys(model)[3]).items()}


def report(limiter: RateLimiter, headers: dict[str, str], model: str = "m", tokens: int = 100) -> None:
    """One answer's headers for a call that took ``tokens`` of the token budget, as another
    process would send them (this process's throttles of the reports cleared)."""
    limiter._gauged.clear()
    limiter._grown.clear()
    limiter.observe(model, headers, tokens=tokens)


LONG_MS = 600_000.0  # a rate-controller period no test outlasts


def left(remaining: int, reset: str, dimension: str = "requests") -> dict[str, str]:
    """The remaining/reset pair of one budget, as a server that states no limit sends it."""
    return {f"x-ratelimit-remaining-{dimension}": str(remaining), f"x-ratelimit-reset-{dimension}": reset}
