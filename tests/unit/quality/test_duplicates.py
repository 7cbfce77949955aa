"""Near-duplicates, the pure part (the Redis index is tested in
tests/integration/quality/test_duplicates.py): SPEC's rule (same first 8 words after
normalisation, or token-set similarity ≥ 0.85) and the MinHash buckets that find candidates."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from chalicelib.quality.duplicates import BANDS, band_buckets, first_words_key, is_near_duplicate, similarity

BASE = "Loved your new storefront in Berlin Mitte and the sourdough selection looks amazing this spring."
REWORDED = "Loved the new storefront in Berlin Mitte, and your sourdough selection looks amazing this spring!"
UNRELATED = [
    "Your article about zero-downtime Postgres migrations was the clearest explanation I have read this year.",
    "Congrats on the second warehouse in Rotterdam, that is serious growth for a logistics team your size.",
    "The case study on cutting hospital wait times with better scheduling was a great read for our team.",
]


@pytest.mark.parametrize("variant", [
    "LOVED   your new storefront in Berlin Mitte and the croissants are the best in town.",  # case, spaces
    "“Loved” your new storefront in Berlin Mitte, and honestly, what a wonderful rye you bake.",  # quotes, punctuation
])
def test_same_first_eight_words_after_normalisation(variant):
    assert first_words_key(variant) == first_words_key(BASE)
    assert similarity(variant, BASE) < 85  # found by its first words alone
    assert is_near_duplicate(variant, BASE)


def test_dash_styles_are_one_for_first_words():
    assert first_words_key("A family‑owned bakery in Berlin–Kreuzberg since the war, and more") == first_words_key(
        "A family-owned bakery in Berlin-Kreuzberg since the war, and other things")


def test_first_words_differing_in_word_eight_are_not_the_same_key():
    assert first_words_key("one two three four five six seven eight nine") != first_words_key(
        "one two three four five six seven EIGHTY nine")
    assert first_words_key("one two three four five six seven eight nine") == first_words_key(
        "one, two; three four five six seven eight — and more")


def test_similarity_threshold():
    assert similarity(BASE, REWORDED) >= 85 and is_near_duplicate(BASE, REWORDED)
    for other in UNRELATED:
        assert similarity(BASE, other) < 85 and not is_near_duplicate(BASE, other)
    # A reordered line with the same words is a duplicate too: token sets, not sequences.
    shuffled = "This spring the sourdough selection looks amazing, and I loved your new storefront in Berlin Mitte."
    assert first_words_key(shuffled) != first_words_key(BASE)
    assert is_near_duplicate(shuffled, BASE)


def test_near_duplicates_share_a_bucket_and_unrelated_openers_do_not():
    assert len(band_buckets(BASE)) == BANDS
    assert set(band_buckets(BASE)) & set(band_buckets(REWORDED))
    for other in UNRELATED:
        assert not set(band_buckets(BASE)) & set(band_buckets(other))


def test_buckets_of_text_written_without_spaces():
    chinese = "我们很喜欢你们在柏林米特区的新店和酸面包"
    assert set(band_buckets(chinese)) & set(band_buckets(chinese[:-1] + "。"))
    assert band_buckets("!!! ...") == []


def test_buckets_are_the_same_in_every_process():
    """Handlers of one job run in different processes: the buckets must not depend on
    Python's per-process string hashing."""
    code = "from chalicelib.quality.duplicates import band_buckets; import sys; print(band_buckets(sys.argv[1]))"
    outputs = set()
    for seed in ("1", "2"):
        run = subprocess.run([sys.executable, "-c", code, BASE], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed})
        outputs.add(run.stdout)
    assert outputs == {f"{band_buckets(BASE)}\n"}
