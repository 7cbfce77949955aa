"""One OpenAI requests-per-minute and tokens-per-minute budget shared through Redis.

Why this exists: every chunk is processed by its own Lambda invocation, and each invocation
runs up to 16 threads calling OpenAI. A per-process limiter cannot stop fifty containers from
each spending the whole account budget at once; OpenAI then answers 429 and everything slows
down. All of them therefore take their turn from one pair of token buckets kept in Redis.

How it works:

* Two token buckets (requests, tokens), each a Redis hash ``{level, ts}``, refill continuously at
  ``limit / 60000`` per millisecond up to ``burst = max(limit / 60, need)``: one second's worth,
  because OpenAI enforces its per-minute limits in shorter slices, not as one per-minute lump.
* ``acquire`` is a *reservation* (GCRA-style): one atomic Lua script, on the Redis server clock,
  deducts the caller's need at once (the level may go negative) and returns how long until that
  reservation is covered. The caller sleeps that long and then calls the API without asking
  again: no polling, no thundering herd, first come first served, and exactly ``limit`` per
  minute in the long run however many processes share the budget.
* ``cooldown(seconds)`` after a provider 429 pauses every worker in every process: it stores
  ``<prefix>:cooldown_until`` and freezes both buckets until then (no credit accrues during the
  pause, so the end of a pause releases at most one burst, then the steady rate). A reservation
  made before the 429 that would have fired inside the pause is handed back and retaken after it.
* ``refund`` corrects the token bucket once the response's real ``usage`` is known.
* Fair share between accounts: ``acquire(..., account=id)`` also takes the turn from that
  account's own pair of buckets, refilled at ``limit / n`` where n is the number of accounts that
  asked in the last few seconds. An account may reserve at most ``MAX_AHEAD_MS`` ahead in its
  share; beyond that it is told to come back later instead of queueing. So a big job cannot
  stack up minutes of reservations in front of a small job of another account: while both run,
  each gets half the provider rate, and alone, either gets all of it.
* If Redis is unreachable ``acquire`` keeps retrying with backoff; it never lets a caller through
  unthrottled. It gives up only when the caller's ``should_stop()`` says so (``LimiterStopped``).

A limit of 0 means "unlimited" for that bucket.

Keys, with P the prefix in a hash tag (``{csv-opener:ratelimit}`` for ``csv-opener:ratelimit``;
a prefix that already holds a tag, e.g. ``app:{rl}``, is used as it is): ``P:requests`` and
``P:tokens`` (the buckets), ``P:cooldown_until``, ``P:active_accounts`` (a zset) and
``P:share:<account>:requests|tokens``. Every key a script touches travels in ``KEYS``, and Redis
Cluster hashes only the tag, so all of a limiter's keys share one hash slot and each script runs
on the node that owns it (no CROSSSLOT); a single Redis stores the same keys.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import redis
from redis import exceptions as redis_exc

__all__ = ["LimiterStopped", "RateLimiter", "estimate_tokens", "retry_after_seconds"]

# Errors that mean "Redis is not usable right now" (down, unreachable, failing over), not a bug.
_UNAVAILABLE = (
    redis_exc.ConnectionError,  # includes BusyLoadingError
    redis_exc.TimeoutError,
    redis_exc.ReadOnlyError,  # replica promoted / failover in progress
    redis_exc.MasterDownError,
    redis_exc.TryAgainError,
    redis_exc.ClusterError,  # Redis Cluster: cluster down, or redirections exhausted while slots move
    redis_exc.SlotNotCoveredError,  # Redis Cluster: a slot without a primary during a failover
)


def _hash_tag(key: str) -> str | None:
    """What Redis Cluster hashes instead of the whole key: the text between the first ``{`` and
    the next ``}``, if that is not empty; else None (the whole key is hashed)."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1:end] if end > start + 1 else None


def _tagged_prefix(prefix: str) -> str:
    """The prefix every key of a limiter starts with: ``prefix`` if it holds a hash tag already,
    else ``{prefix}``, so that all keys built on it hash to one slot."""
    if _hash_tag(prefix) is not None:
        return prefix
    if _hash_tag(f"{{{prefix}}}") is None:  # empty, or starting with '}'
        raise ValueError(f"rate-limit prefix {prefix!r} cannot be made into a Redis hash tag")
    return f"{{{prefix}}}"


# Shared Lua helpers. Times are milliseconds (with a fraction) on the Redis server clock, which
# every process sees alike; no client clock takes part in the accounting.
_LUA_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000

-- Load a bucket and bring it up to date. A bucket whose ts lies in the future is frozen by a
-- cooldown: it gains nothing until then.
local function load(key, rate, burst)
  local s = redis.call('HMGET', key, 'level', 'ts')
  local level, ts = tonumber(s[1]), tonumber(s[2])
  if level == nil or ts == nil then
    return burst, now
  end
  if ts < now then
    level = level + (now - ts) * rate
    ts = now
  end
  return math.min(level, burst), ts
end

local function store(key, rate, burst, level, ts)
  redis.call('HSET', key, 'level', level, 'ts', ts)
  -- Expire a little after the bucket would be full again: a missing key reads as full.
  redis.call('PEXPIRE', key, math.ceil(math.max(ts - now, 0) + (burst - level) / rate) + 1000)
end

local function cooldown_left()
  local u = tonumber(redis.call('GET', KEYS[3]) or '')
  if u == nil or u <= now then return 0 end
  return u - now
end
"""

# KEYS: requests bucket, tokens bucket, cooldown_until, active accounts (zset), the account's
# share buckets (requests, tokens). ARGV: rpm, tpm, requests, tokens, account ('' = no share),
# active window ms, max ahead ms.
# Returns 'g<ms>' (granted: due in ms) or 'r<ms>' (not reserved: ask again in ms), as a string
# because Lua numbers would be truncated to integers.
_ACQUIRE_LUA = _LUA_COMMON + """
-- The bucket after taking `need`, and how long until that is covered (not stored yet).
local function take(key, limit, need)
  local rate = limit / 60000
  local burst = math.max(limit / 60, need)
  local level, ts = load(key, rate, burst)
  level = level - need
  local ready = ts
  if level < 0 then ready = ts - level / rate end
  return {rate, burst, level, ts, ready - now}
end

local function reserve(key, limit, need)
  if limit <= 0 or need <= 0 then return 0 end
  local t = take(key, limit, need)
  store(key, t[1], t[2], t[3], t[4])
  return t[5]
end

local wait = cooldown_left()
local account = ARGV[5]
if account ~= '' then
  local window = tonumber(ARGV[6])
  redis.call('ZADD', KEYS[4], now, account)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - window)
  redis.call('PEXPIRE', KEYS[4], math.ceil(window * 2))
  local n = math.max(1, redis.call('ZCARD', KEYS[4]))
  local shares = {}
  local share_wait = 0
  for i, spec in ipairs({{KEYS[5], tonumber(ARGV[1]), tonumber(ARGV[3])},
                         {KEYS[6], tonumber(ARGV[2]), tonumber(ARGV[4])}}) do
    if spec[2] > 0 and spec[3] > 0 then
      local t = take(spec[1], spec[2] / n, spec[3])
      shares[#shares + 1] = {spec[1], t}
      share_wait = math.max(share_wait, t[5])
    end
  end
  local ahead = tonumber(ARGV[7])
  if share_wait > ahead then
    return string.format('r%.3f', share_wait - ahead)
  end
  for _, s in ipairs(shares) do
    store(s[1], s[2][1], s[2][2], s[2][3], s[2][4])
  end
  wait = math.max(wait, share_wait)
end
wait = math.max(wait, reserve(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[3])))
wait = math.max(wait, reserve(KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[4])))
return string.format('g%.3f', math.max(wait, 0))
"""

# KEYS: requests bucket, tokens bucket, cooldown_until. ARGV: rpm, tpm, seconds.
# Returns the remaining cooldown in ms.
_COOLDOWN_LUA = _LUA_COMMON + """
local untilms = math.max(now + tonumber(ARGV[3]) * 1000, now + cooldown_left())
redis.call('SET', KEYS[3], string.format('%.3f', untilms), 'PX', math.ceil(untilms - now) + 1000)

-- Freeze a bucket until `untilms`. Debt (negative level) is the reservations still waiting to
-- fire; the ones due inside the pause will find the cooldown when they wake and reserve again,
-- so their share is forgiven here. Debt due after the pause stays, and credit is carried over.
local function freeze(key, limit)
  if limit <= 0 then return end
  local rate = limit / 60000
  local burst = math.max(limit / 60, 1)
  local level, ts = load(key, rate, burst)
  if ts >= untilms then return end
  if level < 0 then level = math.min(0, level + (untilms - ts) * rate) end
  store(key, rate, burst, level, untilms)
end

freeze(KEYS[1], tonumber(ARGV[1]))
freeze(KEYS[2], tonumber(ARGV[2]))
return string.format('%.3f', untilms - now)
"""

# KEYS: requests bucket, tokens bucket, cooldown_until. Returns the remaining cooldown in ms.
_COOLDOWN_LEFT_LUA = _LUA_COMMON + """
return string.format('%.3f', cooldown_left())
"""

# KEYS: requests bucket, tokens bucket, cooldown_until. ARGV: tpm, delta (tokens to give back;
# negative takes more).
_REFUND_LUA = _LUA_COMMON + """
local limit, delta = tonumber(ARGV[1]), tonumber(ARGV[2])
if limit <= 0 or delta == 0 then return 0 end
local rate = limit / 60000
local burst = math.max(limit / 60, 1)
local level, ts = load(KEYS[2], rate, burst)
store(KEYS[2], rate, burst, math.min(burst, level + delta), ts)
return 1
"""


class LimiterStopped(Exception):
    """``acquire`` gave up because ``should_stop()`` returned True; the caller must not call the API."""


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits shared by every process using ``prefix``.

    Works with a ``redis.Redis`` or a ``redis.RedisCluster``. Thread-safe (redis-py clients are).
    Typical use around one OpenAI call::

        estimate = estimate_tokens(messages, max_tokens)
        limiter.acquire(estimate, should_stop=lambda: context.get_remaining_time_in_millis() < 60_000)
        try:
            response = client.chat.completions.create(...)
        except openai.RateLimitError as exc:
            limiter.cooldown(retry_after_seconds(exc.response.headers) or 1.0)
            raise
        limiter.refund(estimate, response.usage.total_tokens)
    """

    backoff_initial: float = 0.2  # seconds; first retry delay while Redis is unreachable
    backoff_max: float = 5.0  # seconds; retry delays double up to this
    share_window_ms: float = 5000.0  # an account counts as active this long after it last asked
    max_ahead_ms: float = 1000.0  # how far ahead an account may reserve within its share
    sleep_slice: float = 1.0  # seconds; long waits are cut into slices so should_stop is honoured

    def __init__(
        self,
        redis_client: redis.Redis | redis.RedisCluster,
        rpm: int,
        tpm: int,
        prefix: str = "csv-opener:ratelimit",
        sleep: Callable[[float], Any] = time.sleep,
        log: logging.Logger | None = None,
    ) -> None:
        if rpm < 0 or tpm < 0:
            raise ValueError(f"rpm and tpm must be >= 0 (0 = unlimited), got rpm={rpm} tpm={tpm}")
        self.rpm = int(rpm)
        self.tpm = int(tpm)
        self.prefix = _tagged_prefix(prefix)  # what every key starts with: one hash slot for all
        self.keys = [f"{self.prefix}:requests", f"{self.prefix}:tokens", f"{self.prefix}:cooldown_until"]
        self.active_key = f"{self.prefix}:active_accounts"
        self._sleep = sleep
        self._log = log or logging.getLogger("csv_opener.ratelimit")
        self._acquire_script = redis_client.register_script(_ACQUIRE_LUA)
        self._cooldown_script = redis_client.register_script(_COOLDOWN_LUA)
        self._cooldown_left_script = redis_client.register_script(_COOLDOWN_LEFT_LUA)
        self._refund_script = redis_client.register_script(_REFUND_LUA)

    # -- public API ---------------------------------------------------------------------------

    def acquire(self, tokens: int, should_stop: Callable[[], bool] = lambda: False,
                account: str | None = None) -> float:
        """Block until one request of ``tokens`` tokens fits the shared budget (and, with
        ``account``, that account's fair share of it); return seconds waited.

        Sleeps (in slices of at most ``sleep_slice``) until the reservation is due, then checks
        once more for a cooldown set meanwhile by someone else's 429 and, if there is one, sleeps
        it off and reserves again. Raises ``LimiterStopped`` as soon as ``should_stop()`` is True
        while waiting; the reservation is then simply wasted. Never returns without a reservation,
        however long Redis stays unreachable.
        """
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        if self.tpm and tokens > self.tpm:
            self._log.warning(
                "request needs %d tokens, more than the whole %d tokens-per-minute budget", tokens, self.tpm
            )
        waited = 0.0
        while True:
            (granted, wait_ms), slept = self._with_retry(lambda: self._reserve(tokens, account), should_stop)
            waited += slept
            if not granted:  # the account's share is booked ahead: ask again when it has room
                waited += self._sleep_for(max(0.01, wait_ms / 1000.0 * random.uniform(1.0, 1.5)), should_stop)
                continue
            if wait_ms <= 0:
                return waited  # granted now; the script already accounted for any cooldown
            waited += self._sleep_for(wait_ms / 1000.0, should_stop)
            try:
                left = self._cooldown_left_ms() / 1000.0
            except _UNAVAILABLE as exc:
                # The reservation itself was granted under the budget; only the courtesy
                # re-check failed. Go ahead rather than wait out an outage.
                self._log.warning("Redis unreachable re-checking the rate-limit cooldown (%s); proceeding", exc)
                return waited
            if left <= 0:
                return waited
            # A 429 elsewhere paused everyone after we reserved: our slot was handed back
            # (see _COOLDOWN_LUA), so wait the pause out and queue again behind it.
            self._log.info("rate-limit cooldown in force; waiting %.2fs before reserving again", left)
            waited += self._sleep_for(left, should_stop)

    def refund(self, estimated: int, actual: int) -> None:
        """Give back ``estimated - actual`` tokens (or take more when ``actual`` is larger).

        Best effort: if Redis is unreachable the correction is logged and dropped.
        """
        delta = int(estimated) - int(actual)
        if not self.tpm or delta == 0:
            return
        try:
            self._refund_script(keys=self.keys, args=[self.tpm, delta])
        except _UNAVAILABLE as exc:
            self._log.warning("Redis unreachable; token refund of %d dropped (%s)", delta, exc)

    def cooldown(self, seconds: float) -> None:
        """Pause every acquirer sharing this prefix for ``seconds`` (never shortens a pause).

        Best effort: if Redis is unreachable it is logged; the caller's own retry still goes
        through ``acquire``, which waits for Redis.
        """
        if seconds <= 0:
            return
        try:
            self._cooldown_script(keys=self.keys, args=[self.rpm, self.tpm, float(seconds)])
        except _UNAVAILABLE as exc:
            self._log.warning("Redis unreachable; shared cooldown of %.2fs not recorded (%s)", seconds, exc)
            return
        self._log.warning("rate-limit cooldown: every worker pauses for %.2fs", seconds)

    def cooldown_remaining(self) -> float:
        """Seconds left in the shared cooldown (0.0 if none, or if Redis is unreachable)."""
        try:
            return self._cooldown_left_ms() / 1000.0
        except _UNAVAILABLE as exc:
            self._log.warning("Redis unreachable reading the rate-limit cooldown (%s)", exc)
            return 0.0

    # -- internals ----------------------------------------------------------------------------

    def _reserve_ms(self, tokens: int) -> float:
        """One reservation without a share (no sleeping, no retry); the wait in ms until it is due."""
        return self._reserve(tokens, None)[1]

    def _reserve(self, tokens: int, account: str | None) -> tuple[bool, float]:
        """One reservation (no sleeping, no retry): (True, ms until due), or (False, ms until the
        account's share has room: nothing was reserved)."""
        share = [f"{self.prefix}:share:{account}:requests", f"{self.prefix}:share:{account}:tokens"] if account else [
            f"{self.prefix}:share:-:requests", f"{self.prefix}:share:-:tokens"]
        answer = self._acquire_script(
            keys=[*self.keys, self.active_key, *share],
            args=[self.rpm, self.tpm, 1, int(tokens), account or "", self.share_window_ms, self.max_ahead_ms])
        text = answer.decode() if isinstance(answer, bytes) else str(answer)
        return text[0] == "g", float(text[1:])

    def _cooldown_left_ms(self) -> float:
        return max(0.0, float(self._cooldown_left_script(keys=self.keys)))

    def _with_retry(self, call: Callable[[], float], should_stop: Callable[[], bool]) -> tuple[float, float]:
        """Run ``call`` until Redis answers; return (result, seconds slept in backoff)."""
        slept = 0.0
        delay = self.backoff_initial
        attempt = 0
        while True:
            try:
                return call(), slept
            except _UNAVAILABLE as exc:
                attempt += 1
                if should_stop():
                    raise LimiterStopped(f"gave up waiting for Redis after {attempt} attempt(s): {exc}") from exc
                pause = delay * random.uniform(0.5, 1.0)
                self._log.warning(
                    "Redis unreachable for the rate limiter (%s: %s); attempt %d, retrying in %.2fs",
                    type(exc).__name__,
                    exc,
                    attempt,
                    pause,
                )
                slept += self._sleep_for(pause, should_stop)
                delay = min(delay * 2, self.backoff_max)

    def _sleep_for(self, seconds: float, should_stop: Callable[[], bool]) -> float:
        """Sleep ``seconds`` in slices, raising LimiterStopped when ``should_stop()`` turns True."""
        remaining = seconds
        slept = 0.0
        while remaining > 0:
            if should_stop():
                raise LimiterStopped(f"stopped with {remaining:.2f}s of the rate-limit wait left")
            step = min(self.sleep_slice, remaining)
            self._sleep(step)
            slept += step
            remaining -= step
        return slept


# -- helpers for callers ------------------------------------------------------------------------


def _message_chars(message: Mapping[str, Any]) -> int:
    chars = 0
    content = message.get("content")
    if isinstance(content, str):
        chars += len(content)
    elif isinstance(content, list):  # [{"type": "text", "text": "..."}, ...]
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                chars += len(part["text"])
            elif isinstance(part, str):
                chars += len(part)
    name = message.get("name")
    if isinstance(name, str):
        chars += len(name)
    return chars


def estimate_tokens(messages: list[dict], max_tokens: int) -> int:
    """Upper-ish estimate of what one chat request counts against TPM, before sending it.

    About 4 characters per token for the text, 4 tokens of framing per message, plus
    ``max_tokens``, which OpenAI counts toward TPM up front. ``refund`` corrects it afterwards.
    """
    chars = sum(_message_chars(m) for m in messages)
    return math.ceil(chars / 4) + 4 * len(messages) + max(0, int(max_tokens))


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def _parse_duration(text: str) -> float | None:
    """Go-style durations as OpenAI sends them: "1s", "6m0s", "20ms", "1.5s", "1h2m3s"."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)  # a bare number: seconds
    except ValueError:
        pass
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) else None


def _parse_retry_after(text: str) -> float | None:
    """Retry-After: delay-seconds or an HTTP date."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - datetime.now(UTC)).total_seconds()


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """How long a 429 response asks us to wait, in seconds; None if it does not say.

    Reads ``retry-after-ms``, ``retry-after`` (seconds or HTTP date) and
    ``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens`` ("1s", "6m0s", "20ms", "1.5s"),
    case-insensitively, and returns the largest (never negative). Unparseable values are ignored.
    """
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    candidates: list[float] = []

    def add(value: float | None) -> None:
        if value is not None and math.isfinite(value):
            candidates.append(max(0.0, value))

    if "retry-after-ms" in lowered:
        try:
            add(float(lowered["retry-after-ms"].strip()) / 1000.0)
        except ValueError:
            pass
    if "retry-after" in lowered:
        add(_parse_retry_after(lowered["retry-after"]))
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        if name in lowered:
            add(_parse_duration(lowered[name]))
    return max(candidates) if candidates else None
