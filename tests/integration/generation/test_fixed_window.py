"""Servers whose limit is a fixed 60-second window (a counter reset at the minute: many gateways,
LiteLLM) and that send remaining/reset headers, against a real Redis (lua/gauge.lua): the window
is told from a bucket by its reset's end staying put while the budget is spent; the rate is then
the remaining spread over the time left, and none remaining pauses every worker until the
window's end (the reset honoured as the pause, not read as a rate). And against the fake OpenAI
server in its fixed-window mode. Times are on the Redis clock; the waits of a second are for the
clock to move, nothing is timed.
"""

from __future__ import annotations

import time

import httpx2
import pytest

from chalicelib.generation.ratelimit import provider_remaining
from tests.support.fake_openai import FakeOpenAI
from tests.support.gauge import LONG_MS, make, report, state
from tests.support.gauge import left as remaining_reset
from tests.support.limiter import EXACT, key_prefix, redis_client, server_ms

APART_S = 1.05  # two answers this far apart on the Redis clock tell a fixed window from a bucket


@pytest.fixture
def client():
    yield from redis_client()


@pytest.fixture
def prefix(client):
    yield from key_prefix(client, "fixed")


def left(remaining: int, reset_s: float) -> dict[str, str]:
    return remaining_reset(remaining, f"{reset_s:.3f}s")


def test_a_reset_that_stays_put_is_a_fixed_window_and_the_remaining_is_spread_over_the_time_left(client, prefix):
    limiter = make(client, prefix, period_ms=LONG_MS)
    end = server_ms(client) + 40_000  # the window ends in 40 s
    report(limiter, left(800, (end - server_ms(client)) / 1000))
    time.sleep(APART_S)
    before = server_ms(client)
    report(limiter, left(700, (end - before) / 1000))  # 100 spent, the same end
    fields = state(limiter)
    assert fields["fixed"] == "1"
    rate = 60000 * 700 / ((end - before) / 1000 * 1000)
    assert float(fields["est"]) == pytest.approx(rate, rel=0.01)
    assert float(fields["found"]) == pytest.approx(0.97 * rate, rel=0.01)
    assert limiter.limits("m")["how"]["rpm"] == "remaining-reset"
    report(limiter, left(0, (end - server_ms(client)) / 1000))  # none left: pause to the window's end
    remaining = limiter.cooldown_remaining("m")
    assert (end - server_ms(client)) / 1000 - 0.002 <= remaining <= (end - before) / 1000 + 0.002  # reset in whole ms


def test_a_bucket_drained_is_not_taken_for_a_fixed_window(client, prefix):
    limiter = make(client, prefix, period_ms=LONG_MS)
    report(limiter, left(14, 0.067))
    time.sleep(APART_S)
    report(limiter, left(6, 0.6))  # drained faster than it refills: full again later than before
    assert state(limiter)["fixed"] == "0"
    report(limiter, left(0, 1.0))  # none left: a bucket's pause, one request's worth
    assert 0 < limiter.cooldown_remaining("m") <= 1.0 / 14.5 + EXACT


def test_the_fake_in_fixed_window_mode_is_told_from_its_headers_and_paused_until_the_windows_end(client, prefix):
    limiter = make(client, prefix, period_ms=LONG_MS)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    auth = {"authorization": "Bearer sk-test"}
    with (FakeOpenAI(rpm=30, rate_limit_mode="fixed", ratelimit_limit_headers=False) as fake,
          httpx2.Client(base_url=fake.base_url) as http):
        first = http.post("/chat/completions", json=body, headers=auth)
        if provider_remaining(first.headers)[1] < 10:  # the window turns soon: start in the next one
            time.sleep(provider_remaining(first.headers)[1] + 0.1)
        answers = []
        for i in range(40):
            answer = http.post("/chat/completions", json=body, headers=auth)
            assert answer.status_code == 200 and "x-ratelimit-limit-requests" not in answer.headers
            report(limiter, dict(answer.headers))
            answers.append(provider_remaining(answer.headers))
            if answers[-1][0] == 0:
                break
            if i < 2:
                time.sleep(APART_S)
    assert state(limiter)["fixed"] == "1"
    remaining, reset = answers[-1]
    assert remaining == 0
    # a bucket's pause would be one request's worth, reset / 29.5; this is the rest of the window
    assert reset / 29.5 < limiter.cooldown_remaining("m") <= reset + EXACT
