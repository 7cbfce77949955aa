"""The OpenAI SDK client (real, or wired to dummy mode), and how its errors are read: which
are worth retrying, how long the provider asks us to wait, and a message a user can act on."""

from __future__ import annotations

import logging
import re

import httpx2
import openai

from chalicelib.generation.answers import UnusableAnswer, trim
from chalicelib.generation.dummy import DUMMY_BASE_URL, DummyTransport
from chalicelib.generation.prompt import MAX_INSTRUCTIONS_CHARS, SYSTEM_PROMPT, build_messages  # noqa: F401 (re-exported)
from chalicelib.generation.ratelimit import retry_after_seconds
from chalicelib.settings import Settings

log = logging.getLogger("csv_opener.openers")

MAX_RETRY_AFTER_S = 60.0  # a Retry-After / reset header longer than this is capped, not obeyed
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 20.0
BACKOFF_JITTER_S = 1.0
STOP_CHECK_SLICE_S = 1.0  # backoff sleeps are cut into slices so should_stop() is seen quickly

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


# -- error classification -------------------------------------------------------------------------

_RETRYABLE_STATUS = {408, 409, 429}
_STATUS_HINTS = {
    401: "check OPENAI_API_KEY",
    403: "the API key has no access to this model or endpoint",
    404: "check the model name and OPENAI_BASE_URL",
}


def is_quota_exhausted(exc: BaseException) -> bool:
    """OpenAI's "insufficient_quota" 429 means billing, not rate: waiting will not fix it."""
    body = getattr(exc, "body", None)
    is_429 = isinstance(exc, openai.RateLimitError)
    return is_429 and isinstance(body, dict) and body.get("code") == "insufficient_quota"


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, UnusableAnswer | openai.APIConnectionError):  # APITimeoutError included
        return True
    if isinstance(exc, openai.APIStatusError):
        should = exc.response.headers.get("x-should-retry", "").lower()
        if should in {"true", "false"}:
            return should == "true"
        if is_quota_exhausted(exc):
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
        if is_quota_exhausted(exc):
            hint = "the account's quota is used up; check billing"
        detail = trim(_api_detail(exc), 300)
        return f"HTTP {exc.status_code} from the model API: {detail}" + (f" ({hint})" if hint else "")
    if isinstance(exc, openai.APITimeoutError):
        return "Timed out waiting for the model API"
    if isinstance(exc, openai.APIConnectionError):
        # the kind of failure, not the library's text (it names the provider's host and address)
        return f"Could not connect to the model API ({type(exc.__cause__ or exc).__name__})"
    if isinstance(exc, UnusableAnswer):
        return str(exc)
    return f"The model API call failed ({type(exc).__name__})"


def retry_after(exc: BaseException | None) -> float | None:
    """Seconds the failed response asked us to wait (capped), None if it did not say."""
    if not isinstance(exc, openai.APIStatusError):
        return None
    seconds = retry_after_seconds(exc.response.headers)
    return None if seconds is None else min(seconds, MAX_RETRY_AFTER_S)
