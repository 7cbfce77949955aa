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


# --------------------------------------------------------------------------- structured answers (issue 20)

OPENER = {
    "type": "object",
    "properties": {"opener": {"type": "string"}, "evidence": {"type": ["string", "null"]}},
    "required": ["opener", "evidence"],
    "additionalProperties": False,
}
PAGE = "Acme bakes sourdough bread in Cologne since 1998, with flour from local mills.\nWe deliver before 7am."
GERMAN = {"Sie", "Ihr", "Ihre", "Ihnen", "für", "und", "ein", "ist", "mir", "uns", "das", "dass", "auf"}
ENGLISH = {"you", "your", "the", "and", "a", "to", "is", "I", "this", "what", "for", "we"}


def schema_format(schema: dict[str, Any] = OPENER, strict: bool = True, name: str = "opener") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "strict": strict, "schema": schema}}


def prompt(url: str, page: str | None = None, fields: dict[str, str] | None = None, steer: str = "",
           system: str = SYSTEM["content"]) -> list[dict[str, str]]:
    """Messages laid out as the app lays them out: the data in <prospect_data> / <page> blocks."""
    parts = [f"Prospect URL: {url}"]
    if fields:
        parts.append("<prospect_data>\n" + "\n".join(f"{k}: {json.dumps(v, ensure_ascii=False)}"
                                                     for k, v in fields.items()) + "\n</prospect_data>")
    if page:
        parts.append(f"<page>\n{page}\n</page>")
    if steer:
        parts.append(steer)
    parts.append("Write the opener.")
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


def content_of(fake: FakeOpenAI, messages: list[dict[str, str]], **kwargs: Any) -> str:
    content = sdk(fake).chat.completions.create(model="m", messages=messages, **kwargs).choices[0].message.content
    assert content is not None
    return content


def structured(fake: FakeOpenAI, messages: list[dict[str, str]], schema: dict[str, Any] = OPENER) -> Any:
    return json.loads(content_of(fake, messages, response_format=schema_format(schema)))


def words(text: str) -> set[str]:
    return set(re.findall(r"[^\W\d_]+", text))


def test_json_schema_answer_rests_on_the_page(fake: FakeOpenAI) -> None:
    answer = structured(fake, prompt("https://acme.com/about", page=PAGE, fields={"city": "Köln"}))
    assert set(answer) == {"opener", "evidence"}
    evidence = answer["evidence"]
    assert isinstance(evidence, str) and len(evidence.split()) >= 3
    assert evidence in PAGE  # copied verbatim, the page preferred to the row
    assert evidence in answer["opener"] and "acme.com" in answer["opener"]
    assert set(re.findall(r"\d+", answer["opener"])) <= set(re.findall(r"\d+", PAGE))  # no number of its own
    assert len(answer["opener"].split()) <= 40


def test_json_schema_evidence_from_the_row_else_null(fake: FakeOpenAI) -> None:
    fields = {"company": 'Bäckerei "Sonne"', "website": "https://sonne.de"}
    answer = structured(fake, prompt("https://sonne.de", fields=fields))
    assert answer["evidence"] == 'Bäckerei "Sonne"'  # a field's value, decoded, never the URL field
    assert answer["evidence"] in answer["opener"]

    bare = structured(fake, prompt("https://globex.io"))
    assert bare["evidence"] is None
    assert "globex.io" in bare["opener"] and not re.search(r"\d", bare["opener"])

    not_nullable = {**OPENER, "properties": {"opener": {"type": "string"}, "evidence": {"type": "string"}}}
    assert structured(fake, prompt("https://globex.io"), not_nullable)["evidence"] == ""


def test_json_schema_variants_from_the_schema_or_the_prompt(fake: FakeOpenAI) -> None:
    def variants(low: int | None, high: int | None) -> dict[str, Any]:
        array: dict[str, Any] = {"type": "array", "items": {"$ref": "#/$defs/opener"}}
        array.update({k: v for k, v in (("minItems", low), ("maxItems", high)) if v is not None})
        return {"type": "object", "properties": {"openers": array}, "required": ["openers"],
                "additionalProperties": False, "$defs": {"opener": OPENER}}

    three = structured(fake, prompt("https://acme.com", page=PAGE), variants(3, 3))["openers"]
    assert len(three) == 3 and len({v["opener"] for v in three}) == 3
    assert len({" ".join(v["opener"].split()[:8]) for v in three}) == 3  # not near-duplicates of each other
    assert all(v["evidence"] in PAGE for v in three)

    two = structured(fake, prompt("https://acme.com", page=PAGE, steer="Write 2 different openers."), variants(1, 3))
    assert len(two["openers"]) == 2
    assert len(structured(fake, prompt("https://acme.com"), variants(None, None))["openers"]) == 1


def test_json_object_answers_json_and_needs_the_word_json(fake: FakeOpenAI) -> None:
    asked = prompt("https://acme.com", page=PAGE, steer="Answer in JSON.")
    answer = json.loads(content_of(fake, asked, response_format={"type": "json_object"}))
    assert set(answer) == {"opener", "evidence"} and answer["evidence"] in PAGE

    with pytest.raises(openai.BadRequestError) as info:
        content_of(fake, prompt("https://acme.com"), response_format={"type": "json_object"})
    assert info.value.param == "messages" and "json" in info.value.message


def test_strict_schemas_are_checked_as_openai_checks_them(fake: FakeOpenAI) -> None:
    loose = {**OPENER}
    del loose["additionalProperties"]
    partial = {**OPENER, "required": ["opener"]}
    for schema, words_in_message in ((loose, "additionalProperties"), (partial, "Missing 'evidence'"),
                                     ({"type": "array", "items": OPENER}, "type: \"object\"")):
        with pytest.raises(openai.BadRequestError) as info:
            content_of(fake, prompt("https://acme.com"), response_format=schema_format(schema))
        assert info.value.param == "response_format" and words_in_message in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        content_of(fake, prompt("https://acme.com"), response_format=schema_format(name="no spaces allowed"))
    assert info.value.param == "response_format.json_schema.name"
    # without strict, OpenAI takes any schema
    assert json.loads(content_of(fake, prompt("https://acme.com"), response_format=schema_format(loose, False)))
    stats = fake.stats()
    assert stats["bad_requests"] == 4 and stats["by_format"] == {"json_schema": 1}
    assert stats["refused"] == {"response_format": 3, "response_format.json_schema.name": 1}


def test_response_format_refused_when_unsupported_then_json_in_prose(fake: FakeOpenAI) -> None:
    status, config = http(fake, "POST", "/_fake/config", b'{"response_format_supported": false}')
    assert status == 200 and config["response_format_supported"] is False
    for response_format in (schema_format(), {"type": "json_object"}):
        with pytest.raises(openai.BadRequestError) as info:
            content_of(fake, prompt("https://acme.com", steer="json"), response_format=response_format)
        error = info.value.response.json()["error"]
        assert info.value.status_code == 400 and set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "response_format", None)
        assert "'response_format'" in error["message"]

    # the fallback: JSON asked for in words is answered inside prose, as a chatty server does
    ask_json = 'Answer with JSON only: {"opener": "...", "evidence": "the words of the page it rests on"}.'
    text = content_of(fake, prompt("https://acme.com", page=PAGE, steer=ask_json))
    embedded = re.search(r"\{.*\}", text)
    assert embedded and text.strip() != embedded.group(0)  # there is prose around it
    answer = json.loads(embedded.group(0))
    assert answer["evidence"] in PAGE and answer["evidence"] in answer["opener"]

    # the marker may be spread over the system and user messages, but a page saying it asks nothing
    split = prompt("https://acme.com", page=PAGE, steer="Reply in JSON.",
                   system=SYSTEM["content"] + " Give the evidence for your opener.")
    embedded = re.search(r"\{.*\}", content_of(fake, split))
    assert embedded and json.loads(embedded.group(0))["evidence"] in PAGE
    page_says_it = prompt("https://acme.com", page='Our API returns JSON: {"opener": 1, "evidence": 2}.')
    assert content_of(fake, page_says_it) == make_opener("https://acme.com")

    # a plain request stays plain
    assert content_of(fake, ask("https://acme.com")) == make_opener("https://acme.com")
    stats = fake.stats()
    assert (stats["bad_requests"], stats["ok"]) == (2, 4)
    assert stats["refused"] == {"response_format": 2}
    assert stats["by_format"] == {"prompt": 2, "text": 2}


def test_the_language_asked_for_is_written(fake: FakeOpenAI) -> None:
    german = structured(fake, prompt("https://acme.com", page=PAGE, steer="Write the opener in German."))["opener"]
    assert len(words(german) & GERMAN) >= 3 and len(words(german.replace(PAGE, "")) & ENGLISH) <= 1
    for steer in ("Language: de", 'Write in the language of ISO 639-1 code "de".'):
        coded = structured(fake, prompt("https://acme.com", steer=steer))["opener"]
        assert len(words(coded) & GERMAN) >= 3, steer
    for steer in ("Use the language to the point.", "Write in the language the page uses."):  # no language named
        assert len(words(structured(fake, prompt("https://acme.com", steer=steer))["opener"]) & ENGLISH) >= 3
    # a page that mentions a language asks for nothing
    english = structured(fake, prompt("https://acme.com", page="Our menu in German and French."))["opener"]
    assert len(words(english) & ENGLISH) >= 3 and not words(english) & {"Sie", "für", "Ihnen"}


# --------------------------------------------------------------------------- misbehaviour (issue 20)


def test_each_rule_misbehaves_on_the_first_answer_then_behaves(fake: FakeOpenAI) -> None:
    rules = ["invent", "repeat", "long", "spam", "wrong_language", "no_json"]
    fake.configure(misbehave={rule: [f"{rule.replace('_', '-')}.example"] for rule in rules})
    url = {rule: f"https://{rule.replace('_', '-')}.example/home" for rule in rules}

    def first(rule: str) -> tuple[str, Any]:
        text = content_of(fake, prompt(url[rule], page=PAGE), response_format=schema_format())
        return text, (json.loads(text) if text.startswith("{") else None)

    _, invented = first("invent")
    assert "25 years" in invented["opener"] and "25" not in PAGE
    assert invented["evidence"] and invented["evidence"] not in PAGE
    _, repeated = first("repeat")
    again = structured(fake, prompt("https://repeat.example/other", page=PAGE))  # a second row of the rule
    assert repeated == again and repeated["evidence"] is None
    _, long = first("long")
    assert len(long["opener"].split()) == 90 and long["evidence"] in PAGE
    _, spam = first("spam")
    assert "Act now!!! Limited time offer, guaranteed results" in spam["opener"]
    _, wrong = first("wrong_language")
    assert len(words(wrong["opener"]) & GERMAN) >= 3  # English was asked for
    text, no_json = first("no_json")
    assert no_json is None and "{" not in text and "acme" not in text and "no-json.example" in text

    stats = fake.stats()
    assert stats["misbehaved"] == 7 and stats["reasks"] == 0
    assert stats["misbehaved_by_rule"] == {"invent": 1, "repeat": 2, "long": 1, "spam": 1, "wrong_language": 1,
                                           "no_json": 1}

    for rule in rules:  # the re-ask behaves
        _, answer = first(rule)
        assert answer is not None and answer["evidence"] in PAGE and len(answer["opener"].split()) <= 40
        assert "!" not in answer["opener"] and len(words(answer["opener"]) & ENGLISH) >= 3
    stats = fake.stats()
    assert (stats["misbehaved"], stats["reasks"]) == (7, 6)


def test_wrong_language_answers_english_when_another_is_asked(fake: FakeOpenAI) -> None:
    fake.configure(misbehave={"wrong_language": ["acme"]})
    steer = "Write the opener in German."
    wrong = structured(fake, prompt("https://acme.com", page=PAGE, steer=steer))["opener"]
    right = structured(fake, prompt("https://acme.com", page=PAGE, steer=steer))["opener"]
    assert len(words(wrong) & ENGLISH) >= 3 and not words(wrong) & {"Sie", "für", "Ihnen"}
    assert len(words(right) & GERMAN) >= 3


def test_misbehaviour_in_plain_answers_and_no_json_only_when_json_was_asked(fake: FakeOpenAI) -> None:
    fake.configure(misbehave={"spam": ["spam.example"], "no_json": ["plain.example"]})
    assert content_of(fake, ask("https://spam.example")).startswith("Act now!!!")
    assert content_of(fake, ask("https://spam.example")) == make_opener("https://spam.example")
    assert content_of(fake, ask("https://plain.example")) == make_opener("https://plain.example")
    assert fake.stats()["misbehaved_by_rule"]["no_json"] == 0


def test_a_failed_first_request_leaves_the_first_answer_bad(fake: FakeOpenAI) -> None:
    """A retry after a 5xx is not a re-ask: nothing was answered yet."""
    fake.configure(misbehave={"invent": ["acme"]}, error_rate=1)
    with pytest.raises(openai.InternalServerError):
        structured(fake, prompt("https://acme.com", page=PAGE))
    fake.configure(error_rate=0)
    assert "25 years" in structured(fake, prompt("https://acme.com", page=PAGE))["opener"]
    assert "25 years" not in structured(fake, prompt("https://acme.com", page=PAGE))["opener"]


def test_fractions_pick_urls_by_a_seeded_hash(fake: FakeOpenAI) -> None:
    urls = [f"https://site{i}.example" for i in range(200)]

    def bad_urls(**config: Any) -> dict[str, set[str]]:
        fake.reset()
        fake.configure(**config)
        out: dict[str, set[str]] = {"invent": set(), "spam": set()}
        for url in urls:
            opener = structured(fake, prompt(url))["opener"]
            if "25 years" in opener:
                out["invent"].add(url)
            elif opener.startswith("Act now"):
                out["spam"].add(url)
        return out

    first = bad_urls(misbehave={"invent": 0.1, "spam": 0.2})
    assert 8 <= len(first["invent"]) <= 35 and 22 <= len(first["spam"]) <= 60  # 20 and 40 expected
    assert not first["invent"] & first["spam"]
    assert fake.stats()["misbehaved_by_rule"]["invent"] == len(first["invent"])
    assert bad_urls(misbehave={"invent": 0.1, "spam": 0.2}) == first  # deterministic
    other = bad_urls(misbehave={"invent": 0.1, "spam": 0.2}, misbehave_seed=7)
    assert other["invent"] != first["invent"]
    # a larger share keeps the URLs of the smaller one (same hash, longer range)
    assert bad_urls(misbehave={"invent": 0.3})["invent"] >= first["invent"]


def test_misbehave_config_is_validated(fake: FakeOpenAI) -> None:
    for body in ({"misbehave": {"lie": 0.1}}, {"misbehave": {"invent": 0.7, "spam": 0.4}},
                 {"misbehave": {"spam": [""]}}, {"misbehave": {"invent": 2}}, {"misbehave": [1]}):
        status, err = http(fake, "POST", "/_fake/config", json.dumps(body).encode())
        assert status == 400 and "misbehave" in err["error"]["message"]
    status, config = http(fake, "POST", "/_fake/config", b'{"misbehave": {"invent": 0.5, "spam": ["a.com"]}}')
    assert status == 200 and config["misbehave"] == {"invent": 0.5, "spam": ["a.com"]}


# --------------------------------------------------------------------------- prompt cache (issue 22)


LONG_SYSTEM = SYSTEM["content"] + " " + " ".join(f"Rule {i}: keep the opener warm and specific." for i in range(150))


def usage_of(fake: FakeOpenAI, messages: list[dict[str, str]], **kwargs: Any) -> Any:
    usage = sdk(fake).chat.completions.create(model="m", messages=messages, **kwargs).usage
    assert usage is not None and usage.prompt_tokens_details is not None
    return usage


def test_cached_tokens_for_a_repeated_long_prefix(fake: FakeOpenAI) -> None:
    system_tokens = prompt_tokens([{"role": "system", "content": LONG_SYSTEM}])
    assert system_tokens >= 1024
    assert usage_of(fake, ask("https://a.com")).prompt_tokens_details.cached_tokens == 0  # short prompts: never

    first = usage_of(fake, prompt("https://a.com", system=LONG_SYSTEM))
    long_page = " ".join(f"Line {i} of the page about bread and ovens." for i in range(40))
    second = usage_of(fake, prompt("https://b.com", page=long_page, system=LONG_SYSTEM))  # same system, other row
    assert first.prompt_tokens_details.cached_tokens == 0
    cached = second.prompt_tokens_details.cached_tokens
    assert cached >= 1024 and (cached - 1024) % 128 == 0 and cached <= system_tokens < second.prompt_tokens
    again = usage_of(fake, prompt("https://b.com", page=long_page, system=LONG_SYSTEM))  # all of it seen before
    assert cached < again.prompt_tokens_details.cached_tokens <= again.prompt_tokens
    stats = fake.stats()
    assert (stats["cache_hits"], stats["cached_tokens"]) == (2, cached + again.prompt_tokens_details.cached_tokens)


def test_prompt_cache_is_per_model_and_prompt_cache_key(fake: FakeOpenAI) -> None:
    def cached(url: str, model: str = "m", **kwargs: Any) -> int:
        messages = prompt(url, system=LONG_SYSTEM)
        usage = sdk(fake).chat.completions.create(model=model, messages=messages, **kwargs).usage
        assert usage is not None and usage.prompt_tokens_details is not None
        return usage.prompt_tokens_details.cached_tokens or 0

    assert cached("https://a.com", prompt_cache_key="job-1") == 0
    assert cached("https://b.com", prompt_cache_key="job-2") == 0  # another key: another cache
    assert cached("https://c.com") == 0  # no key is a key of its own
    assert cached("https://d.com", prompt_cache_key="job-1") >= 1024
    assert cached("https://e.com", model="gpt-4o", prompt_cache_key="job-1") == 0  # another model


def test_prompt_cache_threshold_and_expiry_are_configurable(fake: FakeOpenAI) -> None:
    fake.configure(prompt_cache_min_tokens=10)
    assert usage_of(fake, ask("https://a.com")).prompt_tokens_details.cached_tokens == 0
    system_only = prompt_tokens([SYSTEM])
    # the system message (its prefix: the first message) is 12 tokens with the framing: 10 are cached
    assert usage_of(fake, ask("https://b.com")).prompt_tokens_details.cached_tokens == 10 <= system_only
    fake.configure(prompt_cache_ttl_s=0)  # everything seen has expired by the next request
    assert usage_of(fake, ask("https://c.com")).prompt_tokens_details.cached_tokens == 0


def test_prompt_cache_key_refused_when_unsupported(fake: FakeOpenAI) -> None:
    assert usage_of(fake, ask("https://a.com"), prompt_cache_key="job-1").prompt_tokens == prompt_tokens(
        ask("https://a.com"))
    status, _ = http(fake, "POST", "/_fake/config", b'{"prompt_cache_key_supported": false}')
    assert status == 200
    with pytest.raises(openai.BadRequestError) as info:
        usage_of(fake, ask("https://a.com"), prompt_cache_key="job-1")
    assert info.value.param == "prompt_cache_key" and "prompt_cache_key" in info.value.message
    assert info.value.body["type"] == "invalid_request_error"
    assert usage_of(fake, ask("https://a.com")).prompt_tokens  # without the key it is answered
    assert fake.stats()["bad_requests"] == 1


def test_cli_flags_for_structured_answers_misbehaviour_and_the_cache() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.fake_openai", "--port", "0", "--no-response-format",
         "--no-prompt-cache-key", "--prompt-cache-min-tokens", "64", "--misbehave", '{"spam": 0.25}',
         "--misbehave-seed", "3"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_fake/config", timeout=5) as resp:
            config = json.loads(resp.read())
        assert (config["response_format_supported"], config["prompt_cache_key_supported"]) == (False, False)
        assert (config["prompt_cache_min_tokens"], config["misbehave"], config["misbehave_seed"]) == (
            64, {"spam": 0.25}, 3)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 0


def test_e2e_control_helpers_drive_the_new_knobs(fake: FakeOpenAI) -> None:
    from tests.support.e2e import Fake

    control = Fake(fake.url)
    assert control.misbehave({"spam": ["acme"]}, seed=5)["misbehave"] == {"spam": ["acme"]}
    assert fake.config.misbehave_seed == 5
    assert content_of(fake, ask("https://acme.com")).startswith("Act now!!!")
    assert control.quality_stats() == {"misbehaved": 1, "misbehaved_by_rule": {
        "invent": 0, "repeat": 0, "long": 0, "spam": 1, "wrong_language": 0, "no_json": 0},
        "reasks": 0, "cache_hits": 0, "cached_tokens": 0}
    control.refuse(response_format=True)
    assert (fake.config.response_format_supported, fake.config.prompt_cache_key_supported) == (False, True)
    with pytest.raises(openai.BadRequestError):
        content_of(fake, ask("https://acme.com"), response_format={"type": "json_object"})
    control.refuse()
    assert fake.config.response_format_supported is True
    assert control.prompt_cache(min_tokens=10, ttl_s=60)["prompt_cache_min_tokens"] == 10


def test_fixed_window_mode_resets_at_the_minute_and_says_so() -> None:
    from tests.support.fake_openai.ratelimit import Limit

    limit = Limit(3, "fixed", 1.0, now=120.0)  # a window opens at 120 s of the server's clock
    for t in (130.0, 131.0, 132.0):
        assert limit.wait_for(1, t) == 0
        limit.consume(1, t)
    # used up: nothing until the window's end, which is also when the budget is full again
    assert limit.wait_for(1, 150.0) == pytest.approx(30.0)
    assert (limit.remaining(150.0), limit.reset_in(150.0), limit.used_amount(150.0)) == (0, 30.0, 3)
    # the reset is the time to the window's end however much is used (not a bucket's refill time)
    assert Limit(3, "fixed", 1.0, now=120.0).reset_in(135.0) == pytest.approx(45.0)
    assert limit.wait_for(1, 180.0) == 0 and limit.remaining(180.0) == 3  # the next window: all of it
    assert limit.wait_for(5, 181.0) == 0  # more than the whole budget passes alone, at a window's start
    limit.consume(5, 181.0)
    assert limit.wait_for(1, 182.0) == pytest.approx(58.0)


def test_fixed_window_mode_through_the_server(fake: FakeOpenAI) -> None:
    fake.configure(rpm=2, tpm=0, rate_limit_mode="fixed", ratelimit_limit_headers=False)
    c = sdk(fake).chat.completions.with_raw_response
    first = c.create(model="m", messages=ask("https://acme.com"))
    assert "x-ratelimit-limit-requests" not in first.headers and "x-ratelimit-remaining-tokens" not in first.headers
    try:  # the window may turn between two calls: then the second is admitted as well
        c.create(model="m", messages=ask("https://acme.com"))
        c.create(model="m", messages=ask("https://acme.com"))
    except openai.RateLimitError as exc:
        headers = exc.response.headers
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert 0 < float(headers["retry-after"]) <= 60
    assert fake.stats()["charged_tokens"] > 0
