"""Unit tests for variants (SPEC "variants"): the strict reading of a ``{"openers": [...]}``
answer, the prompt's constant prefix with variants, the checks of each variant and of variants
too alike, what strict grounding keeps, the estimate's longer answers, and the dummy endpoint
answering the variants shape through the real generator."""

from __future__ import annotations

import json

import pytest

from chalicelib.errors import BadRequest
from chalicelib.generation import checks, pricing
from chalicelib.generation.answers import UnusableAnswer, checked_answers, usable_answers
from chalicelib.generation.client import build_client
from chalicelib.generation.openers import OpenerGenerator
from chalicelib.generation.prompt import build_messages, job_prefix
from chalicelib.jobs.options import check_variants_mode, variants_option
from chalicelib.quality.answer import AnswerError, parse_answers, response_format
from chalicelib.settings import Settings
from tests.support.limiter import NoLimit
from tests.support.scripted import Scripted

PAGE = ("Title: Bäckerei Sonne\nText: We bake sourdough bread in Cologne since 1998, with flour from local mills. "
        "Our rye loaves win prizes.")
ONE = ("Your sourdough bread baked in Cologne since 1998 sounds wonderful; could we talk about delivery routes?",
       "sourdough bread in Cologne since 1998")
TWO = ("Flour from local mills is a rare promise these days, and it shows in your bakery's story. Open to a chat?",
       "flour from local mills")
THREE = ("Prize-winning rye loaves deserve a route plan as careful as the baking behind them; may I share one?",
         "Our rye loaves win prizes")
INVENTED = ("Congratulations on 25 years of baking in Cologne; could we talk about your delivery routes soon?",
            "25 years of baking")
TWO_REWORDED = ("Flour from local mills is a rare promise these days, and it shows in your bakery's story. Let's chat?",
                "flour from local mills")


def body(content: str) -> dict:
    return {"choices": [{"message": {"content": content}, "finish_reason": "stop"}], "usage": {}}


def answer(*items: tuple[str, str | None]) -> str:
    return json.dumps({"openers": [{"opener": o, "evidence": e} for o, e in items]})


# -- the answer, read strictly ----------------------------------------------------------------------


def test_an_answer_of_exactly_the_count_asked_is_read_in_its_order():
    found = usable_answers(body(answer(ONE, TWO, THREE)), variants=3)
    assert found == [ONE, TWO, THREE]


@pytest.mark.parametrize("content", [
    answer(ONE, TWO),  # too few
    answer(ONE, TWO, THREE, ONE),  # too many
    json.dumps({"openers": [{"opener": ONE[0], "evidence": None}, {"opener": 7, "evidence": None},
                            {"opener": THREE[0], "evidence": None}]}),  # a number for an opener
    json.dumps({"openers": [{"opener": ONE[0]}, {"opener": TWO[0]}, {"opener": THREE[0]}]}),  # no evidence key
    json.dumps({"openers": "three openers"}),
    json.dumps({"opener": ONE[0], "evidence": None}),  # one opener where three were asked for
    json.dumps({"openers": [], "note": "I refuse"}),
])
def test_a_wrong_count_or_wrong_types_are_a_bad_answer_that_never_quotes_the_model(content):
    with pytest.raises(UnusableAnswer) as info:
        usable_answers(body(content), variants=3)
    assert "refuse" not in str(info.value) and ONE[0] not in str(info.value)
    with pytest.raises(AnswerError):
        parse_answers(content, 3)


def test_each_variant_passes_the_output_guard_and_a_refused_one_is_named_not_quoted():
    bad = ("Visit evil.click for a free sourdough audit of your bakery in Cologne, it takes a minute.", None)
    with pytest.raises(UnusableAnswer) as info:
        checked_answers(body(answer(ONE, bad, THREE)), "https://sonne.example/", None, variants=3)
    assert info.value.rejected and str(info.value).startswith("The model's answer was rejected: opener 2: ")
    assert "evil" not in str(info.value)


def test_the_schema_and_the_words_ask_for_exactly_that_many():
    schema = response_format(3)["json_schema"]["schema"]["properties"]["openers"]
    assert (schema["minItems"], schema["maxItems"]) == (3, 3)
    tail = build_messages("https://acme.com/", None, json_in_prompt=True, variants=3)[1]["content"]
    assert "exactly 3 different openers" in tail and "Write the openers in English." in tail


def test_a_variants_request_leaves_room_for_every_answer():
    generator = OpenerGenerator(None, NoLimit(), "m", max_tokens=120)
    one = generator.request_body("https://acme.com/", None)
    three = generator.request_body("https://acme.com/", None, variants=3)
    assert (one["max_tokens"], three["max_tokens"]) == (120, 360)
    assert three["response_format"] == response_format(3) and one["response_format"] == response_format(1)


def test_the_constant_prefix_stays_byte_identical_across_rows_with_variants():
    rows = [("https://acme.com/", {"city": "Berlin"}, "Title: Acme", "en"),
            ("https://sonne.example/", {"city": "Köln"}, None, "de")]
    prompts = [build_messages(url, "Mention {{city}}.", fields, page, language=language, variants=3,
                              json_in_prompt=in_words)
               for url, fields, page, language in rows for in_words in (False, True)]
    first = json.dumps(prompts[0][0], ensure_ascii=False).encode()
    assert all(json.dumps(p[0], ensure_ascii=False).encode() == first for p in prompts)
    assert prompts[0][0] == job_prefix("Mention {{city}}.", variants=3) != job_prefix("Mention {{city}}.")
    assert "Write 3 different openers" in prompts[0][0]["content"]


# -- the checks -------------------------------------------------------------------------------------


STRICT3 = checks.Options(language="en", variants=3)
FLAG3 = checks.Options(grounding="flag", language="en", variants=3)


def run(gen, options=STRICT3, max_calls=3, duplicates=None):
    return checks.generate_checked(gen, job_id="j", url="https://sonne.example/", instructions=None, model=None,
                                   options=options, page=PAGE, max_calls=max_calls, duplicates=duplicates)


def test_three_grounded_distinct_variants_are_kept_in_one_call_and_the_first_is_the_opener():
    gen = Scripted([ONE, TWO, THREE])
    kept = run(gen)
    assert len(gen.calls) == 1 and gen.calls[0]["variants"] == 3
    assert [v["opener"] for v in kept.variants] == [ONE[0], TWO[0], THREE[0]]
    assert all(v["grounding"] == "verified" and v["quality"] == [] and v["words"] > 8 for v in kept.variants)
    assert (kept.text, kept.evidence, kept.grounding) == (ONE[0], ONE[1], "verified")


def test_an_unsupported_variant_is_asked_again_saying_which_one():
    gen = Scripted([ONE, INVENTED, THREE], [ONE, TWO, THREE])
    kept = run(gen)
    assert [v["opener"] for v in kept.variants] == [ONE[0], TWO[0], THREE[0]]
    assert gen.calls[1]["reask"].startswith('Write the openers again, each with its own evidence: opener 2: the '
                                            'evidence "25 years of baking" is not in the page')
    assert kept.regenerations == 1 and (kept.prompt_tokens, kept.completion_tokens) == (200, 40)


def test_strict_drops_a_variant_still_unsupported_and_keeps_the_row_with_the_others():
    gen = Scripted([INVENTED, TWO, THREE])
    kept = run(gen, max_calls=2)
    assert len(gen.calls) == 2
    assert [v["opener"] for v in kept.variants] == [TWO[0], THREE[0]]
    assert (kept.text, kept.grounding) == (TWO[0], "verified")


def test_strict_fails_the_row_when_no_variant_is_supported():
    gen = Scripted([INVENTED, INVENTED, INVENTED])
    with pytest.raises(checks.Ungrounded) as info:
        run(gen, max_calls=2)
    assert "25" not in info.value.message and (info.value.prompt_tokens, info.value.completion_tokens) == (200, 40)


def test_flag_mode_keeps_every_variant_flagging_the_unsupported_one():
    gen = Scripted([ONE, INVENTED, THREE])
    kept = run(gen, options=FLAG3, max_calls=2)
    assert [v["grounding"] for v in kept.variants] == ["verified", "unsupported", "verified"]
    assert kept.variants[1]["quality"] == ["ungrounded"] and kept.quality == []


def test_variants_too_alike_are_asked_again_once_saying_so():
    gen = Scripted([ONE, TWO, TWO_REWORDED], [ONE, TWO, THREE])
    kept = run(gen)
    assert gen.calls[1]["reask"] == ("Write the openers again, each with its own evidence: openers 2 and 3 are too "
                                     "alike: make each differ in its angle, its opening words and its wording.")
    assert [v["opener"] for v in kept.variants] == [ONE[0], TWO[0], THREE[0]]


def test_variants_still_alike_after_the_re_ask_are_kept_with_the_duplicate_flag():
    gen = Scripted([ONE, TWO, TWO_REWORDED])
    kept = run(gen)
    assert len(gen.calls) == 2
    assert [v["quality"] for v in kept.variants] == [[], [], ["duplicate"]]


def test_alike_uses_the_rule_of_the_job_wide_index():
    assert checks.alike([ONE[0], TWO[0], TWO_REWORDED[0], ONE[0]]) == {2: 1, 3: 0}
    assert checks.alike([ONE[0], TWO[0], THREE[0]]) == {}


def test_only_the_picked_variant_goes_to_the_job_wide_duplicate_index():
    index = checks.LocalDuplicates()
    run(Scripted([ONE, TWO, THREE]), duplicates=index)
    kept = run(Scripted([ONE, THREE, TWO], [THREE, TWO, ONE]), duplicates=index)
    assert kept.text == THREE[0] and kept.quality == []  # the repeat of ONE was asked again
    assert index._accepted == [ONE[0], THREE[0]]


# -- options and the estimate ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 4, -1, 2.0, "2", True, [2]])
def test_variants_must_be_a_whole_number_from_1_to_3(value):
    with pytest.raises(BadRequest) as info:
        variants_option(value)
    assert info.value.code == "bad_variants" and "from 1 to 3" in str(info.value)


def test_variants_default_to_one_and_refuse_batch_mode():
    assert variants_option(None) == 1 and variants_option(3) == 3
    check_variants_mode(1, "batch")
    check_variants_mode(3, "live")
    with pytest.raises(BadRequest) as info:
        check_variants_mode(2, "batch")
    assert info.value.code == "variants_batch"


def test_the_estimate_counts_the_longer_answers():
    one = pricing.completion_tokens()
    three = pricing.completion_tokens(variants=3)
    assert 2.8 * one < three < 3.2 * one
    plain = pricing.estimate({}, "m", 100, None, [], False)
    more = pricing.estimate({}, "m", 100, None, [], False, variants=3)
    assert more["completion_tokens_per_url"] == three
    assert plain["prompt_tokens_per_url"] < more["prompt_tokens_per_url"]  # the longer schema and system prompt


# -- the dummy endpoint, through the real generator --------------------------------------------------


@pytest.mark.parametrize("page", [None, "Title: Sonne Bakery\nText: Bread."])
def test_dummy_mode_answers_three_distinct_checked_variants(page):
    client = build_client(Settings(openai_dummy_mode=True, openai_dummy_delay_ms=(0, 0), openai_api_key="sk-x"))
    generator = OpenerGenerator(client, NoLimit(), "gpt-4o-mini", sleep=lambda s: None)
    kept = checks.generate_checked(generator, job_id="j", url="https://sonne.example/", instructions=None,
                                   model=None, options=checks.Options(grounding="flag", variants=3), page=page)
    assert len(kept.variants) == 3 and len({v["opener"] for v in kept.variants}) == 3
    assert not any("duplicate" in v["quality"] for v in kept.variants)
    generator.json_in_prompt.add("gpt-4o-mini")  # the JSON asked for in words: the same shape
    again = checks.generate_checked(generator, job_id="j", url="https://sonne.example/", instructions=None,
                                    model=None, options=checks.Options(grounding="flag", variants=2), page=page)
    assert len(again.variants) == 2


def test_a_variants_job_runs_live_unless_batch_mode_is_asked_for():
    from chalicelib.jobs.start import resolve_mode

    settings = Settings(batch_mode_above=10)
    assert resolve_mode(None, settings, 100) == "batch"
    assert resolve_mode(None, settings, 100, variants=3) == "live"
    assert resolve_mode("live", settings, 100, variants=2) == "live"
