"""A server that states no limit but sends ``x-ratelimit-remaining-requests`` /
``x-ratelimit-reset-requests`` (gateways, Azure), against a real Redis (lua/gauge.lua): the rate
gauged from them caps the rate found, none remaining pauses every worker before the 429 comes
(shared by every limiter instance), and against the fake OpenAI server in that mode the rate
gauged from its real headers is its limit. Periods and pauses are on the Redis clock; nothing
here depends on this machine's speed.
"""

from __future__ import annotations

import httpx2
import pytest
import redis

from chalicelib.generation.ratelimit import RateLimiter
from tests.support.fake_openai import FakeOpenAI
from tests.support.gauge import LONG_MS, left, make, report, state
from tests.support.limiter import EXACT, REDIS_URL, key_prefix, redis_client


@pytest.fixture
def client():
    yield from redis_client()


@pytest.fixture
def prefix(client):
    yield from key_prefix(client, "gauge")


def succeed(limiter: RateLimiter, model: str = "m") -> float:
    """The rate in use (a second's worth booked), then a success without headers: the rate found."""
    rpm = limiter.limits(model)["in_force"]["rpm"]
    for _ in range(max(1, round(rpm / 60))):
        limiter._reserve(1, None, model)
    report(limiter, {}, model)
    return float(state(limiter, model)["found"])


def test_a_budget_half_spent_gauges_the_rate_and_caps_the_rate_found(client, prefix):
    limiter = make(client, prefix)
    report(limiter, left(14, "67ms"))  # a full bucket of 15 after one call: the size is known, no rate yet
    assert state(limiter)["cmax"] == "15" and "est" not in state(limiter)
    assert [succeed(limiter) for _ in range(3)] == [360, 720, 1440]  # slow start, as without headers
    report(limiter, left(3, "800ms"))  # 11.5 of 15 used, full again in 0.8 s: 862.5 a minute
    assert float(state(limiter)["est"]) == pytest.approx(862.5)
    assert float(state(limiter)["found"]) == pytest.approx(862.5 * 0.97)
    assert state(limiter)["gen"] == "1"  # a real cut: the bookings made at 1,440 are booked again
    limits = limiter.limits("m")
    assert limits["how"]["rpm"] == "remaining-reset" and limits["found"]["estimate"] == pytest.approx(862.5)
    assert [succeed(limiter) for _ in range(3)] == pytest.approx([862.5] * 3)  # not probed past while fresh
    report(limiter, left(0, "1s"))  # 14.5 used in 1 s: 870; the average moves a quarter of the way
    assert float(state(limiter)["est"]) == pytest.approx(862.5 + 0.25 * (870 - 862.5))


def test_a_budget_barely_used_says_nothing_and_the_estimate_ages(client, prefix):
    limiter = make(client, prefix)
    report(limiter, left(59, "1s"))  # 60, one used
    report(limiter, left(40, "20s"))  # a third used: C - k too small a share to gauge from
    assert "est" not in state(limiter)
    report(limiter, left(10, "50s"))
    assert float(state(limiter)["est"]) == pytest.approx(60000 * 49.5 / 50000)
    limiter.gauge_fresh_ms = 0.0  # aged: the increase probes past it again (a raised limit is found)
    assert limiter.limits("m")["found"]["estimate"] is None
    before = float(state(limiter)["found"])
    assert succeed(limiter) > before


def test_none_remaining_pauses_every_limiter_until_one_request_fits(client, prefix):
    first = make(client, prefix, period_ms=LONG_MS)
    report(first, left(9, "100ms"))  # 10 a second: one request per 100 ms
    other = RateLimiter(redis.Redis.from_url(REDIS_URL), rpm=0, tpm=0, prefix=prefix, start_rpm=180)
    assert other.cooldown_remaining("m") == 0.0
    report(first, left(0, "1s"))  # none left: full again in 1 s, one request fits in 1000 / 9.5 ms
    pause = other.cooldown_remaining("m")  # another process sees the pause at once
    assert 0 < pause <= 1000 / 9.5 / 1000 + EXACT
    assert 0 < other._reserve_ms(1, "m") <= 1000 / 9.5 + EXACT  # and books behind it
    assert "gen" not in state(first)  # a pause, not a cut of the rate (no generation yet)


def test_none_remaining_with_nothing_known_pauses_until_the_reset(client, prefix):
    limiter = make(client, prefix, period_ms=LONG_MS)
    report(limiter, left(0, "2s"))  # the first answer: the bucket's size is unknown
    assert 1.0 < limiter.cooldown_remaining("m") <= 2.0 + EXACT


def test_a_stated_limit_wins_over_remaining_reset(client, prefix):
    limiter = make(client, prefix)
    report(limiter, {"x-ratelimit-limit-requests": "600", **left(0, "1s")})
    assert limiter.cooldown_remaining("m") == 0.0 and "cmax" not in state(limiter)
    assert limiter.limits("m")["how"]["rpm"] == "stated"


def test_the_fake_in_remaining_reset_mode_is_gauged_at_its_limit_before_its_first_429(client, prefix):
    """Calls sent as fast as the fake answers (faster than its 600 a minute): the rate gauged from
    its real headers is its limit, and none remaining paused every worker, before any 429."""
    limiter = make(client, prefix, period_ms=LONG_MS)
    with FakeOpenAI(rpm=600, ratelimit_limit_headers=False) as fake, httpx2.Client(base_url=fake.base_url) as http:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        paused = False
        for _ in range(12):  # the bucket holds 10
            answer = http.post("/chat/completions", json=body, headers={"authorization": "Bearer sk-test"})
            if answer.status_code == 429:
                break
            assert "x-ratelimit-limit-requests" not in answer.headers
            report(limiter, dict(answer.headers))
            paused = paused or limiter.cooldown_remaining("m") > 0
    assert paused  # none remaining: everyone waits before the 429
    assert limiter.limits("m")["found"]["estimate"] == pytest.approx(600, rel=0.15)
    assert limiter.limits("m")["in_force"]["rpm"] <= 600


def test_a_429_while_gauging_shrinks_the_budget_size_it_rests_on(client, prefix):
    """The provider lowered its limit: the largest remaining seen (the budget's size) is stale and
    the rate gauged from it too high; the 429's cut shrinks both by its factor."""
    limiter = make(client, prefix)
    report(limiter, left(29, "33ms"))  # a budget of 30
    report(limiter, left(10, "650ms"))  # 19.5 used in 0.65 s: 1,800 a minute
    assert float(state(limiter)["est"]) == pytest.approx(1800)
    limiter.cooldown(0.001, model="m")  # the limit was halved: a 429
    assert (float(state(limiter)["cmax"]), float(state(limiter)["est"])) == pytest.approx((21, 1260))
    report(limiter, left(0, "1s"))  # then: 20.5 used of the 21 it now assumes, in 1 s
    assert float(state(limiter)["est"]) == pytest.approx(1260 + 0.25 * (60 * 20.5 - 1260))
