"""The job's quality counters when a person's edit replaces a row's flags and word count."""

from __future__ import annotations

from chalicelib.review.edits import move_counts


def test_an_edit_moves_the_flags_and_the_words_histogram_of_one_row():
    counters = {"verified": 3, "flagged": {"duplicate": 2, "too_long": 1}, "words": {"12": 2, "50": 1}}
    moved = move_counts(counters, ["duplicate", "too_long"], 50, ["edited"], 9)
    assert moved == {"verified": 3, "flagged": {"duplicate": 1, "edited": 1}, "words": {"12": 2, "9": 1}}
    again = move_counts(moved, ["edited"], 9, ["too_short", "edited"], 3)
    assert again["flagged"] == {"duplicate": 1, "edited": 1, "too_short": 1} and again["words"] == {"12": 2, "3": 1}


def test_a_row_without_words_or_flags_only_adds():
    assert move_counts({}, None, None, ["edited"], 10) == {"flagged": {"edited": 1}, "words": {"10": 1}}
