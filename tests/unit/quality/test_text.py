"""quality/text.py's search without a pattern per needle (find_all, remove_all): the spans
re.IGNORECASE with word bounds finds, on ASCII and on other scripts (which take the pattern)."""

from __future__ import annotations

import random
import re

import pytest

from chalicelib.quality.text import find_all, normalise, remove_all


def by_pattern(text: str, needle: str, whole_words: bool) -> list[tuple[int, int]]:
    bound = (r"(?<!\w)", r"(?!\w)") if whole_words else ("", "")
    return [m.span() for m in re.finditer(bound[0] + re.escape(needle) + bound[1], text, re.IGNORECASE)]


@pytest.mark.parametrize(("text", "needle"), [
    ("Acme and ACME and acme_x and xacme and acme-robotics", "acme"),
    ("aaaa", "aa"),  # no overlaps
    ("Kalomine-3 bakes at kalomine-3.example.com", "kalomine-3"),
    ("www.Shop.example.com/ and shop.example.com", "shop.example.com"),
    ("the the", "the "),
    ("Bäckerei Müller in München, bäckerei müller", "Bäckerei Müller"),  # non-ASCII: the pattern's path
    ("İstanbul istanbul", "istanbul"),
    ("Ⅻ K K", "k"),  # the Kelvin sign folds to k under IGNORECASE
    ("", "x"),
])
@pytest.mark.parametrize("whole_words", [False, True])
def test_the_spans_are_the_patterns(text, needle, whole_words):
    assert find_all(text, needle, whole_words=whole_words) == by_pattern(text, needle, whole_words)


def test_random_ascii_agrees_with_the_pattern():
    pick = random.Random(7)
    alphabet = "ab_ -.A1"
    for _ in range(2000):
        text = "".join(pick.choice(alphabet) for _ in range(pick.randint(0, 20)))
        needle = "".join(pick.choice(alphabet) for _ in range(pick.randint(1, 3)))
        for whole in (False, True):
            assert find_all(text, needle, whole_words=whole) == by_pattern(text, needle, whole), (text, needle, whole)


def test_remove_all_takes_the_longest_needle_first_and_whole_words_only():
    text = "Loved Acme Robotics and Acme's robots at acmecorp"
    assert remove_all(text, ["Acme", "Acme Robotics", ""], whole_words=True) == "Loved   and  's robots at acmecorp"


def test_normalise_is_cached_and_still_pure():
    assert normalise("“Twenty-five” years") is normalise("“Twenty-five” years")
    assert normalise("“Twenty-five” years") == '"25" years'
