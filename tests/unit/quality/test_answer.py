"""The structured answer: the schema sent as response_format, the strict parser for answers to
it, and the lenient parser for servers that refused it. A model's answer is untrusted input."""

from __future__ import annotations

import json

import pytest

from chalicelib.quality.answer import (
    MAX_EVIDENCE_CHARS,
    MAX_OPENER_CHARS,
    Answer,
    AnswerError,
    json_instruction,
    parse_answer,
    parse_answers,
    parse_lenient,
    parse_lenient_answers,
    refuses_response_format,
    response_format,
)

OPENER = "Loved how Bäckerei Müller bakes its rye with flour from the farm next door."
EVIDENCE = "rye baked with flour from the farm next door"
SECRET = "SECRET-MODEL-TEXT"


def test_response_format_is_a_strict_json_schema_with_nullable_evidence():
    rf = response_format()
    assert rf["type"] == "json_schema"
    spec = rf["json_schema"]
    assert spec["strict"] is True and spec["name"]
    schema = spec["schema"]
    # Strict structured outputs require every property listed and no others.
    assert schema["required"] == ["opener", "evidence"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["opener"]["type"] == "string"
    assert schema["properties"]["evidence"]["type"] == ["string", "null"]


def test_response_format_for_variants_wraps_the_same_answer_in_a_list():
    schema = response_format(3)["json_schema"]["schema"]
    assert schema["required"] == ["openers"] and schema["additionalProperties"] is False
    assert schema["properties"]["openers"]["items"] == response_format()["json_schema"]["schema"]
    assert schema["properties"]["openers"]["minItems"] == schema["properties"]["openers"]["maxItems"] == 3
    with pytest.raises(ValueError):
        response_format(4)


def test_strict_parse_reads_the_schema():
    assert parse_answer(json.dumps({"opener": OPENER, "evidence": EVIDENCE})) == Answer(OPENER, EVIDENCE)
    assert parse_answer(json.dumps({"opener": OPENER, "evidence": None})) == Answer(OPENER, None)
    assert parse_answer(json.dumps({"opener": OPENER, "evidence": "   "})) == Answer(OPENER, None)


@pytest.mark.parametrize(("content", "reason"), [
    ("", "empty"),
    (None, "empty"),
    ("Loved your bakery.", "not_json"),
    ('{"opener": "x", "evidence": null', "not_json"),
    ("[1, 2]", "not_an_object"),
    ('{"opener": "Loved it", "evidence": null, "extra": 1}', "unexpected_keys"),
    ('{"opener": "Loved it"}', "unexpected_keys"),
    ('{"opener": 42, "evidence": null}', "opener_not_text"),
    ('{"opener": ["a"], "evidence": null}', "opener_not_text"),
    ('{"opener": "  ", "evidence": null}', "opener_empty"),
    ('{"opener": "Loved it", "evidence": {"a": 1}}', "evidence_not_text"),
])
def test_strict_parse_refuses_what_is_not_the_schema(content, reason):
    with pytest.raises(AnswerError) as caught:
        parse_answer(content)
    assert caught.value.reason == reason


def test_lengths_are_limited_and_the_error_never_quotes_the_model():
    too_long = SECRET + "x" * MAX_OPENER_CHARS
    with pytest.raises(AnswerError) as caught:
        parse_answer(json.dumps({"opener": too_long, "evidence": None}))
    assert caught.value.reason == "opener_too_long" and SECRET not in str(caught.value)
    with pytest.raises(AnswerError) as caught:
        parse_answer(json.dumps({"opener": OPENER, "evidence": SECRET + "e" * MAX_EVIDENCE_CHARS}))
    assert caught.value.reason == "evidence_too_long" and SECRET not in str(caught.value)
    # Exactly at the limit is fine.
    assert len(parse_answer(json.dumps({"opener": "o" * MAX_OPENER_CHARS, "evidence": None})).opener) == 600


@pytest.mark.parametrize("content", [
    SECRET, "{" + SECRET, json.dumps({"opener": SECRET, "evidence": None, "x": 1}),
    json.dumps({"opener": 7, "evidence": SECRET}), json.dumps([SECRET]),
])
def test_no_error_message_holds_the_models_text(content):
    with pytest.raises(AnswerError) as caught:
        parse_answer(content)
    assert SECRET not in str(caught.value) and SECRET not in caught.value.message


def test_control_and_invisible_characters_are_removed():
    raw = "Loved\x00 your\u202e bakery\u200b in\r\nBerlin\x1b[31m today\x7f."
    answer = parse_answer(json.dumps({"opener": raw, "evidence": "in\tBerlin\u2066"}))
    assert answer.opener == "Loved your bakery in Berlin[31m today."
    assert answer.evidence == "in Berlin"


def test_variants_must_be_exactly_as_many_as_asked():
    items = [{"opener": f"{OPENER} {i}", "evidence": None} for i in range(3)]
    assert [a.opener for a in parse_answers(json.dumps({"openers": items}), 3)] == [i["opener"] for i in items]
    with pytest.raises(AnswerError) as caught:
        parse_answers(json.dumps({"openers": items[:2]}), 3)
    assert caught.value.reason == "wrong_count"
    with pytest.raises(AnswerError):
        parse_answers(json.dumps({"openers": items, "note": "x"}), 3)


@pytest.mark.parametrize("content", [
    json.dumps({"opener": OPENER, "evidence": EVIDENCE}),
    f"```json\n{json.dumps({'opener': OPENER, 'evidence': EVIDENCE})}\n```",
    f"Sure! Here is the JSON you asked for:\n{json.dumps({'opener': OPENER, 'evidence': EVIDENCE})}\nHope it helps.",
    f"Here it is {{not json}} and then ```\n{json.dumps({'opener': OPENER, 'evidence': EVIDENCE})}\n```",
    json.dumps({"openers": [{"opener": OPENER, "evidence": EVIDENCE}]}),
])
def test_lenient_parse_finds_the_json_in_prose_or_a_fence(content):
    assert parse_lenient(content) == Answer(OPENER, EVIDENCE)


def test_lenient_parse_takes_a_bare_sentence_as_the_opener_without_evidence():
    assert parse_lenient(f"  “{OPENER}”\n") == Answer(OPENER, None)
    assert parse_lenient(OPENER) == Answer(OPENER, None)


def test_lenient_parse_still_checks_types_and_lengths():
    with pytest.raises(AnswerError) as caught:
        parse_lenient("Here: " + json.dumps({"opener": 5, "evidence": None}))
    assert caught.value.reason == "opener_not_text"
    with pytest.raises(AnswerError) as caught:
        parse_lenient("x" * (MAX_OPENER_CHARS + 1))
    assert caught.value.reason == "opener_too_long"
    with pytest.raises(AnswerError) as caught:  # broken JSON is not a sentence to send
        parse_lenient('{"opener": "Loved your bakery", "evidence": ')
    assert caught.value.reason == "not_json"


def test_lenient_variants_from_a_list_or_an_object():
    items = [{"opener": f"{OPENER} {i}", "evidence": None} for i in range(2)]
    assert len(parse_lenient_answers("Here:\n" + json.dumps(items), 2)) == 2
    assert len(parse_lenient_answers(json.dumps({"openers": items}), 2)) == 2
    with pytest.raises(AnswerError):
        parse_lenient_answers(json.dumps({"openers": items[:1]}), 2)


def test_the_fallback_asks_for_the_same_json_in_words():
    assert '"opener"' in json_instruction() and '"evidence"' in json_instruction()
    assert "exactly 2" in json_instruction(2) and '"openers"' in json_instruction(2)


@pytest.mark.parametrize(("status", "message", "refused"), [
    (400, "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.", True),
    (400, "Unrecognized request argument supplied: response_format", True),
    (400, "This model's maximum context length is 8192 tokens.", False),
    (500, "response_format failed", False),
    (400, None, False),
])
def test_a_400_naming_response_format_means_the_server_refuses_it(status, message, refused):
    assert refuses_response_format(status, message) is refused
