"""The Redis rate limiter every handler shares (`limiter`, its Lua scripts in lua/), and the
reading of a provider's limit headers and a request's token estimate (`headers`)."""

from chalicelib.generation.ratelimit.headers import estimate_tokens, provider_limits, retry_after_seconds
from chalicelib.generation.ratelimit.limiter import START_RPM, LimiterStopped, RateLimiter

__all__ = ["START_RPM", "LimiterStopped", "RateLimiter", "estimate_tokens", "provider_limits", "retry_after_seconds"]
