"""A server that states no token limit but sends ``x-ratelimit-remaining-tokens`` /
``x-ratelimit-reset-tokens``, against a real Redis: the token rate is gauged from them as the
request rate is from its pair (lua/gauge.lua, one design parametrised by the dimension) and is
the token bucket's limit; it grows once its estimate is stale (lua/grow.lua), a 429 that shows the
token budget used up cuts it and not the request rate (lua/cooldown.lua), none remaining pauses
every worker for one call's worth; and against the fake OpenAI server limited in tokens only,
the rate gauged from its real headers is its limit. Times are on the Redis clock; nothing here
depends on this machine's speed.
"""

from __future__ import annotations

import httpx2
import pytest

from chalicelib.generation.ratelimit import RateLimiter, estimate_tokens
from tests.support.fake_openai import FakeOpenAI
from tests.support.gauge import LONG_MS, make, report, state
from tests.support.gauge import left as remaining_reset
from tests.support.limiter import EXACT, key_prefix, redis_client


@pytest.fixture
def client():
    yield from redis_client()


@pytest.fixture
def prefix(client):
    yield from key_prefix(client, "gauge-tokens")


def left(remaining: int, reset: str) -> dict[str, str]:
    return remaining_reset(remaining, reset, "tokens")


def gauged(limiter: RateLimiter) -> RateLimiter:
    """A budget of 6,000 tokens (a full bucket after one call of 100), then 4,000 of it used
    with 0.6 s to go until it is full again: 60000 * 3999.5 / 600 a minute."""
    report(limiter, left(5900, "15ms"))
    assert state(limiter)["t_cmax"] == "6000" and "t_est" not in state(limiter)  # the size, no rate yet
    report(limiter, left(2000, "600ms"))
    return limiter


ESTIMATE = 60000 * 3999.5 / 600


def test_a_token_budget_half_spent_gauges_the_tokens_per_minute_and_paces_the_token_bucket(client, prefix):
    limiter = gauged(make(client, prefix))
    fields = state(limiter)
    assert float(fields["t_est"]) == pytest.approx(ESTIMATE)
    assert float(fields["t_found"]) == pytest.approx(ESTIMATE * 0.97)
    limits = limiter.limits("m")
    assert limits["in_force"]["tpm"] == int(ESTIMATE * 0.97) and limits["how"]["tpm"] == "remaining-reset"
    assert limits["found"]["tokens"]["estimate"] == pytest.approx(ESTIMATE)
    assert fields["phase"] == "slow" and "est" not in fields  # the request controller is left alone
    # the token bucket paces at it: one second's worth now, the next second's worth a second later
    per_second = ESTIMATE * 0.97 / 60
    assert limiter._reserve_ms(int(per_second), "m") == 0
    assert limiter._reserve_ms(int(per_second), "m") == pytest.approx(1000 * int(per_second) / per_second, abs=5)
    # each booking at the gauged rate is counted as its use (grow.lua grows it only while used)
    assert int(state(limiter)["t_used"]) == 2 * int(per_second)


def test_a_stated_token_limit_wins_and_a_ceiling_caps_the_gauged_one(client, prefix):
    limiter = make(client, prefix)
    report(limiter, {"x-ratelimit-limit-tokens": "90000", **left(0, "1s")})
    assert limiter.cooldown_remaining("m") == 0.0 and "t_cmax" not in state(limiter)
    assert limiter.limits("m")["how"]["tpm"] == "stated"
    capped = gauged(make(client, f"{prefix}:ceiling", tpm=100_000))
    assert capped.limits("m")["in_force"]["tpm"] == 100_000 and capped.limits("m")["how"]["tpm"] == "ceiling"


def test_the_token_rate_grows_once_its_estimate_is_stale_and_only_while_used(client, prefix):
    limiter = gauged(make(client, prefix))
    before = float(state(limiter)["t_found"])
    report(limiter, {})  # fresh: not probed past the estimate
    assert float(state(limiter)["t_found"]) == pytest.approx(before)
    limiter.gauge_fresh_ms = 0.0  # aged: the budget stopped draining at it, the probing goes on
    report(limiter, {})  # but nothing was booked at it: a success says nothing about a higher rate
    assert float(state(limiter)["t_found"]) == pytest.approx(before)
    limiter._reserve(int(before), None, "m")  # a minute's worth booked: the rate is used
    report(limiter, {})
    peak = float(state(limiter)["t_peak"])
    assert peak == pytest.approx(ESTIMATE)
    assert float(state(limiter)["t_found"]) == pytest.approx(min(peak, before + max(0.05 * peak, (peak - before) / 2)))


def test_a_429_on_tokens_cuts_the_token_rate_and_one_on_requests_the_request_rate(client, prefix):
    limiter = gauged(make(client, prefix))
    tokens, requests = float(state(limiter)["t_found"]), float(state(limiter)["found"])
    limiter.cooldown(0.001, model="m", spent=("tokens",))
    fields = state(limiter)
    assert float(fields["t_found"]) == pytest.approx(tokens * 0.7) and float(fields["found"]) == requests
    # the budget's size the estimate rests on shrinks with it (the provider lowered its limit)
    assert (float(fields["t_cmax"]), float(fields["t_est"])) == pytest.approx((6000 * 0.7, ESTIMATE * 0.7))
    assert fields["gen"] == "1"  # the bookings made at the old rate are booked again
    limiter.cooldown(0.001, model="m")  # a 429 that does not say which: the request rate, as before
    assert float(state(limiter)["found"]) == pytest.approx(requests * 0.7)
    assert float(state(limiter)["t_found"]) == pytest.approx(tokens * 0.7)


def test_a_429_on_tokens_cuts_the_request_rate_when_no_token_rate_is_gauged(client, prefix):
    limiter = make(client, prefix)
    report(limiter, {})
    requests = float(state(limiter)["found"])
    limiter.cooldown(0.001, model="m", spent=("tokens",))  # a stated TPM, or none sent: nothing else to cut
    assert float(state(limiter)["found"]) == pytest.approx(max(6.0, requests * 0.7))


def test_no_tokens_remaining_pauses_every_worker_for_one_calls_worth(client, prefix):
    limiter = make(client, prefix, period_ms=LONG_MS)
    report(limiter, left(5700, "50ms"), tokens=300)  # a budget of 6,000 (one call of 300 taken)
    report(limiter, left(0, "1s"), tokens=300)  # none left: a call of 300 fits in 300 / 5999.5 s
    assert 0 < limiter.cooldown_remaining("m") <= 1000 * 300 / 5999.5 / 1000 + EXACT


def test_the_fake_limited_in_tokens_is_gauged_at_its_limit(client, prefix):
    """Calls sent as fast as the fake answers, each reported with what it was booked at: the token
    rate gauged from the fake's real headers (no -limit-*, no request limit) is its TPM."""
    limiter = make(client, prefix, period_ms=LONG_MS)
    messages = [{"role": "user", "content": "hi"}]
    body = {"model": "m", "messages": messages, "max_tokens": 100}
    with (FakeOpenAI(tpm=60_000, ratelimit_limit_headers=False) as fake,
          httpx2.Client(base_url=fake.base_url) as http):
        for _ in range(30):  # the bucket holds 1,000 tokens: about 9 calls
            answer = http.post("/chat/completions", json=body, headers={"authorization": "Bearer sk-test"})
            if answer.status_code == 429:
                break
            assert not {"x-ratelimit-limit-tokens", "x-ratelimit-remaining-requests"} & set(answer.headers)
            report(limiter, dict(answer.headers), tokens=estimate_tokens(messages, 100))
    limits = limiter.limits("m")
    assert limits["found"]["tokens"]["estimate"] == pytest.approx(60_000, rel=0.15)
    assert limits["in_force"]["tpm"] <= 60_000 and limits["how"]["tpm"] == "remaining-reset"


def test_the_gauged_token_bucket_is_refunded_to_what_the_provider_charged_not_to_the_usage(client, prefix):
    limiter = gauged(make(client, prefix, period_ms=LONG_MS))
    per_second = ESTIMATE * 0.97 / 60
    limiter._reserve(int(per_second), None, "m")  # the bucket emptied: level 0
    key = limiter._keys("m")[1]
    before, at = (float(x) for x in client.hmget(key, "level", "ts"))
    limiter.refund(500, 200, model="m", charged=450)  # booked at 500; charged 450 (prompt + max_tokens)
    after, then = (float(x) for x in client.hmget(key, "level", "ts"))
    refilled = (then - at) * ESTIMATE * 0.97 / 60000
    assert after - before - refilled == pytest.approx(50, abs=0.5)  # not 300: the usage is not what it lost
