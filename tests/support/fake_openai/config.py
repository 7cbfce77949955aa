"""The fake's behaviour knobs (:class:`FakeConfig`) and their validation."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

from .misbehave import RULES

MALFORMED_KINDS: tuple[str, ...] = ("invalid_json", "empty_choices", "empty_content", "null_content")
"""``invalid_json``: 200 with a truncated JSON body; ``empty_choices``: ``choices == []``;
``empty_content``: content ``""``; ``null_content``: content ``null``."""

MODELS: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-5-mini")


class ConfigError(ValueError):
    """Invalid configuration (HTTP 400 on ``POST /_fake/config``)."""


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    """Behaviour knobs. Every field can be passed to the constructors, to
    ``configure()`` and to ``POST /_fake/config``. The defaults behave as the
    real service does; the fault knobs are off."""

    latency_ms: float | tuple[float, float] = 0.0
    """Fixed latency, or ``(min, max)`` drawn uniformly, applied before every non-429 answer."""
    latency_per_call_ms: float = 0.0
    """Capacity-bound server (a self-hosted vLLM): each answer's latency grows by this much per
    call in flight when it is admitted (itself included): ``latency_ms + this × in flight``.
    ``GET /_fake/latencies`` lists ``[time.time(), latency ms]`` of the admitted calls."""
    rpm: int = 0
    """Requests per minute; 0 = unlimited. Each model has a limit of its own (as at OpenAI)."""
    tpm: int = 0
    """Tokens per minute; 0 = unlimited. Each model has a limit of its own."""
    model_limits: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict, hash=False)
    """Per-model overrides of ``rpm``/``tpm``, e.g. ``{"gpt-4o": {"rpm": 300, "tpm": 30000}}``; a
    model may give only one of them (the other is the global value). Every model, listed or not,
    has its own limiters; this only changes their sizes."""
    rate_limit_mode: Literal["bucket", "window", "fixed"] = "bucket"
    """``bucket`` (OpenAI), ``window`` (sliding 60 s) or ``fixed`` (a counter reset every 60 s of
    the server's clock; reset headers and retry-after: the time to the window's end); ratelimit.py."""
    burst_seconds: float = 1.0
    """Bucket mode only: capacity = this many seconds' worth of the per-minute limit."""
    count_rejected: bool = True
    """429-ed requests still consume quota, as OpenAI documents ("unsuccessful requests
    contribute to your per-minute limit"); False = only admitted requests count."""
    insufficient_quota: bool = False
    """Billing exhausted: every chat request is answered 429 ``insufficient_quota`` (waiting
    does not help), as OpenAI answers when the account has no credit left."""
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 503)
    hang_rate: float = 0.0
    hang_seconds: float = 3600.0
    malformed_rate: float = 0.0
    malformed_kinds: tuple[str, ...] = MALFORMED_KINDS
    seed: int | None = 0
    """RNG seed for latency/fault draws; ``None`` = nondeterministic."""
    content: str | None = None
    """Override the opener; ``{url}`` and ``{host}`` are substituted."""
    api_key: str | None = None
    """If set, requests must send ``Authorization: Bearer <api_key>`` (else 401)."""
    ratelimit_headers: bool = True
    """False = never send ``x-ratelimit-*`` headers (as some OpenAI-compatible servers do); the
    limits are still enforced and 429s still carry ``retry-after``."""
    ratelimit_limit_headers: bool = True
    """False = leave out ``x-ratelimit-limit-*`` but send ``-remaining-*`` and ``-reset-*`` (as
    Azure OpenAI answers): a client cannot learn the limits from them."""
    batch_delay_s: float = 0.0
    """Batch API: seconds from a batch's creation until it is completed (or expired)."""
    batch_error_rate: float = 0.0
    """Batch API: share of a batch's requests that fail (500 lines in the error file)."""
    batch_expire_fraction: float | None = None
    """Batch API: if set, a batch ends ``expired`` at ``batch_delay_s`` with only this share of
    its requests done (the first ones of the file)."""
    batch_cancel_delay_s: float = 0.0
    """Batch API: seconds a cancelled batch stays ``cancelling`` before it is ``cancelled``."""
    response_format_supported: bool = True
    """False = refuse every request carrying ``response_format`` with OpenAI's 400 naming that
    parameter (as servers and models without structured outputs do); see structured.py."""
    prompt_cache_key_supported: bool = True
    """False = refuse every request carrying ``prompt_cache_key`` with a 400 naming it."""
    max_tokens_honoured: bool = False
    """True = an answer longer than the request's ``max_completion_tokens`` / ``max_tokens`` is
    cut off there with ``finish_reason`` "length", as OpenAI stops (tokens.within). Off by default,
    unlike the service, so the misbehave rule ``long`` and a long ``content`` keep their whole text."""
    prompt_cache_min_tokens: int = 1024
    """Shortest prompt prefix (tokens) that is cached, as at OpenAI; see prompt_cache.py."""
    prompt_cache_ttl_s: float = 300.0
    """How long an unused prefix stays cached (OpenAI: 5 to 10 minutes)."""
    misbehave: dict[str, float | tuple[str, ...]] = dataclasses.field(default_factory=dict, hash=False)
    """Bad first answers per row: ``{rule: fraction of URLs, or list of URL substrings}``, rules as in
    misbehave.RULES; fractions add up to at most 1. See misbehave.py."""
    misbehave_seed: int = 0
    """Salt of the hash that picks a fraction rule's URLs (another seed, other URLs)."""

    def limits_for(self, model: str) -> tuple[int, int]:
        """``(rpm, tpm)`` of ``model``: its ``model_limits`` entry, else the global values."""
        own = self.model_limits.get(model, {})
        return own.get("rpm", self.rpm), own.get("tpm", self.tpm)

    def replace(self, **changes: Any) -> FakeConfig:
        """Return a validated copy with ``changes`` applied (ValueError on bad input)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **_normalise(changes))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        out["misbehave"] = {rule: list(hits) if isinstance(hits, tuple) else hits
                            for rule, hits in self.misbehave.items()}
        return out


def _num(name: str, value: Any, lo: float = 0.0, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (lo <= value <= hi):
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value!r}")
    return value


def _int(name: str, value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _normalise(changes: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in changes.items():
        if name == "latency_ms":
            if isinstance(value, (list, tuple)):
                if len(value) != 2:
                    raise ConfigError("latency_ms must be a number or [min, max]")
                lo, hi = _num("latency_ms[0]", value[0]), _num("latency_ms[1]", value[1])
                if lo > hi:
                    raise ConfigError("latency_ms: min > max")
                value = (lo, hi)
            else:
                value = _num(name, value)
        elif name == "latency_per_call_ms":
            value = _num(name, value)
        elif name in ("rpm", "tpm"):
            value = _int(name, value)
        elif name == "rate_limit_mode":
            if value not in ("bucket", "window", "fixed"):
                raise ConfigError("rate_limit_mode must be 'bucket', 'window' or 'fixed'")
        elif name in ("error_rate", "hang_rate", "malformed_rate"):
            value = _num(name, value, 0.0, 1.0)
        elif name == "model_limits":
            value = _model_limits(value)
        elif name in ("batch_delay_s", "batch_cancel_delay_s"):
            value = _num(name, value)
        elif name == "batch_error_rate":
            value = _num(name, value, 0.0, 1.0)
        elif name == "batch_expire_fraction":
            value = None if value is None else _num(name, value, 0.0, 1.0)
        elif name == "burst_seconds":
            value = _num(name, value, 0.001, 60.0)
        elif name == "hang_seconds":
            value = _num(name, value)
        elif name in ("count_rejected", "insufficient_quota", "ratelimit_headers", "ratelimit_limit_headers",
                      "response_format_supported", "prompt_cache_key_supported", "max_tokens_honoured"):
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be a boolean")
        elif name == "error_statuses":
            if isinstance(value, int):
                value = [value]
            if not isinstance(value, (list, tuple)) or not value:
                raise ConfigError("error_statuses must be a non-empty list of status codes")
            for status in value:
                if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
                    raise ConfigError(f"bad error status {status!r}")
            value = tuple(value)
        elif name == "malformed_kinds":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, (list, tuple)) or not value:
                raise ConfigError("malformed_kinds must be a non-empty list")
            bad = [k for k in value if k not in MALFORMED_KINDS]
            if bad:
                raise ConfigError(f"unknown malformed kind(s) {bad}; choose from {list(MALFORMED_KINDS)}")
            value = tuple(value)
        elif name == "misbehave":
            value = _misbehave(value)
        elif name == "misbehave_seed":
            value = _int(name, value)
        elif name == "prompt_cache_min_tokens":
            value = _int(name, value)
            if value < 1:
                raise ConfigError("prompt_cache_min_tokens must be at least 1")
        elif name == "prompt_cache_ttl_s":
            value = _num(name, value)
        elif name == "seed":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError("seed must be an integer or null")
        elif name in ("content", "api_key") and value is not None and not isinstance(value, str):
            raise ConfigError(f"{name} must be a string or null")
        out[name] = value
    return out


def _misbehave(value: Any) -> dict[str, float | tuple[str, ...]]:
    if not isinstance(value, Mapping):
        raise ConfigError('misbehave must be an object like {"invent": 0.1, "spam": ["acme.com"]}')
    out: dict[str, float | tuple[str, ...]] = {}
    for rule, hits in value.items():
        if rule not in RULES:
            raise ConfigError(f"misbehave: unknown rule {rule!r}; choose from {list(RULES)}")
        if isinstance(hits, (list, tuple)):
            if not all(isinstance(part, str) and part for part in hits):
                raise ConfigError(f"misbehave[{rule!r}]: a list must hold non-empty URL substrings")
            out[rule] = tuple(hits)
        else:
            out[rule] = _num(f"misbehave[{rule!r}]", hits, 0.0, 1.0)
    total = sum(share for share in out.values() if isinstance(share, float))
    if total > 1.0 + 1e-9:
        raise ConfigError(f"misbehave: the fractions add up to {total:g}, more than 1")
    return out


def _model_limits(value: Any) -> dict[str, dict[str, int]]:
    if not isinstance(value, Mapping):
        raise ConfigError('model_limits must be an object like {"gpt-4o": {"rpm": 300, "tpm": 30000}}')
    out: dict[str, dict[str, int]] = {}
    for model, limits in value.items():
        if not isinstance(model, str) or not model:
            raise ConfigError(f"model_limits: bad model name {model!r}")
        if not isinstance(limits, Mapping):
            raise ConfigError(f"model_limits[{model!r}] must be an object with rpm and/or tpm")
        unknown = sorted(set(limits) - {"rpm", "tpm"})
        if unknown:
            raise ConfigError(f"model_limits[{model!r}]: unknown key(s) {unknown}; only rpm and tpm")
        out[model] = {key: _int(f"model_limits[{model!r}].{key}", value) for key, value in limits.items()}
    return out
