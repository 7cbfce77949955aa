"""Unit tests for chalicelib.generation.checks: which answers are asked for again, how often,
what the re-ask says, and what a row keeps (strict and flag modes). The generator is scripted
(the answers a model would give, in order); the duplicate index is the real one in
tests/integration/generation/test_quality_worker.py."""

from __future__ import annotations

import pytest
import redis

from chalicelib.generation import checks
from chalicelib.generation.answers import Opener

PAGE = "Title: Bäckerei Sonne\nText: We bake sourdough bread in Cologne since 1998, with flour from local mills."
GOOD = "Your sourdough bread baked in Cologne since 1998 sounds wonderful; could we talk about delivery routes?"
EVIDENCE = "sourdough bread in Cologne since 1998"
INVENTED = "Congratulations on 25 years of baking in Cologne; could we talk about your delivery routes soon?"
LONG = " ".join(["Your sourdough bread baked in Cologne since 1998 sounds wonderful"] * 8) + "."
SPAM = "Act now!!! Limited time offer on sourdough bread in Cologne, guaranteed results for your bakery."


class Scripted:
    """Answers in order; records what each call was told (``reask``) and asked (``language``)."""

    def __init__(self, *answers: tuple[str, str | None]) -> None:
        self.answers = list(answers)
        self.calls: list[dict] = []

    def generate(self, url, instructions=None, model=None, should_stop=lambda: False, account=None, **data):
        self.calls.append(data)
        text, evidence = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return Opener(text=text, prompt_tokens=100, completion_tokens=20, attempts=1, evidence=evidence)


ENGLISH = checks.Options(language="en")


def run(gen, options=ENGLISH, page=PAGE, fields=None, duplicates=None, max_calls=3, url="https://sonne.example/"):
    return checks.generate_checked(gen, job_id="j", url=url, instructions=None, model=None,
                                   options=options, fields=fields, page=page, duplicates=duplicates,
                                   max_calls=max_calls)


def test_a_grounded_clean_opener_is_kept_at_the_first_call():
    gen = Scripted((GOOD, EVIDENCE))
    kept = run(gen)
    assert (kept.text, kept.evidence, kept.grounding, kept.quality) == (GOOD, EVIDENCE, "verified", [])
    assert kept.regenerations == 0 and len(gen.calls) == 1 and gen.calls[0]["reask"] is None


def test_an_invented_fact_is_asked_again_saying_what_was_not_found_and_counted():
    gen = Scripted((INVENTED, "25 years of baking"), (GOOD, EVIDENCE))
    kept = run(gen)
    assert kept.text == GOOD and kept.grounding == "verified" and kept.regenerations == 1
    assert (kept.prompt_tokens, kept.completion_tokens) == (200, 40)  # both calls count
    reask = gen.calls[1]["reask"]
    assert reask.startswith("Write the opener again: the evidence \"25 years of baking\" is not in the page")
    assert "these figures are not in the source: 25" in reask


def test_strict_fails_the_row_after_max_calls_without_quoting_the_model():
    gen = Scripted((INVENTED, "25 years of baking"))
    with pytest.raises(checks.Ungrounded) as info:
        run(gen, max_calls=3)
    assert len(gen.calls) == 3
    assert info.value.message.startswith("ungrounded: ") and "25" not in info.value.message


def test_flag_mode_keeps_an_ungrounded_opener_with_its_flag():
    gen = Scripted((INVENTED, "25 years of baking"))
    kept = run(gen, options=checks.Options(grounding="flag", language="en"), max_calls=2)
    assert kept.text == INVENTED and kept.grounding == "unsupported" and kept.quality == ["ungrounded"]
    assert kept.regenerations == 1 and len(gen.calls) == 2


@pytest.mark.parametrize(("bad", "flag", "told"), [
    (LONG, "too_long", "shorter: at most 40 words"),
    (SPAM, "spammy", "no sales language"),
    ("Ihr Sauerteigbrot aus Köln klingt wunderbar, und wir würden gern mit Ihnen über Lieferungen sprechen.",
     "wrong_language", "write it in English"),
])
def test_a_flagged_opener_is_asked_again_once_told_what_to_avoid(bad, flag, told):
    gen = Scripted((bad, EVIDENCE), (GOOD, EVIDENCE))
    kept = run(gen)
    assert kept.text == GOOD and kept.quality == [] and kept.regenerations == 1
    assert told in gen.calls[1]["reask"]


def test_a_flag_that_stays_after_its_one_reask_is_kept():
    gen = Scripted((LONG, EVIDENCE))
    kept = run(gen)
    assert kept.quality == ["too_long"] and len(gen.calls) == 2 and kept.words > 40


def test_a_generic_opener_is_asked_again_only_when_the_row_has_something_specific():
    generic = "I came across your bakery and liked how clearly you explain what you do every single day."
    with_page = Scripted((generic, None), (GOOD, EVIDENCE))
    assert run(with_page).text == GOOD and "specific" in with_page.calls[1]["reask"]
    without = Scripted((generic, None))
    kept = run(without, page=None)
    assert kept.grounding == "generic" and kept.quality == ["generic"] and len(without.calls) == 1


class Index:
    """The duplicate index's contract in a dict (first-come wins; stores what it accepts)."""

    def __init__(self, taken: str) -> None:
        self.accepted = [taken]

    def check_and_add(self, job_id, opener):
        if opener in self.accepted:
            return opener
        self.accepted.append(opener)
        return None


def test_a_duplicate_is_asked_again_with_the_line_it_repeats_then_flagged_if_it_stays():
    index = Index(GOOD)
    other = "Sourdough bread in Cologne since 1998 is a fine tradition; may I show you our delivery planner?"
    gen = Scripted((GOOD, EVIDENCE), (other, EVIDENCE))
    kept = run(gen, duplicates=index)
    assert kept.text == other and kept.quality == [] and f"do not repeat: {GOOD}" in gen.calls[1]["reask"]
    stuck = Scripted((GOOD, EVIDENCE))
    kept = run(stuck, duplicates=index)
    assert kept.quality == ["duplicate"] and len(stuck.calls) == 2


def test_a_duplicate_of_a_row_with_no_source_is_flagged_without_a_call_more():
    """Nothing specific to ask for (no page, no fields): a second line would be as generic."""
    generic = "I came across your bakery and liked how clearly you explain what you do every single day."
    stuck = Scripted((generic, None))
    kept = run(stuck, page=None, duplicates=Index(generic))
    assert kept.quality == ["duplicate", "generic"] and len(stuck.calls) == 1 and kept.regenerations == 0


def test_language_auto_is_the_pages_declared_else_detected_else_english():
    auto = checks.Options()
    assert checks.row_language(auto, PAGE, declared="de-AT") == "de"
    german = "Title: Bäckerei\nText: Wir backen seit vielen Jahren jeden Morgen frisches Brot mit Mehl aus der Region."
    assert checks.row_language(auto, german) == "de"
    assert checks.row_language(auto, None) == "en"
    assert checks.row_language(checks.Options(language="fr"), german, declared="de") == "fr"


def test_the_prospects_own_domain_is_no_claim_even_with_digits_in_it():
    line = "Came across www.b5-331950.example.com and liked how clearly it explains what you do for your customers."
    gen = Scripted((line, None))
    kept = run(gen, page=None, url="https://b5-331950.example.com/")
    assert (kept.grounding, kept.quality, len(gen.calls)) == ("generic", ["generic"], 1)
    invented = Scripted(("Came across b5-331950.example.com, and 331950 happy customers is a lot to be proud of.",
                         None))
    with pytest.raises(checks.Ungrounded):  # the same digits as a figure of their own are a claim
        run(invented, page=None, url="https://b5-331950.example.com/")


class FlakyIndex:
    """An index whose Redis is down for the first `down` calls."""

    def __init__(self, down: int) -> None:
        self.down, self.calls = down, 0

    def check_and_add(self, job_id, opener):
        self.calls += 1
        if self.calls <= self.down:
            raise redis.exceptions.ConnectionError("Connection refused")
        return "the line it repeats"


def test_an_index_that_comes_back_is_asked_again_and_one_that_stays_down_keeps_the_opener():
    back = FlakyIndex(down=1)
    assert checks._repeats(back, "job", "an opener", attempts=3) == "the line it repeats" and back.calls == 2
    gone = FlakyIndex(down=10)
    assert checks._repeats(gone, "job", "an opener", attempts=2) is None and gone.calls == 2  # kept, not failed
