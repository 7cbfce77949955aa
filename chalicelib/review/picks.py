"""A person's pick of one of a row's variants (SPEC "variants"): ``PATCH {"variant": i}``.

A pick is not an edit: the row's opener, evidence, grounding, flags and words become those of
variant ``i`` (1-based, as the model wrote and the checks found them: no ``edited`` flag), and
the opener's source in its history is a person (``adapters.db.review.pick_variant``). The job's
quality counters move from the old opener's grounding, flags and words to the new one's. Picking
the variant already shown changes nothing.
"""

from __future__ import annotations

from chalicelib.errors import BadRequest

GROUNDINGS = ("verified", "generic", "unsupported")


def check_variant(value: object) -> int:
    """The variant asked for: a whole number from 1 (a row holds at most 3)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 3:
        raise BadRequest("variant must be a whole number from 1 to 3, the variant to pick", code="bad_variant")
    return value


def pick_changes(row: dict, number: int) -> dict:
    """The columns a pick of variant `number` sets on `row` (empty: it is already shown); 400
    ``bad_variant`` when the row has no such variant."""
    variants = row.get("variants") or []
    if not variants:
        raise BadRequest("This result has no variants to pick from (its job asked for one opener per row)",
                         code="bad_variant")
    if number > len(variants) or not isinstance(variants[number - 1], dict):
        raise BadRequest(f"This result has {len(variants)} variant(s); variant must be from 1 to {len(variants)}",
                         code="bad_variant")
    chosen = variants[number - 1]
    quality = [str(f) for f in chosen.get("quality") or ()]
    changes = {"opener": chosen.get("opener"), "evidence": chosen.get("evidence"),
               "grounding": chosen.get("grounding"), "quality": quality, "words": chosen.get("words"),
               "variant": number}
    same = all(row.get(k) == v for k, v in changes.items() if k != "quality") and list(row["quality"] or ()) == quality
    return {} if same else changes


def move_grounding(counters: dict, old: str | None, new: str | None) -> dict:
    """The job's grounding counters with one row's grounding replaced."""
    moved = dict(counters)
    if old in GROUNDINGS:
        moved[old] = int(moved.get(old, 0)) - 1
    if new in GROUNDINGS:
        moved[new] = int(moved.get(new, 0)) + 1
    return moved
