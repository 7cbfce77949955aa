"""OpenAI-style rate limits: requests and tokens per minute, as a token bucket (``bucket``,
like OpenAI's quantised enforcement), a sliding 60-second window (``window``) or a fixed
60-second window (``fixed``: a counter reset at each minute of the server's clock, as many
gateways and LiteLLM do).

Bucket: refill ``limit / 60`` per second, capacity ``limit / 60 * burst_seconds`` (at least
1); ``rpm=600`` allows a burst of 10, then 10 requests/s. A request costing more than the
capacity is admitted when the bucket is full and drives it negative. Window: ``limit`` in any
60 s, so a whole minute's worth can burst. Fixed: ``limit`` per window [k·60 s, (k+1)·60 s),
so a whole minute's worth passes at the start of a window and then everything is refused until
its end; ``x-ratelimit-reset-*`` is then the time to the window's end (however much is used) and
``retry-after`` the same.

A request costs 1 request and ``prompt_tokens + max_completion_tokens`` (or ``max_tokens``,
else the actual completion) tokens. A rejected request consumes its cost too unless
``count_rejected`` is off (OpenAI counts it: retrying too early pushes the wait further out),
and its ``retry-after`` is the wait from the state after that.

As at OpenAI, every model has limits of its own: the server keeps one :class:`RateLimits` per
model, sized by ``rpm``/``tpm`` or the model's ``model_limits`` entry.
"""

from __future__ import annotations

import math
from collections import deque

from .config import FakeConfig
from .responses import error_body

WINDOW_S = 60.0

Headers = list[tuple[str, str]]


class Limit:
    """One rate-limit dimension (requests or tokens)."""

    def __init__(self, per_minute: int, mode: str, burst_seconds: float, now: float) -> None:
        self.limit = per_minute
        self.mode = mode
        self.rate = per_minute / WINDOW_S  # per second
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = self.capacity
        self.last = now
        self.events: deque[tuple[float, int]] = deque()
        self.used = 0
        self.window_start = math.floor(now / WINDOW_S) * WINDOW_S  # fixed mode

    def _advance(self, now: float) -> None:
        if self.mode == "fixed":
            start = math.floor(now / WINDOW_S) * WINDOW_S
            if start > self.window_start:
                self.window_start, self.used = start, 0
        elif self.mode == "bucket":
            if now > self.last:
                self.level = min(self.capacity, self.level + (now - self.last) * self.rate)
                self.last = now
        else:
            cutoff = now - WINDOW_S
            events = self.events
            while events and events[0][0] <= cutoff:
                self.used -= events.popleft()[1]

    def wait_for(self, cost: int, now: float) -> float:
        """Seconds until ``cost`` fits (0 = admit now)."""
        self._advance(now)
        if self.mode == "bucket":
            need = min(float(cost), self.capacity)
            if self.level >= need - 1e-9:
                return 0.0
            return (need - self.level) / self.rate
        if self.mode == "fixed":
            # a request larger than the whole budget passes alone at the start of a window
            return 0.0 if self.used + cost <= self.limit or not self.used else self.window_start + WINDOW_S - now
        if self.used + cost <= self.limit or not self.events:
            return 0.0
        excess = self.used + cost - self.limit
        freed = 0
        for t, c in self.events:
            freed += c
            if freed >= excess:
                return max(0.0, t + WINDOW_S - now)
        return max(0.0, self.events[-1][0] + WINDOW_S - now)

    def consume(self, cost: int, now: float) -> None:
        self._advance(now)
        if self.mode == "bucket":
            self.level -= cost
        elif self.mode == "fixed":
            self.used += cost
        else:
            self.events.append((now, cost))
            self.used += cost

    def used_amount(self, now: float) -> int:
        self._advance(now)
        if self.mode == "bucket":
            return max(0, math.ceil(self.capacity - self.level - 1e-9))
        return self.used

    def remaining(self, now: float) -> int:
        self._advance(now)
        if self.mode == "bucket":
            return max(0, int(self.level + 1e-9))
        return max(0, self.limit - self.used)

    def reset_in(self, now: float) -> float:
        """Seconds until the limit is back to its initial (full) state."""
        self._advance(now)
        if self.mode == "bucket":
            return max(0.0, (self.capacity - self.level) / self.rate)
        if self.mode == "fixed":
            return max(0.0, self.window_start + WINDOW_S - now)
        return max(0.0, self.events[-1][0] + WINDOW_S - now) if self.events else 0.0


class RateLimits:
    """The request and token limits of one model under one configuration (None where
    unlimited). Not thread-safe: the server calls it under its lock."""

    def __init__(self, config: FakeConfig, now: float, model: str = "") -> None:
        self.settings = self.settings_for(config, model)
        rpm, tpm, mode, burst_seconds = self.settings
        self.requests = Limit(rpm, mode, burst_seconds, now) if rpm else None
        self.tokens = Limit(tpm, mode, burst_seconds, now) if tpm else None

    @staticmethod
    def settings_for(config: FakeConfig, model: str) -> tuple[int, int, str, float]:
        """What the limits of ``model`` are built from; when it changes they are rebuilt."""
        return (*config.limits_for(model), config.rate_limit_mode, config.burst_seconds)

    def _dimensions(self, cost: int) -> list[tuple[str, Limit, int]]:
        return [(kind, limit, amount) for kind, limit, amount in (("requests", self.requests, 1),
                                                                  ("tokens", self.tokens, cost)) if limit is not None]

    def check(self, cost: int, now: float, model: str, count_rejected: bool,
              send_headers: bool = True, with_limits: bool = True) -> tuple[int, bytes, Headers] | None:
        """Admit (consume the cost, return None) or build the 429 answer (with the
        ``x-ratelimit-*`` headers unless ``send_headers`` is False; see ``headers``)."""
        dimensions = self._dimensions(cost)
        if all(limit.wait_for(amount, now) == 0 for _, limit, amount in dimensions):
            for _, limit, amount in dimensions:
                limit.consume(amount, now)
            return None
        if count_rejected:
            for _, limit, amount in dimensions:
                limit.consume(amount, now)
        wait, kind, limit, amount = max(((limit.wait_for(amount, now), kind, limit, amount)
                                         for kind, limit, amount in dimensions), key=lambda w: w[0])
        wait = max(wait, 0.001)
        label = "RPM" if kind == "requests" else "TPM"
        message = (
            f"Rate limit reached for {model} in organization org-fake on {kind} per min ({label}): "
            f"Limit {limit.limit}, Used {limit.used_amount(now)}, Requested {amount}. "
            f"Please try again in {fmt_duration(wait)}. "
            "Visit https://platform.openai.com/account/rate-limits to learn more."
        )
        headers = [("retry-after", fmt_num(wait)), ("retry-after-ms", str(math.ceil(wait * 1000)))]
        if send_headers:
            headers += self.headers(now, with_limits)
        return 429, error_body(message, kind, "rate_limit_exceeded"), headers

    def headers(self, now: float, with_limits: bool = True) -> Headers:
        """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for each enabled limit
        (without the ``limit`` ones if not ``with_limits``)."""
        headers: Headers = []
        for kind, limit in (("requests", self.requests), ("tokens", self.tokens)):
            if limit is not None:
                if with_limits:
                    headers.append((f"x-ratelimit-limit-{kind}", str(limit.limit)))
                headers.append((f"x-ratelimit-remaining-{kind}", str(limit.remaining(now))))
                headers.append((f"x-ratelimit-reset-{kind}", fmt_duration(limit.reset_in(now))))
        return headers


def fmt_duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset format: ``120ms``, ``1.2s``, ``6m0s``."""
    seconds = max(0.0, seconds)
    if seconds < 1.0:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60.0:
        return fmt_num(seconds) + "s"
    minutes = int(seconds // 60)
    return f"{minutes}m{fmt_num(seconds - 60 * minutes)}s"


def fmt_num(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text or "0"
