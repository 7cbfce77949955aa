"""Structured logging: one JSON object per line on stdout (what Lambda ships to CloudWatch).

`log_context(job_id=..., chunk=...)` tags every line logged inside it, across the threads the
chunk worker starts (they copy the context explicitly). Every handler invocation opens one
(chalicelib/observe.py) with the Lambda request id, the function and the correlation id, so every
function's lines have one shape; `bind(...)` adds what is learnt later (account id, job id) until
the enclosing `log_context` ends.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_context: contextvars.ContextVar[tuple[tuple[str, Any], ...]] = contextvars.ContextVar("log_context", default=())

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

# Our API keys (the public prefix may stay) and provider keys, masked or not ("sk-...abcd").
_SECRETS = re.compile(r"\b(cso_[0-9a-f]{8})_[A-Za-z0-9_\-]+|\b(sk-)[A-Za-z0-9_*\-]{4,}")
# The user:password of a URL (postgresql://app:pw@host, rediss://:token@host) in a library's error.
_URL_CREDENTIALS = re.compile(r"\b([a-z][a-z0-9+.\-]*://)[^\s/@]*@", re.IGNORECASE)


def redact_secrets(text: str) -> str:
    """`text` with every API key (ours after its public prefix, the provider's whole) and every
    URL's credentials replaced."""
    text = _SECRETS.sub(lambda m: f"{m.group(1)}_[redacted]" if m.group(1) else "sk-[redacted]", text)
    return _URL_CREDENTIALS.sub(r"\1[redacted]@", text)


def public_error(description: str, exc: BaseException) -> str:
    """What a caller may read of a failure on our side: our own description and the exception's
    type, never its text. Library messages name hosts, ports, queue URLs and sometimes
    credentials; that text goes to the log (redacted by the formatter), not to a tenant."""
    return f"{description} ({type(exc).__name__})"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(dict(_context.get()))
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact_secrets(json.dumps(entry, default=str))


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is now (test capture, Lambda's runtime), not at setup."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure(level: str = "INFO") -> None:
    """Send every `csv_opener` log line to stdout as JSON; safe to call more than once."""
    logger = logging.getLogger("csv_opener")
    logger.setLevel(level)
    logger.propagate = False
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"csv_opener.{name}")


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    merged = {**dict(_context.get()), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(tuple(merged.items()))
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> None:
    """Add fields to the current context without a block of its own: they stay until the
    enclosing `log_context` ends (the invocation's, opened by chalicelib/observe.py)."""
    merged = {**dict(_context.get()), **{k: v for k, v in fields.items() if v is not None}}
    _context.set(tuple(merged.items()))


def context_field(name: str) -> Any:
    """A field of the current context (None when absent), e.g. the correlation id to pass on."""
    return dict(_context.get()).get(name)


CORRELATION_HEADER = "X-Correlation-Id"


def correlation_headers() -> dict[str, str]:
    """The header that carries the current correlation id to a receiver (webhooks), if there is one."""
    correlation_id = context_field("correlation_id")
    return {CORRELATION_HEADER: str(correlation_id)} if correlation_id else {}
