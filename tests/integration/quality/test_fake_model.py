"""The checks against the project's fake OpenAI server (tests/support/fake_openai), driven by the
real openai SDK: our response_format passes its strict-schema check and its answers parse; its
refusal of response_format is recognised and the JSON-in-words fallback parses; and each way its
first answer misbehaves (invent, repeat, long, spam, wrong_language, no_json) is caught, while
the re-asked answer passes every check. Duplicates use the real Redis of `make test`."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import openai
import pytest
import redis

from chalicelib.quality import flags, grounding
from chalicelib.quality.answer import (
    AnswerError,
    json_instruction,
    parse_answer,
    parse_answers,
    parse_lenient,
    parse_lenient_answers,
    refuses_response_format,
    response_format,
)
from chalicelib.quality.duplicates import DuplicateIndex, is_near_duplicate
from tests.support.fake_openai import FakeOpenAI
from tests.support.teststack import require_test_stack

SYSTEM = "You write one-sentence cold outreach openers, in English, from the prospect's own words."


def page_of(name: str) -> str:
    return (f"{name} bakes sourdough bread in Cologne since 1998, with flour from local mills.\n"
            f"{name} delivers to cafés before 7am.")


def messages(url: str, page: str, fields: dict[str, str], steer: str = "") -> list[dict[str, str]]:
    """Laid out as the app lays a prompt out: the row and the page in their data blocks."""
    row = "\n".join(f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in fields.items())
    parts = [f"Prospect URL: {url}", f"<prospect_data>\n{row}\n</prospect_data>", f"<page>\n{page}\n</page>"]
    parts += [steer] if steer else []
    user = "\n\n".join([*parts, "Write the opener."])
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def sdk(fake) -> openai.OpenAI:
    fake.reset()
    return openai.OpenAI(base_url=fake.base_url, api_key="x", max_retries=0, timeout=10)


@pytest.fixture
def index() -> Iterator[DuplicateIndex]:
    require_test_stack()
    prefix = f"{os.environ['RATELIMIT_PREFIX']}:test:dup-fake:{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    yield DuplicateIndex(client, prefix=prefix)
    keys = list(client.scan_iter(match=f"{{{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def ask(sdk: openai.OpenAI, msgs: list[dict[str, str]], **kwargs) -> str:
    content = sdk.chat.completions.create(model="m", messages=msgs, **kwargs).choices[0].message.content
    assert content is not None
    return content


def test_our_schema_passes_the_strict_check_and_its_answers_are_grounded(sdk):
    fields = {"company": "Bäckerei Sonne"}
    page = page_of("Bäckerei Sonne")
    answer = parse_answer(ask(sdk, messages("https://sonne.example", page, fields), response_format=response_format()))
    assert answer.evidence and grounding.check(answer.opener, answer.evidence,
                                               grounding.Source.of(page, fields.values())).status == grounding.VERIFIED
    # The count travels in the schema (minItems = maxItems): no words in the prompt needed.
    content = ask(sdk, messages("https://sonne.example", page, fields), response_format=response_format(3))
    three = parse_answers(content, 3)
    assert len(three) == 3
    assert not any(is_near_duplicate(a.opener, b.opener) for a, b in [(three[0], three[1]), (three[1], three[2])])


def test_a_refused_response_format_is_recognised_and_the_fallback_parses(sdk, fake):
    fake.configure(response_format_supported=False)
    fields = {"company": "Bäckerei Sonne"}
    page = page_of("Bäckerei Sonne")
    with pytest.raises(openai.BadRequestError) as refused:
        ask(sdk, messages("https://sonne.example", page, fields), response_format=response_format())
    assert refuses_response_format(refused.value.status_code, refused.value.message)
    answer = parse_lenient(ask(sdk, messages("https://sonne.example", page, fields, json_instruction())))
    assert answer.evidence and answer.evidence in page
    two = parse_lenient_answers(ask(sdk, messages("https://sonne.example", page, fields, json_instruction(2))), 2)
    assert len(two) == 2 and all(a.evidence in page for a in two)


def check_all(answer, page: str, fields: dict[str, str]) -> tuple[str, tuple[str, ...]]:
    ground = grounding.check(answer.opener, answer.evidence, grounding.Source.of(page, fields.values()))
    checked = flags.check(answer.opener, generic=ground.status == grounding.GENERIC, language="en",
                          names=tuple(fields.values()))
    return ground.status, checked.flags


EXPECTED = {
    "invent": (grounding.UNSUPPORTED, ()),
    "long": (grounding.VERIFIED, ("too_long",)),
    "spam": (grounding.GENERIC, ("spammy", "generic")),
    "wrong_language": (grounding.VERIFIED, ("wrong_language",)),
}


@pytest.mark.parametrize("rule", sorted(EXPECTED))
def test_each_bad_first_answer_is_caught_and_the_re_ask_passes(sdk, fake, rule):
    url, name = f"https://{rule.replace('_', '-')}.example", f"Bakery {rule.title()}"
    fake.configure(misbehave={rule: [url.removeprefix("https://")]})
    fields, page = {"company": name}, page_of(name)
    first = parse_answer(ask(sdk, messages(url, page, fields), response_format=response_format()))
    status, found = check_all(first, page, fields)
    assert (status, found) == EXPECTED[rule]
    again = parse_answer(ask(sdk, messages(url, page, fields), response_format=response_format()))
    assert check_all(again, page, fields) == (grounding.VERIFIED, ())


def test_an_invented_fact_is_reported_for_the_re_ask(sdk, fake):
    fake.configure(misbehave={"invent": ["invent.example"]})
    fields, page = {"company": "Bakery Invent"}, page_of("Bakery Invent")
    first = parse_answer(ask(sdk, messages("https://invent.example", page, fields), response_format=response_format()))
    result = grounding.check(first.opener, first.evidence, grounding.Source.of(page, fields.values()))
    assert result.status == grounding.UNSUPPORTED and result.not_found()


def test_plain_text_where_json_was_asked_is_refused_strictly_and_read_leniently(sdk, fake):
    fake.configure(misbehave={"no_json": ["no-json.example"]})
    fields, page = {"company": "Bakery Plain"}, page_of("Bakery Plain")
    content = ask(sdk, messages("https://no-json.example", page, fields), response_format=response_format())
    with pytest.raises(AnswerError):
        parse_answer(content)
    assert parse_lenient(content).evidence is None


def test_the_same_generic_line_for_many_rows_is_a_duplicate_across_the_job(sdk, fake, index):
    fake.configure(misbehave={"repeat": ["repeat-1.example", "repeat-2.example"]})
    lines = []
    for n in (1, 2):
        fields, page = {"company": f"Bakery {n}"}, page_of(f"Bakery {n}")
        answer = parse_answer(ask(sdk, messages(f"https://repeat-{n}.example", page, fields),
                                  response_format=response_format()))
        assert check_all(answer, page, fields)[0] == grounding.GENERIC
        lines.append(answer.opener)
    assert index.check_and_add("job", lines[0]) is None
    assert index.check_and_add("job", lines[1]) == lines[0]
