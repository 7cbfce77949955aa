"""One normal form for comparing an opener with its source, shared by every check.

A model copies the prospect's words but not their typography: it writes "1200" for "1,200",
straight quotes for curly ones, "-" for "–", another case, other spacing. Comparing the raw text
would call such an opener invented; comparing this normal form does not. Numbers are also pulled
out here (as plain decimals, "1.2M" as both 1.2 and 1200000) so grounding can ask whether each
figure of an opener appears in the source.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

# Typographic variants a model or a page may use for the same character.
_QUOTES = str.maketrans({c: "'" for c in "‘’‚‛′`´"} | {c: '"' for c in "“”„‟«»″"})
_DASHES = re.compile("[\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d]")
# Control and invisible formatting characters (bidi overrides, zero-width spaces) never carry
# meaning in an opener or its evidence; they only make equal text compare unequal.
_INVISIBLE = re.compile("[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
# "1,200", "1.200", "1 200", "1'200": a thousands separator between groups of exactly three.
_GROUPED = re.compile(r"(?<![\d.,])(\d{1,3})((?:[,. ']\d{3})+)(?!\d)")
_WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")

_UNITS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
          "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
          "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
         "eighty": 80, "ninety": 90}
_ONES = {"one": 1, **{k: v for k, v in _UNITS.items() if v < 10}}
# English number words from "two" to "ninety-nine" ("one" is left alone: "one of the best" is
# no figure). Tens come first so "twenty-five" is read whole, not as "twenty" then "five".
_NUMBER_WORD = re.compile(
    r"\b(?:(" + "|".join(_TENS) + r")(?:[- ](" + "|".join(_ONES) + r"))?|(" + "|".join(_UNITS) + r"))\b")

# A figure: digits not glued to a word ("B2B", "H1" are names), optionally with a decimal part,
# an ordinal or plural ending ("25th", "90s") or a multiplier ("5k", "2m", "1.5 million").
_MULTIPLIERS = {"k": 1000, "thousand": 1000, "m": 10**6, "mn": 10**6, "million": 10**6,
                "b": 10**9, "bn": 10**9, "billion": 10**9}
_FIGURE = re.compile(
    r"(?<![^\W\d_])(?<![\d.,])(\d+(?:[.,]\d+)?)"
    r"(?:(?:st|nd|rd|th|s)\b|\s?(thousand|million|billion|bn|mn|k|m|b)\b)?(?![^\W_])")


@functools.lru_cache(maxsize=4096)
def normalise(text: str) -> str:
    """``text`` in the normal form every comparison uses: Unicode NFKC, case folded, quotes and
    dashes plain, invisible characters dropped, thousands separators removed, English number
    words as digits, whitespace runs as one space.

    Cached: one opener is read by grounding, the flags and the duplicate index, and a row's
    source by every answer for the row; the function is pure."""
    text = unicodedata.normalize("NFKC", str(text))
    text = _INVISIBLE.sub(" ", text).translate(_QUOTES)
    text = _DASHES.sub("-", text).casefold()
    text = " ".join(text.split())
    text = _GROUPED.sub(lambda m: m.group(1) + re.sub(r"\D", "", m.group(2)), text)
    return _NUMBER_WORD.sub(_number_word_value, text)


def _number_word_value(match: re.Match[str]) -> str:
    tens, ones, unit = match.groups()
    if unit:
        return str(_UNITS[unit])
    return str(_TENS[tens] + (_ONES[ones] if ones else 0))


def words(normalised: str) -> list[str]:
    """The words of a normalised text (letters and digits; inner ' and - kept)."""
    return _WORD.findall(normalised)


def figures(normalised: str) -> list[tuple[str, frozenset[Decimal]]]:
    """Each figure of a normalised text: as written, and the values it may stand for ("2m" is 2
    and 2000000, "1,5" is 1.5)."""
    found = []
    for match in _FIGURE.finditer(normalised):
        try:
            value = Decimal(match.group(1).replace(",", "."))
        except InvalidOperation:  # cannot happen for \d+([.,]\d+)?, but a figure is never worth a crash
            continue
        values = {value.normalize()}
        if match.group(2):
            values.add((value * _MULTIPLIERS[match.group(2)]).normalize())
        found.append((match.group(0).strip(), frozenset(values)))
    return found


def figure_values(normalised: str) -> set[Decimal]:
    """Every value any figure of a normalised text may stand for."""
    return {value for _, values in figures(normalised) for value in values}



def find_all(text: str, needle: str, *, whole_words: bool = False) -> list[tuple[int, int]]:
    """The spans of ``needle`` in ``text``, case-insensitive, left to right, not overlapping;
    with ``whole_words`` only those with no word character (``\\w``) on either side: the spans of
    ``re.finditer(re.escape(needle), text, re.IGNORECASE)`` (with ``(?<!\\w)`` / ``(?!\\w)``).
    For ASCII text and needle (where lower case is exactly what IGNORECASE compares, and ``\\w``
    is ``[A-Za-z0-9_]``) without compiling a pattern per needle, which costs more than the
    search itself when every row brings names of its own; other text goes through the pattern."""
    if not needle:
        return []
    if not (text.isascii() and needle.isascii()):
        bound = (r"(?<!\w)", r"(?!\w)") if whole_words else ("", "")
        pattern = re.compile(bound[0] + re.escape(needle) + bound[1], re.IGNORECASE)
        return [m.span() for m in pattern.finditer(text)]
    low_text, low_needle = text.lower(), needle.lower()
    spans, start = [], 0
    while (at := low_text.find(low_needle, start)) >= 0:
        end = at + len(needle)
        if whole_words and ((at > 0 and _is_word_char(text[at - 1])) or (end < len(text) and _is_word_char(text[end]))):
            start = at + 1
            continue
        spans.append((at, end))
        start = end
    return spans


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


def remove_all(text: str, needles: Iterable[str], *, whole_words: bool = False) -> str:
    """``text`` with every occurrence of each of ``needles`` (see ``find_all``) replaced by a
    space, the longest needle first (so a name is not cut by a shorter one inside it)."""
    for needle in sorted({n for n in needles if n}, key=len, reverse=True):
        for start, end in reversed(find_all(text, needle, whole_words=whole_words)):
            text = text[:start] + " " + text[end:]
    return text
