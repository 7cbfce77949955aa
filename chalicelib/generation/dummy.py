"""Dummy mode: an OpenAI chat-completions endpoint in-process (realistic openers, a configurable
delay, no network). The real SDK client talks to it, so dummy runs go through the same limiter,
retries, parsing and quality checks as real ones.

It answers what was asked: the JSON ``{"opener", "evidence"}`` (as content, whether asked for
through ``response_format`` or in words) with evidence copied verbatim from the prompt's data (the
page's title, else the row's company field, else null: a generic opener), or plain text for a
request that asks for neither. A re-ask (a second user message) gets another of its templates.
Asked for variants (``{"openers": [...]}``, through ``response_format``'s ``minItems`` or "exactly
N different openers" in words), it answers that many, each from the next template (and, with a
page title, another lead sentence), so they are not alike.
Its usage counts the prompt as characters / 4 plus 4 a message, the ``response_format`` schema
included (as a provider counts it), and reports cached prompt tokens as OpenAI does: a first
message of at least 1,024 tokens seen before (same model and ``prompt_cache_key``) counts as
cached, in steps of 128 tokens."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx2

from chalicelib.generation.answers import split_sentences
from chalicelib.generation.prompt import MAX_INSTRUCTIONS_CHARS, SYSTEM_PROMPT, build_messages  # noqa: F401 (re-exported)

log = logging.getLogger("csv_opener.openers")

DUMMY_BASE_URL = "http://dummy.invalid/v1"

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
PAGE_LEADS = ("I enjoyed reading {title} on your site.", "Your page {title} gave me a clear picture of your work.",
              "Reading {title} today made me want to reach out.")
MAX_DUMMY_NAME_CHARS = 40
_VARIANTS_IN_WORDS = re.compile(r"exactly ([1-9]) different openers")
CACHE_MIN_TOKENS = 1024  # OpenAI caches prompt prefixes from this many tokens...
CACHE_STEP = 128  # ... in steps of this many
CACHE_ENTRIES = 10_000  # prefixes a process remembers
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


def dummy_opener(url: str, fields: dict[str, str] | None = None, page_title: str | None = None,
                 turn: int = 0) -> str:
    """The dummy answer for a URL: the same every time for that URL, varied across URLs; it greets
    the row's first name and names its company when the sheet gives them, and mentions the page's
    title when there is one (in place of the template's first sentence, to stay within the
    default word limits), so dummy runs show what templates and page context do. ``turn``: how
    many times the row was asked again (each gets the next template)."""
    return dummy_answer(url, fields, page_title, turn)[0]


def dummy_answer(url: str, fields: dict[str, str] | None = None, page_title: str | None = None,
                 turn: int = 0, lead: int = 0) -> tuple[str, str | None]:
    """(opener, evidence) of ``dummy_opener``: the evidence is the page title or the company
    field as the prompt gave it, verbatim, or None when the opener names neither."""
    fields = fields or {}
    digest = hashlib.sha256(url.strip().lower().encode("utf-8")).digest()
    template = DUMMY_TEMPLATES[(int.from_bytes(digest[:4], "big") + turn) % len(DUMMY_TEMPLATES)]
    company = next((v for k, v in fields.items() if "company" in k and v.strip()), None)
    name = (company or (company_name(url) if url else "your company"))[:MAX_DUMMY_NAME_CHARS]
    text = template.format(name=name)
    evidence = name if company and company == name else None
    if page_title:
        title = page_title[:60].rstrip()
        second = " ".join(split_sentences(text)[1:]) or text
        text = PAGE_LEADS[lead % len(PAGE_LEADS)].format(title=title) + " " + second
        evidence = title
    person = next((v for k, v in fields.items() if k in ("first_name", "first name", "firstname", "name") and
                   v.strip()), None)
    if person:
        text = f"Hi {person.split()[0][:30]}, {text[0].lower()}{text[1:]}"
    return (text[:300].rsplit(" ", 1)[0] if len(text) > 300 else text), evidence


def _evidence(opener: str, fields: dict[str, str], page_title: str | None) -> str | None:
    """What the opener quotes of the prompt's data, verbatim: the page title or a field value."""
    for candidate in (page_title[:60].rstrip() if page_title else None, *fields.values()):
        if candidate and len(candidate) >= 3 and candidate in opener:
            return candidate
    return None


def _asks_for_json(payload: dict[str, Any]) -> bool:
    """Whether the request wants the structured answer: through response_format, or in words."""
    if isinstance(payload.get("response_format"), dict):
        return payload["response_format"].get("type") in ("json_schema", "json_object")
    return any('"opener"' in text and "evidence" in text for text in _texts(payload.get("messages") or []))


def _variants_asked(payload: dict[str, Any]) -> int:
    """How many openers the request asks for: the ``openers`` array's ``minItems`` of its
    ``response_format`` schema, else "exactly N different openers" in its messages, else 1."""
    fmt = payload.get("response_format")
    spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
    schema = spec.get("schema") if isinstance(spec, dict) else None
    openers = (schema.get("properties") or {}).get("openers") if isinstance(schema, dict) else None
    if isinstance(openers, dict) and isinstance(openers.get("minItems"), int):
        return max(1, min(3, openers["minItems"]))
    found = [m.group(1) for text in _texts(payload.get("messages") or []) for m in _VARIANTS_IN_WORDS.finditer(text)]
    return int(found[-1]) if found else 1


def _approx_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def _format_tokens(payload: dict[str, Any]) -> int:
    """The prompt tokens a ``response_format`` JSON schema adds (the provider puts it in the prompt)."""
    fmt = payload.get("response_format")
    spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
    return _approx_tokens(json.dumps(spec, separators=(",", ":"))) if isinstance(spec, dict) else 0


def _error_response(status: int, message: str, error_type: str) -> httpx2.Response:
    body = {"error": {"message": message, "type": error_type, "param": None, "code": None}}
    return httpx2.Response(status, json=body)


class DummyTransport(httpx2.BaseTransport):
    """An OpenAI chat-completions endpoint in-process: realistic openers, a configurable delay, no network.

    Thread-safe: the shared state is a ``random.Random`` (whose calls are atomic) and the prompt
    prefixes seen (under a lock held for a dict lookup), and the delay is slept without holding any
    lock, so concurrent calls overlap like real ones.
    """

    def __init__(self, delay_ms: tuple[int, int] = (0, 0), sleep: Callable[[float], Any] = time.sleep,
                 cache_min_tokens: int = CACHE_MIN_TOKENS) -> None:
        low, high = delay_ms
        if low < 0 or high < low:
            raise ValueError(f"delay_ms must be a (low, high) range with 0 <= low <= high, got {delay_ms!r}")
        self.delay_ms = (int(low), int(high))
        self._sleep = sleep
        self._random = random.Random()
        self._prefixes: OrderedDict[bytes, None] = OrderedDict()  # prompt prefixes seen, oldest first
        self._lock = threading.Lock()
        self.cache_min_tokens = max(1, cache_min_tokens)

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
        turn = max(0, len(_texts(payload["messages"], "user")) - 1)  # a re-ask is one more user message
        fields, title = _prompt_data(payload)
        opener = dummy_opener(url, fields, title, turn=turn) if turn else dummy_opener(url, fields, title)
        text = json.dumps({"opener": opener, "evidence": _evidence(opener, fields, title)}) \
            if _asks_for_json(payload) else opener
        count = _variants_asked(payload)
        if count > 1:
            drafts = [dummy_answer(url, fields, title, turn=turn + i, lead=i)[0] for i in range(count)]
            text = json.dumps({"openers": [{"opener": d, "evidence": _evidence(d, fields, title)} for d in drafts]})
        prompt_chars = sum(len(text) for text in _texts(payload["messages"]))
        prompt_tokens = math.ceil(prompt_chars / 4) + 4 * len(payload["messages"]) + _format_tokens(payload)
        completion_tokens = _approx_tokens(text)
        cached = self._cached_tokens(payload)
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
                "prompt_tokens_details": {"cached_tokens": cached},
            },
        }

    def _cached_tokens(self, payload: dict[str, Any]) -> int:
        """OpenAI's rule on the first message (the job's constant part): cached once seen, when it
        has at least ``cache_min_tokens`` tokens, in steps of CACHE_STEP. (The system message with
        the longest instructions is about 850 tokens: at OpenAI's 1,024 nothing is cached.)"""
        first = _texts(payload["messages"][:1])
        tokens = math.ceil(len(first[0]) / 4) + 4 if first else 0
        least = self.cache_min_tokens
        if tokens < least:
            return 0
        key = hashlib.sha256(json.dumps([payload.get("model"), payload.get("prompt_cache_key"), first[0]],
                                        sort_keys=True).encode("utf-8", "surrogatepass")).digest()
        with self._lock:
            seen = key in self._prefixes
            self._prefixes[key] = None
            self._prefixes.move_to_end(key)
            while len(self._prefixes) > CACHE_ENTRIES:
                self._prefixes.popitem(last=False)
        return least + CACHE_STEP * ((tokens - least) // CACHE_STEP) if seen else 0
