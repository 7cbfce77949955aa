"""Token counts for ``usage`` and the TPM limit, by a rule of their own.

The app estimates a request's tokens as characters / 4 before sending it and corrects the
estimate with ``usage`` afterwards (chalicelib/generation/ratelimit.py). If the fake counted the same way,
estimate and usage would always agree and a wrong correction could never show. So the fake
counts roughly as OpenAI's BPE tokenizers do instead:

* the text is split like cl100k's pre-tokenizer: contractions (``'s``), a run of letters with at
  most one leading non-letter (`` world``, ``.com``, ``/about``), digit groups of 1-3, a run of
  punctuation with an optional leading space, whitespace;
* a letter run is one token per 8 ASCII letters (common words are one token) plus one per
  non-ASCII letter; a punctuation run one per 3 characters; a digit group or whitespace run one;
* a chat prompt adds OpenAI's framing: 3 tokens per message plus its role, and 3 to prime the
  reply;
* a ``response_format`` with a JSON schema counts too, as OpenAI adds the schema to the prompt
  (:func:`format_tokens`: the tokens of its ``json_schema`` as compact JSON).

``count_tokens("Hello, world!") == 4``, as cl100k says.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

_PIECE = re.compile(
    r"'(?:s|t|re|ve|m|ll|d)\b"  # contractions
    r"|[^\r\n\w]?[^\W\d_]+"  # letters, with at most one leading non-letter
    r"|\d{1,3}"  # digit groups
    r"| ?[^\s\w]+[\r\n]*"  # punctuation
    r"|\s*[\r\n]+|\s+(?!\S)|\s+",  # whitespace
    re.IGNORECASE,
)
TOKENS_PER_MESSAGE = 3
REPLY_PRIMING = 3


def _piece_tokens(piece: str) -> int:
    letters = [c for c in piece if c.isalpha()]
    if letters:
        ascii_letters = sum(c.isascii() for c in letters)
        return math.ceil(ascii_letters / 8) + (len(letters) - ascii_letters)
    if piece.strip() and not piece.strip().isdigit():
        return math.ceil(len(piece.strip()) / 3)
    return 1


def count_tokens(text: str) -> int:
    """Tokens in ``text`` (see the module docstring for the rule)."""
    return sum(_piece_tokens(piece) for piece in _PIECE.findall(text))


def max_output(request: Any) -> int | None:
    """The answer's token budget a chat request sets: ``max_completion_tokens``, else
    ``max_tokens``; None when neither is a positive whole number."""
    value = (request.get("max_completion_tokens") or request.get("max_tokens")) if isinstance(request, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def within(content: str, limit: int | None) -> tuple[str, int, str]:
    """``(content, completion_tokens, finish_reason)`` of an answer written within ``limit``
    tokens, as OpenAI stops at ``max_tokens``: an answer longer than that is cut after its last
    whole piece that fits, ``completion_tokens`` is the limit and ``finish_reason`` "length"
    (JSON cut off so is broken JSON, as a model's is); otherwise the whole, with "stop"."""
    tokens = count_tokens(content)
    if limit is None or tokens <= limit:
        return content, tokens, "stop"
    spent, end = 0, 0
    for match in _PIECE.finditer(content):
        spent += _piece_tokens(match.group(0))
        if spent > limit:
            break
        end = match.end()
    return content[:end], limit, "length"


def message_text(message: Any) -> str:
    """The text of a chat message (string content, or the text parts of a list)."""
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


def message_tokens(message: Any) -> int:
    """One message's share of ``prompt_tokens``: its text and role, plus its framing."""
    role = message.get("role") if isinstance(message, dict) else None
    role_tokens = count_tokens(role) if isinstance(role, str) else 0
    return TOKENS_PER_MESSAGE + count_tokens(message_text(message)) + role_tokens


def prompt_tokens(messages: Sequence[Any]) -> int:
    """``usage.prompt_tokens`` of a chat request: each message's text and role, plus framing."""
    return REPLY_PRIMING + sum(message_tokens(message) for message in messages)


def format_tokens(request: Any) -> int:
    """Prompt tokens the request's ``response_format`` adds: its ``json_schema`` (name, strict,
    schema) as compact JSON; 0 without one."""
    fmt = request.get("response_format") if isinstance(request, dict) else None
    spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
    if not isinstance(spec, dict):
        return 0
    return count_tokens(json.dumps(spec, separators=(",", ":")))
