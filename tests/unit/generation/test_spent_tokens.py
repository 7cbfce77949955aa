"""Unit tests for the tokens a row that fails still counts (issue 20's cost leftovers): answers
turned down and then retried or given up (``OpenerGenerator``), and the calls made before a re-ask
that fails outright or before strict grounding gives up (``checks.generate_checked``)."""

from __future__ import annotations

import json

import httpx2
import openai
import pytest

from chalicelib.generation import checks
from chalicelib.generation.answers import GenerationFailed, Opener
from chalicelib.generation.openers import OpenerGenerator
from tests.support.limiter import NoLimit

GOOD = "Your sourdough bread baked in Cologne since 1998 sounds wonderful; could we talk about delivery routes?"
PAGE = "Title: Bäckerei Sonne\nText: We bake sourdough bread in Cologne since 1998, with flour from local mills."
EVIDENCE = "sourdough bread in Cologne since 1998"
INVENTED = "Congratulations on 25 years of baking in Cologne; could we talk about your delivery routes soon?"




def answer(content: str) -> httpx2.Response:
    return httpx2.Response(200, json={
        "id": "c", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 17, "total_tokens": 57}})


def generator(*responses: httpx2.Response) -> OpenerGenerator:
    steps = list(responses)
    client = openai.OpenAI(api_key="k", base_url="http://test.invalid/v1", max_retries=0, http_client=httpx2.Client(
        transport=httpx2.MockTransport(lambda request: steps.pop(0))))
    return OpenerGenerator(client, NoLimit(), "m", max_retries=3, sleep=lambda seconds: None)


def test_answers_turned_down_count_with_the_opener_that_follows_them():
    gen = generator(answer(""), answer(json.dumps({"opener": GOOD, "evidence": None})))
    opener = gen.generate("https://sonne.example/")
    assert opener.text == GOOD and opener.attempts == 2
    assert (opener.prompt_tokens, opener.completion_tokens) == (80, 34)  # both answers were paid


def test_a_row_whose_every_answer_is_turned_down_counts_them_all():
    gen = generator(answer(""), answer(""), answer(""))
    with pytest.raises(GenerationFailed) as failed:
        gen.generate("https://sonne.example/")
    assert (failed.value.attempts, failed.value.prompt_tokens, failed.value.completion_tokens) == (3, 120, 51)


class ReaskFails:
    """The first call answers an invented fact; the call made again fails outright."""

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, url, instructions=None, model=None, should_stop=lambda: False, account=None, **data):
        self.calls += 1
        if data.get("reask"):
            raise GenerationFailed("HTTP 503 from the model API: down", 3, prompt_tokens=0)
        return Opener(text=INVENTED, prompt_tokens=100, completion_tokens=20, attempts=1, evidence="25 years")


def run(gen, **options):
    return checks.generate_checked(gen, job_id="j", url="https://sonne.example/", instructions=None, model=None,
                                   options=checks.Options(language="en", **options), page=PAGE, max_calls=3)


def test_a_reask_that_fails_outright_carries_the_first_calls_tokens():
    gen = ReaskFails()
    with pytest.raises(GenerationFailed) as failed:
        run(gen)
    assert gen.calls == 2 and "503" in failed.value.message
    assert (failed.value.prompt_tokens, failed.value.completion_tokens) == (100, 20)


class AlwaysInvents:
    def generate(self, url, instructions=None, model=None, should_stop=lambda: False, account=None, **data):
        return Opener(text=INVENTED, prompt_tokens=100, completion_tokens=20, attempts=1, evidence="25 years")


def test_strict_grounding_giving_up_carries_every_calls_tokens():
    with pytest.raises(checks.Ungrounded) as failed:
        run(AlwaysInvents())
    assert (failed.value.prompt_tokens, failed.value.completion_tokens) == (300, 60)
    kept = run(AlwaysInvents(), grounding="flag")
    assert (kept.prompt_tokens, kept.completion_tokens) == (300, 60) and kept.quality == ["ungrounded"]
