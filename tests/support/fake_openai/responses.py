"""What the fake answers: the opener it writes, and OpenAI's JSON bodies (completions and
errors) around it."""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from .config import MODELS
from .tokens import message_text

# --------------------------------------------------------------------------- the opener

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


def _clean(url: str) -> str:
    return url.rstrip(_TRAILING)


def find_url(messages: Sequence[Any]) -> str | None:
    """The URL a request is about: first ``http(s)://`` token of the last user
    message, else of any other message (latest first), else a bare domain in
    the last user message."""
    texts = [message_text(m) for m in messages]
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


def host_of(url: str) -> str:
    try:
        host = urlsplit(url if "://" in url else "http://" + url).hostname or url
    except ValueError:
        host = url
    host = host.lower()
    return host.removeprefix("www.")[:150]


def make_opener(url: str | None, override: str | None = None) -> str:
    """The deterministic opener for ``url`` (≤ 300 chars, no quotes or placeholders)."""
    host = host_of(url) if url else ""
    if override is not None:
        return override.replace("{url}", url or "").replace("{host}", host)
    if not url:
        return _GENERIC
    template = _TEMPLATES[zlib.crc32(url.encode("utf-8", "replace")) % len(_TEMPLATES)]
    return template.replace("{host}", host)[:300]


# --------------------------------------------------------------------------- bodies


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


class APIError(Exception):
    """An error answer of type ``invalid_request_error`` (OpenAI's error body)."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> bytes:
        return error_body(self.message, "invalid_request_error", self.code, self.param)

    def result(self) -> tuple[int, bytes, list[tuple[str, str]]]:
        return self.status, self.body(), []


INSUFFICIENT_QUOTA = error_body(
    "You exceeded your current quota, please check your plan and billing details. For more information on this "
    "error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
    "insufficient_quota",
    "insufficient_quota",
)
"""The 429 body OpenAI sends when the account's credit is used up (no ``retry-after``)."""


def server_error_body(status: int) -> bytes:
    if status == 503:
        return error_body("The engine is currently overloaded, please try again later.", "server_error")
    return error_body("The server had an error while processing your request. Sorry about that!", "server_error")


def completion(seq: int, created: int, model: str, content: str | None, prompt_tokens: int,
               completion_tokens: int, cached_tokens: int = 0, finish_reason: str = "stop") -> dict[str, Any]:
    """A ``chat.completion`` with one choice whose message is ``content``; ``usage`` has OpenAI's
    details, ``prompt_tokens_details.cached_tokens`` among them (see prompt_cache.py);
    ``finish_reason`` "length" for an answer cut off at ``max_tokens`` (tokens.within)."""
    return {
        "id": f"chatcmpl-fake{seq:012d}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        },
        "system_fingerprint": "fp_fake",
    }


def malformed(kind: str, payload: dict[str, Any]) -> bytes:
    """The body of a 200 answer of one of the MALFORMED_KINDS, from a proper ``payload``."""
    if kind == "invalid_json":
        text = json.dumps(payload)
        return text[: len(text) // 2].encode()
    if kind == "empty_choices":
        return json.dumps({**payload, "choices": []}).encode()
    choice = payload["choices"][0]
    message = {**choice["message"], "content": "" if kind == "empty_content" else None}
    return json.dumps({**payload, "choices": [{**choice, "message": message}]}).encode()


def models(path: str) -> bytes:
    """``GET /models`` (the list) or ``GET /models/{id}``."""
    if path == "/models":
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "fake-openai"} for m in MODELS]
        return json.dumps({"object": "list", "data": data}).encode()
    model = path[len("/models/") :]
    return json.dumps({"id": model, "object": "model", "created": 1700000000, "owned_by": "fake-openai"}).encode()
