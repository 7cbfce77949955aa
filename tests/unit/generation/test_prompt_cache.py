"""Unit tests for provider prompt caching: the prompt's constant prefix is byte-identical across
the rows of a job, ``prompt_cache_key`` is sent (and dropped for good after a 400 naming it), the
provider's cached tokens are read from the usage and priced at the cached-input price."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx2
import openai
import pytest

from chalicelib.generation import pricing
from chalicelib.generation.answers import GenerationFailed
from chalicelib.generation.openers import OpenerGenerator, cached_count
from chalicelib.generation.prompt import FEEDBACK_LABEL, build_messages, job_prefix
from chalicelib.settings import DEFAULT_PRICES, parse_prices

GOOD = "Acme's robots look like a real step forward for small warehouses. I'd love to share an idea."
INSTRUCTIONS = "We are Routeo, route planning for bakeries. Mention {{city}} and keep it friendly."

ROWS = [
    ("https://acme.com/", {"city": "Berlin"}, "Title: Acme\nText: Robots for warehouses.", "en", None),
    ("https://sonne.example/", {"city": "München"}, "Language: de\nTitle: Sonne Bäckerei", "de", None),
    ("https://third.example/x?y=1", {"city": "<script>"}, None, "fr", "Mention their new store."),
]


def test_the_constant_prefix_is_byte_identical_across_the_rows_of_a_job() -> None:
    prompts = [build_messages(url, INSTRUCTIONS, fields, page, language=language, min_words=6, max_words=30,
                              feedback=feedback)
               for url, fields, page, language, feedback in ROWS]
    first = json.dumps(prompts[0][0], ensure_ascii=False).encode()
    assert all(json.dumps(p[0], ensure_ascii=False).encode() == first for p in prompts)
    assert prompts[0][0] == job_prefix(INSTRUCTIONS, min_words=6, max_words=30)
    # what differs per row is in the tail only: no row's data is in the prefix
    for (url, fields, _page, _language, _feedback), prompt in zip(ROWS, prompts, strict=True):
        assert url.strip() not in prompt[0]["content"] and url.strip() in prompt[1]["content"]
        assert fields["city"] not in prompt[0]["content"]
    # and the JSON-in-words variant keeps the same prefix
    in_words = build_messages("https://acme.com/", INSTRUCTIONS, json_in_prompt=True, min_words=6, max_words=30)
    assert in_words[0] == prompts[0][0]


def test_another_job_has_another_prefix() -> None:
    assert job_prefix(INSTRUCTIONS) != job_prefix(INSTRUCTIONS + " Be brief.")
    assert job_prefix(INSTRUCTIONS) != job_prefix(INSTRUCTIONS, max_words=20)


def test_a_reviewers_feedback_goes_in_the_rows_tail_before_the_language() -> None:
    messages = build_messages("https://acme.com/", INSTRUCTIONS, {"city": "Berlin"}, "Title: Acme",
                              feedback="  Too formal;\nmention   the bakery. ")
    assert messages[0] == job_prefix(INSTRUCTIONS)
    tail = messages[1]["content"]
    assert tail.index("</page>") < tail.index(f"{FEEDBACK_LABEL} Too formal; mention the bakery.") < tail.index(
        "Write the opener in English.")
    assert FEEDBACK_LABEL not in build_messages("https://acme.com/", INSTRUCTIONS)[1]["content"]


# -- prompt_cache_key and cached tokens ------------------------------------------------------------


class _Limiter:
    def acquire(self, tokens, should_stop=lambda: False, account=None, model=None, job=None) -> float:
        return 0.0

    def refund(self, estimated, actual, model=None, charged=None) -> None:
        pass

    def cooldown(self, seconds, model=None, spent=()) -> None:
        pass

    def observe(self, model, headers, ok=True, tokens=0) -> None:
        pass


def _completion(cached: int | None = None, prompt: int = 1500) -> httpx2.Response:
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": 20, "total_tokens": prompt + 20}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return httpx2.Response(200, json={
        "id": "c", "object": "chat.completion", "created": 1, "model": "gpt-test", "usage": usage,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": json.dumps({"opener": GOOD, "evidence": None})}}]})


def _refusal(message: str, param: str | None = None) -> httpx2.Response:
    return httpx2.Response(400, json={"error": {"message": message, "type": "invalid_request_error",
                                                "param": param, "code": None}})


def _generator(*answers: httpx2.Response) -> tuple[OpenerGenerator, list[dict]]:
    sent: list[dict] = []
    steps = list(answers)

    def handle(request: httpx2.Request) -> httpx2.Response:
        sent.append(json.loads(request.content))
        return steps.pop(0) if len(steps) > 1 else steps[0]

    client = openai.OpenAI(api_key="sk-test", base_url="http://test.invalid/v1", max_retries=0,
                           http_client=httpx2.Client(transport=httpx2.MockTransport(handle)))
    return OpenerGenerator(client, _Limiter(), "gpt-test", sleep=lambda s: None), sent


def test_the_jobs_cache_key_is_sent_and_cached_tokens_are_kept() -> None:
    generator, sent = _generator(_completion(cached=1152))
    opener = generator.generate("https://acme.com/", INSTRUCTIONS, cache_key="job-1")
    assert sent[0]["prompt_cache_key"] == "csv-opener-job-1"
    assert (opener.prompt_tokens, opener.cached_tokens) == (1500, 1152)
    generator.generate("https://acme.com/", INSTRUCTIONS)  # no job (a caller without one): no key
    assert "prompt_cache_key" not in sent[1]


def test_a_400_naming_prompt_cache_key_drops_it_for_that_model_logged_once(caplog) -> None:
    refused = _refusal("Unrecognized request argument supplied: prompt_cache_key", param="prompt_cache_key")
    generator, sent = _generator(refused, _completion(), _completion())
    with caplog.at_level("WARNING", logger="csv_opener.openers"):
        first = generator.generate("https://acme.com/", cache_key="job-1")
        generator.generate("https://b.example/", cache_key="job-1")
    assert first.text == GOOD and first.attempts == 1  # asked again at once, not as a retry
    assert "prompt_cache_key" in sent[0] and all("prompt_cache_key" not in body for body in sent[1:])
    assert len(sent) == 3 and caplog.text.count("refused prompt_cache_key") == 1
    assert generator.no_cache_key == {"gpt-test"}


def test_both_refusals_in_a_row_are_survived() -> None:
    generator, sent = _generator(
        _refusal("Unrecognized request argument supplied: prompt_cache_key"),
        _refusal("Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model."),
        _completion())
    assert generator.generate("https://acme.com/", cache_key="job-1").text == GOOD
    assert len(sent) == 3 and "prompt_cache_key" not in sent[2] and "response_format" not in sent[2]


def test_another_400_is_not_taken_for_a_refused_cache_key() -> None:
    generator, sent = _generator(_refusal("'messages' is too long"))
    with pytest.raises(GenerationFailed):
        generator.generate("https://acme.com/", cache_key="job-1")
    assert len(sent) == 1 and generator.no_cache_key == set()


@pytest.mark.parametrize(("usage", "cached"), [
    ({"prompt_tokens": 100}, 0), ({"prompt_tokens": 100, "prompt_tokens_details": None}, 0),
    ({"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": 64}}, 64),
    ({"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": 500}}, 100),  # never above the prompt
    ({"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": -1}}, 0),
    ({"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": "64"}}, 0),
    ({"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": True}}, 0),
])
def test_cached_tokens_are_read_defensively(usage: dict, cached: int) -> None:
    assert cached_count(usage) == cached


# -- prices -----------------------------------------------------------------------------------------


def test_prices_take_an_optional_cached_input_figure() -> None:
    prices = parse_prices("a=1/2/0.25, b=3/4")
    assert prices["a"] == (Decimal(1), Decimal(2), Decimal("0.25"))
    assert prices["b"] == (Decimal(3), Decimal(4), Decimal(3))  # without it: the input price
    assert parse_prices(DEFAULT_PRICES)["gpt-4o-mini"] == (Decimal("0.15"), Decimal("0.60"), Decimal("0.075"))


@pytest.mark.parametrize("text", ["a=1", "a=1/2/3/4", "a=1/x", "=1/2", "a=1/2/-1", "a=1/2/nan", "a=1/2/"])
def test_a_bad_price_entry_is_refused_with_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match="model=input/output/cached_input"):
        parse_prices(text)


def test_cached_tokens_cost_the_cached_price() -> None:
    prices = parse_prices("m=2/8/0.5,n=2/8")
    full = pricing.cost_usd(prices, "m", 1_000_000, 0)
    assert full == 2.0
    assert pricing.cost_usd(prices, "m", 1_000_000, 0, cached_tokens=600_000) == pytest.approx(0.8 + 0.3)
    assert pricing.cost_usd(prices, "n", 1_000_000, 0, cached_tokens=600_000) == 2.0  # no discount stated
    assert pricing.cost_usd(prices, "m", 1_000_000, 0, "batch", cached_tokens=1_000_000) == 0.25
    assert pricing.cost_usd(prices, "m", 100, 0, cached_tokens=10**9) == pricing.cost_usd(prices, "m", 0, 0) + 0.5e-4


def test_dummy_mode_reports_cached_tokens_for_a_repeated_long_prefix_as_openai_does() -> None:
    from chalicelib.generation.dummy import DummyTransport

    transport = DummyTransport(cache_min_tokens=512)  # OpenAI's 1,024 is more than any system message here
    client = openai.OpenAI(api_key="dummy", base_url="http://dummy.invalid/v1", max_retries=0,
                           http_client=httpx2.Client(transport=transport))
    generator = OpenerGenerator(client, _Limiter(), "gpt-test", sleep=lambda s: None)
    short = [generator.generate(f"https://a{i}.example/", INSTRUCTIONS, cache_key="j") for i in range(2)]
    assert [o.cached_tokens for o in short] == [0, 0]  # a prefix under the threshold is never cached
    long = INSTRUCTIONS + " " + "We deliver bread. " * 100  # the system message passes 512 tokens
    first, second = (generator.generate(f"https://b{i}.example/", long, cache_key="j") for i in range(2))
    other_job = generator.generate("https://c.example/", long, cache_key="k")
    assert first.cached_tokens == 0 and other_job.cached_tokens == 0
    assert second.cached_tokens >= 512 and (second.cached_tokens - 512) % 128 == 0
    assert second.cached_tokens <= second.prompt_tokens
