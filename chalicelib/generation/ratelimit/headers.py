"""What a provider's answer says about its limits, and what a request will cost before it is
sent: the x-ratelimit-limit-* headers, Retry-After and the x-ratelimit-reset-* durations, and a
token estimate of a chat request (reconciled with the answer's usage afterwards)."""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx2


def _limit_header(value: str | None) -> int:
    """A positive whole number of at most 12 ASCII digits, else -1 (absent or unusable)."""
    if value is None:
        return -1
    text = str(value).strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 12) or int(text) == 0:
        return -1
    return int(text)


def provider_limits(headers: Mapping[str, str]) -> tuple[int, int]:
    """(requests per minute, tokens per minute) a provider answer states in
    ``x-ratelimit-limit-requests`` / ``x-ratelimit-limit-tokens``; -1 for one it does not.
    ``headers``: httpx's (case-insensitive) or any mapping."""
    if not isinstance(headers, httpx2.Headers):
        headers = {str(k).lower(): v for k, v in headers.items()}
    return (_limit_header(headers.get("x-ratelimit-limit-requests")),
            _limit_header(headers.get("x-ratelimit-limit-tokens")))


MAX_RESET_S = 86400.0  # a reset further away than a day is not believed


DIMENSIONS = ("requests", "tokens")  # what a provider limits per minute, as its headers name them


def states_a_budget(headers: Mapping[str, str]) -> bool:
    """Whether an answer states the server's rate budget: a limit (``x-ratelimit-limit-*``) or
    what is left of it (``-remaining-*`` with ``-reset-*``), in either dimension."""
    return provider_limits(headers) != (-1, -1) or any(provider_remaining(headers, d) for d in DIMENSIONS)


def provider_remaining(headers: Mapping[str, str], dimension: str = "requests") -> tuple[int, float] | None:
    """(requests left, seconds until the provider's request budget is full again) from
    ``x-ratelimit-remaining-requests`` / ``x-ratelimit-reset-requests``, as servers that state no
    limit may still send (gateways, Azure); with ``dimension="tokens"`` the same of its token
    budget (``-remaining-tokens`` / ``-reset-tokens``). None unless both are there and usable: the
    remaining count at most 12 ASCII digits (0 allowed), the reset a duration as OpenAI writes it
    ("1s", "6m0s", "20ms") or bare seconds, finite, 0 to a day."""
    if dimension not in DIMENSIONS:
        raise ValueError(f"dimension must be one of {DIMENSIONS}, got {dimension!r}")
    if not isinstance(headers, httpx2.Headers):
        headers = {str(k).lower(): v for k, v in headers.items()}
    remaining = headers.get(f"x-ratelimit-remaining-{dimension}")
    reset = headers.get(f"x-ratelimit-reset-{dimension}")
    if remaining is None or reset is None:
        return None
    text = str(remaining).strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        return None
    seconds = _parse_duration(str(reset))
    if seconds is None or not math.isfinite(seconds) or not 0.0 <= seconds <= MAX_RESET_S:
        return None
    return int(text), seconds


def exhausted(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The budgets a 429's headers show used up (remaining 0), of ``DIMENSIONS``; () if none says so."""
    return tuple(d for d in DIMENSIONS if (seen := provider_remaining(headers, d)) is not None and seen[0] == 0)


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
    if not text or not text.replace("µ", "").isascii() or len(text) > 40:
        return None
    try:
        value = float(text)  # a bare number: seconds
        return value if math.isfinite(value) else None
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
