"""SPEC's quality flags for one opener, and what to tell the model when it is asked again.

Flags, in SPEC's order: ``too_long`` / ``too_short`` (words outside ``min_words`` ..
``max_words``), ``duplicate`` (told by the job's duplicate index), ``spammy`` (a phrase of
``spam_phrases.txt``, or more than one ``!``), ``wrong_language`` (``language.is_wrong_language``)
and ``generic`` (grounding found no specific claim). ``ungrounded`` and ``edited`` are given by
the worker and a person's edit, not by a check of the text.

A word: a run of letters or digits (with inner ' or -) in scripts written with spaces; each
Chinese or Japanese character, written without spaces, counts as one word (as word processors
count them), so the same limits work for every language.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from chalicelib.errors import BadRequest
from chalicelib.quality import language as lang
from chalicelib.quality.grounding import Grounding
from chalicelib.quality.text import normalise

DEFAULT_MIN_WORDS = 8
DEFAULT_MAX_WORDS = 40
WORD_LIMIT_RANGE = (1, 200)
MAX_EXCLAMATIONS = 1

TOO_LONG = "too_long"
TOO_SHORT = "too_short"
DUPLICATE = "duplicate"
SPAMMY = "spammy"
WRONG_LANGUAGE = "wrong_language"
GENERIC = "generic"
UNGROUNDED = "ungrounded"
EDITED = "edited"
FLAGS = (TOO_LONG, TOO_SHORT, DUPLICATE, SPAMMY, WRONG_LANGUAGE, GENERIC, UNGROUNDED, EDITED)

SPAM_FILE = Path(__file__).with_name("spam_phrases.txt")

# Han (with its extensions and compatibility forms), Hiragana, Katakana: one word per character.
_CJK = "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_LETTERS = f"(?:(?![{_CJK}])[^\\W_])+"  # a run of letters or digits of a script written with spaces
_COUNTED = re.compile(f"\\d+(?:[.,]\\d+)*(?![^\\W_])|[{_CJK}]|{_LETTERS}(?:['-]{_LETTERS})*")


@dataclass(frozen=True)
class Checked:
    """The flags of one opener (SPEC order), its word count, and one instruction per flag for
    the re-ask message (empty when clean)."""

    flags: tuple[str, ...]
    words: int
    reasks: tuple[str, ...]


def check_word_limits(min_words: int = DEFAULT_MIN_WORDS, max_words: int = DEFAULT_MAX_WORDS) -> tuple[int, int]:
    """The word limits of a request, or a 400 saying what is wrong with them."""
    low, high = WORD_LIMIT_RANGE
    for name, value in (("min_words", min_words), ("max_words", max_words)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise BadRequest(f"{name} must be a whole number from {low} to {high}", code="invalid_word_limits")
    if min_words > max_words:
        raise BadRequest("min_words must not be greater than max_words", code="invalid_word_limits")
    return min_words, max_words


def count_words(text: str) -> int:
    """The number of words of ``text`` (see the module docstring for CJK)."""
    return len(_COUNTED.findall(unicodedata.normalize("NFKC", text)))


@functools.cache
def spam_phrases() -> tuple[str, ...]:
    """The shipped list (comments and blank lines left out), normalised as openers are."""
    lines = SPAM_FILE.read_text(encoding="utf-8").splitlines()
    return tuple(dict.fromkeys(normalise(line) for line in lines if line.strip() and not line.lstrip().startswith("#")))


@functools.cache
def _spam_pattern() -> re.Pattern[str]:
    # Custom boundaries: "100% free" ends in a letter but starts with a digit, and "%" is no
    # word character, so \b would not do on both ends.
    alternatives = "|".join(re.escape(p) for p in sorted(spam_phrases(), key=len, reverse=True))
    return re.compile(f"(?<![^\\W_])(?:{alternatives})(?![^\\W_])")


def spam_hits(text: str) -> list[str]:
    """The listed phrases found in ``text``, each once, in the order they appear."""
    return list(dict.fromkeys(m.group(0) for m in _spam_pattern().finditer(normalise(text))))


def is_spammy(text: str) -> bool:
    return text.count("!") + text.count("！") > MAX_EXCLAMATIONS or bool(spam_hits(text))


def check(opener: str, *, generic: bool = False, language: str | None = None,
          duplicate_of: str | None = None, min_words: int = DEFAULT_MIN_WORDS,
          max_words: int = DEFAULT_MAX_WORDS, names: tuple[str, ...] = ()) -> Checked:
    """The flags of ``opener``. ``generic``: grounding said so; ``language``: the ISO 639-1 code
    it should be written in (None: not checked); ``duplicate_of``: the opener of the job it
    repeats, from the duplicate index; ``names``: proper names of the row (company, person), left
    out of language detection."""
    words = count_words(opener)
    found: list[tuple[str, str]] = []
    if words > max_words:
        found.append((TOO_LONG, f"shorter: at most {max_words} words"))
    if words < min_words:
        found.append((TOO_SHORT, f"longer: at least {min_words} words"))
    if duplicate_of:
        found.append((DUPLICATE, f"do not repeat: {duplicate_of}"))
    if is_spammy(opener):
        hits = spam_hits(opener)
        avoid = f"without {', '.join(repr(h) for h in hits)}, " if hits else ""
        found.append((SPAMMY, f"no sales language: {avoid}at most one exclamation mark"))
    if language and lang.is_wrong_language(opener, language, names=names):
        found.append((WRONG_LANGUAGE, f"write it in {lang.language_name(language)}"))
    if generic:
        found.append((GENERIC, "specific: use one detail from the page or the row, and give its words as evidence"))
    return Checked(tuple(f for f, _ in found), words, tuple(r for _, r in found))


def reask_message(grounding: Grounding | None = None, checked: Checked | None = None) -> str | None:
    """The message that asks for an opener again: what grounding did not find and what each
    flag asks for, in one sentence (None when there is nothing to ask again for)."""
    parts = reask_parts(grounding, checked)
    return "Write the opener again: " + "; ".join(parts) + "." if parts else None


def reask_parts(grounding: Grounding | None = None, checked: Checked | None = None) -> list[str]:
    """What to fix in one opener: what grounding did not find, then what each flag asks for."""
    missing = grounding.not_found() if grounding is not None and not grounding.ok else ""
    return ([missing] if missing else []) + [*(checked.reasks if checked else ())]
