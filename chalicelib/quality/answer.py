"""The structured answer a model is asked for, and the parsers that decide what it said.

Every opener comes back as ``{"opener": str, "evidence": str | null}`` (``{"openers": [...]}``
of those for variants), asked for through ``response_format`` with a strict JSON schema. Servers
that refuse ``response_format`` get the same JSON asked for in the prompt and answer it inside
prose or a code fence, or as a bare sentence; ``parse_lenient`` reads those.

What a model answers is untrusted input: it is checked for types and lengths, control and
invisible characters are removed, and an ``AnswerError`` says what was wrong with it in a fixed
sentence of ours that never quotes the model's text (it ends up in logs and in the row's error).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MAX_OPENER_CHARS = 600
MAX_EVIDENCE_CHARS = 400
MAX_VARIANTS = 3
SCHEMA_NAME = "opener"

# C0/C1 controls, bidi overrides and zero-width characters: a CSV cell that shows one thing and
# holds another (or breaks a terminal) is worse than a refused answer. Line breaks become spaces.
_CONTROL = re.compile("[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200b-\u200f"
                      "\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_WRAPPING_QUOTES = "\"'“”‘’«»"


class AnswerError(ValueError):
    """The model's answer is not what was asked for. ``reason`` is a stable snake_case code;
    the message is ours alone."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Answer:
    opener: str
    evidence: str | None


_ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "opener": {"type": "string", "description": "the opening line, plain text"},
        "evidence": {"type": ["string", "null"],
                     "description": "the prospect's own words, copied exactly from its page or row, "
                                    "that the opener's specific detail rests on; null if none"},
    },
    "required": ["opener", "evidence"],
    "additionalProperties": False,
}


def response_format(variants: int = 1) -> dict[str, Any]:
    """The ``response_format`` of a chat completion asking for one answer (or ``variants``
    different ones, ``minItems`` = ``maxItems`` = ``variants``) in strict structured-output mode.
    Lengths and counts are checked by the parser all the same: an answer is untrusted input."""
    if not 1 <= variants <= MAX_VARIANTS:
        raise ValueError(f"variants must be between 1 and {MAX_VARIANTS}")
    if variants == 1:
        name, schema = SCHEMA_NAME, _ANSWER_SCHEMA
    else:
        name = f"{SCHEMA_NAME}s"
        schema = {"type": "object",
                  "properties": {"openers": {"type": "array", "items": _ANSWER_SCHEMA,
                                             "minItems": variants, "maxItems": variants,
                                             "description": f"exactly {variants} different openers"}},
                  "required": ["openers"], "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}


def json_instruction(variants: int = 1) -> str:
    """The same request in words, for a server that refused ``response_format`` (the prompt
    ends with it; ``parse_lenient`` reads the answer)."""
    one = '{"opener": "<the opener>", "evidence": "<the prospect\'s words it rests on, copied exactly>" or null}'
    if variants == 1:
        return f"Answer with only this JSON object and nothing else: {one}"
    return (f'Answer with only this JSON object and nothing else: {{"openers": [{one}, ...]}} '
            f"holding exactly {variants} different openers.")


def refuses_response_format(status: int, message: str | None) -> bool:
    """Whether a provider error says the server does not take ``response_format`` (a 400 that
    names it): the caller then asks that model with ``json_instruction`` instead."""
    text = (message or "").lower()
    return status == 400 and ("response_format" in text or "json_schema" in text)


# -- strict: the answer to response_format ---------------------------------------------------------


def parse_answer(content: str | None) -> Answer:
    """One answer from a server that honoured ``response_format``: exactly the schema's JSON."""
    return _answer(_load(content))


def parse_answers(content: str | None, variants: int) -> list[Answer]:
    """``variants`` answers (``{"openers": [...]}``) from a server that honoured ``response_format``."""
    data = _load(content)
    if not isinstance(data, dict) or set(data) != {"openers"}:
        raise AnswerError("not_an_object", 'The answer is not a JSON object with "openers"')
    return _variants(data["openers"], variants)


# -- lenient: JSON asked for in the prompt ----------------------------------------------------------


def parse_lenient(content: str | None) -> Answer:
    """One answer from a server without ``response_format``: the JSON object (alone, in a code
    fence or inside prose), else the text as a bare opener without evidence."""
    data = _find_json(_text(content))
    if data is None:
        return Answer(_bare(_text(content)), None)
    if isinstance(data, dict) and "openers" in data and "opener" not in data:
        items = data["openers"]
        if not isinstance(items, list) or not items:
            raise AnswerError("wrong_count", "The answer holds no openers")
        data = items[0]
    return _answer(data, strict=False)


def parse_lenient_answers(content: str | None, variants: int) -> list[Answer]:
    """``variants`` answers from a server without ``response_format``: ``{"openers": [...]}`` or
    a bare JSON list of answers, anywhere in the text."""
    data = _find_json(_text(content))
    if isinstance(data, dict) and "openers" in data:
        data = data["openers"]
    elif isinstance(data, dict) and variants == 1:
        data = [data]
    if not isinstance(data, list):
        raise AnswerError("not_json", "The answer holds no JSON list of openers")
    return _variants(data, variants, strict=False)


# -- the checks ----------------------------------------------------------------------------------


def _text(content: str | None) -> str:
    if not isinstance(content, str) or not content.strip():
        raise AnswerError("empty", "The answer is empty")
    return content


def _load(content: str | None) -> Any:
    text = _text(content)
    try:
        return json.loads(text)
    except ValueError:
        raise AnswerError("not_json", "The answer is not valid JSON") from None


def _find_json(content: str) -> Any:
    """The JSON object or list with what we asked for: the whole text, else the first one found
    inside prose or a code fence. None when there is none."""
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    if isinstance(data, (dict, list)):
        return data
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[{\[]", content):
        try:
            data, _ = decoder.raw_decode(content, match.start())
        except ValueError:
            continue
        if (isinstance(data, dict) and ({"opener", "openers"} & set(data))) or (
                isinstance(data, list) and data and all(isinstance(item, dict) for item in data)):
            return data
    if '"opener' in content:  # it meant to answer JSON and broke it: not an opener either
        raise AnswerError("not_json", "The answer holds broken JSON")
    return None


def _variants(items: Any, variants: int, strict: bool = True) -> list[Answer]:
    if not isinstance(items, list) or not items:
        raise AnswerError("wrong_count", "The answer holds no openers")
    if len(items) < variants or (strict and len(items) != variants):
        raise AnswerError("wrong_count", f"The answer does not hold {variants} openers")
    return [_answer(item, strict) for item in items[:variants]]


def _answer(data: Any, strict: bool = True) -> Answer:
    if not isinstance(data, dict):
        raise AnswerError("not_an_object", "The answer is not a JSON object")
    if strict and set(data) != {"opener", "evidence"}:
        raise AnswerError("unexpected_keys", 'The answer must have exactly "opener" and "evidence"')
    opener = clean(data.get("opener"), "opener", MAX_OPENER_CHARS)
    if not opener:
        raise AnswerError("opener_empty", "The opener is empty")
    evidence = clean(data.get("evidence"), "evidence", MAX_EVIDENCE_CHARS)
    return Answer(opener, evidence or None)


def clean(value: Any, field: str, limit: int) -> str:
    """A text field of an answer, checked and tidied: a string (or null: ""), control and
    invisible characters removed, whitespace runs as one space, at most ``limit`` characters."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise AnswerError(f"{field}_not_text", f"The {field} is not a string")
    text = " ".join(_CONTROL.sub("", value).split())
    if len(text) > limit:
        raise AnswerError(f"{field}_too_long", f"The {field} is longer than {limit} characters")
    return text


def _bare(content: str) -> str:
    text = clean(content, "opener", MAX_OPENER_CHARS)
    if len(text) >= 2 and text[0] in _WRAPPING_QUOTES and text[-1] in _WRAPPING_QUOTES:
        text = text[1:-1].strip()
    if not text:
        raise AnswerError("opener_empty", "The opener is empty")
    return text
