"""A row's variants checked (SPEC "variants"): a job asking for 2 or 3 openers per row gets them
in one call, each checked as a lone opener is, and the row keeps them all.

Each variant goes through grounding and the flags (word limits, spam, language, generic) as in
``checks``; two variants of one row that are too alike (the rule the job-wide duplicate index
applies across rows, ``quality.duplicates.is_near_duplicate``) count as a flag of the later one.
What is asked again is the whole answer (one call always brings every variant):

1. a variant unsupported by the row's source: asked again, up to ``max_calls`` calls in all,
   saying which variant rested on what;
2. then, once, flags (a generic one only when the row has a source) or alike variants, saying
   which variant to fix and which ones are too alike.

What is kept: with grounding ``flag`` every variant, an unsupported one flagged ``ungrounded``;
with ``strict`` the supported ones only, so a row may keep fewer variants than asked for (a user
picking among openers expects each to be safe to send, and one bad variant should not cost the
row the good ones); the row fails (``Ungrounded``) only when none is supported. A variant still
too alike an earlier one after the re-ask is kept with the ``duplicate`` flag.

The row's opener, evidence, grounding, flags and words are those of its first kept variant
(what is sent until a person picks another); that one alone goes to the job-wide duplicate
index, as a lone opener would (a repeat is asked again if the one re-ask was not spent).
"""

from __future__ import annotations

from collections.abc import Callable

from chalicelib.generation.answers import Opener
from chalicelib.generation.checks import (
    STRICT,
    Checked,
    Options,
    Row,
    duplicate_position,
    only,
    ungrounded,
    verdict,
)
from chalicelib.quality import flags as quality_flags
from chalicelib.quality.duplicates import is_near_duplicate

ALIKE_REASK = "openers {a} and {b} are too alike: make each differ in its angle, its opening words and its wording"


def alike(texts: list[str]) -> dict[int, int]:
    """{index: the earlier index it is too alike} of a row's variants (0-based)."""
    found: dict[int, int] = {}
    for later in range(1, len(texts)):
        earlier = next((i for i in range(later) if is_near_duplicate(texts[later], texts[i])), None)
        if earlier is not None:
            found[later] = earlier
    return found


def reask_message(parts: dict[int, list[str]], repeats: dict[int, int]) -> str | None:
    """One message asking for every opener again: what to fix in each (1-based), which are too alike."""
    said = [f"opener {i + 1}: {'; '.join(p)}" for i, p in sorted(parts.items()) if p]
    said += [ALIKE_REASK.format(a=b + 1, b=a + 1) for a, b in sorted(repeats.items())]
    return "Write the openers again, each with its own evidence: " + "; ".join(said) + "." if said else None


def checked_variants(ask: Callable[[str | None], Opener], row: Row, options: Options, total: dict, *,
                     max_calls: int, repeats: Callable[[str], str | None]) -> Checked:
    """The row's variants, checked (see the module docstring). ``ask(reask)`` makes one call (its
    tokens summed in ``total``); ``repeats(text)``: the job-wide duplicate index's verdict."""
    reasked = False
    reask: str | None = None
    reasks: list[str] = []
    while True:
        opener = ask(reask)
        calls = total["calls"]
        items = list(opener.variants) or [(opener.text, opener.evidence)]
        seen = [verdict(row, options, text, evidence) for text, evidence in items]
        unsupported = {i for i, (found, _) in enumerate(seen) if not found.ok}
        if unsupported and calls < max_calls:
            reask = reask_message({i: quality_flags.reask_parts(seen[i][0], seen[i][1]) for i in unsupported}, {})
            reasks.append(reask or "")
            continue
        kept = [i for i in range(len(items)) if not (options.grounding == STRICT and i in unsupported)]
        if not kept:
            raise ungrounded(total)
        flagged = {i: [f for f in seen[i][1].flags if row.has_source or f != quality_flags.GENERIC] for i in kept}
        too_alike = {kept[later]: kept[earlier] for later, earlier in alike([items[k][0] for k in kept]).items()}
        if not unsupported and not reasked and calls <= max_calls and (any(flagged.values()) or too_alike):
            reasked = True
            reask = reask_message({i: quality_flags.reask_parts(None, only(seen[i][1], f))
                                   for i, f in flagged.items()}, too_alike)
            reasks.append(reask or "")
            continue
        chosen = kept[0]
        repeated = repeats(items[chosen][0])
        if repeated is not None and row.has_source and not reasked and calls <= max_calls:
            reasked = True
            checked = verdict(row, options, *items[chosen], duplicate_of=repeated)[1]
            reask = reask_message({chosen: quality_flags.reask_parts(None, checked)}, {})
            reasks.append(reask or "")
            continue
        kept_variants = []
        for i in kept:
            found, checked = seen[i]
            quality = list(checked.flags)
            if i in too_alike or (i == chosen and repeated is not None):
                quality.insert(duplicate_position(quality), quality_flags.DUPLICATE)
            if not found.ok:
                quality.append(quality_flags.UNGROUNDED)
            kept_variants.append({"opener": items[i][0], "evidence": items[i][1], "grounding": found.status,
                                  "quality": quality, "words": checked.words})
        first = kept_variants[0]
        return Checked(first["opener"], first["evidence"], first["grounding"], first["quality"], first["words"],
                       row.language, regenerations=calls - 1, prompt_tokens=total["prompt"],
                       completion_tokens=total["completion"], attempts=total["attempts"],
                       cached_tokens=total["cached"], reasks=reasks, variants=kept_variants)
