"""Ask the LLM for one short outreach opener per URL, safely, politely and only as often as allowed.

Why this exists: the chunk worker turns every URL of a job into an opener. Each call must take its
turn from the shared Redis limiter, survive the API's bad moments (429, 5xx, timeouts, dropped
connections) with one well-behaved retry policy, and hand back text that can go straight into a
CSV cell: plain, short, no ``[Name]`` placeholders, no "As an AI..." refusals. When it cannot, the
URL fails with a message a user can act on.

Pieces:

* ``build_messages`` writes the prompt (the job's own instructions go into it).
* ``clean_opener`` turns a raw answer into a usable opener, or ``None``.
* ``build_client`` makes the ``openai.OpenAI`` client. In dummy mode the *same* SDK client talks
  to ``DummyTransport`` instead of the network, so dummy runs go through the same limiter,
  retries and parsing as real ones.
* ``OpenerGenerator.generate`` is one URL end to end. tenacity is the only retry layer (the SDK's
  own retries are off): exponential backoff with jitter, at least as long as ``Retry-After``; a
  429 also puts the shared limiter into a cooldown so every worker pauses, not just this one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx2
import openai
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from chalicelib import guard
from chalicelib.logs import redact_secrets
from chalicelib.prompt import MAX_INSTRUCTIONS_CHARS, SYSTEM_PROMPT, build_messages  # noqa: F401 (re-exported)
from chalicelib.ratelimit import LimiterStopped, estimate_tokens, provider_limits, retry_after_seconds
from chalicelib.settings import Settings

__all__ = [
    "DUMMY_BASE_URL",
    "MAX_OPENER_CHARS",
    "DummyTransport",
    "GenerationFailed",
    "Opener",
    "OpenerGenerator",
    "build_client",
    "build_messages",
    "clean_opener",
    "describe_error",
    "error_text",
]

log = logging.getLogger("csv_opener.openers")

MAX_OPENER_CHARS = 300
MAX_SENTENCES = 2
MIN_OPENER_WORDS = 3
MAX_ERROR_CHARS = 500
MAX_RETRY_AFTER_S = 60.0  # a Retry-After / reset header longer than this is capped, not obeyed
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 20.0
BACKOFF_JITTER_S = 1.0
STOP_CHECK_SLICE_S = 1.0  # backoff sleeps are cut into slices so should_stop() is seen quickly
DUMMY_BASE_URL = "http://dummy.invalid/v1"
UNUSABLE_MESSAGE = "The model returned no usable opener"


# -- results and errors --------------------------------------------------------------------------


@dataclass(frozen=True)
class Opener:
    text: str
    prompt_tokens: int
    completion_tokens: int
    attempts: int


def _trim(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def error_text(message: str) -> str:
    """A failure as stored on a URL row: one line, at most MAX_ERROR_CHARS, no key fragments."""
    return _trim(redact_secrets(message), MAX_ERROR_CHARS)


class GenerationFailed(Exception):
    """The URL could not get an opener; ``message`` is fit to show the user, ``attempts`` were made."""

    def __init__(self, message: str, attempts: int) -> None:
        self.message = error_text(message)
        self.attempts = attempts
        super().__init__(self.message)


class UnusableAnswer(Exception):
    """The API answered, but nothing in the answer survives ``clean_opener`` (retryable)."""

    def __init__(self, raw: str | None, reason: str | None = None) -> None:
        if reason:  # the guard's verdict; the answer itself is not repeated (it may carry what it found)
            super().__init__(f"The model's answer was rejected: {reason}")
            return
        shown = _trim(raw, 120) if raw and raw.strip() else "an empty answer"
        super().__init__(f"{UNUSABLE_MESSAGE} (got: {shown})")


# -- prompt ---------------------------------------------------------------------------------------

# -- cleaning -------------------------------------------------------------------------------------

_OPEN_QUOTES = "\"'“‘«„`"
_CLOSE_QUOTES = "\"'”’»“`"
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_LABEL = re.compile(
    r"^(?:(?:sure|certainly|of course|absolutely)[,!.]?\s*)?"  # "Sure! Here's a short opener:"
    r"(?:here(?:'s| is) (?:a|an|the|your|one)\b[^:]{0,60}:|opener:|opening line:|email opener:|message:)\s*",
    re.IGNORECASE,
)
_LINK = re.compile(r"\[([^\]\n]+)\]\((?:[^)\s]+)\)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+", re.MULTILINE)
_BULLET = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+", re.MULTILINE)
_EMPHASIS = re.compile(r"(?<![\w*_])(\*{1,3}|_{1,3})(?=\S)(.+?)(?<=\S)\1(?![\w*_])")
_CODE = re.compile(r"`([^`\n]*)`")
_PLACEHOLDER = re.compile(r"\[[^\]]*\]|\{[^}]*\}|<[^>]*>|\bX{3,}\b|_{3,}")
_REFUSAL_START = re.compile(
    r"^(?:i'?m sorry|i am sorry|sorry[,!.]|i apologi[sz]e|unfortunately,? i\b|as an ai\b|"
    r"i (?:cannot|can'?t|am unable to|'m unable to|am not able to|'m not able to|won'?t)\s+"
    r"(?:help|assist|access|browse|visit|view|open|see|provide|create|generate|write|comply|do that|fulfil))",
    re.IGNORECASE,
)
_REFUSAL_ANYWHERE = re.compile(
    r"\bas an ai\b|\bai language model\b|\bi (?:do not|don'?t) have (?:access|the ability) to (?:browse|the internet|"
    r"real-time|external|visit)",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)]*\s+(?=[\"'“‘(]?[A-Z0-9])")
_ABBREVIATIONS = {
    "inc", "co", "corp", "ltd", "llc", "mr", "mrs", "ms", "dr", "st", "vs", "etc", "e.g", "i.e", "jr", "sr",
    "no", "approx", "dept", "est", "u.s", "u.k",
}  # fmt: skip


def _strip_markdown(text: str) -> str:
    text = _FENCE.sub("", text.strip())
    text = _LINK.sub(r"\1", text)
    text = _HEADING.sub("", text)
    text = _BULLET.sub("", text)
    previous = None
    while previous != text:  # nested emphasis: ***x***, **_x_**
        previous, text = text, _EMPHASIS.sub(r"\2", text)
    return _CODE.sub(r"\1", text)


def _strip_quotes(text: str) -> str:
    while len(text) >= 2 and text[0] in _OPEN_QUOTES and text[-1] in _CLOSE_QUOTES:
        if text[0] in "'`" and text[-1] != text[0]:
            break  # "'Tis" / trailing apostrophes are words, not quoting
        text = text[1:-1].strip()
    return text


def _is_refusal(text: str) -> bool:
    plain = text.replace("’", "'").replace("‘", "'")
    return bool(_REFUSAL_START.search(plain) or _REFUSAL_ANYWHERE.search(plain))


def split_sentences(text: str) -> list[str]:
    """Split on ., ! or ? followed by a capitalised word, keeping "Acme Inc. builds..." whole."""
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        before = text[start : match.start()].split()
        last_word = before[-1].lower().rstrip(".") if before else ""
        if last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha()):
            continue
        sentences.append(text[start : match.end()].strip())
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


# Control characters (NUL, escape sequences, C1) and bidi/zero-width format characters: never part
# of an opener, and unsafe in a database text column or a spreadsheet cell.
_UNSAFE_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def clean_opener(text: str | None) -> str | None:
    """A raw model answer as a plain-text opener fit for a CSV cell, or None when it is unusable."""
    if not isinstance(text, str):
        return None
    cleaned = _UNSAFE_CHARS.sub(" ", text)  # one NUL would fail the whole batch's save
    cleaned = _strip_markdown(cleaned)
    cleaned = " ".join(cleaned.split())
    cleaned = _LABEL.sub("", cleaned)
    cleaned = _strip_quotes(cleaned)
    if not cleaned or _PLACEHOLDER.search(cleaned) or _is_refusal(cleaned):
        return None
    sentences = split_sentences(cleaned)
    if len(sentences) > MAX_SENTENCES:
        cleaned = " ".join(sentences[:MAX_SENTENCES])
    if len(cleaned) > MAX_OPENER_CHARS or len(cleaned.split()) < MIN_OPENER_WORDS:
        return None
    return cleaned


def complete_sentences(text: str) -> str:
    """Drop a trailing sentence cut off mid-way (the answer hit max_tokens); '' if none is complete."""
    text = text.strip()
    if not text or text[-1] in ".!?\"'”’)":
        return text
    sentences = split_sentences(text)
    return " ".join(sentences[:-1])


# -- clients --------------------------------------------------------------------------------------


def build_client(settings: Settings) -> openai.OpenAI:
    """The OpenAI SDK client: real, or wired to ``DummyTransport`` in dummy mode (no network).

    SDK retries are off (``max_retries=0``): ``OpenerGenerator`` is the one retry layer, so every
    retry takes its turn from the shared limiter.
    """
    if settings.openai_dummy_mode:
        return openai.OpenAI(
            api_key="dummy",
            base_url=DUMMY_BASE_URL,
            timeout=settings.openai_timeout_s,
            max_retries=0,
            http_client=httpx2.Client(transport=DummyTransport(settings.openai_dummy_delay_ms)),
        )
    api_key = settings.openai_api_key
    if not api_key:
        if not settings.openai_base_url:
            raise ValueError(
                "OPENAI_API_KEY is not set and OPENAI_DUMMY_MODE is false: set the key, "
                "point OPENAI_BASE_URL at an OpenAI-compatible server, or enable dummy mode"
            )
        api_key = "unused"  # many self-hosted OpenAI-compatible servers ignore the key
    return openai.OpenAI(
        api_key=api_key,
        base_url=settings.openai_base_url or None,
        timeout=settings.openai_timeout_s,
        max_retries=0,
    )


# -- dummy mode -----------------------------------------------------------------------------------

DUMMY_TEMPLATES = (
    "I came across {name} and liked how clearly you explain what you do. I'd love to share an idea "
    "that could help your team grow a little faster.",
    "{name} caught my eye while I was looking at companies doing interesting work in your space. I think "
    "there's a quick win we could explore together.",
    "It's clear the team at {name} cares about getting the details right. I had a thought on how to "
    "build on that momentum this quarter.",
    "I've been following {name} for a little while and really like the direction you're taking. Would "
    "you be open to a short conversation about what's next?",
    "Growing teams like yours at {name} often run into the same few bottlenecks. I'd be glad to share "
    "how similar companies cleared them without adding headcount.",
    "Your work at {name} stood out to me, especially the focus on customers. I'd love to swap notes on "
    "what's working for companies at a similar stage.",
    "I spent a few minutes on the {name} website and came away curious about your plans for the year. "
    "I have an idea that might fit right in.",
    "What {name} is building looks genuinely useful, and I suspect you're busy scaling it. I'd like to "
    "show you a simple way to give your team some time back.",
    "{name} reminded me of a few teams we've helped who were in a similar spot. Happy to share what "
    "made the biggest difference for them.",
    "Quick note from someone who admires what {name} has put together so far. I think we could help "
    "you reach more of the right people.",
    "{name} seems to be at an exciting stage, and that's usually when small improvements pay off most. "
    "Could I share one that has worked well for teams like yours?",
    "Reading about {name} made me want to reach out directly. I have a short idea that could make the "
    "next few months a little easier for your team.",
)
MAX_DUMMY_NAME_CHARS = 40
_URL_IN_TEXT = re.compile(r"https?://[^\s\"'<>]+", re.IGNORECASE)
_DOMAIN_IN_TEXT = re.compile(r"\b(?:[a-z0-9-]+\.)+[a-z]{2,}\b", re.IGNORECASE)
_ID_LIKE = re.compile(r"\d+|(?=[a-f]*\d)[0-9a-f]{6,}", re.IGNORECASE)  # "jane-doe-3b1a2c9f"
_SECOND_LEVEL = {"co", "com", "org", "net", "ac", "gov", "edu", "ltd", "plc", "ne", "or"}
_PROFILE_HOSTS = {"linkedin.com", "twitter.com", "x.com", "github.com", "facebook.com", "instagram.com"}


def _title(slug: str) -> str:
    words = [w for w in re.split(r"[-_.+\s]+", slug) if w and not _ID_LIKE.fullmatch(w)]
    name = " ".join(w[:1].upper() + w[1:] for w in words)
    if len(name) > MAX_DUMMY_NAME_CHARS:
        name = name[:MAX_DUMMY_NAME_CHARS].rsplit(" ", 1)[0] or name[:MAX_DUMMY_NAME_CHARS]
    return name


def _registrable_label(host: str) -> str:
    labels = [label for label in host.lower().rstrip(".").split(".") if label]
    if labels and labels[0] == "www":
        labels = labels[1:]
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL:
        return labels[-3]
    return labels[-2] if len(labels) >= 2 else (labels[0] if labels else "")


def _decode_idna(host: str) -> str:
    try:
        return host.encode("ascii").decode("idna")
    except (UnicodeError, ValueError):
        return host


def company_name(url: str) -> str:
    """A display name from a URL: "https://www.acme-robotics.co.uk/x" -> "Acme Robotics".

    Profile sites use the path instead: linkedin.com/company/acme -> "Acme".
    """
    parts = urlsplit(url if "://" in url else f"https://{url}")
    host = _decode_idna(parts.hostname or "")
    base = ".".join(host.lower().split(".")[-2:])
    segments = [s for s in parts.path.split("/") if s]
    if base in _PROFILE_HOSTS and segments:
        kind_prefix = segments[0] in {"company", "in", "school", "showcase"} and len(segments) > 1
        slug = segments[1] if kind_prefix else segments[0]
        name = _title(slug)
        if name:
            return name
    return _title(_registrable_label(host)) or "your company"


def _texts(messages: list[Any], role: str | None = None) -> list[str]:
    """The string contents of chat messages (of one role, if given)."""
    return [
        m["content"]
        for m in messages
        if isinstance(m, dict) and isinstance(m.get("content"), str) and (role is None or m.get("role") == role)
    ]


def _prospect_url(payload: dict[str, Any]) -> str:
    messages = payload.get("messages") or []
    for text in reversed(_texts(messages, "user") or _texts(messages)):
        match = _URL_IN_TEXT.search(text) or _DOMAIN_IN_TEXT.search(text)
        if match:
            return match.group(0)
    return ""


_DATA_BLOCK = re.compile(r"<prospect_data>\n(.*?)\n</prospect_data>", re.DOTALL)
_PAGE_TITLE = re.compile(r"<page>\n(?:title:\s*)?([^|\n]{3,80}?)(?:\s*[|\n]|\s+-\s)", re.IGNORECASE)


def _prompt_data(payload: dict[str, Any]) -> tuple[dict[str, str], str | None]:
    """The row's fields and the page title as the prompt carries them (see chalicelib/prompt.py)."""
    text = "\n".join(_texts(payload.get("messages") or [], "user"))
    fields = {}
    block = _DATA_BLOCK.search(text)
    for line in (block.group(1).splitlines() if block else []):
        name, _, value = line.partition(": ")
        try:
            fields[name.strip().casefold()] = str(json.loads(value))
        except ValueError:
            continue
    title = _PAGE_TITLE.search(text)
    return fields, title.group(1).strip() if title else None


def dummy_opener(url: str, fields: dict[str, str] | None = None, page_title: str | None = None) -> str:
    """The dummy answer for a URL: the same every time for that URL, varied across URLs; it greets
    the row's first name and names its company when the sheet gives them, and mentions the page's
    title when there is one, so dummy runs show what templates and page context do."""
    fields = fields or {}
    digest = hashlib.sha256(url.strip().lower().encode("utf-8")).digest()
    template = DUMMY_TEMPLATES[int.from_bytes(digest[:4], "big") % len(DUMMY_TEMPLATES)]
    company = next((v for k, v in fields.items() if "company" in k and v.strip()), None)
    text = template.format(name=(company or (company_name(url) if url else "your company"))[:MAX_DUMMY_NAME_CHARS])
    if page_title:
        text = f"I enjoyed reading {page_title[:60].rstrip()} on your site. " + text
    person = next((v for k, v in fields.items() if k in ("first_name", "first name", "firstname", "name") and
                   v.strip()), None)
    if person:
        text = f"Hi {person.split()[0][:30]}, {text[0].lower()}{text[1:]}"
    return text[:300].rsplit(" ", 1)[0] if len(text) > 300 else text


def _approx_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def _error_response(status: int, message: str, error_type: str) -> httpx2.Response:
    body = {"error": {"message": message, "type": error_type, "param": None, "code": None}}
    return httpx2.Response(status, json=body)


class DummyTransport(httpx2.BaseTransport):
    """An OpenAI chat-completions endpoint in-process: realistic openers, a configurable delay, no network.

    Thread-safe: the only shared state is a ``random.Random`` (whose calls are atomic), and the
    delay is slept without holding any lock, so concurrent calls overlap like real ones.
    """

    def __init__(self, delay_ms: tuple[int, int] = (0, 0), sleep: Callable[[float], Any] = time.sleep) -> None:
        low, high = delay_ms
        if low < 0 or high < low:
            raise ValueError(f"delay_ms must be a (low, high) range with 0 <= low <= high, got {delay_ms!r}")
        self.delay_ms = (int(low), int(high))
        self._sleep = sleep
        self._random = random.Random()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method != "POST" or not request.url.path.rstrip("/").endswith("/chat/completions"):
            message = f"dummy mode serves only POST /chat/completions, not {request.method} {request.url.path}"
            return _error_response(404, message, "invalid_request_error")
        try:
            payload = json.loads(request.read() or b"{}")
        except ValueError:
            return _error_response(400, "request body is not valid JSON", "invalid_request_error")
        if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
            return _error_response(400, "'messages' is required", "invalid_request_error")
        self._delay()
        return httpx2.Response(200, json=self._completion(payload))

    def _delay(self) -> None:
        low, high = self.delay_ms
        if high > 0:
            self._sleep(self._random.uniform(low, high) / 1000.0)

    def _completion(self, payload: dict[str, Any]) -> dict[str, Any]:
        url = _prospect_url(payload)
        text = dummy_opener(url, *_prompt_data(payload))
        prompt_chars = sum(len(text) for text in _texts(payload["messages"]))
        prompt_tokens = math.ceil(prompt_chars / 4) + 4 * len(payload["messages"])
        completion_tokens = _approx_tokens(text)
        return {
            "id": "chatcmpl-dummy-" + hashlib.sha256(url.encode("utf-8")).hexdigest()[:16],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(payload.get("model") or "dummy"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


# -- error classification -------------------------------------------------------------------------

_RETRYABLE_STATUS = {408, 409, 429}
_STATUS_HINTS = {
    401: "check OPENAI_API_KEY",
    403: "the API key has no access to this model or endpoint",
    404: "check the model name and OPENAI_BASE_URL",
}


def _is_quota_exhausted(exc: BaseException) -> bool:
    """OpenAI's "insufficient_quota" 429 means billing, not rate: waiting will not fix it."""
    body = getattr(exc, "body", None)
    is_429 = isinstance(exc, openai.RateLimitError)
    return is_429 and isinstance(body, dict) and body.get("code") == "insufficient_quota"


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, UnusableAnswer | openai.APIConnectionError):  # APITimeoutError included
        return True
    if isinstance(exc, openai.APIStatusError):
        should = exc.response.headers.get("x-should-retry", "").lower()
        if should in {"true", "false"}:
            return should == "true"
        if _is_quota_exhausted(exc):
            return False
        return exc.status_code >= 500 or exc.status_code in _RETRYABLE_STATUS
    return False


def _api_detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"].strip():
        return body["message"]
    if isinstance(body, str) and body.strip():
        return re.sub(r"<[^>]+>", " ", body)
    try:
        text = exc.response.text
    except (httpx2.ResponseNotRead, httpx2.StreamError):
        text = ""
    return re.sub(r"<[^>]+>", " ", text) if text.strip() else exc.response.reason_phrase or "no details"


def describe_error(exc: BaseException) -> str:
    """A short, user-readable account of a failed attempt (as stored in urls.error)."""
    if isinstance(exc, openai.APIStatusError):
        hint = _STATUS_HINTS.get(exc.status_code)
        if _is_quota_exhausted(exc):
            hint = "the account's quota is used up; check billing"
        detail = _trim(_api_detail(exc), 300)
        return f"HTTP {exc.status_code} from the model API: {detail}" + (f" ({hint})" if hint else "")
    if isinstance(exc, openai.APITimeoutError):
        return "Timed out waiting for the model API"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        reason = f"{type(cause).__name__}: {cause}" if cause else exc.message
        return f"Could not connect to the model API ({reason})"
    if isinstance(exc, UnusableAnswer):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _retry_after(exc: BaseException | None) -> float | None:
    """Seconds the failed response asked us to wait (capped), None if it did not say."""
    if not isinstance(exc, openai.APIStatusError):
        return None
    seconds = retry_after_seconds(exc.response.headers)
    return None if seconds is None else min(seconds, MAX_RETRY_AFTER_S)


# -- answers --------------------------------------------------------------------------------------

TEMPERATURE = 0.7


def _usage(usage: Any, name: str) -> int:
    """A token count from an answer's `usage`: a non-negative int below 10 million, else 0."""
    value = usage.get(name) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10_000_000 else 0


def usable_text(body: dict) -> str:
    """The opener in a chat.completion body, cleaned; UnusableAnswer when there is none."""
    choices = body.get("choices") or []
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    raw = message.get("content") if isinstance(message.get("content"), str) else None
    if raw and choice.get("finish_reason") == "length":
        raw = complete_sentences(raw)  # cut off by max_tokens: keep whole sentences only
    text = clean_opener(raw)
    if text is None:
        raise UnusableAnswer(message.get("content") or message.get("refusal"))
    return text


def opener_from_answer(body: Any, url: str, instructions: str | None) -> Opener:
    """A finished chat.completion (a Batch API output line's body) as an opener, checked as a live
    answer is: cleaned, then the output guard. Raises UnusableAnswer (the reason for the row)."""
    if not isinstance(body, dict):
        raise UnusableAnswer(str(body)[:200])
    text = usable_text(body)
    rejected = guard.problem(text, url, instructions)
    if rejected:
        raise UnusableAnswer(text, rejected)
    usage = body.get("usage")
    return Opener(text=text, prompt_tokens=_usage(usage, "prompt_tokens"),
                  completion_tokens=_usage(usage, "completion_tokens"), attempts=1)


# -- generator ------------------------------------------------------------------------------------


class Limiter(Protocol):
    """What the generator needs from ``chalicelib.ratelimit.RateLimiter`` (tests pass a fake)."""

    def acquire(self, tokens: int, should_stop: Callable[[], bool] = ..., account: str | None = ...,
                model: str | None = ...) -> float: ...

    def refund(self, estimated: int, actual: int, model: str | None = ...) -> None: ...

    def cooldown(self, seconds: float, model: str | None = ...) -> None: ...

    def observe(self, model: str | None, headers: Any) -> None: ...


def _json_body(content: bytes) -> dict:
    """The answer's JSON object; anything else is an unusable answer (retried)."""
    try:
        body = json.loads(content)
    except ValueError:
        raise UnusableAnswer(content[:200].decode("utf-8", "replace")) from None
    if not isinstance(body, dict):
        raise UnusableAnswer(str(body)[:200])
    return body


class OpenerGenerator:
    """Generates one opener per call; safe to share between the chunk worker's threads."""

    def __init__(
        self,
        client: openai.OpenAI,
        limiter: Limiter,
        model: str,
        max_retries: int = 3,
        max_tokens: int = 120,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self.client = client
        self.limiter = limiter
        self.model = model
        self.max_retries = max(1, int(max_retries))  # attempts in total, the first one included
        self.max_tokens = max_tokens
        self._sleep = sleep
        self._backoff = wait_exponential_jitter(
            multiplier=BACKOFF_INITIAL_S, max=BACKOFF_MAX_S, jitter=BACKOFF_JITTER_S
        )

    def generate(
        self,
        url: str,
        instructions: str | None = None,
        model: str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        account: str | None = None,
        fields: dict[str, str] | None = None,
        page: str | None = None,
    ) -> Opener:
        """The opener for ``url``; raises GenerationFailed, or LimiterStopped when asked to stop.
        ``account`` takes the call from that account's fair share of the shared rate; ``fields``
        (the row's template columns) and ``page`` (a summary of the prospect's page) go into the
        prompt as data. An answer the output guard rejects is retried like an unusable one."""
        request = self.request_body(url, instructions, model, fields, page)
        retrying = Retrying(
            stop=stop_after_attempt(self.max_retries),
            wait=self._wait,
            retry=retry_if_exception(_is_retryable),
            sleep=lambda seconds: self._pause(seconds, should_stop),
            before_sleep=lambda state: self._log_retry(url, state),
            reraise=True,
        )
        attempts = 0
        try:
            for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    opener = self._attempt(request, should_stop, attempts, account)
                    rejected = guard.problem(opener.text, url, instructions)
                    if rejected:
                        raise UnusableAnswer(opener.text, rejected)
                    return opener
        except (openai.OpenAIError, UnusableAnswer) as exc:
            raise GenerationFailed(describe_error(exc), attempts) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def request_body(self, url: str, instructions: str | None = None, model: str | None = None,
                     fields: dict[str, str] | None = None, page: str | None = None) -> dict:
        """The chat-completions request for one URL, as a live call sends it and a Batch API file
        carries it (one prompt for both modes)."""
        return {"model": model or self.model, "messages": build_messages(url, instructions, fields, page),
                "max_tokens": self.max_tokens, "temperature": TEMPERATURE}

    def _attempt(self, request: dict, should_stop: Callable[[], bool], number: int,
                 account: str | None = None) -> Opener:
        model = request["model"]
        estimate = estimate_tokens(request["messages"], request["max_tokens"])
        self.limiter.acquire(estimate, should_stop, account=account, model=model)
        try:
            # The SDK builds the request and raises its typed errors; the small JSON answer is read
            # directly (building the SDK's response model cost ~15 % of a call's CPU here).
            response = self.client.chat.completions.with_raw_response.create(**request)
        except openai.RateLimitError as exc:
            if provider_limits(exc.response.headers) != (-1, -1):  # OpenAI's 429s state the limits too
                self.limiter.observe(model, exc.response.headers)
            self._on_rate_limited(exc, model)
            raise
        # a success states the limits, or says by their absence that the server sends none (an
        # error page may lack them for other reasons: only successes and 429s are read)
        self.limiter.observe(model, response.http_response.headers)
        body = _json_body(response.http_response.content)
        usage = body.get("usage") or {}
        if isinstance(usage.get("total_tokens"), int):
            self.limiter.refund(estimate, usage["total_tokens"], model=model)
        return Opener(text=usable_text(body), prompt_tokens=_usage(usage, "prompt_tokens"),
                      completion_tokens=_usage(usage, "completion_tokens"), attempts=number)

    def _on_rate_limited(self, exc: openai.RateLimitError, model: str) -> None:
        if _is_quota_exhausted(exc):
            return  # not a rate problem: pausing everyone would not help
        self.limiter.cooldown(_retry_after(exc) or 1.0, model=model)

    def _wait(self, retry_state: RetryCallState) -> float:
        """Exponential backoff with jitter, but never shorter than the server's Retry-After."""
        backoff = self._backoff(retry_state)
        outcome = retry_state.outcome
        hinted = _retry_after(outcome.exception()) if outcome is not None and outcome.failed else None
        return max(backoff, hinted or 0.0)

    def _pause(self, seconds: float, should_stop: Callable[[], bool]) -> None:
        """Sleep between attempts in slices; LimiterStopped as soon as should_stop() is True."""
        remaining = seconds
        while True:
            if should_stop():
                raise LimiterStopped("stopped between attempts; the URL goes back to pending")
            if remaining <= 0:
                return
            step = min(STOP_CHECK_SLICE_S, remaining)
            self._sleep(step)
            remaining -= step

    def _log_retry(self, url: str, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.info(
            "opener attempt %d for %s failed (%s); retrying in %.2fs",
            state.attempt_number,
            url,
            describe_error(exc) if exc is not None else "unknown error",
            wait,
        )
