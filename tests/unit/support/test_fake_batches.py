"""Tests for the fake OpenAI server's per-model rate limits and its Batch API (files and
batches), driven by the real ``openai`` SDK as the app would drive them."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion

from tests.support.fake_openai import FakeOpenAI, find_url, make_opener, prompt_tokens
from tests.support.util import ROOT

REPO_ROOT = ROOT
ENDPOINT = "/v1/chat/completions"


@functools.cache
def _client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=10)


def sdk(fake: FakeOpenAI) -> openai.OpenAI:
    return _client(fake.base_url)


def http(fake: FakeOpenAI, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(fake.url + path, data=body, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def ask(url: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You write one-sentence cold outreach openers."},
        {"role": "user", "content": f"Write an opener for the company at {url}. Reply with the opener only."},
    ]


def chat(fake: FakeOpenAI, model: str) -> Any:
    """A live chat request's raw response (200), or the RateLimitError (429)."""
    try:
        return sdk(fake).chat.completions.with_raw_response.create(model=model, messages=ask("https://acme.com"))
    except openai.RateLimitError as exc:
        return exc


def line(custom_id: str, site: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
    """One line of a batch input file: a chat request about ``site``."""
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT,
            "body": {"model": model, "messages": ask(site), "max_tokens": 120}}


def jsonl(lines: list[Any]) -> bytes:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()


def requests(n: int) -> list[dict[str, Any]]:
    return [line(f"row-{i}", f"https://company{i}.example/about") for i in range(n)]


def start_batch(fake: FakeOpenAI, lines: list[dict[str, Any]]) -> Any:
    client = sdk(fake)
    uploaded = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h")


def wait_until_ended(fake: FakeOpenAI, batch_id: str, timeout: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = sdk(fake).batches.retrieve(batch_id)
        if batch.status in ("completed", "expired", "cancelled", "failed"):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.02)


def read_lines(fake: FakeOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(x) for x in sdk(fake).files.content(file_id).text.splitlines()]


def ids(lines: list[dict[str, Any]]) -> list[str]:
    return [x["custom_id"] for x in lines]


def ratelimit_headers(headers: Any) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower().startswith("x-ratelimit-")}


# --------------------------------------------------------------------------- per-model limits


def test_each_model_has_its_own_limits(fake: FakeOpenAI) -> None:
    fake.configure(rpm=60, model_limits={"gpt-4o": {"rpm": 120}, "gpt-4.1-mini": {"tpm": 100000}})
    first = chat(fake, "gpt-4o-mini")  # the global rpm: a burst of 1
    assert first.headers["x-ratelimit-limit-requests"] == "60"
    assert isinstance(chat(fake, "gpt-4o-mini"), openai.RateLimitError)

    other = chat(fake, "gpt-4o")  # its own bucket, of its own size: a burst of 2
    assert other.status_code == 200
    assert other.headers["x-ratelimit-limit-requests"] == "120"
    assert other.headers["x-ratelimit-remaining-requests"] == "1"
    assert chat(fake, "gpt-4o").status_code == 200
    limited = chat(fake, "gpt-4o")
    assert isinstance(limited, openai.RateLimitError)
    assert limited.response.headers["x-ratelimit-limit-requests"] == "120"
    assert "Rate limit reached for gpt-4o " in limited.message and "Limit 120" in limited.message

    partial = chat(fake, "gpt-4.1-mini")  # gives only tpm: rpm is the global one
    assert partial.headers["x-ratelimit-limit-requests"] == "60"
    assert partial.headers["x-ratelimit-limit-tokens"] == "100000"
    assert "x-ratelimit-limit-tokens" not in first.headers

    stats = fake.stats()
    usage = first.parse().usage
    assert stats["by_model"]["gpt-4o-mini"] == {"requests": 2, "ok": 1, "rate_limited": 1,
                                                "prompt_tokens": usage.prompt_tokens,
                                                "completion_tokens": usage.completion_tokens}
    assert {m: (s["requests"], s["ok"], s["rate_limited"]) for m, s in stats["by_model"].items()} == {
        "gpt-4o-mini": (2, 1, 1), "gpt-4o": (3, 2, 1), "gpt-4.1-mini": (1, 1, 0)}
    assert (stats["requests"], stats["ok"], stats["rate_limited"]) == (6, 4, 2)


def test_changing_a_models_limit_at_runtime_refills_only_that_model(fake: FakeOpenAI) -> None:
    fake.configure(rpm=60, model_limits={"gpt-4o": {"rpm": 60}})
    for model in ("gpt-4o", "gpt-4o-mini"):
        assert chat(fake, model).headers["x-ratelimit-limit-requests"] == "60"
        assert isinstance(chat(fake, model), openai.RateLimitError)

    body = json.dumps({"model_limits": {"gpt-4o": {"rpm": 120}}}).encode()
    status, config = http(fake, "POST", "/_fake/config", body)
    assert status == 200 and config["model_limits"] == {"gpt-4o": {"rpm": 120}}
    doubled = chat(fake, "gpt-4o")  # rebuilt, so full again
    assert doubled.status_code == 200
    assert doubled.headers["x-ratelimit-limit-requests"] == "120"
    assert isinstance(chat(fake, "gpt-4o-mini"), openai.RateLimitError)  # unchanged: still empty

    fake.configure(model_limits={})  # back to the global rpm=60
    assert chat(fake, "gpt-4o").headers["x-ratelimit-limit-requests"] == "60"


def test_model_limits_are_validated(fake: FakeOpenAI) -> None:
    for bad in ({"gpt-4o": {"rpm": -1}}, {"gpt-4o": {"rpd": 5}}, {"gpt-4o": 5}, ["gpt-4o"], {"gpt-4o": {"tpm": 1.5}},
                {"": {"rpm": 1}}, {"gpt-4o": {"rpm": True}}):
        with pytest.raises(ValueError):
            fake.configure(model_limits=bad)
        status, err = http(fake, "POST", "/_fake/config", json.dumps({"model_limits": bad}).encode())
        assert status == 400 and "model_limits" in err["error"]["message"]
    assert fake.configure(model_limits={"gpt-4o": {"rpm": 5.0}})["model_limits"] == {"gpt-4o": {"rpm": 5}}
    assert FakeOpenAI(model_limits={"m": {"tpm": 7}}).config.limits_for("m") == (0, 7)


def test_ratelimit_headers_can_be_switched_off(fake: FakeOpenAI) -> None:
    fake.configure(rpm=60, tpm=100000, ratelimit_headers=False)
    ok = chat(fake, "gpt-4o-mini")
    assert ok.status_code == 200 and ratelimit_headers(ok.headers) == {}
    limited = chat(fake, "gpt-4o-mini")
    assert isinstance(limited, openai.RateLimitError)  # still enforced
    assert ratelimit_headers(limited.response.headers) == {}
    assert float(limited.response.headers["retry-after"]) > 0 and "retry-after-ms" in limited.response.headers

    fake.configure(ratelimit_headers=True)
    assert "x-ratelimit-limit-requests" in chat(fake, "gpt-4o").headers

    fake.configure(ratelimit_limit_headers=False)  # as Azure OpenAI: remaining and reset, no limit
    sent = ratelimit_headers(chat(fake, "gpt-4.1-mini").headers)
    assert set(sent) == {"x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
                         "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"}
    limited = chat(fake, "gpt-4.1-mini")
    assert isinstance(limited, openai.RateLimitError)
    assert "x-ratelimit-reset-requests" in limited.response.headers
    assert "x-ratelimit-limit-requests" not in limited.response.headers


# --------------------------------------------------------------------------- the Batch API


def test_batch_round_trip_through_the_sdk(fake: FakeOpenAI) -> None:
    fake.configure(batch_delay_s=0.4)
    client = sdk(fake)
    lines = requests(20)
    data = jsonl(lines)

    uploaded = client.files.create(file=("input.jsonl", data), purpose="batch")
    assert uploaded.id.startswith("file-") and uploaded.object == "file"
    assert (uploaded.bytes, uploaded.filename, uploaded.purpose, uploaded.status) == (
        len(data), "input.jsonl", "batch", "processed")
    assert client.files.retrieve(uploaded.id).model_dump() == uploaded.model_dump()
    assert client.files.content(uploaded.id).content == data

    created = client.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h",
                                    metadata={"job": "42"})
    raw = http(fake, "GET", f"/v1/batches/{created.id}")[1]
    assert set(raw) == {
        "id", "object", "endpoint", "errors", "input_file_id", "completion_window", "status", "output_file_id",
        "error_file_id", "created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
        "expired_at", "cancelling_at", "cancelled_at", "request_counts", "metadata"}
    assert created.id.startswith("batch_") and created.object == "batch"
    assert (created.status, created.endpoint, created.completion_window) == ("validating", ENDPOINT, "24h")
    assert created.input_file_id == uploaded.id and created.metadata == {"job": "42"}
    assert created.expires_at == created.created_at + 24 * 3600
    assert created.output_file_id is None and created.completed_at is None and created.errors is None
    assert created.request_counts is not None
    assert (created.request_counts.total, created.request_counts.completed, created.request_counts.failed) == (
        20, 0, 0)

    running = client.batches.retrieve(created.id)  # well within batch_delay_s of its creation
    assert running.status == "in_progress" and running.in_progress_at is not None
    assert running.output_file_id is None

    done = wait_until_ended(fake, created.id)
    assert done.status == "completed"
    assert done.completed_at is not None and done.finalizing_at is not None
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (20, 20, 0)
    assert done.error_file_id is None and done.output_file_id is not None
    assert [b.id for b in client.batches.list().data] == [created.id]

    output = client.files.retrieve(done.output_file_id)
    assert output.purpose == "batch_output"
    results = read_lines(fake, done.output_file_id)
    assert sorted(ids(results)) == sorted(x["custom_id"] for x in lines)
    assert ids(results) != [x["custom_id"] for x in lines]  # shuffled: callers must match by custom_id
    by_id = {x["custom_id"]: x for x in lines}
    for result in results:
        assert result["id"].startswith("batch_req_") and result["error"] is None
        assert result["response"]["status_code"] == 200 and result["response"]["request_id"].startswith("req_")
        completion = ChatCompletion.model_validate(result["response"]["body"])
        messages = by_id[result["custom_id"]]["body"]["messages"]
        assert completion.model == "gpt-4o-mini" and completion.usage is not None
        assert completion.choices[0].message.content == make_opener(find_url(messages))
        assert completion.usage.prompt_tokens == prompt_tokens(messages)

    # the same body answered live gives the same opener and usage
    live = client.chat.completions.create(**lines[0]["body"])
    batched = ChatCompletion.model_validate(next(r for r in results if r["custom_id"] == "row-0")["response"]["body"])
    assert live.choices[0].message.content == batched.choices[0].message.content
    assert live.usage == batched.usage

    stats = fake.stats()
    assert (stats["files"], stats["batches"], stats["batch_requests"], stats["batches_cancelled"]) == (1, 1, 20, 0)
    assert (stats["requests"], stats["ok"]) == (1, 1)  # only the live one


def test_content_override_applies_to_batches(fake: FakeOpenAI) -> None:
    fake.configure(content="Hi {host}!")
    done = wait_until_ended(fake, start_batch(fake, [line("a", "https://www.acme.com/x")]).id)
    body = read_lines(fake, done.output_file_id)[0]["response"]["body"]
    assert body["choices"][0]["message"]["content"] == "Hi acme.com!"


def test_batch_error_rate_gives_an_error_file(fake: FakeOpenAI) -> None:
    fake.configure(batch_error_rate=0.3)
    lines = requests(50)
    done = wait_until_ended(fake, start_batch(fake, lines).id)
    assert done.status == "completed"
    ok, failed = read_lines(fake, done.output_file_id), read_lines(fake, done.error_file_id)
    assert 0 < len(failed) < 50
    assert sorted(ids(ok) + ids(failed)) == sorted(x["custom_id"] for x in lines)
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (len(ok), len(failed))
    assert sdk(fake).files.retrieve(done.error_file_id).purpose == "batch_output"
    for result in failed:
        assert result["error"] is None and result["response"]["status_code"] == 500
        assert result["response"]["body"]["error"]["type"] == "server_error"
    assert all(r["response"]["status_code"] == 200 for r in ok)

    fake.configure(batch_error_rate=1.0)  # nothing succeeds: no output file
    done = wait_until_ended(fake, start_batch(fake, requests(3)).id)
    assert done.output_file_id is None and len(read_lines(fake, done.error_file_id)) == 3


def test_batch_expiry_leaves_partial_output_and_expired_errors(fake: FakeOpenAI) -> None:
    fake.configure(batch_expire_fraction=0.45)
    lines = requests(10)
    done = wait_until_ended(fake, start_batch(fake, lines).id)
    assert done.status == "expired"
    assert done.expired_at is not None and done.completed_at is None
    ok, failed = read_lines(fake, done.output_file_id), read_lines(fake, done.error_file_id)
    assert sorted(ids(ok)) == sorted(x["custom_id"] for x in lines[:4])  # floor(0.45 * 10), the first ones
    assert sorted(ids(failed)) == sorted(x["custom_id"] for x in lines[4:])
    for result in failed:
        assert result["response"] is None
        assert result["error"] == {
            "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired.",
        }
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (4, 6)


def test_cancel_goes_through_cancelling_to_cancelled(fake: FakeOpenAI) -> None:
    # Time moves only when the test says (age_batches): 100 requests over 1,000 s, an hour to cancel.
    fake.configure(batch_delay_s=1000.0, batch_cancel_delay_s=3600.0)
    lines = requests(100)
    batch = start_batch(fake, lines)
    fake.age_batches(305)
    running = sdk(fake).batches.retrieve(batch.id)
    assert running.status == "in_progress" and running.request_counts is not None
    assert running.request_counts.completed == 30  # progress shows: 305 s of 1,000

    cancelling = sdk(fake).batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    assert cancelling.cancelled_at is None and cancelling.output_file_id is None
    assert cancelling.request_counts is not None
    done_count = cancelling.request_counts.completed
    assert done_count == 30
    fake.age_batches(3599)
    assert sdk(fake).batches.retrieve(batch.id).status == "cancelling"  # for batch_cancel_delay_s

    fake.age_batches(2)
    cancelled = wait_until_ended(fake, batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    assert cancelled.completed_at is None and cancelled.cancelled_at - cancelled.cancelling_at in (3600, 3601)
    ok, failed = read_lines(fake, cancelled.output_file_id), read_lines(fake, cancelled.error_file_id)
    assert sorted(ids(ok)) == sorted(x["custom_id"] for x in lines[:done_count])
    assert sorted(ids(failed)) == sorted(x["custom_id"] for x in lines[done_count:])
    cancelled_error = {"code": "batch_cancelled", "message": "This request was cancelled."}
    assert all(r["response"] is None and r["error"] == cancelled_error for r in failed)
    assert cancelled.request_counts is not None
    assert (cancelled.request_counts.completed, cancelled.request_counts.failed) == (done_count, 100 - done_count)
    assert fake.stats()["batches_cancelled"] == 1

    with pytest.raises(openai.BadRequestError, match="cancelled"):
        sdk(fake).batches.cancel(batch.id)
    fake.configure(batch_delay_s=0.0)
    completed = wait_until_ended(fake, start_batch(fake, requests(2)).id)
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a batch with status 'completed'"):
        sdk(fake).batches.cancel(completed.id)


def test_invalid_batch_files_are_400_naming_the_line(fake: FakeOpenAI) -> None:
    good = requests(3)
    cases = {
        "Line 2 of the batch file: not valid JSON": [good[0], '{"custom_id": "x",', good[2]],
        "Line 3 of the batch file: duplicate custom_id 'row-0'": [good[0], good[1], good[0]],
        "Line 1 of the batch file: url must be '/v1/chat/completions'": [{**good[0], "url": "/v1/embeddings"}],
        "Line 2 of the batch file: model 'gpt-4o' differs": [good[0], line("b", "https://b.com", model="gpt-4o")],
        "method must be 'POST'": [{**good[0], "method": "GET"}],
        "body.messages must be a non-empty list": [{**good[0], "body": {"model": "gpt-4o-mini", "messages": []}}],
        "custom_id must be a non-empty string": [{**good[0], "custom_id": 7}],
        "no requests": ["", "  "],
    }
    for problem, lines in cases.items():
        with pytest.raises(openai.BadRequestError) as info:
            sdk(fake).files.create(file=("bad.jsonl", jsonl(lines)), purpose="batch")
        assert problem in info.value.message, info.value.message
        assert info.value.param == "file"

    with pytest.raises(openai.BadRequestError, match="purpose"):
        sdk(fake).files.create(file=("x.jsonl", jsonl(good)), purpose="fine-tune")
    assert fake.stats()["files"] == 0

    uploaded = sdk(fake).files.create(file=("ok.jsonl", jsonl(good)), purpose="batch")
    bad_batches = [
        ({"input_file_id": "file-nope", "endpoint": ENDPOINT, "completion_window": "24h"}, "input_file_id"),
        ({"input_file_id": uploaded.id, "endpoint": "/v1/embeddings", "completion_window": "24h"}, "endpoint"),
        ({"input_file_id": uploaded.id, "endpoint": ENDPOINT, "completion_window": "48h"}, "completion_window"),
        ({"input_file_id": uploaded.id, "endpoint": ENDPOINT, "completion_window": "24h", "metadata": [1]},
         "metadata"),
    ]
    for body, param in bad_batches:
        status, err = http(fake, "POST", "/v1/batches", json.dumps(body).encode())
        assert status == 400 and err["error"]["param"] == param, err
    assert http(fake, "POST", "/v1/batches", b"not json")[0] == 400
    assert fake.stats()["batches"] == 0


def test_unknown_ids_are_404(fake: FakeOpenAI) -> None:
    client = sdk(fake)
    for call in (lambda: client.files.retrieve("file-nope"), lambda: client.files.content("file-nope"),
                 lambda: client.files.delete("file-nope"), lambda: client.batches.retrieve("batch_nope"),
                 lambda: client.batches.cancel("batch_nope")):
        with pytest.raises(openai.NotFoundError):
            call()

    uploaded = client.files.create(file=("x.jsonl", jsonl(requests(1))), purpose="batch")
    assert [f.id for f in client.files.list().data] == [uploaded.id]
    deleted = client.files.delete(uploaded.id)
    assert (deleted.id, deleted.deleted) == (uploaded.id, True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    assert http(fake, "PUT", "/v1/batches")[0] == 404


def test_api_key_is_enforced_on_files_and_batches(fake: FakeOpenAI) -> None:
    fake.configure(api_key="sk-right")
    with pytest.raises(openai.AuthenticationError):
        sdk(fake).files.list()
    with pytest.raises(openai.AuthenticationError):
        sdk(fake).files.create(file=("x.jsonl", jsonl(requests(1))), purpose="batch")
    good = openai.OpenAI(base_url=fake.base_url, api_key="sk-right", max_retries=0, timeout=5)
    assert good.files.create(file=("x.jsonl", jsonl(requests(1))), purpose="batch").id


def test_batch_requests_do_not_use_the_live_limits(fake: FakeOpenAI) -> None:
    fake.configure(rpm=60, tpm=600)  # a burst of 1 request / 10 tokens
    done = wait_until_ended(fake, start_batch(fake, requests(30)).id)
    assert done.request_counts is not None and done.request_counts.completed == 30
    live = chat(fake, "gpt-4o-mini")
    assert live.status_code == 200  # the bucket was full
    assert live.headers["x-ratelimit-remaining-requests"] == "0"
    stats = fake.stats()
    assert (stats["requests"], stats["batch_requests"], stats["prompt_tokens"]) == (
        1, 30, live.parse().usage.prompt_tokens)
    assert list(stats["by_model"]) == ["gpt-4o-mini"] and stats["by_model"]["gpt-4o-mini"]["requests"] == 1


def test_reset_forgets_files_and_batches(fake: FakeOpenAI) -> None:
    batch = start_batch(fake, requests(2))
    fake.reset()
    with pytest.raises(openai.NotFoundError):
        sdk(fake).batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        sdk(fake).files.retrieve(batch.input_file_id)
    assert sdk(fake).batches.list().data == []
    stats = fake.stats()
    assert (stats["files"], stats["batches"], stats["batch_requests"], stats["by_model"]) == (0, 0, 0, {})


def test_batch_knobs_are_validated_and_configurable_over_http(fake: FakeOpenAI) -> None:
    knobs = {"batch_delay_s": 1.5, "batch_error_rate": 0.25, "batch_expire_fraction": 0.5,
             "batch_cancel_delay_s": 2, "ratelimit_headers": False}
    status, config = http(fake, "POST", "/_fake/config", json.dumps(knobs).encode())
    assert status == 200 and {k: config[k] for k in knobs} == knobs
    assert http(fake, "POST", "/_fake/config", b'{"batch_expire_fraction": null}')[1]["batch_expire_fraction"] is None
    for bad in ({"batch_delay_s": -1}, {"batch_error_rate": 1.5}, {"batch_expire_fraction": 2},
                {"batch_cancel_delay_s": "x"}, {"ratelimit_headers": 1}):
        assert http(fake, "POST", "/_fake/config", json.dumps(bad).encode())[0] == 400, bad


def test_cli_flags_for_model_limits_and_batches() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.fake_openai", "--port", "0", "--rpm", "60",
         "--model-limits", '{"gpt-4o": {"rpm": 120}}', "--no-ratelimit-headers", "--batch-delay-s", "0.5",
         "--batch-error-rate", "0.1", "--batch-expire-fraction", "0.9", "--batch-cancel-delay-s", "0.25"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_fake/config", timeout=5) as resp:
            config = json.loads(resp.read())
        assert config["model_limits"] == {"gpt-4o": {"rpm": 120}} and config["ratelimit_headers"] is False
        assert (config["batch_delay_s"], config["batch_error_rate"], config["batch_expire_fraction"],
                config["batch_cancel_delay_s"]) == (0.5, 0.1, 0.9, 0.25)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 0

    bad = subprocess.run([sys.executable, "-m", "tests.support.fake_openai", "--model-limits", "{nope"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert bad.returncode == 2 and "--model-limits" in bad.stderr


# --------------------------------------------------------------------------- structured answers in batches (issue 20)

OPENER_FORMAT = {"type": "json_schema", "json_schema": {"name": "opener", "strict": True, "schema": {
    "type": "object", "properties": {"opener": {"type": "string"}, "evidence": {"type": ["string", "null"]}},
    "required": ["opener", "evidence"], "additionalProperties": False}}}
PAGE = "Acme bakes sourdough bread in Cologne, with flour from local mills."


def structured_line(custom_id: str, site: str) -> dict[str, Any]:
    """A batch line asking for the opener as JSON, with a page summary to rest on."""
    entry = line(custom_id, site)
    entry["body"]["messages"][1]["content"] += f"\n\n<page>\n{PAGE}\n</page>"
    entry["body"]["response_format"] = OPENER_FORMAT
    return entry


def test_batch_answers_structured_requests_as_the_live_endpoint_does(fake: FakeOpenAI) -> None:
    lines = [structured_line(f"row-{i}", f"https://company{i}.example/about") for i in range(5)]
    done = wait_until_ended(fake, start_batch(fake, lines).id)
    results = {r["custom_id"]: r for r in read_lines(fake, done.output_file_id)}
    assert len(results) == 5
    for entry in lines:
        batched = ChatCompletion.model_validate(results[entry["custom_id"]]["response"]["body"])
        answer = json.loads(batched.choices[0].message.content or "")
        assert answer["evidence"] in PAGE and answer["evidence"] in answer["opener"]
        live = sdk(fake).chat.completions.create(**entry["body"])
        assert live.choices[0].message.content == batched.choices[0].message.content
        assert live.usage == batched.usage


def test_batch_first_answers_misbehave_and_live_reasks_behave(fake: FakeOpenAI) -> None:
    fake.configure(misbehave={"invent": ["company1."], "long": ["company3."]})
    lines = [structured_line(f"row-{i}", f"https://company{i}.example/about") for i in range(5)]
    done = wait_until_ended(fake, start_batch(fake, lines).id)
    results = {r["custom_id"]: r for r in read_lines(fake, done.output_file_id)}

    def opener(body: dict[str, Any]) -> dict[str, Any]:
        return json.loads(body["choices"][0]["message"]["content"])

    assert "25 years" in opener(results["row-1"]["response"]["body"])["opener"]
    assert len(opener(results["row-3"]["response"]["body"])["opener"].split()) == 90
    assert all(opener(results[f"row-{i}"]["response"]["body"])["evidence"] in PAGE for i in (0, 2, 4))
    stats = fake.stats()
    assert (stats["misbehaved"], stats["misbehaved_by_rule"]["invent"], stats["reasks"]) == (2, 1, 0)

    live = sdk(fake).chat.completions.create(**lines[1]["body"])  # the re-ask of row 1, live
    assert json.loads(live.choices[0].message.content or "")["evidence"] in PAGE
    stats = fake.stats()
    assert (stats["misbehaved"], stats["reasks"]) == (2, 1)


def test_batch_lines_are_refused_as_live_requests_are(fake: FakeOpenAI) -> None:
    fake.configure(response_format_supported=False)
    lines = [structured_line("structured", "https://acme.com"), line("plain", "https://globex.com")]
    done = wait_until_ended(fake, start_batch(fake, lines).id)
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    (failed,) = read_lines(fake, done.error_file_id)
    assert failed["custom_id"] == "structured" and failed["error"] is None
    assert failed["response"]["status_code"] == 400
    error = failed["response"]["body"]["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "response_format", None)
    assert ids(read_lines(fake, done.output_file_id)) == ["plain"]
