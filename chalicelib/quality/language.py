"""Which language a page is in, and whether an opener is written in the one asked for.

Detection is offline with py3langid (the langid.py model, 97 languages, shipped in the wheel,
about a second to load, then ~0.15 ms per line). Each distinct text is ranked once (an LRU
cache): an opener is checked again when its flags are re-read for a duplicate, and a row's page
summary once per answer. No cheaper signal stands in for the model: ASCII text is no sign of
English (German, French or Spanish often need no accent at all). lingua-language-detector was weighed: it
is more accurate on very short texts but its wheel is ~100 MB and its loaded models ~1.3 GB,
too much for a Lambda; detectors built on fastText need a model downloaded at run time.

A 40-word opener full of names ("Loved the Bäckerei Müller rebrand in München") can look German
to any detector, so ``is_wrong_language`` says yes only when it is sure: the row's names, links
and figures are left out, at least ``MIN_WORDS`` words remain, another language wins with
probability ≥ ``SURE``, the expected one has less than ``DOUBT``, and the winner is not a close
sibling of the expected one (Spanish/Galician, Dutch/Afrikaans, English/Pidgin, ...) that the
model confuses.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterable
from typing import Any

from chalicelib.quality.text import remove_all

MIN_WORDS = 4  # fewer words than this, after names are left out, is not enough to judge
SURE = 0.90
DOUBT = 0.05
PAGE_MIN_WORDS = 8
PAGE_SURE = 0.80

# Languages the model confuses with each other on short texts: never a "wrong language".
_SIBLINGS = [{"en", "pcm"}, {"de", "lb"}, {"es", "gl", "an", "ext"}, {"pt", "gl"}, {"ca", "oc"},
             {"nl", "af", "fy"}, {"no", "nn", "da"}, {"hr", "sr", "bs"}, {"cs", "sk"}, {"id", "ms", "jv"},
             {"it", "vec", "lij"}]
_NAMES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "nl": "Dutch",
          "pt": "Portuguese", "pl": "Polish", "sv": "Swedish", "da": "Danish", "no": "Norwegian",
          "fi": "Finnish", "cs": "Czech", "ja": "Japanese", "zh": "Chinese", "ko": "Korean", "ru": "Russian",
          "tr": "Turkish", "ar": "Arabic"}
_NOISE = re.compile(r"https?://\S+|www\.\S+|\S+@\S+|@\w+|#\w+|[\d.,%$€£¥]+")
_TAG = re.compile(r"^([A-Za-z]{2})(?:[-_][A-Za-z0-9]{1,8})*$")
_lock = threading.Lock()
_loaded: list[Any] = []


def _identifier() -> Any:
    """The model, loaded on first use (about a second) by one thread while the others wait."""
    if not _loaded:
        with _lock:
            if not _loaded:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                _loaded.append(LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True))
    return _loaded[0]


def warm() -> None:
    """Load the model now (a chunk handler, before its threads start)."""
    _identifier()


def language_name(code: str) -> str:
    """A language's English name for a prompt ("German"), or its code when we have no name."""
    return _NAMES.get(code, f"the language with ISO 639-1 code {code!r}")


def iso_code(tag: str | None) -> str | None:
    """The ISO 639-1 code of a language tag ("de-AT", "pt_BR", "EN"), or None."""
    match = _TAG.match((tag or "").strip())
    return match.group(1).lower() if match else None


def ranked(text: str) -> list[tuple[str, float]]:
    """Languages for ``text`` with their probabilities, most likely first."""
    return list(_ranked(text))


@functools.lru_cache(maxsize=4096)
def _ranked(text: str) -> tuple[tuple[str, float], ...]:
    """The model's ranking, once per distinct text: an opener is checked again when it is asked
    for again or re-checked with its duplicate, and a row's page summary once per answer."""
    return tuple(_identifier().rank(text))  # (code, float) pairs, best first


@functools.cache
def _labels() -> frozenset[str]:
    return frozenset(_identifier().nb_classes)


def detect(text: str, sure: float = SURE, min_words: int = MIN_WORDS) -> str | None:
    """The ISO 639-1 code ``text`` is written in, or None when not sure."""
    cleaned = _strip(text, ())
    if len(cleaned.split()) < min_words:
        return None
    code, p = _ranked(cleaned)[0]
    return code if p >= sure and len(code) == 2 else None


def page_language(html_lang: str | None, og_locale: str | None, content_language: str | None,
                  summary: str | None) -> str | None:
    """The language of a page: what it declares (``<html lang>``, then ``og:locale``, then the
    first of ``Content-Language``), else what its summary reads as, else None."""
    first_content_language = (content_language or "").split(",")[0].split(";")[0]
    for declared in (html_lang, og_locale, first_content_language):
        code = iso_code(declared)
        if code:
            return code
    return detect(summary or "", sure=PAGE_SURE, min_words=PAGE_MIN_WORDS)


def is_wrong_language(text: str, expected: str, *, names: Iterable[str] = ()) -> bool:
    """Whether ``text`` is surely not written in ``expected`` (an ISO 639-1 code); see the
    module docstring for what "surely" means. ``names``: the row's proper names, left out."""
    expected = iso_code(expected) or ""
    if expected not in _labels():
        return False  # a language the model does not know: nothing to compare with
    cleaned = _strip(text, names)
    if len(cleaned.split()) < MIN_WORDS:
        return False
    scores = _ranked(cleaned)
    top, p_top = scores[0]
    p_expected = dict(scores).get(expected, 0.0)
    if top == expected or p_top < SURE or p_expected >= DOUBT:
        return False
    return not any(top in group and expected in group for group in _SIBLINGS)


def _strip(text: str, names: Iterable[str]) -> str:
    """``text`` without links, handles, figures and the given names (whole words, any case)."""
    cleaned = remove_all(_NOISE.sub(" ", str(text)), (n.strip() for n in names if n), whole_words=True)
    return " ".join(cleaned.split())


__all__ = ["detect", "is_wrong_language", "iso_code", "language_name", "page_language", "ranked"]
