"""Limits learned from the provider, per model, against a real Redis (and, at the end, the fake
OpenAI server through the real SDK).

The provider's ``x-ratelimit-limit-*`` headers set each model's limits; OPENAI_RPM / OPENAI_TPM
are ceilings over them; until a model's provider has answered, a cautious start; each model has
its own buckets and cooldown. Times are the limiter's own (reservations on the Redis clock, sleeps
through the ``sleep`` hook); nothing here depends on this machine's speed.
"""

from __future__ import annotations

import pytest

from chalicelib.generation.client import build_client
from chalicelib.generation.openers import OpenerGenerator
from chalicelib.generation.ratelimit import RateLimiter, provider_limits
from chalicelib.settings import Settings
from tests.support.fake_openai import FakeOpenAI
from tests.support.limiter import EXACT, expected_dues, key_prefix, redis_client


@pytest.fixture
def client():
    yield from redis_client()


@pytest.fixture
def prefix(client):
    yield from key_prefix(client, "learned")


def headers(rpm: int | None = None, tpm: int | None = None) -> dict[str, str]:
    out = {}
    if rpm is not None:
        out["x-ratelimit-limit-requests"] = str(rpm)
    if tpm is not None:
        out["x-ratelimit-limit-tokens"] = str(tpm)
    return out


def reservations(limiter: RateLimiter, count: int, model: str) -> tuple[list[float], list[float]]:
    """Reserve `count` requests of `model` without sleeping: (the script's now of each, when each
    is due), on the Redis clock (the requests bucket's `ts` is the script's now)."""
    stamps, due = [], []
    for _ in range(count):
        wait = limiter._reserve(1, None, model)[1]
        stamps.append(float(limiter._redis.hget(limiter._keys(model)[0], "ts")))
        due.append(stamps[-1] + wait)
    return stamps, due


def expect_bucket(limiter: RateLimiter, count: int, model: str, rpm: int,
                  start: tuple[float, float] | None = None) -> None:
    """`count` reservations are due exactly as a bucket of `rpm` (burst one second's worth) says,
    full at the first of them, or in the state `start` (level, ts)."""
    stamps, due = reservations(limiter, count, model)
    assert due == pytest.approx(expected_dues(stamps, rpm / 60000, max(1, rpm / 60), start=start), abs=EXACT)


def dues(limiter: RateLimiter, count: int, model: str) -> list[float]:
    """The waits in ms of `count` reservations."""
    stamps, due = reservations(limiter, count, model)
    return [d - t for t, d in zip(stamps, due, strict=True)]


@pytest.mark.parametrize("sent, expected", [
    ({"x-ratelimit-limit-requests": "500", "x-ratelimit-limit-tokens": "200000"}, (500, 200_000)),
    ({"X-RateLimit-Limit-Requests": "10000"}, (10_000, -1)),  # any case; a missing one is -1
    ({}, (-1, -1)),
    ({"x-ratelimit-limit-requests": "0", "x-ratelimit-limit-tokens": "-5"}, (-1, -1)),
    ({"x-ratelimit-limit-requests": "５００", "x-ratelimit-limit-tokens": "1e6"}, (-1, -1)),  # non-ASCII digits
    ({"x-ratelimit-limit-requests": "1" * 13, "x-ratelimit-limit-tokens": " 300 "}, (-1, 300)),
])
def test_provider_limits_reads_only_plain_positive_numbers(sent, expected):
    assert provider_limits(sent) == expected


def test_a_cautious_start_until_the_provider_answers_then_its_limits(client, prefix):
    limiter = RateLimiter(client, rpm=0, tpm=0, prefix=prefix, start_rpm=180)  # 3 at once, then 3/s
    expect_bucket(limiter, 5, "gpt-4o-mini", 180)
    assert limiter.limits("gpt-4o-mini")["learned"] is None
    assert limiter.limits("gpt-4o-mini")["in_force"] == {"rpm": 180, "tpm": 0}

    limiter.observe("gpt-4o-mini", headers(6000, 2_000_000))  # 100 a second, burst 100
    assert limiter.limits("gpt-4o-mini") == {"learned": {"rpm": 6000, "tpm": 2_000_000},
                                             "ceiling": {"rpm": 0, "tpm": 0},
                                             "found": {"rpm": 6000.0, "phase": "additive increase",
                                                       "estimate": None, "tokens": None},
                                             "in_force": {"rpm": 6000, "tpm": 2_000_000},
                                             "how": {"rpm": "stated", "tpm": "stated"}}
    # the cautious start's bookings not yet due are dropped (level 0, not -2), but the start's
    # burst stays used: the bucket goes on from there at the real limit, not full again
    level, ts = (float(v) for v in client.hmget(limiter._keys("gpt-4o-mini")[0], "level", "ts"))
    assert level == 0
    expect_bucket(limiter, 150, "gpt-4o-mini", 6000, start=(level, ts))


def test_a_wait_booked_in_the_cautious_start_is_booked_again_once_the_limits_are_known(client, prefix):
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # the provider answers while this caller sleeps
        slept.append(seconds)
        learner.observe("m", headers(60_000, 0))

    limiter = RateLimiter(client, rpm=0, tpm=0, prefix=prefix, start_rpm=60, sleep=sleep)  # 1 at once, 1/s
    learner = RateLimiter(client, rpm=0, tpm=0, prefix=prefix, start_rpm=60)  # another process
    assert limiter.acquire(1, model="m") == 0.0
    waited = limiter.acquire(1, model="m")  # booked a second ahead at the start's rate
    # one short slice, not the second; then booked again at the real rate: at most one of its slots
    # (the start's request was just sent, so its bucket is not full again)
    assert slept[0] == limiter.start_slice and len(slept) <= 2 and sum(slept[1:]) <= 60 / 60_000
    assert waited == pytest.approx(sum(slept))


def test_set_values_are_ceilings_over_learned_limits(client, prefix):
    limiter = RateLimiter(client, rpm=600, tpm=100_000, prefix=prefix, start_rpm=180)
    assert limiter.limits("m")["in_force"] == {"rpm": 180, "tpm": 100_000}  # the start is the lower
    limiter.observe("m", headers(10_000, 50_000))
    assert limiter.limits("m")["in_force"] == {"rpm": 600, "tpm": 50_000}  # each the lower of the two
    expect_bucket(limiter, 15, "m", 600)


def test_a_server_that_sends_no_limits_gets_the_rate_found_from_its_429s_under_the_ceiling(client, prefix):
    configured = RateLimiter(client, rpm=600, tpm=0, prefix=prefix, start_rpm=180)
    configured.observe("m", {})
    assert configured.limits("m")["learned"] == {"rpm": -1, "tpm": -1}
    # not the ceiling at once (a server limited below it would answer a wall of 429s), nor
    # unlimited: the rate controller's, from the cautious start's rate up (tests: test_aimd.py)
    assert configured.limits("m")["in_force"] == {"rpm": 180, "tpm": 0}
    assert configured.limits("m")["how"] == {"rpm": "found from 429s", "tpm": "none"}
    expect_bucket(configured, 10, "m", 180)


def test_a_changed_limit_is_followed_with_the_next_answer(client, prefix):
    limiter = RateLimiter(client, rpm=0, tpm=0, prefix=prefix)
    limiter.observe("m", headers(600, 100_000))
    expect_bucket(limiter, 15, "m", 600)
    other_process = RateLimiter(client, rpm=0, tpm=0, prefix=prefix)
    other_process.observe("m", headers(1200, 100_000))  # a tier upgrade, seen by another process
    assert limiter.limits("m")["in_force"]["rpm"] == 1200
    # a process writes the same limits again only after OBSERVE_EVERY_S: one write, not one per answer
    limiter.observe("m", headers(1200, 100_000))
    client.delete(limiter._keys("m")[3])
    limiter.observe("m", headers(1200, 100_000))
    assert limiter.limits("m")["learned"] is None


def test_each_model_has_its_own_buckets_and_cooldown(client, prefix):
    limiter = RateLimiter(client, rpm=0, tpm=0, prefix=prefix)
    limiter.observe("gpt-4o", headers(60, 10_000))  # 1 at once, then one a second
    limiter.observe("gpt-4o-mini", headers(6000, 2_000_000))
    expect_bucket(limiter, 3, "gpt-4o", 60)
    expect_bucket(limiter, 50, "gpt-4o-mini", 6000)  # untouched by gpt-4o's queue
    limiter.cooldown(30, model="gpt-4o")
    assert limiter.cooldown_remaining("gpt-4o") > 29 and limiter.cooldown_remaining("gpt-4o-mini") == 0.0
    assert dues(limiter, 1, "gpt-4o-mini") == [0.0]


def test_the_generator_learns_the_fake_providers_limits_per_model(client, prefix):
    with FakeOpenAI(rpm=3000, tpm=1_000_000) as fake:
        settings = Settings(openai_dummy_mode=False, openai_base_url=fake.base_url, openai_api_key="sk-test")
        limiter = RateLimiter(client, rpm=0, tpm=0, prefix=prefix, start_rpm=180)
        generator = OpenerGenerator(build_client(settings), limiter, "gpt-4o-mini", max_retries=1)
        assert generator.generate("https://acme.com").text
        assert limiter.limits("gpt-4o-mini")["learned"] == {"rpm": 3000, "tpm": 1_000_000}
        assert limiter.limits("gpt-4o")["learned"] is None  # another model is not assumed alike
        fake.configure(rpm=6000)  # the provider raises the limit
        limiter._seen.clear()  # (as another process would: no local memory of the last write)
        generator.generate("https://globex.com", model="gpt-4o")
        generator.generate("https://initech.com")
        assert limiter.limits("gpt-4o-mini")["in_force"]["rpm"] == 6000
        assert limiter.limits("gpt-4o")["learned"] == {"rpm": 6000, "tpm": 1_000_000}


def test_learned_limits_keys_stay_in_the_limiters_hash_slot(client, prefix):
    limiter = RateLimiter(client, rpm=0, tpm=0, prefix=prefix)
    limiter.observe("weird model/{name}", headers(60, 60))
    keys = [k.decode() for k in client.scan_iter(match=f"{{{prefix}}}:*")]
    assert keys == [f"{{{prefix}}}:m:weird_model/_name_:limits"]
    assert client.pttl(keys[0]) > 3_500_000  # forgotten an hour after the last answer
