"""Unit tests pinning that a lone opener and a row's variants go through the one loop of
``checks.generate_checked`` with the same re-ask rules: a flagged opener asked again once, strict
grounding exhausting ``max_calls``, a job-wide duplicate asked again once. Every test runs for
both shapes (``variants`` 1 and 3); only the wording of the re-ask differs (one opener, or the
openers numbered), and a lone opener is asked as ``{"opener", "evidence"}`` (no ``variants``)."""

from __future__ import annotations

import pytest

from chalicelib.generation import checks
from tests.support.scripted import Scripted

PAGE = ("Title: Bäckerei Sonne\nText: We bake sourdough bread in Cologne since 1998, with flour from local mills. "
        "Our rye loaves win prizes.")
GOOD = "Your sourdough bread baked in Cologne since 1998 sounds wonderful; could we talk about delivery routes?"
EVIDENCE = "sourdough bread in Cologne since 1998"
OTHER = ("Sourdough bread in Cologne since 1998 is a fine tradition; may I show you our delivery planner?", EVIDENCE)
FILLERS = (("Flour from local mills is a rare promise these days, and it shows in your bakery's story. Open to a "
            "chat?", "flour from local mills"),
           ("Prize-winning rye loaves deserve a route plan as careful as the baking behind them; may I share one?",
            "Our rye loaves win prizes"))
LONG = " ".join(["Your sourdough bread baked in Cologne since 1998 sounds wonderful"] * 8) + "."
INVENTED = ("Congratulations on 25 years of baking in Cologne; could we talk about your delivery routes soon?",
            "25 years of baking")
ALL_INVENTED = (INVENTED,
                ("Your 40 shops across Germany must keep the vans busy; may I show you a planner for the routes?",
                 "40 shops across Germany"),
                ("Winning 12 national prizes for rye is remarkable; could a route plan help your loaves travel "
                 "further?", "12 national prizes"))
HEAD = {1: "Write the opener again: ", 3: "Write the openers again, each with its own evidence: opener 1: "}
SHAPES = pytest.mark.parametrize("n", [1, 3])


def answer(n: int, first: tuple[str, str | None], rest=FILLERS) -> list[tuple[str, str | None]]:
    """A row's answer of ``n`` openers: ``first``, then distinct grounded ones."""
    return [first, *rest][:n]


class Index:
    """The duplicate index's contract in a list (first-come wins; stores what it accepts)."""

    def __init__(self, *taken: str) -> None:
        self.accepted = list(taken)

    def check_and_add(self, job_id, opener):
        if opener in self.accepted:
            return opener
        self.accepted.append(opener)
        return None


def run(gen, n, grounding="strict", max_calls=3, duplicates=None):
    options = checks.Options(grounding=grounding, language="en", variants=n)
    return checks.generate_checked(gen, job_id="j", url="https://sonne.example/", instructions=None, model=None,
                                   options=options, page=PAGE, max_calls=max_calls, duplicates=duplicates)


@SHAPES
def test_the_answer_asked_for_is_one_opener_or_that_many(n):
    gen = Scripted(answer(n, (GOOD, EVIDENCE)))
    kept = run(gen, n)
    assert gen.calls[0].get("variants") == (None if n == 1 else 3) and gen.calls[0]["reask"] is None
    assert (kept.text, kept.quality, kept.regenerations) == (GOOD, [], 0)
    assert (kept.variants is None) == (n == 1)


@SHAPES
def test_a_flagged_opener_is_asked_again_once_then_kept_with_its_flag(n):
    fixed = Scripted(answer(n, (LONG, EVIDENCE)), answer(n, (GOOD, EVIDENCE)))
    kept = run(fixed, n)
    assert fixed.calls[1]["reask"] == HEAD[n] + "shorter: at most 40 words."
    assert (kept.text, kept.quality, kept.regenerations) == (GOOD, [], 1)
    stuck = Scripted(answer(n, (LONG, EVIDENCE)))
    kept = run(stuck, n)
    assert len(stuck.calls) == 2 and (kept.text, kept.quality, kept.regenerations) == (LONG, ["too_long"], 1)
    assert (kept.prompt_tokens, kept.completion_tokens) == (200, 40)


@SHAPES
def test_strict_grounding_asks_up_to_max_calls_then_fails_the_row_counting_every_call(n):
    gen = Scripted(answer(n, INVENTED, ALL_INVENTED[1:]))
    with pytest.raises(checks.Ungrounded) as info:
        run(gen, n, max_calls=3)
    assert len(gen.calls) == 3 and info.value.message == checks.UNGROUNDED_MESSAGE.format(calls=3)
    assert (info.value.prompt_tokens, info.value.completion_tokens, info.value.attempts) == (300, 60, 3)
    assert all(call["reask"].startswith(HEAD[n] + 'the evidence "25 years of baking" is not in the page')
               for call in gen.calls[1:])


@SHAPES
def test_flag_grounding_keeps_the_unsupported_opener_after_max_calls_without_a_flag_reask(n):
    gen = Scripted(answer(n, (INVENTED[0] + "!!", INVENTED[1]), ALL_INVENTED[1:]))  # spammy too
    kept = run(gen, n, grounding="flag", max_calls=2)
    assert len(gen.calls) == 2 and kept.regenerations == 1
    assert (kept.grounding, kept.quality) == ("unsupported", ["spammy", "ungrounded"])


@SHAPES
def test_a_duplicate_is_asked_again_once_told_the_line_it_repeats(n):
    fixed = Scripted(answer(n, (GOOD, EVIDENCE)), answer(n, OTHER))
    index = Index(GOOD)
    kept = run(fixed, n, duplicates=index)
    assert fixed.calls[1]["reask"] == HEAD[n] + f"do not repeat: {GOOD}."
    assert (kept.text, kept.quality) == (OTHER[0], []) and index.accepted == [GOOD, OTHER[0]]
    stuck = Scripted(answer(n, (GOOD, EVIDENCE)))
    kept = run(stuck, n, duplicates=index)
    assert len(stuck.calls) == 2 and kept.quality == ["duplicate"]


@SHAPES
def test_no_duplicate_reask_once_the_flag_reask_is_spent(n):
    gen = Scripted(answer(n, (LONG, EVIDENCE)), answer(n, (GOOD, EVIDENCE)))
    kept = run(gen, n, duplicates=Index(GOOD))
    assert len(gen.calls) == 2 and (kept.text, kept.quality) == (GOOD, ["duplicate"])


@SHAPES
def test_a_duplicate_reask_after_grounding_ran_out_says_only_the_repeat(n):
    """Flag mode: grounding spent its ``max_calls``; the duplicate still gets its one re-ask (a call
    more), and it names the repeat only (a lone opener's re-ask used to repeat the grounding
    complaint too: one rule for both shapes now, the variants' one)."""
    gen = Scripted(answer(n, INVENTED, ALL_INVENTED[1:]))
    kept = run(gen, n, grounding="flag", max_calls=2, duplicates=Index(INVENTED[0]))
    assert len(gen.calls) == 3 and gen.calls[2]["reask"] == HEAD[n] + f"do not repeat: {INVENTED[0]}."
    assert (kept.grounding, kept.quality, kept.regenerations) == ("unsupported", ["duplicate", "ungrounded"], 2)
