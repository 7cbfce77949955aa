"""What the model answered, made into an opener or refused: the opener, its evidence and its
token counts, the cleaning that turns a raw answer into plain text fit for a CSV cell (no
markdown, quotes, placeholders or refusals; at most two sentences), and the errors a row can
fail with. The answer is the JSON of ``chalicelib.quality.answer`` (read strictly when it was
asked for through ``response_format``, leniently when asked for in words); its opener is then
cleaned and passed through the output guard as a plain answer was."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from chalicelib.generation import guard
from chalicelib.generation.prompt import MAX_INSTRUCTIONS_CHARS, SYSTEM_PROMPT, build_messages  # noqa: F401 (re-exported)
from chalicelib.logs import redact_secrets
from chalicelib.quality.answer import AnswerError, parse_answer, parse_answers, parse_lenient, parse_lenient_answers

log = logging.getLogger("csv_opener.openers")

MAX_OPENER_CHARS = 300
MAX_SENTENCES = 2
MIN_OPENER_WORDS = 3
MAX_ERROR_CHARS = 500
UNUSABLE_MESSAGE = "The model returned no usable opener"
REJECTED_MESSAGE = "The model's answer was rejected"
SAMPLE_CHARS = 60  # of a turned-down answer, in DEBUG logs only

# -- results and errors --------------------------------------------------------------------------


@dataclass(frozen=True)
class Opener:
    text: str
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    evidence: str | None = None
    cached_tokens: int = 0  # of prompt_tokens: read from the provider's prompt cache
    # with variants (a job's `variants` > 1): every (opener, evidence) of the answer, in its order;
    # text/evidence are the first's. Empty for one opener.
    variants: tuple[tuple[str, str | None], ...] = ()


def trim(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def error_text(message: str) -> str:
    """A failure as stored on a URL row: one line, at most MAX_ERROR_CHARS, no key fragments."""
    return trim(redact_secrets(message), MAX_ERROR_CHARS)


class GenerationFailed(Exception):
    """The URL could not get an opener; ``message`` is fit to show the user, ``attempts`` were made;
    ``prompt_tokens``/``completion_tokens``: what the calls that did answer cost all the same (an
    unusable answer, an opener the checks asked again for), so a failed row still counts them."""

    def __init__(self, message: str, attempts: int, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        self.message = error_text(message)
        self.attempts = attempts
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        super().__init__(self.message)


class UnusableAnswer(Exception):
    """The API answered, but the answer cannot become an opener (retryable).

    The message says what was wrong with the answer and never quotes it: the text is the model's,
    possibly steered by a hostile page or cell, and the message reaches the tenant (``urls.error``,
    results, the CSV). ``reason`` is that description ("the answer was empty"); ``rejected`` marks
    the output guard's verdict on an otherwise usable opener.
    """

    def __init__(self, reason: str, *, rejected: bool = False) -> None:
        self.reason = reason
        self.rejected = rejected
        self.prompt_tokens = 0  # the usage of the answer turned down (paid all the same)
        self.completion_tokens = 0
        super().__init__(f"{REJECTED_MESSAGE if rejected else UNUSABLE_MESSAGE}: {reason}")


def log_unusable(reason: str, raw: object) -> None:
    """Operators may see a short, redacted sample of an answer that was turned down, at DEBUG
    only (never in what a tenant sees)."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("unusable model answer (%s); sample: %r", reason, trim(redact_secrets(str(raw)), SAMPLE_CHARS))


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
    return cleaned_or_reason(text)[0]


def cleaned_or_reason(text: str | None) -> tuple[str | None, str]:
    """(the cleaned opener, "") or (None, what was wrong with the answer, in words that never
    quote it)."""
    if not isinstance(text, str) or not text.strip():
        return None, "the answer was empty"
    cleaned = _UNSAFE_CHARS.sub(" ", text)  # one NUL would fail the whole batch's save
    cleaned = _strip_markdown(cleaned)
    cleaned = " ".join(cleaned.split())
    cleaned = _LABEL.sub("", cleaned)
    cleaned = _strip_quotes(cleaned)
    if not cleaned:
        return None, "the answer was empty"
    if _is_refusal(cleaned):
        return None, "the answer was a refusal, not an opener"
    if _PLACEHOLDER.search(cleaned):
        return None, "the answer contained a placeholder or template brackets"
    sentences = split_sentences(cleaned)
    if len(sentences) > MAX_SENTENCES:
        cleaned = " ".join(sentences[:MAX_SENTENCES])
    if len(cleaned) > MAX_OPENER_CHARS:
        return None, f"the answer was longer than {MAX_OPENER_CHARS} characters"
    if len(cleaned.split()) < MIN_OPENER_WORDS:
        return None, f"the answer was shorter than {MIN_OPENER_WORDS} words"
    return cleaned, ""


def complete_sentences(text: str) -> str:
    """Drop a trailing sentence cut off mid-way (the answer hit max_tokens); '' if none is complete."""
    text = text.strip()
    if not text or text[-1] in ".!?\"'”’)":
        return text
    sentences = split_sentences(text)
    return " ".join(sentences[:-1])



def token_count(usage: Any, name: str) -> int:
    """A token count from an answer's `usage`: a non-negative int below 10 million, else 0."""
    value = usage.get(name) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10_000_000 else 0


def spent_tokens(exc: GenerationFailed) -> dict:
    """A failed row's tokens: what the calls made for it cost (nothing to count: left NULL)."""
    if not (exc.prompt_tokens or exc.completion_tokens):
        return {}
    return {"prompt_tokens": exc.prompt_tokens, "completion_tokens": exc.completion_tokens}


def cached_count(usage: Any) -> int:
    """``usage.prompt_tokens_details.cached_tokens``: 0 when absent or not a sane count (at most
    the prompt's tokens)."""
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if not isinstance(cached, int) or isinstance(cached, bool) or cached < 0:
        return 0
    prompt = usage.get("prompt_tokens")
    return min(cached, prompt) if isinstance(prompt, int) and prompt >= 0 else 0


def _content(body: dict) -> tuple[str | None, dict, dict]:
    """(the message's text, the message, the choice) of a chat.completion body; UnusableAnswer
    for a refusal or an answer without a message."""
    choices = body.get("choices") or []
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    raw = message.get("content") if isinstance(message.get("content"), str) else None
    if raw is None and isinstance(message.get("refusal"), str) and message["refusal"].strip():
        log_unusable("refusal", message["refusal"])
        raise UnusableAnswer("the model refused to write an opener")
    if not choices:
        raise UnusableAnswer("the answer held no message")
    return raw, message, choice


def usable_text(body: dict) -> str:
    """The opener in a plain-text chat.completion body, cleaned; UnusableAnswer (saying why) when
    there is none."""
    raw, message, choice = _content(body)
    if raw and choice.get("finish_reason") == "length":
        raw = complete_sentences(raw)  # cut off by max_tokens: keep whole sentences only
    return _cleaned(raw, message.get("content"))


def _cleaned(raw: str | None, sample: object) -> str:
    text, reason = cleaned_or_reason(raw)
    if text is None:
        log_unusable(reason, sample)
        raise UnusableAnswer(reason)
    return text


def usable_answers(body: dict, lenient: bool = False, variants: int = 1) -> list[tuple[str, str | None]]:
    """[(opener, evidence)] of a structured answer: the JSON parsed (strictly, or leniently when
    it was asked for in words), exactly ``variants`` of them, each opener cleaned;
    UnusableAnswer saying why when it is not that (a wrong count is an unusable answer too)."""
    raw, message, _ = _content(body)
    try:
        if variants > 1:
            answers = parse_lenient_answers(raw, variants) if lenient else parse_answers(raw, variants)
        else:
            answers = [parse_lenient(raw) if lenient else parse_answer(raw)]
    except AnswerError as exc:
        log_unusable(exc.reason, message.get("content"))
        raise UnusableAnswer(exc.message[0].lower() + exc.message[1:]) from None
    return [(_cleaned(a.opener, a.opener), a.evidence) for a in answers]


def usable_answer(body: dict, lenient: bool = False) -> tuple[str, str | None]:
    """(opener, evidence) of a structured answer of one opener (``usable_answers``)."""
    return usable_answers(body, lenient)[0]


def checked_answers(body: dict, url: str, instructions: str | None, lenient: bool = False,
                    variants: int = 1) -> list[tuple[str, str | None]]:
    """``usable_answers``, then the output guard on each opener: UnusableAnswer(rejected=True)
    with the guard's reason (naming the variant when there are several) if any is refused."""
    found = usable_answers(body, lenient, variants)
    for number, (text, _) in enumerate(found, 1):
        rejected = guard.problem(text, url, instructions)
        if rejected:
            log_unusable(rejected, text)
            raise UnusableAnswer(f"opener {number}: {rejected}" if variants > 1 else rejected, rejected=True)
    return found


def checked_answer(body: dict, url: str, instructions: str | None, lenient: bool = False) -> tuple[str, str | None]:
    """``checked_answers`` of one opener."""
    return checked_answers(body, url, instructions, lenient)[0]


def opener_from_answer(body: Any, url: str, instructions: str | None) -> Opener:
    """A finished chat.completion (a Batch API output line's body) as an opener, checked as a live
    answer is: parsed, cleaned, then the output guard. Raises UnusableAnswer (the reason for the row)."""
    if not isinstance(body, dict):
        log_unusable("not a JSON object", body)
        raise UnusableAnswer("the answer was not a JSON object")
    text, evidence = checked_answer(body, url, instructions)
    usage = body.get("usage")
    return Opener(text=text, prompt_tokens=token_count(usage, "prompt_tokens"),
                  completion_tokens=token_count(usage, "completion_tokens"), attempts=1, evidence=evidence,
                  cached_tokens=cached_count(usage))
