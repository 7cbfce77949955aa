"""The shared Redis limiter: RateLimiter and the Lua scripts it runs (lua/). How it works, and
why, is the package's docstring (chalicelib/generation/ratelimit/__init__.py)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from chalicelib.adapters.redis_retry import UNAVAILABLE, retry_while_unavailable
from chalicelib.generation.ratelimit.feedback import START_RPM, ProviderFeedback  # noqa: F401 (re-exported)
from chalicelib.generation.ratelimit.keys import model_key, tagged_prefix

_UNAVAILABLE = UNAVAILABLE  # Redis not usable right now (see adapters/redis_retry.py)

LUA_DIR = Path(__file__).with_name("lua")


def _script(*names: str) -> str:
    """The Lua source of a script: the files of lua/ named, in order (common.lua holds the shared
    helpers: the server clock, loading a bucket, the limits in force)."""
    return "".join((LUA_DIR / f"{name}.lua").read_text() for name in names)


# The scripts (each file opens with its KEYS, ARGV and what it returns).
_ACQUIRE_LUA = _script("common", "acquire")
_COOLDOWN_LUA = _script("common", "cooldown")
_COOLDOWN_LEFT_LUA = _script("common", "cooldown_left")
_REFUND_LUA = _script("common", "refund")
_LEARN_LUA = _script("common", "learn")
_GROW_LUA = _script("common", "grow")
_LIMITS_LUA = _script("common", "limits")
_GAUGE_LUA = _script("common", "gauge")
_CALLS_LUA = _script("common", "calls")


class LimiterStopped(Exception):
    """``acquire`` gave up because ``should_stop()`` returned True; the caller must not call the API."""


class RateLimiter(ProviderFeedback):
    """Requests-per-minute and tokens-per-minute limits shared by every process using ``prefix``:
    learned from the provider per model (``observe``), capped by ``rpm`` / ``tpm`` (0 = no cap).

    Works with a ``redis.Redis`` or a ``redis.RedisCluster``. Thread-safe (redis-py clients are).
    Typical use around one OpenAI call::

        estimate = estimate_tokens(messages, max_tokens)
        limiter.acquire(estimate, should_stop=lambda: context.get_remaining_time_in_millis() < 60_000,
                        model=model)
        try:
            response = client.chat.completions.with_raw_response.create(model=model, ...)
        except openai.RateLimitError as exc:
            limiter.observe(model, exc.response.headers)
            limiter.cooldown(retry_after_seconds(exc.response.headers) or 1.0, model=model)
            raise
        limiter.observe(model, response.headers)
        limiter.refund(estimate, usage["total_tokens"], model=model)
    """

    backoff_initial: float = 0.2  # seconds; first retry delay while Redis is unreachable
    backoff_max: float = 5.0  # seconds; retry delays double up to this
    share_window_ms: float = 5000.0  # an account counts as active this long after it last asked
    max_ahead_ms: float = 1000.0  # how far ahead an account may reserve within its share
    sleep_slice: float = 1.0  # seconds; long waits are cut into slices so should_stop is honoured
    start_slice: float = 0.1  # seconds; a wait booked in the cautious start checks this often for the limits
    # The rate controller (the rate found from 429s; see the module docstring and lua/grow.lua,
    # lua/cooldown.lua). The period is the feedback loop's: long enough for the calls sent at
    # one rate to answer before the next change (a call takes a fraction of a second to a few).
    aimd_period_ms: float = 1000.0  # at most one increase, and one cut, per period
    aimd_decrease: float = 0.7  # a 429 multiplies the rate found by this
    aimd_step: float = 0.05  # the additive step: this fraction of the rate the last 429 came at
    aimd_min_rpm: float = 6.0  # cuts never go below this (one request every 10 s)
    # A rate estimated from x-ratelimit-remaining/-reset (lua/gauge.lua): the rate is set to this
    # share of it; it caps the increase while it is this fresh; the largest remaining seen is
    # remembered one to two windows.
    gauge_margin: float = 0.97
    gauge_fresh_ms: float = 3000.0
    gauge_window_ms: float = 60000.0

    def __init__(
        self,
        redis_client: redis.Redis | redis.RedisCluster,
        rpm: int,
        tpm: int,
        prefix: str = "csv-opener:ratelimit",
        sleep: Callable[[float], Any] = time.sleep,
        log: logging.Logger | None = None,
        start_rpm: int = 0,
    ) -> None:
        if rpm < 0 or tpm < 0 or start_rpm < 0:
            raise ValueError(f"rpm, tpm and start_rpm must be >= 0 (0 = no limit), got {rpm}, {tpm}, {start_rpm}")
        self.rpm = int(rpm)
        self.tpm = int(tpm)
        self.start_rpm = int(start_rpm)
        self.prefix = tagged_prefix(prefix)  # what every key starts with: one hash slot for all
        self.keys = self._keys(None)[:3]
        self.active_key = f"{self.prefix}:active_accounts"
        self._redis = redis_client
        self._sleep = sleep
        self._log = log or logging.getLogger("csv_opener.ratelimit")
        self._seen: dict[str, tuple[int, int, float]] = {}  # model -> limits this process last wrote, when
        self._acquire_script = redis_client.register_script(_ACQUIRE_LUA)
        self._cooldown_script = redis_client.register_script(_COOLDOWN_LUA)
        self._cooldown_left_script = redis_client.register_script(_COOLDOWN_LEFT_LUA)
        self._refund_script = redis_client.register_script(_REFUND_LUA)
        self._learn_script = redis_client.register_script(_LEARN_LUA)
        self._grow_script = redis_client.register_script(_GROW_LUA)
        self._grown: dict[str, float] = {}  # model -> when this process last reported a success (monotonic)
        self._limits_script = redis_client.register_script(_LIMITS_LUA)
        self._gauge_script = redis_client.register_script(_GAUGE_LUA)
        self._calls_script = redis_client.register_script(_CALLS_LUA)
        # (model, "requests" | "tokens") -> when this process last sent its remaining/reset (monotonic)
        self._gauged: dict[tuple[str, str], float] = {}
        self.rpm_in_force: dict[str, int] = {}  # model ("" none) -> the request rate in force at its last grant

    # -- public API ---------------------------------------------------------------------------

    def acquire(self, tokens: int, should_stop: Callable[[], bool] = lambda: False,
                account: str | None = None, model: str | None = None, job: str | None = None) -> float:
        """Block until one request of ``tokens`` tokens fits the shared budget of ``model`` (and,
        with ``account``, that account's fair share of it); return seconds waited.

        Sleeps (in slices of at most ``sleep_slice``) until the reservation is due, then checks
        once more for a cooldown set meanwhile by someone else's 429 and, if there is one, sleeps
        it off and reserves again. Raises ``LimiterStopped`` as soon as ``should_stop()`` is True
        while waiting; the reservation is then simply wasted. Never returns without a reservation,
        however long Redis stays unreachable. The call is counted once, when granted, in the
        model's calls per minute and, with ``job``, that job's (``calls_per_minute``).
        """
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        if self.tpm and tokens > self.tpm:
            self._log.warning(
                "request needs %d tokens, more than the whole %d tokens-per-minute budget", tokens, self.tpm
            )
        waited = 0.0
        stale = False
        count = 2 if job else 1  # until a booking is granted: then the call is counted
        while True:
            # A booking made again after a cut skips the account's share: it took its turn there
            # already (and that share was not forgiven), the shared buckets pace it.
            who = None if stale else account
            (granted, wait_ms, starting, gen), slept = self._with_retry(
                lambda: self._book(tokens, who, model, count, job), should_stop)  # noqa: B023 (called at once)
            stale = False
            if granted:
                count = 0
            waited += slept
            if not granted:  # the account's share is booked ahead: ask again when it has room
                waited += self._sleep_for(max(0.01, wait_ms / 1000.0 * random.uniform(1.0, 1.5)), should_stop)
                continue
            if wait_ms <= 0:
                return waited  # granted now; the script already accounted for any cooldown
            if starting:  # booked at the cautious start's rate: book again once the limits are known
                slept, learned = self._sleep_until_learned(wait_ms / 1000.0, model, should_stop)
                waited += slept
                if learned:
                    continue
            else:
                waited += self._sleep_for(wait_ms / 1000.0, should_stop)
            try:
                left_ms, now_gen = self._cooldown_state(model)
                left = left_ms / 1000.0
            except _UNAVAILABLE as exc:
                # The reservation itself was granted under the budget; only the courtesy
                # re-check failed. Go ahead rather than wait out an outage.
                self._log.warning("Redis unreachable re-checking the rate-limit cooldown (%s); proceeding", exc)
                return waited
            if left <= 0 and (gen is None or now_gen is None or now_gen == gen):
                return waited
            if left <= 0:
                # A 429 cut the rate after we booked: the booking, made at the old rate, was
                # forgiven (see lua/cooldown.lua); book again at the new one.
                stale = True
                continue
            # A 429 elsewhere paused everyone after we reserved: our slot was handed back
            # (see _COOLDOWN_LUA), so wait the pause out and queue again behind it.
            self._log.info("rate-limit cooldown in force; waiting %.2fs before reserving again", left)
            waited += self._sleep_for(left, should_stop)

    def refund(self, estimated: int, actual: int, model: str | None = None, charged: int | None = None) -> None:
        """Give back ``estimated - actual`` tokens (or take more when ``actual`` is larger). While
        the token limit in force is the rate gauged from the provider's remaining/reset tokens,
        ``estimated - charged`` instead (``charged``: what the provider took from its budget, the
        prompt and max_tokens; the gauged rate is in its units, so the bucket counts the same).

        Best effort: if Redis is unreachable the correction is logged and dropped.
        """
        delta = int(estimated) - int(actual)
        gauged = delta if charged is None else int(estimated) - int(charged)
        if (delta == 0 and gauged == 0) or (not self.tpm and self._seen.get(model or "", (0, 0))[1] < 0
                                            and (model or "", "tokens") not in self._gauged):
            return  # no token limit: none set, the provider (last heard) states none and gauges none
        try:
            self._refund_script(keys=self._keys(model), args=[self.rpm, self.tpm, delta, self.start_rpm, gauged])
        except _UNAVAILABLE as exc:
            self._log.warning("Redis unreachable; token refund of %d dropped (%s)", delta, exc)

    def cooldown(self, seconds: float, model: str | None = None, spent: tuple[str, ...] = ()) -> None:
        """Pause every acquirer of ``model`` sharing this prefix for ``seconds`` (never shortens a pause).

        A 429 also cuts a rate (lua/cooldown.lua): the request rate, unless ``spent`` (the budgets
        the 429's headers show used up, ``headers.exhausted``) names only the tokens and a token
        rate is gauged (then that one).

        Best effort: if Redis is unreachable it is logged; the caller's own retry still goes
        through ``acquire``, which waits for Redis.
        """
        if seconds <= 0:
            return
        try:
            answer = self._cooldown_script(keys=self._keys(model),
                                           args=[self.rpm, self.tpm, float(seconds), self.start_rpm,
                                                 self.aimd_period_ms, self.aimd_decrease, self.aimd_min_rpm,
                                                 " ".join(spent)])
        except _UNAVAILABLE as exc:
            self._log.warning("Redis unreachable; shared cooldown of %.2fs not recorded (%s)", seconds, exc)
            return
        left_ms, until_ms, cut = (float(x) for x in (answer.decode() if isinstance(answer, bytes) else answer).split())
        if cut:
            self._log.warning("rate-limit 429 for %s: the rate found is cut by a factor %.2f",
                              model or "the default model", self.aimd_decrease)
        # when the pause ends, as the server clock has it: exact, however late this line is written
        self._log.warning("rate-limit cooldown: every worker pauses for %.2fs (until %.3f)", left_ms / 1000,
                          until_ms / 1000)

    def cooldown_remaining(self, model: str | None = None) -> float:
        """Seconds left in the shared cooldown (0.0 if none, or if Redis is unreachable)."""
        try:
            return self._cooldown_state(model)[0] / 1000.0
        except _UNAVAILABLE as exc:
            self._log.warning("Redis unreachable reading the rate-limit cooldown (%s)", exc)
            return 0.0

    # -- internals ----------------------------------------------------------------------------

    def _job_calls_key(self, job: str | None) -> str:
        """The counter of a job's calls admitted (lua/calls.lua); a key no job has without one."""
        return f"{self.prefix}:job:{model_key(job or '-')}:calls"

    def _keys(self, model: str | None) -> list[str]:
        """requests, tokens, cooldown_until and learned limits of ``model`` (no model: the prefix's own)."""
        base = f"{self.prefix}:m:{model_key(model)}" if model else self.prefix
        return [f"{base}:requests", f"{base}:tokens", f"{base}:cooldown_until", f"{base}:limits"]

    def _reserve_ms(self, tokens: int, model: str | None = None) -> float:
        """One reservation without a share (no sleeping, no retry); the wait in ms until it is due."""
        return self._reserve(tokens, None, model)[1]

    def _reserve(self, tokens: int, account: str | None, model: str | None = None) -> tuple[bool, float, bool]:
        """One reservation (no sleeping, no retry): (True, ms until due, starting), or (False, ms
        until the account's share has room: nothing was reserved, starting); `starting` while
        the model's limits are not known yet."""
        return self._book(tokens, account, model)[:3]

    def _book(self, tokens: int, account: str | None, model: str | None = None, count: int = 0,
              job: str | None = None) -> tuple[bool, float, bool, int | None]:
        """``_reserve``, and the rate controller's generation the booking was made in (a cut of
        the rate since makes it stale). ``count``: see lua/acquire.lua."""
        requests, tokens_key, cooldown, learned = self._keys(model)
        base = requests.rsplit(":", 1)[0]
        share = [f"{base}:share:{account or '-'}:requests", f"{base}:share:{account or '-'}:tokens"]
        answer = self._acquire_script(
            keys=[requests, tokens_key, cooldown, f"{base}:active_accounts", *share, learned, f"{base}:calls",
                  self._job_calls_key(job)],
            args=[self.rpm, self.tpm, 1, int(tokens), account or "", self.share_window_ms, self.max_ahead_ms,
                  self.start_rpm, count])
        text = answer.decode() if isinstance(answer, bytes) else str(answer)
        wait, starting, gen, rpm = (text[1:].split(":") + ["", "", ""])[:4]
        if rpm:
            self.rpm_in_force[model or ""] = int(rpm)
        return text[0] == "g", float(wait), starting == "1", int(gen) if gen else None

    def _cooldown_state(self, model: str | None = None) -> tuple[float, int | None]:
        """(ms left in the shared cooldown, the rate controller's generation)."""
        answer = self._cooldown_left_script(keys=self._keys(model))
        left, _, gen = (answer.decode() if isinstance(answer, bytes) else str(answer)).partition(" ")
        return max(0.0, float(left)), int(gen) if gen else None

    def _sleep_until_learned(self, seconds: float, model: str | None,
                             should_stop: Callable[[], bool]) -> tuple[float, bool]:
        """Sleep up to ``seconds`` in short slices, stopping early once ``model``'s limits are
        known; (seconds slept, whether they became known)."""
        key = self._keys(model)[3]
        slept = 0.0
        while slept < seconds:
            slept += self._sleep_for(min(self.start_slice, seconds - slept), should_stop)
            try:
                if self._redis.exists(key):
                    return slept, True
            except _UNAVAILABLE:
                continue
        return slept, False

    def _with_retry(self, call: Callable[[], float], should_stop: Callable[[], bool]) -> tuple[float, float]:
        """Run ``call`` until Redis answers; return (result, seconds slept in backoff). The
        backoff is the one every Redis caller of ours uses (adapters/redis_retry.py), without an
        end: only ``should_stop()`` ends it (``LimiterStopped``)."""

        def before_sleep(attempt: int, exc: BaseException, pause: float) -> None:
            if should_stop():
                raise LimiterStopped(f"gave up waiting for Redis after {attempt} attempt(s): {exc}") from exc
            self._log.warning("Redis unreachable for the rate limiter (%s: %s); attempt %d, retrying in %.2fs",
                              type(exc).__name__, exc, attempt, pause)

        return retry_while_unavailable(call, initial=self.backoff_initial, maximum=self.backoff_max, jitter=0.5,
                                       sleep=lambda pause: self._sleep_for(pause, should_stop),
                                       before_sleep=before_sleep)

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
