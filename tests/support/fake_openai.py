"""A fake OpenAI-compatible HTTP server for tests and benchmarks.

Why it exists: the CSV Opener app asks an LLM for one outreach opener per URL.
Tests and benchmarks must not call the real API (cost, flakiness, secrets), yet
they need something the real ``openai`` SDK talks to over real HTTP, that is
fast enough never to be the bottleneck (~1,000 requests/s on two cores with
keep-alive clients), and that can misbehave on demand: OpenAI-style 429s with
``retry-after`` / ``x-ratelimit-*`` headers, 5xx errors, requests that never
answer, malformed bodies. It also counts what it saw (``/_fake/stats``) so
tests can assert on duplicate generation and achieved request rates.

Standard library only: an ``asyncio`` streams server with a small HTTP/1.1
keep-alive parser (Content-Length and chunked bodies, ``Expect:
100-continue``).

Endpoints
---------
``POST /v1/chat/completions``
    A ``chat.completion`` whose content is a deterministic short opener that
    mentions the host of the first ``http(s)://`` URL in the last user message
    (falling back to a URL in any other message, then to a bare domain such as
    ``acme.com`` in the last user message). ``usage.prompt_tokens`` is the
    total characters of the messages' text divided by 4 (rounded up).
    ``stream: true`` is rejected with a 400 (not supported).
``GET /v1/models``, ``GET /v1/models/{id}``
    A minimal model list / model object.
``GET /_fake/stats``
    Counters, see :meth:`FakeOpenAIServer.stats`.
``GET /_fake/config``, ``POST /_fake/config``
    Read / update the configuration (JSON object of :class:`FakeConfig`
    fields). Unknown fields or invalid values give a 400.
``POST /_fake/reset``
    Clear counters, refill rate limiters, re-seed the RNG and restore the
    configuration given at construction time. Body ``{"keep_config": true}``
    keeps the current configuration.

The ``/v1`` prefix is optional (``/chat/completions`` works too).

Request processing order (chat completions)
-------------------------------------------
1. Parse/validate (400 for bad JSON, missing ``model``/``messages``; 401 if
   ``api_key`` is configured and the bearer token differs). Counted in
   ``requests`` and, when valid, in ``by_url``.
2. Rate limits (``rpm``/``tpm``, 0 = unlimited). Rejections are answered
   immediately (no latency) with 429.
3. One uniform draw decides the fault: ``[0, hang_rate)`` hang,
   ``[hang_rate, hang_rate + error_rate)`` error, then ``malformed_rate``,
   otherwise a normal answer. So rates are exclusive and their sum is capped
   at 1.
4. Latency (``latency_ms``: a number, or ``[min, max]`` uniform), then the
   answer. Hangs skip the latency: they never answer; the server waits until
   the client disconnects, the server stops, or ``hang_seconds`` elapse (then
   the connection is closed without a response). Other requests are not
   blocked.

Rate limiting
-------------
``rate_limit_mode="bucket"`` (default) is a token bucket per dimension, like
OpenAI's quantised enforcement: refill rate ``limit / 60`` per second,
capacity (burst) ``limit / 60 * burst_seconds`` (``burst_seconds`` defaults
to 1, i.e. one second's worth; at least 1). E.g. ``rpm=600`` allows a burst of
10 then 10 requests/s. A request whose token cost exceeds the capacity is
admitted when the bucket is full and drives it negative.
``rate_limit_mode="window"`` is a sliding 60-second window (``rpm`` requests
in any 60 s, so the full minute's worth can burst).
The token cost of a request is ``prompt_tokens + max_completion_tokens`` (or
``max_tokens``), or ``prompt_tokens + <actual completion tokens>`` when
neither is given. Rejected requests do not consume quota unless
``count_rejected=True`` (OpenAI documents that they do).

429 responses carry OpenAI's error body (``type`` is ``"requests"`` or
``"tokens"``, whichever needs the longer wait), ``retry-after`` (seconds, may
be fractional), ``retry-after-ms`` and ``x-ratelimit-{limit,remaining,reset}-
{requests,tokens}`` (``reset`` like ``"1.2s"`` / ``"120ms"`` / ``"6m0s"``).
These ``x-ratelimit-*`` headers are also sent on every other chat answer for
each enabled limit. ``remaining`` is what could be sent right now (bucket
level, or limit minus window usage).

Usage
-----
In tests::

    with FakeOpenAI(latency_ms=[5, 20], rpm=600) as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="x", max_retries=0)
        ...
        fake.configure(error_rate=0.1)
        assert fake.stats()["requests"] == ...

As a separate process (first stdout line is the base URL; serves until
SIGTERM/SIGINT, then prints the final stats as one JSON line on stderr)::

    python -m tests.support.fake_openai --port 0 --latency-ms 200 --rpm 600
    python -m tests.support.fake_openai --latency-ms 100,300 --error-rate 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import random
import re
import signal
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, Literal, Self
from urllib.parse import urlsplit

__all__ = [
    "MALFORMED_KINDS",
    "ConfigError",
    "FakeConfig",
    "FakeOpenAI",
    "FakeOpenAIServer",
    "find_url",
    "main",
    "make_opener",
]

log = logging.getLogger("fake_openai")

MALFORMED_KINDS: tuple[str, ...] = ("invalid_json", "empty_choices", "empty_content", "null_content")
"""``invalid_json``: 200 with a truncated JSON body; ``empty_choices``: ``choices == []``;
``empty_content``: content ``""``; ``null_content``: content ``null``."""

MODELS: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-5-mini")

_MAX_HEAD = 1 << 20  # request line + headers
_MAX_BODY = 32 << 20
_WINDOW_S = 60.0


# --------------------------------------------------------------------------- configuration


class ConfigError(ValueError):
    """Invalid configuration (HTTP 400 on ``POST /_fake/config``)."""


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    """Behaviour knobs. Every field can be passed to the constructors, to
    ``configure()`` and to ``POST /_fake/config``."""

    latency_ms: float | tuple[float, float] = 0.0
    """Fixed latency, or ``(min, max)`` drawn uniformly, applied before every non-429 answer."""
    rpm: int = 0
    """Requests per minute; 0 = unlimited."""
    tpm: int = 0
    """Tokens per minute; 0 = unlimited."""
    rate_limit_mode: Literal["bucket", "window"] = "bucket"
    burst_seconds: float = 1.0
    """Bucket mode only: capacity = this many seconds' worth of the per-minute limit."""
    count_rejected: bool = False
    """If true, 429-ed requests still consume quota (as OpenAI documents)."""
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
        elif name in ("rpm", "tpm"):
            value = _int(name, value)
        elif name == "rate_limit_mode":
            if value not in ("bucket", "window"):
                raise ConfigError("rate_limit_mode must be 'bucket' or 'window'")
        elif name in ("error_rate", "hang_rate", "malformed_rate"):
            value = _num(name, value, 0.0, 1.0)
        elif name == "burst_seconds":
            value = _num(name, value, 0.001, 60.0)
        elif name == "hang_seconds":
            value = _num(name, value)
        elif name == "count_rejected":
            if not isinstance(value, bool):
                raise ConfigError("count_rejected must be a boolean")
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
        elif name == "seed":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError("seed must be an integer or null")
        elif name in ("content", "api_key") and value is not None and not isinstance(value, str):
            raise ConfigError(f"{name} must be a string or null")
        out[name] = value
    return out


# --------------------------------------------------------------------------- rate limiting


class _Limit:
    """One rate-limit dimension (requests or tokens)."""

    def __init__(self, per_minute: int, mode: str, burst_seconds: float, now: float) -> None:
        self.limit = per_minute
        self.mode = mode
        self.rate = per_minute / _WINDOW_S  # per second
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = self.capacity
        self.last = now
        self.events: deque[tuple[float, int]] = deque()
        self.used = 0

    def _advance(self, now: float) -> None:
        if self.mode == "bucket":
            if now > self.last:
                self.level = min(self.capacity, self.level + (now - self.last) * self.rate)
                self.last = now
        else:
            cutoff = now - _WINDOW_S
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
        if self.used + cost <= self.limit or not self.events:
            return 0.0
        excess = self.used + cost - self.limit
        freed = 0
        for t, c in self.events:
            freed += c
            if freed >= excess:
                return max(0.0, t + _WINDOW_S - now)
        return max(0.0, self.events[-1][0] + _WINDOW_S - now)

    def consume(self, cost: int, now: float) -> None:
        self._advance(now)
        if self.mode == "bucket":
            self.level -= cost
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
        return max(0.0, self.events[-1][0] + _WINDOW_S - now) if self.events else 0.0


def _fmt_duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset format: ``120ms``, ``1.2s``, ``6m0s``."""
    seconds = max(0.0, seconds)
    if seconds < 1.0:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60.0:
        return _fmt_num(seconds) + "s"
    minutes = int(seconds // 60)
    return f"{minutes}m{_fmt_num(seconds - 60 * minutes)}s"


def _fmt_num(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text or "0"


# --------------------------------------------------------------------------- content


_URL_RE = re.compile(r"https?://[^\s<>\"'`]+", re.IGNORECASE)
_DOMAIN_RE = re.compile(
    r"(?<![\w@/.-])((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24})(?![\w-])(/[^\s<>\"'`]*)?",
    re.IGNORECASE,
)
_TRAILING = ".,;:!?)]}>'\""

_TEMPLATES: tuple[str, ...] = (
    "Loved what {host} is doing with its product lately — would you be open to a quick chat next week?",
    "Came across {host} and was impressed by how clearly it explains what you do — open to a short call to swap ideas?",
    "Your work at {host} stood out while I was researching the space — would a quick 15-minute chat make sense?",
    "Spent some time on {host} today and really liked the approach — could we find time for a brief conversation?",
    "Noticed {host} is building something genuinely useful — are you open to a quick intro call this week?",
)
_GENERIC = "Loved what your team is building — would you be open to a quick chat next week?"


def _message_text(message: Any) -> str:
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return ""


def _clean(url: str) -> str:
    return url.rstrip(_TRAILING)


def find_url(messages: Sequence[Any]) -> str | None:
    """The URL a request is about: first ``http(s)://`` token of the last user
    message, else of any other message (latest first), else a bare domain in
    the last user message."""
    texts = [_message_text(m) for m in messages]
    last_user = next(
        (
            i
            for i in range(len(messages) - 1, -1, -1)
            if isinstance(messages[i], dict) and messages[i].get("role") == "user"
        ),
        None,
    )
    order = ([last_user] if last_user is not None else []) + [
        i for i in range(len(texts) - 1, -1, -1) if i != last_user
    ]
    for i in order:
        match = _URL_RE.search(texts[i])
        if match:
            url = _clean(match.group(0))
            if len(url) > len("https://"):
                return url
    if last_user is not None:
        match = _DOMAIN_RE.search(texts[last_user])
        if match:
            return _clean(match.group(0))
    return None


def _host(url: str) -> str:
    try:
        host = urlsplit(url if "://" in url else "http://" + url).hostname or url
    except ValueError:
        host = url
    host = host.lower()
    return host.removeprefix("www.")[:150]


def make_opener(url: str | None, override: str | None = None) -> str:
    """The deterministic opener for ``url`` (≤ 300 chars, no quotes or placeholders)."""
    host = _host(url) if url else ""
    if override is not None:
        return override.replace("{url}", url or "").replace("{host}", host)
    if not url:
        return _GENERIC
    template = _TEMPLATES[zlib.crc32(url.encode("utf-8", "replace")) % len(_TEMPLATES)]
    return template.replace("{host}", host)[:300]


def _tokens(chars: int) -> int:
    return max(1, math.ceil(chars / 4))


# --------------------------------------------------------------------------- HTTP plumbing


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_REASONS = {s.value: s.phrase for s in HTTPStatus}
_JSON = "application/json"


def _error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


def _response(
    status: int,
    body: bytes,
    *,
    keep_alive: bool,
    headers: Iterable[tuple[str, str]] = (),
    content_type: str = _JSON,
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        f"content-type: {content_type}",
        f"content-length: {len(body)}",
        "connection: keep-alive" if keep_alive else "connection: close",
        "server: fake-openai",
    ]
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


_Result = tuple[int, bytes, list[tuple[str, str]]]


# --------------------------------------------------------------------------- the server


class FakeOpenAIServer:
    """The asyncio server. Use it directly inside a running event loop
    (``await server.start()`` / ``await server.close()``), or use the threaded
    :class:`FakeOpenAI` wrapper. ``configure``/``reset``/``stats`` are
    thread-safe and may be called from any thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        self.host = host
        self.port = port
        self._initial = FakeConfig().replace(**config)
        self._lock = threading.Lock()
        self._server: asyncio.AbstractServer | None = None
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._in_flight = 0
        self._seq = 0
        with self._lock:
            self._apply(self._initial)
            self._reset_stats()

    # ----- state (call with self._lock held)

    def _apply(self, config: FakeConfig, *, reseed: bool = False) -> None:
        old = getattr(self, "_config", None)
        self._config = config
        if old is None or reseed or old.seed != config.seed:
            self._rng = random.Random(config.seed)
        if old is None or (old.rpm, old.tpm, old.rate_limit_mode, old.burst_seconds) != (
            config.rpm,
            config.tpm,
            config.rate_limit_mode,
            config.burst_seconds,
        ):
            self._build_limits()

    def _build_limits(self) -> None:
        c, now = self._config, time.monotonic()
        self._req_limit = _Limit(c.rpm, c.rate_limit_mode, c.burst_seconds, now) if c.rpm else None
        self._tok_limit = _Limit(c.tpm, c.rate_limit_mode, c.burst_seconds, now) if c.tpm else None

    def _reset_stats(self) -> None:
        self._stats: dict[str, Any] = {
            "requests": 0,
            "ok": 0,
            "rate_limited": 0,
            "errors": 0,
            "hangs": 0,
            "malformed": 0,
            "bad_requests": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "max_in_flight": self._in_flight,
            "first_request_at": None,
            "last_request_at": None,
        }
        self._by_url: dict[str, int] = {}
        self._ok_by_url: dict[str, int] = {}

    # ----- public control API

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (valid after start)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1`` — pass to ``openai.OpenAI(base_url=...)``."""
        return self.url + "/v1"

    @property
    def config(self) -> FakeConfig:
        with self._lock:
            return self._config

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Update configuration fields; returns the new configuration as a dict.
        Changing ``rpm``/``tpm``/``rate_limit_mode``/``burst_seconds`` rebuilds
        (refills) the limiters; passing ``seed`` (even the same value) re-seeds
        the RNG."""
        with self._lock:
            new = self._config.replace(**changes)
            self._apply(new, reseed="seed" in changes)
            return new.to_dict()

    def reset(self, *, keep_config: bool = False) -> None:
        """Clear counters, refill limiters, re-seed the RNG; also restore the
        construction-time configuration unless ``keep_config``."""
        with self._lock:
            if not keep_config:
                self._config = self._initial
            self._rng = random.Random(self._config.seed)
            self._build_limits()
            self._reset_stats()
            self._seq = 0

    def stats(self) -> dict[str, Any]:
        """Snapshot of the counters: ``requests`` (chat completion requests
        received, any outcome), ``ok``, ``rate_limited``, ``errors``, ``hangs``,
        ``malformed``, ``bad_requests`` (400/401), ``by_url`` (all valid
        requests per URL, including 429-ed and failed ones), ``ok_by_url``
        (200 with a proper opener), ``prompt_tokens``/``completion_tokens``
        (of ok answers), ``in_flight``/``max_in_flight``, and
        ``first_request_at``/``last_request_at`` (``time.time()`` wall-clock
        seconds of the first/last received chat request, so comparable across
        processes)."""
        with self._lock:
            out = dict(self._stats)
            out["by_url"] = dict(self._by_url)
            out["ok_by_url"] = dict(self._ok_by_url)
            out["in_flight"] = self._in_flight
            return out

    # ----- lifecycle

    async def start(self) -> FakeOpenAIServer:
        self._closing = False
        self._server = await asyncio.start_server(
            self._handle_connection, self.host, self.port, limit=_MAX_HEAD, backlog=2048
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        tasks = list(self._conn_tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    # ----- connection handling

    async def _handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conn_tasks.add(task)  # type: ignore[arg-type]
        try:
            await self._serve(reader, writer)
        except (
            asyncio.CancelledError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
        ):
            pass
        except Exception:  # never let one connection take the server down
            log.exception("fake_openai: unexpected error on connection")
        finally:
            if task is not None:
                self._conn_tasks.discard(task)  # type: ignore[arg-type]
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not self._closing:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # EOF between requests (or a partial request): just close
            except asyncio.LimitOverrunError:
                writer.write(
                    _response(431, _error_body("Request header too large", "invalid_request_error"), keep_alive=False)
                )
                await writer.drain()
                return
            try:
                method, target, version, headers = _parse_head(head)
            except _HTTPError as exc:
                writer.write(_response(exc.status, _error_body(exc.message, "invalid_request_error"), keep_alive=False))
                await writer.drain()
                return
            conn = headers.get("connection", "").lower()
            keep_alive = "close" not in conn if version == "HTTP/1.1" else "keep-alive" in conn
            try:
                body = await _read_body(reader, writer, headers)
            except _HTTPError as exc:
                writer.write(_response(exc.status, _error_body(exc.message, "invalid_request_error"), keep_alive=False))
                await writer.drain()
                return
            result = await self._dispatch(method, target.split("?", 1)[0], headers, body, reader)
            if result is None:  # hung request ended: the client went away or hang_seconds elapsed
                return
            status, payload, extra = result
            writer.write(_response(status, payload, keep_alive=keep_alive, headers=extra))
            await writer.drain()
            if not keep_alive:
                return

    async def _dispatch(
        self, method: str, path: str, headers: dict[str, str], body: bytes, reader: asyncio.StreamReader
    ) -> _Result | None:
        if path.startswith("/v1/"):
            path = path[3:]
        if path == "/chat/completions":
            if method != "POST":
                return _method_not_allowed()
            return await self._chat(headers, body, reader)
        if path == "/models" or path.startswith("/models/"):
            if method != "GET":
                return _method_not_allowed()
            return self._models(path)
        if path == "/_fake/stats" and method == "GET":
            return 200, json.dumps(self.stats()).encode(), []
        if path == "/_fake/config":
            if method == "GET":
                return 200, json.dumps(self.config.to_dict()).encode(), []
            if method == "POST":
                try:
                    changes = json.loads(body or b"{}")
                    if not isinstance(changes, dict):
                        raise ConfigError("config body must be a JSON object")
                    return 200, json.dumps(self.configure(**changes)).encode(), []
                except ValueError as exc:  # includes JSONDecodeError
                    return 400, _error_body(str(exc), "invalid_request_error"), []
        if path == "/_fake/reset" and method == "POST":
            try:
                opts = json.loads(body) if body.strip() else {}
            except ValueError:
                return 400, _error_body("reset body must be JSON", "invalid_request_error"), []
            keep = bool(opts.get("keep_config", False)) if isinstance(opts, dict) else False
            self.reset(keep_config=keep)
            return 200, json.dumps({"reset": True, "config": self.config.to_dict()}).encode(), []
        if path in ("/", "/health", "/_fake/health"):
            return 200, b'{"status": "ok"}', []
        return 404, _error_body(f"Unknown request URL: {method} {path}", "invalid_request_error", "unknown_url"), []

    def _models(self, path: str) -> _Result:
        if path == "/models":
            data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "fake-openai"} for m in MODELS]
            return 200, json.dumps({"object": "list", "data": data}).encode(), []
        model = path[len("/models/") :]
        return (
            200,
            json.dumps({"id": model, "object": "model", "created": 1700000000, "owned_by": "fake-openai"}).encode(),
            [],
        )

    async def _chat(self, headers: dict[str, str], body: bytes, reader: asyncio.StreamReader) -> _Result | None:
        now_wall = time.time()
        with self._lock:
            st = self._stats
            st["requests"] += 1
            if st["first_request_at"] is None:
                st["first_request_at"] = now_wall
            st["last_request_at"] = now_wall
            config = self._config
        try:
            request = _parse_chat(body)
            if config.api_key is not None and headers.get("authorization", "") != f"Bearer {config.api_key}":
                raise _HTTPError(401, "Incorrect API key provided.")
        except _HTTPError as exc:
            with self._lock:
                self._stats["bad_requests"] += 1
            if exc.status == 401:
                return 401, _error_body(exc.message, "invalid_request_error", "invalid_api_key"), []
            return exc.status, _error_body(exc.message, "invalid_request_error"), []

        messages: list[Any] = request["messages"]
        model = str(request["model"])
        url = find_url(messages)
        content = make_opener(url, config.content)
        prompt_tokens = _tokens(sum(len(_message_text(m)) for m in messages))
        completion_tokens = _tokens(len(content))
        max_out = request.get("max_completion_tokens") or request.get("max_tokens")
        if isinstance(max_out, bool) or not isinstance(max_out, int) or max_out <= 0:
            max_out = completion_tokens
        cost = prompt_tokens + max_out

        now = time.monotonic()
        with self._lock:
            config = self._config
            if url is not None:
                self._by_url[url] = self._by_url.get(url, 0) + 1
            limited = self._check_limits(cost, now, model)
            if limited is not None:
                self._stats["rate_limited"] += 1
                return limited
            rl_headers = self._limit_headers(now)
            status, kind = 500, "invalid_json"
            draw = self._rng.random()
            h, e, m = config.hang_rate, config.error_rate, config.malformed_rate
            outcome = "hang" if draw < h else "error" if draw < h + e else "malformed" if draw < h + e + m else "ok"
            if outcome == "hang":
                delay = 0.0
            else:
                lat = config.latency_ms
                delay = (self._rng.uniform(*lat) if isinstance(lat, tuple) else lat) / 1000.0
            if outcome == "error":
                status = self._rng.choice(config.error_statuses)
            elif outcome == "malformed":
                kind = self._rng.choice(config.malformed_kinds)
            self._seq += 1
            seq = self._seq
            self._in_flight += 1
            self._stats["max_in_flight"] = max(self._stats["max_in_flight"], self._in_flight)
            if outcome == "hang":
                self._stats["hangs"] += 1
        try:
            if outcome == "hang":
                await _hang(reader, config.hang_seconds)
                return None
            if delay > 0:
                await asyncio.sleep(delay)
            request_id = f"req_fake{seq:012d}"
            rl_headers.append(("x-request-id", request_id))
            rl_headers.append(("openai-processing-ms", str(int(delay * 1000))))
            if outcome == "error":
                with self._lock:
                    self._stats["errors"] += 1
                if status == 503:
                    msg = "The engine is currently overloaded, please try again later."
                else:
                    msg = "The server had an error while processing your request. Sorry about that!"
                return status, _error_body(msg, "server_error"), rl_headers

            choice_content: str | None = content
            payload: dict[str, Any] = {
                "id": f"chatcmpl-fake{seq:012d}",
                "object": "chat.completion",
                "created": int(now_wall),
                "model": model,
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
                "system_fingerprint": "fp_fake",
            }
            if outcome == "malformed":
                with self._lock:
                    self._stats["malformed"] += 1
                if kind == "invalid_json":
                    text = json.dumps(payload)
                    return 200, text[: len(text) // 2].encode(), rl_headers
                if kind == "empty_choices":
                    return 200, json.dumps(payload).encode(), rl_headers
                choice_content = "" if kind == "empty_content" else None
            payload["choices"] = [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": choice_content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ]
            if outcome == "ok":
                with self._lock:
                    self._stats["ok"] += 1
                    self._stats["prompt_tokens"] += prompt_tokens
                    self._stats["completion_tokens"] += completion_tokens
                    if url is not None:
                        self._ok_by_url[url] = self._ok_by_url.get(url, 0) + 1
            return 200, json.dumps(payload).encode(), rl_headers
        finally:
            with self._lock:
                self._in_flight -= 1

    def _check_limits(self, cost: int, now: float, model: str) -> _Result | None:
        """Admit (consume quota, return None) or build a 429 response."""
        waits: list[tuple[float, str, _Limit, int]] = []
        for kind, limit, amount in (("requests", self._req_limit, 1), ("tokens", self._tok_limit, cost)):
            if limit is not None:
                wait = limit.wait_for(amount, now)
                if wait > 0:
                    waits.append((wait, kind, limit, amount))
        if not waits:
            for limit, amount in ((self._req_limit, 1), (self._tok_limit, cost)):
                if limit is not None:
                    limit.consume(amount, now)
            return None
        if self._config.count_rejected:
            for limit, amount in ((self._req_limit, 1), (self._tok_limit, cost)):
                if limit is not None:
                    limit.consume(amount, now)
        wait, kind, limit, amount = max(waits, key=lambda w: w[0])
        wait = max(wait, 0.001)
        label = "RPM" if kind == "requests" else "TPM"
        message = (
            f"Rate limit reached for {model} in organization org-fake on {kind} per min ({label}): "
            f"Limit {limit.limit}, Used {limit.used_amount(now)}, Requested {amount}. "
            f"Please try again in {_fmt_duration(wait)}. "
            "Visit https://platform.openai.com/account/rate-limits to learn more."
        )
        headers = [("retry-after", _fmt_num(wait)), ("retry-after-ms", str(math.ceil(wait * 1000)))]
        headers += self._limit_headers(now)
        return 429, _error_body(message, kind, "rate_limit_exceeded"), headers

    def _limit_headers(self, now: float) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        for kind, limit in (("requests", self._req_limit), ("tokens", self._tok_limit)):
            if limit is not None:
                headers.append((f"x-ratelimit-limit-{kind}", str(limit.limit)))
                headers.append((f"x-ratelimit-remaining-{kind}", str(limit.remaining(now))))
                headers.append((f"x-ratelimit-reset-{kind}", _fmt_duration(limit.reset_in(now))))
        return headers


def _method_not_allowed() -> _Result:
    return 405, _error_body("Method not allowed", "invalid_request_error"), []


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
        raise _HTTPError(400, "Malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _HTTPError(400, "Malformed header line")
        headers[name.lower()] = value.strip()
    return parts[0].upper(), parts[1], parts[2], headers


async def _read_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str]) -> bytes:
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    length_text = headers.get("content-length")
    if not chunked and length_text is None:
        return b""
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
    if chunked:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _HTTPError(400, "Malformed chunk size") from None
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return b"".join(chunks)
            total += size
            if total > _MAX_BODY:
                raise _HTTPError(413, "Request body too large")
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    assert length_text is not None
    if not length_text.isdigit():
        raise _HTTPError(400, "Malformed Content-Length")
    length = int(length_text)
    if length > _MAX_BODY:
        raise _HTTPError(413, "Request body too large")
    return await reader.readexactly(length) if length else b""


def _parse_chat(body: bytes) -> dict[str, Any]:
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _HTTPError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
            "library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
        ) from None
    if not isinstance(request, dict):
        raise _HTTPError(400, "The request body must be a JSON object.")
    if not request.get("model") or not isinstance(request["model"], str):
        raise _HTTPError(400, "you must provide a model parameter")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _HTTPError(400, "Missing required parameter: 'messages'.")
    if request.get("stream"):
        raise _HTTPError(400, "stream=true is not supported by the fake OpenAI server")
    return request


async def _hang(reader: asyncio.StreamReader, seconds: float) -> None:
    """Never answer: wait until the client disconnects (EOF), the task is
    cancelled (server stop), or ``seconds`` elapse."""

    async def until_eof() -> None:
        while await reader.read(65536):
            pass  # discard anything else the client sends; this request never gets answered

    with contextlib.suppress(TimeoutError, ConnectionError):
        await asyncio.wait_for(until_eof(), seconds)


# --------------------------------------------------------------------------- threaded wrapper


class FakeOpenAI:
    """Threaded wrapper: runs :class:`FakeOpenAIServer` on its own event loop in
    a daemon thread so synchronous tests can use it.

    ``FakeOpenAI(host="127.0.0.1", port=0, **FakeConfig fields)``;
    ``start()`` returns self; ``stop()``; ``base_url``; ``configure(**kw)``;
    ``reset(keep_config=False)``; ``stats()``; context manager.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        self.server = FakeOpenAIServer(host, port, **config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``); the ``/_fake/*`` endpoints live here."""
        return self.server.url

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``."""
        return self.server.base_url

    @property
    def config(self) -> FakeConfig:
        return self.server.config

    def configure(self, **changes: Any) -> dict[str, Any]:
        return self.server.configure(**changes)

    def reset(self, *, keep_config: bool = False) -> None:
        self.server.reset(keep_config=keep_config)

    def stats(self) -> dict[str, Any]:
        return self.server.stats()

    def start(self) -> FakeOpenAI:
        if self._thread is not None:
            raise RuntimeError("FakeOpenAI already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.server.start())
            except BaseException as exc:  # noqa: BLE001 - re-raised by start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.server.close())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run, name="fake-openai", daemon=True)
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            raise failure[0]
        self._loop, self._thread = loop, thread
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = self._loop = None

    def __enter__(self) -> Self:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- CLI


def _latency_arg(text: str) -> float | tuple[float, float]:
    for sep in (",", ":", ".."):
        if sep in text:
            lo, hi = text.split(sep, 1)
            return (float(lo), float(hi))
    return float(text)


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.support.fake_openai",
        description="Fake OpenAI-compatible server. Prints the base URL as the first stdout line, "
        "serves until SIGTERM/SIGINT, then prints final stats as JSON on stderr.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = pick a free port (default)")
    p.add_argument("--latency-ms", type=_latency_arg, default=0.0, help="fixed ms, or MIN,MAX for uniform")
    p.add_argument("--rpm", type=int, default=0, help="requests per minute, 0 = unlimited")
    p.add_argument("--tpm", type=int, default=0, help="tokens per minute, 0 = unlimited")
    p.add_argument("--rate-limit-mode", choices=("bucket", "window"), default="bucket")
    p.add_argument("--burst-seconds", type=float, default=1.0)
    p.add_argument("--count-rejected", action="store_true", help="429-ed requests still consume quota")
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--error-statuses", default="500,503", help="comma-separated, e.g. 500,502,503")
    p.add_argument("--hang-rate", type=float, default=0.0)
    p.add_argument("--hang-seconds", type=float, default=3600.0)
    p.add_argument("--malformed-rate", type=float, default=0.0)
    p.add_argument("--malformed-kinds", default=",".join(MALFORMED_KINDS))
    p.add_argument("--seed", type=int, default=0, help="RNG seed; -1 = nondeterministic")
    p.add_argument("--content", default=None, help="override the opener; {url} and {host} are substituted")
    p.add_argument("--api-key", default=None, help="require this bearer token")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        server = FakeOpenAIServer(
            args.host,
            args.port,
            latency_ms=args.latency_ms,
            rpm=args.rpm,
            tpm=args.tpm,
            rate_limit_mode=args.rate_limit_mode,
            burst_seconds=args.burst_seconds,
            count_rejected=args.count_rejected,
            error_rate=args.error_rate,
            error_statuses=[int(s) for s in args.error_statuses.split(",") if s.strip()],
            hang_rate=args.hang_rate,
            hang_seconds=args.hang_seconds,
            malformed_rate=args.malformed_rate,
            malformed_kinds=[k.strip() for k in args.malformed_kinds.split(",") if k.strip()],
            seed=None if args.seed == -1 else args.seed,
            content=args.content,
            api_key=args.api_key,
        )
    except ValueError as exc:
        print(f"fake_openai: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        await server.start()
        print(server.base_url, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.close()

    asyncio.run(run())
    print(json.dumps(server.stats()), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
