"""Grounding: verified / generic / unsupported (SPEC "Openers you can trust"). Each
normalisation has a case that is unsupported without it, and each figure kind a case where an
invented one is caught."""

from __future__ import annotations

import pytest

from chalicelib.quality.grounding import GENERIC, UNSUPPORTED, VERIFIED, Source, check
from chalicelib.quality.text import figures, normalise

SUMMARY = ("Bäckerei Müller is a family‑owned bakery in Berlin–Kreuzberg, baking since 1998. "
           "Over 1,200 loaves leave our ovens every day; 40% of our flour comes from the farm next door. "
           "We raised €1.5 million in 2023 for a second shop. Our motto: “Brot wie früher”. "
           "Rated 4.8 by twenty-two thousand guests.")
FIELDS = ["Bäckerei Müller", "Anna Schmidt", "Head Baker"]
SOURCE = Source.of(SUMMARY, FIELDS, instructions="We are Mehlwerk. Offer our 30-day trial.")


@pytest.mark.parametrize(("evidence", "what"), [
    ("bäckerei müller is a family-owned bakery", "case and dash style (non-breaking hyphen in the source)"),
    ('Our motto: "Brot wie früher"', "quote style (curly in the source)"),
    ("Our motto: «Brot wie früher»", "guillemets"),
    ("Berlin-Kreuzberg", "en dash in the source, hyphen in the evidence"),
    ("Over 1200 loaves", "number separators"),
    ("Over 1 200 loaves", "space as thousands separator"),
    ("Over 1.200 loaves", "dot as thousands separator"),
    ("Over   1,200\n loaves", "whitespace runs"),
    ("ＢＥＲＬＩＮ", "full-width letters (NFKC)"),
    ("Anna Schmidt", "a field of the row"),
    ("family‑owned bakery … since 1998", "an ellipsis leaving words out"),
    ("baking since 1998.", "punctuation at the edges"),
])
def test_evidence_is_found_whatever_its_typography(evidence, what):
    result = check("Loved what you bake at Bäckerei Müller, it reads like real craft.", evidence, SOURCE)
    assert result.status == VERIFIED, what
    assert result.evidence_found is True


@pytest.mark.parametrize("evidence", [
    "family-owned bakery in Hamburg",  # words not in the source
    "since 1998 … family-owned",  # parts in the wrong order
    "Anna Schmidt Head Baker",  # spans two fields of the row
    "in",  # too short to prove anything
])
def test_evidence_not_in_the_source_is_unsupported(evidence):
    result = check("Loved what you bake at Bäckerei Müller, it reads like real craft.", evidence, SOURCE)
    assert result.status == UNSUPPORTED and result.evidence_found is False


@pytest.mark.parametrize(("opener", "figure"), [
    ("Congratulations on 25 years of baking in Berlin!", "25"),  # a count of years
    ("Baking since 1997 is quite a run for a family bakery.", "1997"),  # a year
    ("Sourcing 45% of your flour locally is impressive.", "45"),  # a percentage
    ("Raising €2 million for a second shop is a big step.", "2 million"),  # an amount
    ("Over 1,300 loaves a day is a serious operation.", "1300"),  # separators don't hide it
    ("Twenty-six thousand happy guests is quite a following.", "26 thousand"),  # number words
])
def test_an_invented_figure_makes_the_opener_unsupported(opener, figure):
    result = check(opener, "family-owned bakery in Berlin", SOURCE)
    assert result.status == UNSUPPORTED
    assert result.evidence_found is True
    assert result.missing_figures == (figure,)
    assert figure in result.not_found()


@pytest.mark.parametrize("opener", [
    "Baking since 1998 is quite a run for a family bakery.",
    "Sourcing 40 % of your flour from next door is impressive.",
    "Raising €1.5M in 2023 for a second shop is a big step.",
    "Raising 1,500,000 euros in 2023 for a second shop is a big step.",
    "Over 1200 loaves a day is a serious operation.",
    "A 4.8 rating from 22,000 guests is quite a following.",
    "Twenty-two thousand guests rating you 4.8 is quite a following.",
    "Baking since 1998, our 30-day trial could help you.",  # 30 from the instructions
])
def test_figures_found_in_the_source_or_the_instructions_are_fine(opener):
    result = check(opener, "family-owned bakery in Berlin", SOURCE)
    assert result.missing_figures == ()
    assert result.status == VERIFIED


def test_an_ordinal_is_a_figure_too():
    assert check("Your 25th anniversary is not far off.", "baking since 1998", SOURCE).missing_figures == ("25th",)


def test_no_evidence_and_no_specific_claim_is_generic():
    result = check("Your bread looks like the kind people cross town for.", None, SOURCE)
    assert result.status == GENERIC and result.ok and result.not_found() == ""
    # The sender's own figures (from the instructions) are no claim about the prospect.
    assert check("Our 30-day trial might suit a bakery like yours.", None, SOURCE).status == GENERIC


def test_a_figure_without_evidence_is_unsupported_even_when_true():
    result = check("Baking since 1998 is quite a run.", None, SOURCE)
    assert result.status == UNSUPPORTED and result.missing_figures == ()
    assert "no evidence" in result.not_found()


def test_names_with_digits_are_not_figures():
    assert figures(normalise("A B2B leader with an H1 report and a 4x4 truck")) == []
    result = check("Your B2B wholesale line must keep the H1 busy.", "family-owned bakery", SOURCE)
    assert result.status == VERIFIED


def test_the_re_ask_message_quotes_little():
    long_evidence = "a sentence the model made up about the bakery " * 5
    result = check("Congrats on 25 years.", long_evidence, SOURCE)
    message = result.not_found()
    assert "25" in message and len(message) < 220
    assert long_evidence not in message


def test_normal_form():
    assert normalise("  “Hello” – WORLD’s  1,200\u00a0€ ") == "\"hello\" - world's 1200 €"
    assert normalise("Straße") == "strasse"  # casefold, not lower
    assert normalise("twenty-five, ninety nine, seventy") == "25, 99, 70"
    assert normalise("one of the best") == "one of the best"
    assert normalise("3.14159 and 1.234.567,89") == "3.14159 and 1234567,89"
    assert [w for w, _ in figures(normalise("1234567,89 and 3.5k"))] == ["1234567,89", "3.5k"]
