"""Tests for the fake OpenAI server (tests/support/fake_openai/), driven by
the real ``openai`` SDK so the fake stays wire-compatible with what the app
uses, and behaves as the real service does where the app depends on it."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from tests.support.fake_openai import FakeOpenAI, count_tokens, find_url, make_opener, prompt_tokens
from tests.support.util import ROOT

REPO_ROOT = ROOT
SYSTEM = {"role": "system", "content": "You write one-sentence cold outreach openers."}


def ask(url: str) -> list[dict[str, str]]:
    return [
        SYSTEM,
        {"role": "user", "content": f"Write an opener for the company at {url}. Reply with the opener only."},
    ]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh(fake: FakeOpenAI) -> None:
    fake.reset()


@functools.cache
def _client(base_url: str, timeout: float) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=timeout)


def sdk(fake: FakeOpenAI, timeout: float = 5.0) -> openai.OpenAI:
    """A cached SDK client (building one costs ~50 ms: SSL context)."""
    return _client(fake.base_url, timeout)


def http(fake: FakeOpenAI, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(
        fake.url + path, data=body, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def raw(fake: FakeOpenAI, data: bytes, *, read_until_close: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # the client has nothing more to say (or went away)
        if not read_until_close:
            return sock.recv(65536)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_completion_is_parsed_by_sdk_with_usage(fake: FakeOpenAI) -> None:
    messages = ask("https://www.acme.com/about")
    completion = sdk(fake).chat.completions.create(model="gpt-4o-mini", messages=messages)

    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    content = choice.message.content
    assert content and "acme.com" in content and len(content) <= 300
    assert not any(ch in content for ch in "\"'[]{}<>")
    assert completion.usage is not None
    # system: You| write| one|-sentence| cold| outreach| openers|. = 8, + role 1 + framing 3 = 12
    # user: Write| an| opener| for| the| company| at| https|://|www|.acme|.com|/about|.| Reply| with| the|
    #       opener| only|. = 20, + 1 + 3 = 24; + 3 to prime the reply: 39 (characters / 4 would be 34)
    assert completion.usage.prompt_tokens == 39
    # "Your work at acme.com stood out while I was researching the space — would a quick 15-minute
    # chat make sense?": 24 pieces, " researching" (11 letters) counting 2
    assert completion.usage.completion_tokens == 25
    assert completion.usage.total_tokens == 39 + 25


def test_content_is_deterministic_and_url_specific(fake: FakeOpenAI) -> None:
    c = sdk(fake)
    first = c.chat.completions.create(model="m", messages=ask("https://acme.com")).choices[0].message.content
    again = c.chat.completions.create(model="m", messages=ask("https://acme.com")).choices[0].message.content
    other = c.chat.completions.create(model="m", messages=ask("http://globex.io/x")).choices[0].message.content
    assert first == again == make_opener("https://acme.com")
    assert other and "globex.io" in other


def test_find_url_rules() -> None:
    assert find_url([{"role": "user", "content": "see https://a.com/x, then https://b.com"}]) == "https://a.com/x"
    assert (
        find_url([{"role": "user", "content": "https://old.com"}, {"role": "user", "content": "(https://new.com)."}])
        == "https://new.com"
    )
    assert (
        find_url([{"role": "user", "content": [{"type": "text", "text": "site: https://parts.dev"}]}])
        == "https://parts.dev"
    )
    assert (
        find_url([{"role": "system", "content": "for https://sys.org"}, {"role": "user", "content": "go"}])
        == "https://sys.org"
    )
    assert find_url([{"role": "user", "content": "company: acme.co.uk please"}]) == "acme.co.uk"
    assert find_url([{"role": "user", "content": "nothing here"}]) is None
    assert make_opener(None)  # generic opener, still non-empty


def test_token_counts_follow_a_bpe_like_rule() -> None:
    assert count_tokens("Hello, world!") == 4  # Hello|,| world|! (as cl100k)
    assert count_tokens("https://www.acme.com/about") == 6  # https|://|www|.acme|.com|/about
    assert count_tokens("internationalization") == 3  # 20 letters: one token per 8
    assert count_tokens("caf\u00e9 \u6771\u4eac") == 4  # non-ASCII letters: one token each
    assert count_tokens("in 2024, 12345") == 8  # in| |202|4|,| |123|45: digits in groups of up to 3
    assert prompt_tokens([{"role": "user", "content": "Hello, world!"}]) == 3 + 1 + 4 + 3


def test_usage_is_not_the_apps_own_estimate() -> None:
    """The app estimates characters / 4 and corrects with `usage`: if the fake counted the same
    way, a wrong correction could never show."""
    from chalicelib.generation.prompt import build_messages
    from chalicelib.generation.ratelimit import estimate_tokens

    for url in ("https://acme.com/", "https://www.wayne-enterprises.co.uk/about-us/leadership"):
        messages = build_messages(url, "We sell robots to warehouses; keep it short.")
        assert prompt_tokens(messages) != estimate_tokens(messages, 0)


def test_rpm_exceeded_gives_openai_429_with_headers(fake: FakeOpenAI) -> None:
    fake.configure(rpm=60)  # bucket: burst 1, then 1 request/s
    c = sdk(fake)
    ok = c.chat.completions.with_raw_response.create(model="m", messages=ask("https://acme.com"))
    assert ok.headers["x-ratelimit-limit-requests"] == "60"
    assert ok.headers["x-ratelimit-remaining-requests"] == "0"

    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="m", messages=ask("https://acme.com"))
    err = info.value
    headers = err.response.headers
    assert err.status_code == 429
    assert err.code == "rate_limit_exceeded"
    assert err.type == "requests"
    assert "Rate limit reached" in err.message and "requests per min (RPM): Limit 60" in err.message
    # the rejected request counted too (bucket at -1 of capacity 1, refilling 1/s): 2 s to wait
    assert 1.0 < float(headers["retry-after"]) <= 2.0
    assert 1000 < int(headers["retry-after-ms"]) <= 2000
    assert headers["x-ratelimit-limit-requests"] == "60"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert re.fullmatch(r"1\.\d+s|2s", headers["x-ratelimit-reset-requests"])  # full again in 2 s

    # Retry after exactly what the 429 asked for, with no margin: retry-after-ms is rounded up to the
    # ms, and the fake measured the wait on its own clock before it answered, so at least that long
    # has passed on that clock when it sees the retry, however slow this machine is. (A retry loop
    # would only hide a retry-after that is too short; this must go through the first time.)
    time.sleep(int(headers["retry-after-ms"]) / 1000)
    c.chat.completions.create(model="m", messages=ask("https://acme.com"))
    stats = fake.stats()
    assert (stats["requests"], stats["ok"], stats["rate_limited"]) == (3, 2, 1)
    assert stats["by_url"] == {"https://acme.com": 3}
    assert stats["ok_by_url"] == {"https://acme.com": 2}


def test_rejected_requests_count_against_the_budget_by_default(fake: FakeOpenAI) -> None:
    """As at OpenAI, a 429-ed request uses up quota: retrying early pushes the wait further out.
    rpm=6: a burst of 1, then one request per 10 s."""

    def retry_after() -> float:
        with pytest.raises(openai.RateLimitError) as info:
            sdk(fake).chat.completions.create(model="m", messages=ask("https://acme.com"))
        return float(info.value.response.headers["retry-after"])

    assert fake.config.count_rejected is True
    fake.configure(rpm=6)
    sdk(fake).chat.completions.create(model="m", messages=ask("https://acme.com"))
    first, second = retry_after(), retry_after()
    assert 19 < first <= 20 and 29 < second <= 30  # each rejection cost 10 s more

    fake.reset()
    fake.configure(rpm=6, count_rejected=False)  # the old, friendlier behaviour, on request
    sdk(fake).chat.completions.create(model="m", messages=ask("https://acme.com"))
    first, second = retry_after(), retry_after()
    assert 9 < second <= first <= 10
    assert fake.stats()["rate_limited"] == 2


def test_insufficient_quota_is_a_429_the_app_does_not_retry(fake: FakeOpenAI) -> None:
    from chalicelib.generation.client import is_quota_exhausted

    status, config = http(fake, "POST", "/_fake/config", b'{"insufficient_quota": true}')
    assert status == 200 and config["insufficient_quota"] is True
    with pytest.raises(openai.RateLimitError) as info:
        sdk(fake).chat.completions.create(model="m", messages=ask("https://acme.com"))
    err = info.value
    assert err.status_code == 429
    assert (err.type, err.code) == ("insufficient_quota", "insufficient_quota")
    assert "exceeded your current quota" in err.message
    assert "retry-after" not in err.response.headers  # waiting does not help
    assert is_quota_exhausted(err)  # what the app's client keys on
    stats = fake.stats()
    assert (stats["requests"], stats["insufficient_quota"], stats["ok"], stats["rate_limited"]) == (1, 1, 0, 0)
    fake.configure(insufficient_quota=False)
    assert sdk(fake).chat.completions.create(model="m", messages=ask("https://acme.com")).choices


def test_tpm_exceeded_reports_tokens(fake: FakeOpenAI) -> None:
    fake.configure(tpm=600)  # bucket capacity 10 tokens: the first big request drains it
    c = sdk(fake)
    c.chat.completions.create(model="m", messages=ask("https://acme.com"), max_tokens=50)
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="m", messages=ask("https://acme.com"), max_tokens=50)
    err = info.value
    assert err.type == "tokens"
    assert "tokens per min (TPM): Limit 600" in err.message
    assert err.response.headers["x-ratelimit-limit-tokens"] == "600"
    assert float(err.response.headers["retry-after"]) > 1.0
    assert "x-ratelimit-limit-requests" not in err.response.headers


def test_window_mode_allows_a_minutes_burst(fake: FakeOpenAI) -> None:
    fake.configure(rpm=3, rate_limit_mode="window")
    c = sdk(fake)
    for _ in range(3):
        c.chat.completions.create(model="m", messages=ask("https://acme.com"))
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="m", messages=ask("https://acme.com"))
    assert 55 < float(info.value.response.headers["retry-after"]) <= 60
    assert re.fullmatch(r"5\d(\.\d+)?s|60s|1m0s", info.value.response.headers["x-ratelimit-reset-requests"])


def test_error_rate_gives_internal_server_error(fake: FakeOpenAI) -> None:
    fake.configure(error_rate=1)
    statuses = set()
    for _ in range(20):
        with pytest.raises(openai.InternalServerError) as info:
            sdk(fake).chat.completions.create(model="m", messages=ask("https://acme.com"))
        statuses.add(info.value.status_code)
        assert info.value.type == "server_error"
    assert statuses == {500, 503}
    assert fake.stats()["errors"] == 20


def test_hang_times_out_without_blocking_others(fake: FakeOpenAI) -> None:
    fake.configure(hang_rate=1)
    result: dict[str, BaseException] = {}

    def hang() -> None:
        try:
            sdk(fake, timeout=0.5).chat.completions.create(model="m", messages=ask("https://hang.example"))
        except BaseException as exc:  # noqa: BLE001 - inspected below
            result["exc"] = exc

    thread = threading.Thread(target=hang)
    thread.start()
    deadline = time.monotonic() + 5
    while fake.stats()["hangs"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    fake.configure(hang_rate=0)  # others are served while the first one hangs
    assert sdk(fake).chat.completions.create(model="m", messages=ask("https://ok.example")).choices
    thread.join(5)
    assert isinstance(result.get("exc"), openai.APITimeoutError)

    deadline = time.monotonic() + 5  # the server notices the client went away
    while fake.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = fake.stats()
    assert (stats["hangs"], stats["ok"], stats["in_flight"]) == (1, 1, 0)


@pytest.mark.parametrize("kind", ["invalid_json", "empty_choices", "empty_content", "null_content"])
def test_malformed_responses(fake: FakeOpenAI, kind: str) -> None:
    fake.configure(malformed_rate=1, malformed_kinds=[kind])
    c = sdk(fake)
    if kind == "invalid_json":
        with pytest.raises(ValueError):  # the SDK surfaces json.JSONDecodeError as-is
            c.chat.completions.create(model="m", messages=ask("https://acme.com"))
    else:
        completion = c.chat.completions.create(model="m", messages=ask("https://acme.com"))
        if kind == "empty_choices":
            assert completion.choices == []
        else:
            assert completion.choices[0].message.content == ("" if kind == "empty_content" else None)
    assert fake.stats()["malformed"] == 1
    assert fake.stats()["ok"] == 0


def test_stats_count_by_url_and_time(fake: FakeOpenAI) -> None:
    c = sdk(fake)
    before = time.time()
    for url in ["https://a.com", "https://b.com", "https://a.com", "https://a.com"]:
        c.chat.completions.create(model="m", messages=ask(url))
    stats = fake.stats()
    assert stats["by_url"] == {"https://a.com": 3, "https://b.com": 1}
    assert stats["ok_by_url"] == stats["by_url"]
    assert stats["requests"] == stats["ok"] == 4
    assert before <= stats["first_request_at"] <= stats["last_request_at"] <= time.time()
    assert stats["prompt_tokens"] > 0 and stats["completion_tokens"] > 0


def test_seeded_faults_are_reproducible(fake: FakeOpenAI) -> None:
    def outcomes() -> list[str]:
        out = []
        for _ in range(30):
            try:
                sdk(fake).chat.completions.create(model="m", messages=ask("https://acme.com"))
                out.append("ok")
            except openai.APIStatusError as exc:
                out.append(str(exc.status_code))
        return out

    fake.configure(seed=42, error_rate=0.5)
    first = outcomes()
    fake.reset(keep_config=True)
    assert outcomes() == first
    assert {"ok", "500", "503"} <= set(first)


def test_latency_is_applied(fake: FakeOpenAI) -> None:
    fake.configure(latency_ms=[80, 100])
    started = time.monotonic()
    sdk(fake).chat.completions.create(model="m", messages=ask("https://acme.com"))
    assert time.monotonic() - started >= 0.08


def test_control_endpoints_and_models(fake: FakeOpenAI) -> None:
    status, config = http(fake, "POST", "/_fake/config", json.dumps({"latency_ms": [1, 2], "rpm": 600}).encode())
    assert status == 200 and config["latency_ms"] == [1.0, 2.0] and config["rpm"] == 600
    assert fake.config.rpm == 600
    assert http(fake, "GET", "/_fake/config")[1]["rpm"] == 600

    status, err = http(fake, "POST", "/_fake/config", b'{"rpm": -1}')
    assert status == 400 and "rpm" in err["error"]["message"]
    assert http(fake, "POST", "/_fake/config", b'{"nope": 1}')[0] == 400
    assert http(fake, "POST", "/_fake/config", b"not json")[0] == 400

    sdk(fake).chat.completions.create(model="m", messages=ask("https://acme.com"))
    status, stats = http(fake, "GET", "/_fake/stats")
    assert status == 200 and stats["requests"] == 1 and stats["by_url"] == {"https://acme.com": 1}

    assert http(fake, "POST", "/_fake/reset", b'{"keep_config": true}')[0] == 200
    assert fake.stats()["requests"] == 0 and fake.config.rpm == 600
    assert http(fake, "POST", "/_fake/reset")[0] == 200
    assert fake.config.rpm == 0
    defaults = http(fake, "GET", "/_fake/config")[1]
    assert (defaults["count_rejected"], defaults["insufficient_quota"]) == (True, False)

    models = sdk(fake).models.list()
    assert "gpt-4o-mini" in [m.id for m in models.data]
    assert http(fake, "GET", "/v1/nope")[0] == 404

    with pytest.raises(ValueError):
        fake.configure(error_rate=2)


def test_bad_requests_get_400(fake: FakeOpenAI) -> None:
    status, body = http(fake, "POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert http(fake, "POST", "/v1/chat/completions", b'{"model": "m"}')[0] == 400
    assert http(fake, "POST", "/v1/chat/completions", b"[]")[0] == 400
    with pytest.raises(openai.BadRequestError):
        sdk(fake).chat.completions.create(model="m", messages=[])
    assert fake.stats()["bad_requests"] == 4


def test_api_key_enforced_when_configured(fake: FakeOpenAI) -> None:
    fake.configure(api_key="sk-right")
    with pytest.raises(openai.AuthenticationError):
        sdk(fake).chat.completions.create(model="m", messages=ask("https://acme.com"))
    good = openai.OpenAI(base_url=fake.base_url, api_key="sk-right", max_retries=0, timeout=5)
    assert good.chat.completions.create(model="m", messages=ask("https://acme.com")).choices


def test_raw_http_robustness(fake: FakeOpenAI) -> None:
    body = json.dumps({"model": "m", "messages": ask("https://raw.example")}).encode()
    post = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"

    # keep-alive: two requests on one socket, then Connection: close
    two = post % (len(body), body) + (post % (len(body), body)).replace(b"Host: x", b"Host: x\r\nConnection: close")
    reply = raw(fake, two)
    assert reply.count(b"HTTP/1.1 200 OK") == 2 and b"raw.example" in reply

    # chunked body and Expect: 100-continue
    chunked = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )
    reply = raw(fake, chunked)
    assert reply.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")

    # garbage, a bad Content-Length, and a client vanishing mid-body: no crash
    assert raw(fake, b"\x00\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(fake, b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: abc\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(fake, b'POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{"mod') == b""
    assert raw(fake, b"GET /v1/mod") == b""
    assert sdk(fake).chat.completions.create(model="m", messages=ask("https://still.up")).choices


def test_cli_runs_as_separate_process() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.fake_openai", "--port", "0", "--latency-ms", "1,3", "--rpm", "6000",
         "--no-count-rejected"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        c = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=5)
        assert c.chat.completions.create(model="m", messages=ask("https://cli.example")).choices
        with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_fake/stats", timeout=5) as resp:
            stats = json.loads(resp.read())
        assert stats["by_url"] == {"https://cli.example": 1}
        with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_fake/config", timeout=5) as resp:
            config = json.loads(resp.read())
        assert (config["rpm"], config["latency_ms"], config["count_rejected"]) == (6000, [1.0, 3.0], False)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert json.loads(err.strip().splitlines()[-1])["ok"] == 1


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_throughput_with_threads_sharing_one_client(fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]) -> None:
    total, workers = 2000, 32
    c = openai.OpenAI(base_url=fake.base_url, api_key="x", max_retries=0, timeout=10)
    c.chat.completions.create(model="m", messages=ask("https://warmup.example"))
    fake.reset()

    def one(i: int) -> str | None:
        return (
            c.chat.completions.create(model="m", messages=ask(f"https://site{i % 500}.example"))
            .choices[0]
            .message.content
        )

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(one, range(total)))
    elapsed = time.perf_counter() - started

    assert all(results)
    stats = fake.stats()
    assert stats["requests"] == stats["ok"] == total
    assert len(stats["by_url"]) == 500 and set(stats["by_url"].values()) == {4}
    with capsys.disabled():
        print(
            f"\nfake_openai throughput: {total} requests, {workers} threads, one SDK client: "
            f"{total / elapsed:.0f} requests/s"
        )


RAW_LOAD = r"""
import asyncio, json, sys, time

async def worker(port, n, request):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(n):
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length:"))
        await reader.readexactly(length)
    writer.close()

async def main(port, conns, per):
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Opener for https://raw.example"}]}).encode()
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    started = time.perf_counter()
    await asyncio.gather(*(worker(port, per, request) for _ in range(conns)))
    print(conns * per / (time.perf_counter() - started))

asyncio.run(main(*map(int, sys.argv[1:4])))
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_server_capacity_with_raw_keepalive_client(fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]) -> None:
    """The SDK costs milliseconds of client CPU per request, so the SDK test
    above measures the client. A lean keep-alive client in another process
    shows the server's own headroom."""
    conns, per = 32, 100
    out = subprocess.run(
        [sys.executable, "-c", RAW_LOAD, str(fake.port), str(conns), str(per)],
        capture_output=True,
        text=True,
        timeout=100,
        check=True,
    ).stdout
    stats = fake.stats()
    assert stats["requests"] == stats["ok"] == conns * per
    assert stats["by_url"] == {"https://raw.example": conns * per}
    with capsys.disabled():
        print(
            f"\nfake_openai raw capacity: {conns * per} requests over {conns} keep-alive connections: "
            f"{float(out):.0f} requests/s"
        )
