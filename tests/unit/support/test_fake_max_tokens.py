"""The fake OpenAI server's ``max_tokens_honoured`` knob: an answer longer than the request's
``max_tokens`` (or ``max_completion_tokens``) is cut off there with ``finish_reason`` "length"
and ``usage.completion_tokens`` at the limit, live and in the Batch API, as OpenAI stops; off (the
default) every answer is whole, as before."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI, count_tokens
from tests.support.fake_openai.tokens import max_output, within

LONG = " ".join(["word"] * 150)  # 150 tokens as the fake counts them
SHORT = "A short opener for {host}."


def chat(fake: FakeOpenAI, **request: Any) -> dict[str, Any]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Write an opener for https://acme.com"}],
            **request}
    answer = httpx.post(f"{fake.base_url}/chat/completions", json=body, timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()


def shown(answer: dict[str, Any]) -> tuple[str, str, int]:
    choice = answer["choices"][0]
    return choice["message"]["content"], choice["finish_reason"], answer["usage"]["completion_tokens"]


def test_within_cuts_after_the_last_whole_piece_that_fits():
    text = "Loved what acme.com is doing with its product lately, would you be open to a chat?"
    whole = count_tokens(text)
    assert within(text, None) == (text, whole, "stop") == within(text, whole)
    cut, tokens, finish = within(text, whole - 3)
    assert text.startswith(cut) and cut != text and (tokens, finish) == (whole - 3, "length")
    assert whole - 6 <= count_tokens(cut) <= whole - 3
    assert within(text, 1) == ("Loved", 1, "length")


@pytest.mark.parametrize(("request_", "limit"), [
    ({"max_tokens": 120}, 120), ({"max_completion_tokens": 50, "max_tokens": 120}, 50),
    ({}, None), ({"max_tokens": 0}, None), ({"max_tokens": True}, None), ({"max_tokens": "120"}, None)])
def test_the_limit_is_max_completion_tokens_else_max_tokens_when_a_positive_whole_number(request_, limit):
    assert max_output(request_) == limit


def test_a_long_answer_is_cut_at_max_tokens_only_when_the_knob_is_on(fake: FakeOpenAI):
    fake.configure(content=LONG)
    assert shown(chat(fake, max_tokens=40)) == (LONG, "stop", 150)  # off: as before
    fake.configure(max_tokens_honoured=True)
    content, finish, tokens = shown(chat(fake, max_tokens=40))
    assert (content, finish, tokens) == ("word " * 39 + "word", "length", 40)
    assert shown(chat(fake, max_completion_tokens=10))[1:] == ("length", 10)
    assert shown(chat(fake))[1:] == ("stop", 150)  # no limit asked: the whole answer
    fake.configure(content=SHORT)
    assert shown(chat(fake, max_tokens=40)) == ("A short opener for acme.com.", "stop",
                                                count_tokens("A short opener for acme.com."))
    stats = fake.stats()
    assert (stats["ok"], stats["truncated"]) == (5, 2)


def test_a_structured_answer_cut_off_is_broken_json(fake: FakeOpenAI):
    fake.configure(max_tokens_honoured=True)
    schema = {"type": "json_schema", "json_schema": {"name": "opener", "strict": True, "schema": {
        "type": "object", "properties": {"opener": {"type": "string"}, "evidence": {"type": ["string", "null"]}},
        "required": ["opener", "evidence"], "additionalProperties": False}}}
    whole, finish, _ = shown(chat(fake, response_format=schema, max_tokens=500))
    assert finish == "stop" and set(json.loads(whole)) == {"opener", "evidence"}
    cut, finish, _ = shown(chat(fake, response_format=schema, max_tokens=8))
    assert finish == "length" and whole.startswith(cut)
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut)


def test_the_batch_api_cuts_its_answers_the_same_way(fake: FakeOpenAI):
    fake.configure(content=LONG, max_tokens_honoured=True)
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "max_tokens": 40,
                     "messages": [{"role": "user", "content": "Write an opener for https://acme.com"}]}}
    client = httpx.Client(base_url=fake.base_url, timeout=5)
    uploaded = client.post("/files", data={"purpose": "batch"},
                           files={"file": ("in.jsonl", json.dumps(line).encode() + b"\n")}).json()
    batch = client.post("/batches", json={"input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions",
                                          "completion_window": "24h"}).json()
    done = client.get(f"/batches/{batch['id']}").json()
    assert done["status"] == "completed", done
    (result,) = [json.loads(x) for x in client.get(f"/files/{done['output_file_id']}/content").text.splitlines()]
    assert shown(result["response"]["body"])[1:] == ("length", 40)
