"""Tests for what the fake OpenAI server adds for "Paying once": ``GET /v1/batches`` pages
(``limit``, ``after``, ``has_more``, newest first, metadata shown), so a client can find a batch
it created but never recorded; and the ``response_format`` JSON schema counted in
``prompt_tokens``, as OpenAI counts it, live and in batches alike."""

from __future__ import annotations

import json

import openai
import pytest

from chalicelib.quality.answer import response_format
from tests.support.fake_openai import FakeOpenAI, prompt_tokens
from tests.support.fake_openai.tokens import count_tokens, format_tokens

MESSAGES = [{"role": "system", "content": "Write an opener as JSON with opener and evidence."},
            {"role": "user", "content": "Prospect URL: https://acme.example.com/"}]


def sdk(fake: FakeOpenAI) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=0)


def create(fake: FakeOpenAI, n: int) -> list[str]:
    client = sdk(fake)
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": MESSAGES}}
    uploaded = client.files.create(file=("in.jsonl", (json.dumps(line) + "\n").encode()), purpose="batch")
    return [client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"batch": f"ours-{i}", "chunk": str(i)}).id
            for i in range(n)]


def test_batches_are_listed_newest_first_page_after_page_with_their_metadata(fake):
    created = create(fake, 5)
    client = sdk(fake)
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == created[::-1][:2] and first.has_more
    assert [b.metadata["batch"] for b in first.data] == ["ours-4", "ours-3"]
    rest = client.batches.list(limit=2, after=first.data[-1].id)
    assert [b.id for b in rest.data] == created[::-1][2:4] and rest.has_more
    # the SDK follows the cursor by itself
    assert [b.metadata["batch"] for b in client.batches.list(limit=2)] == [f"ours-{i}" for i in range(4, -1, -1)]
    last = client.batches.list(limit=100)
    assert len(last.data) == 5 and not last.has_more


@pytest.mark.parametrize(("query", "status"), [("limit=0", 400), ("limit=101", 400), ("limit=x", 400),
                                              ("after=batch_nope", 404)])
def test_bad_list_parameters_are_refused(fake, query, status):
    create(fake, 1)
    with pytest.raises(openai.APIStatusError) as refused:
        sdk(fake).get(f"/batches?{query}", cast_to=object)
    assert refused.value.status_code == status


def test_the_response_format_schema_counts_in_prompt_tokens_live_and_in_batches(fake):
    client = sdk(fake)
    fmt = response_format()
    plain = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    structured = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, response_format=fmt)
    schema = count_tokens(json.dumps(fmt["json_schema"], separators=(",", ":")))
    assert format_tokens({"response_format": fmt}) == schema > 50
    assert plain.usage.prompt_tokens == prompt_tokens(MESSAGES)
    assert structured.usage.prompt_tokens == prompt_tokens(MESSAGES) + schema
    assert format_tokens({"response_format": {"type": "json_object"}}) == 0
