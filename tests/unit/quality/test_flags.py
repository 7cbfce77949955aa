"""SPEC's quality flags for one opener: word limits (CJK counted per character), the shipped
spam list on word boundaries, exclamation marks, generic, wrong language, duplicate, and the
instruction each flag adds to the re-ask message."""

from __future__ import annotations

import pytest

from chalicelib.errors import BadRequest
from chalicelib.quality import flags
from chalicelib.quality.flags import check, check_word_limits, count_words, reask_message, spam_hits, spam_phrases
from chalicelib.quality.grounding import Source
from chalicelib.quality.grounding import check as ground

CLEAN = "Loved how Bäckerei Müller bakes its rye with flour from the farm next door."


def test_a_clean_opener_has_no_flags():
    checked = check(CLEAN, language="en")
    assert checked.flags == () and checked.reasks == () and checked.words == 14


@pytest.mark.parametrize(("text", "words"), [
    ("Loved your new shop", 4),
    ("Loved your new shop!!! — really", 5),  # punctuation is no word
    ("Bäckerei Müller's rye isn't cheap", 5),  # inner apostrophes keep a word whole
    ("A family-owned bakery", 3),
    ("Grew 1,200 loaves", 3),
    ("我们的面包店", 6),  # Chinese: one word per character
    ("東京のパン屋さん", 8),  # Japanese kanji and kana alike
    ("서울의 빵집이 좋아요", 3),  # Korean is written with spaces
    ("Loved 東京 bakeries", 4),
])
def test_words_are_counted_for_every_script(text, words):
    assert count_words(text) == words


def test_word_limits_flag_too_long_and_too_short_with_the_limit_in_the_re_ask():
    long = " ".join(["word"] * 41)
    checked = check(long)
    assert checked.flags == ("too_long",) and checked.reasks == ("shorter: at most 40 words",)
    assert check(" ".join(["word"] * 40)).flags == ()
    assert check("Loved your new shop.").flags == ("too_short",)
    assert check("Loved your new shop.").reasks == ("longer: at least 8 words",)
    custom = check(CLEAN, min_words=3, max_words=10)
    assert custom.flags == ("too_long",) and custom.reasks == ("shorter: at most 10 words",)
    # Chinese gets the same limits: 41 characters is too long.
    assert check("好" * 41).flags == ("too_long",)


def test_word_limits_of_a_request_are_checked():
    assert check_word_limits(5, 30) == (5, 30)
    for low, high in [(0, 10), (10, 5), (8, 500), ("8", 40), (True, 40)]:
        with pytest.raises(BadRequest) as caught:
            check_word_limits(low, high)
        assert caught.value.status == 400 and caught.value.code == "invalid_word_limits"


def test_the_spam_list_is_shipped_documented_and_normalised():
    text = flags.SPAM_FILE.read_text()
    assert text.startswith("# ")  # a header saying where the phrases come from and why
    assert "Where they come from" in text and "Why" in text
    phrases = spam_phrases()
    for phrase in ["act now", "limited time", "guaranteed", "risk-free", "100% free", "click here"]:
        assert phrase in phrases
    assert all(p == p.strip() and p and not p.startswith("#") for p in phrases)


@pytest.mark.parametrize(("text", "hits"), [
    ("ACT NOW to see what your bakery could do.", ["act now"]),
    ("Act   now, it’s risk‑free for bakeries.", ["act now", "risk-free"]),  # spacing, quote, dash
    ("Our offer is 100% FREE for Bäckerei Müller.", ["100% free"]),
    ("Results guaranteed, click here.", ["guaranteed", "click here"]),
    ("It is a limited-time menu.", []),  # not the listed phrase
    ("The action now moves to Berlin.", []),  # "act now" only on word boundaries
    ("An unguaranteedly fresh loaf.", []),
    ("Reacting now to your new shop.", []),
])
def test_spam_phrases_match_on_word_boundaries_after_normalisation(text, hits):
    assert spam_hits(text) == hits


def test_spammy_flag_for_phrases_or_more_than_one_exclamation_mark():
    assert check("Loved your new shop in Berlin Mitte, act now for a chat about it.").flags == ("spammy",)
    assert check("Loved your new shop in Berlin Mitte, it looks great!").flags == ()
    assert check("Loved your new shop in Berlin Mitte! It looks great!").flags == ("spammy",)
    assert check("Loved your new shop in Berlin Mitte, looks great！！").flags == ("spammy",)
    reask = check("Loved your new shop in Berlin Mitte, act now, it is guaranteed to help.").reasks[0]
    assert "'act now'" in reask and "'guaranteed'" in reask and "exclamation" in reask


def test_generic_duplicate_and_wrong_language_flags_with_their_re_ask():
    earlier = "Loved how Bäckerei Müller bakes its rye with flour from the farm up the road."
    checked = check(CLEAN, generic=True, duplicate_of=earlier, language="de")
    assert checked.flags == ("duplicate", "wrong_language", "generic")
    assert checked.reasks[0] == f"do not repeat: {earlier}"
    assert checked.reasks[1] == "write it in German"
    assert "detail" in checked.reasks[2]


def test_flags_come_in_spec_order_and_are_known():
    checked = check("Act now!! " + " ".join(["word"] * 45), generic=True, duplicate_of="x")
    assert checked.flags == ("too_long", "duplicate", "spammy", "generic")
    assert set(checked.flags) <= set(flags.FLAGS)


def test_the_re_ask_message_says_what_grounding_missed_and_what_each_flag_asks():
    source = Source.of("Bäckerei Müller bakes rye since 1998.", ["Bäckerei Müller"])
    grounding = ground("Congrats on 25 years of rye at Bäckerei Müller, a real institution!!", "bakes rye", source)
    checked = check("Congrats on 25 years of rye at Bäckerei Müller, a real institution!!", max_words=10)
    message = reask_message(grounding, checked)
    assert message.startswith("Write the opener again: ")
    assert "these figures are not in the source: 25" in message
    assert "shorter: at most 10 words" in message and "exclamation" in message
    assert reask_message(ground(CLEAN, "bakes rye", source), check(CLEAN)) is None
    assert reask_message(None, None) is None
