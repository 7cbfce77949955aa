"""Unit tests for chalicelib.review.picks: what a pick of a variant sets on a row, the 400s of a
variant the row does not have, and the job's grounding counters moved with it."""

from __future__ import annotations

import pytest

from chalicelib.errors import BadRequest
from chalicelib.review.picks import check_variant, move_grounding, pick_changes

VARIANTS = [{"opener": "First one, grounded on the page.", "evidence": "the page", "grounding": "verified",
             "quality": [], "words": 6},
            {"opener": "Second one, generic and long enough.", "evidence": None, "grounding": "generic",
             "quality": ["generic"], "words": 6}]
ROW = {"opener": VARIANTS[0]["opener"], "evidence": "the page", "grounding": "verified", "quality": [], "words": 6,
       "variant": 1, "variants": VARIANTS}


def test_a_pick_sets_the_variants_opener_evidence_grounding_flags_and_words():
    assert pick_changes(ROW, 2) == {"opener": VARIANTS[1]["opener"], "evidence": None, "grounding": "generic",
                                    "quality": ["generic"], "words": 6, "variant": 2}
    assert pick_changes(ROW, 1) == {}  # the one shown: nothing to change


def test_an_edited_row_picked_back_to_its_variant_loses_the_edit():
    edited = {**ROW, "opener": "A person's words.", "quality": ["edited"], "words": 3}
    assert pick_changes(edited, 1)["quality"] == [] and pick_changes(edited, 1)["opener"] == VARIANTS[0]["opener"]


@pytest.mark.parametrize(("row", "number", "told"), [
    (ROW, 3, "has 2 variant(s); variant must be from 1 to 2"),
    ({**ROW, "variants": None}, 1, "has no variants to pick from"),
])
def test_a_variant_the_row_does_not_have_is_a_400(row, number, told):
    with pytest.raises(BadRequest) as info:
        pick_changes(row, number)
    assert info.value.code == "bad_variant" and told in str(info.value)


@pytest.mark.parametrize("value", [0, 4, True, "1", 1.0, None])
def test_variant_must_be_a_whole_number_from_1_to_3(value):
    with pytest.raises(BadRequest):
        check_variant(value)


def test_the_grounding_counters_move_with_the_pick():
    counters = {"verified": 3, "generic": 1, "unsupported": 0, "flagged": {"x": 1}}
    assert move_grounding(counters, "verified", "generic") == {"verified": 2, "generic": 2, "unsupported": 0,
                                                               "flagged": {"x": 1}}
    assert move_grounding(counters, None, "verified")["verified"] == 4
