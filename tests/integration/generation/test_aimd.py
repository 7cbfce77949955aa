"""The rate found from 429s (the AIMD controller of lua/grow.lua and lua/cooldown.lua) against a
real Redis: slow start, the cut on a 429 at most once per period, the additive increase and the
probe past the last 429, the ceiling, a stated limit resetting it, bookings made at the old rate
booked again after a cut, several processes updating one controller, and what ``limits`` says.

Periods are on the Redis clock: a test that needs one to pass waits for the Redis clock, and
one that needs none to pass uses a period no test outlasts. Nothing here depends on this
machine's speed.
"""

from __future__ import annotations

import threading

import pytest
import redis

from chalicelib.generation.ratelimit import RateLimiter
from tests.support.limiter import REDIS_URL, key_prefix, redis_client, server_ms

LONG_MS = 600_000.0  # a period no test outlasts: nothing changes twice within it


@pytest.fixture
def client():
    yield from redis_client()


@pytest.fixture
def prefix(client):
    yield from key_prefix(client, "aimd")


def make(client, prefix: str, rpm: int = 0, period_ms: float = 0.0, **kwargs) -> RateLimiter:
    limiter = RateLimiter(client, rpm=rpm, tpm=0, prefix=prefix, start_rpm=180, **kwargs)
    limiter.aimd_period_ms = period_ms  # 0: every success may raise the rate (each step is tested)
    return limiter


def controller(limiter: RateLimiter, model: str = "m") -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in limiter._redis.hgetall(limiter._keys(model)[3]).items()}


def found(limiter: RateLimiter, model: str = "m") -> float:
    return float(controller(limiter, model)["found"])


def succeed(limiter: RateLimiter, model: str = "m", headers: dict | None = None) -> float:
    """The rate in use (a second's worth of requests booked, as callers waiting for their turn
    do), then a success; the rate found after it."""
    rpm = limiter.limits(model)["in_force"]["rpm"]
    for _ in range(max(1, round(rpm / 60))):
        limiter._reserve(1, None, model)
    limiter._grown.clear()  # (this test's successes stand for many processes': none held back)
    limiter.observe(model, headers or {})
    return found(limiter, model)


def wait_for_redis_clock(limiter: RateLimiter, after_ms: float) -> None:
    """Until the Redis clock (the controller's) has passed `after_ms`."""
    key = limiter._keys("m")[3]
    while server_ms(limiter._redis, key) <= after_ms:
        threading.Event().wait(0.01)


def test_no_limit_stated_slow_start_doubles_from_the_cautious_rate(client, prefix):
    limiter = make(client, prefix)
    limiter.observe("m", {})  # the first answer states no limit
    assert controller(limiter)["phase"] == "slow" and found(limiter) == 180
    assert limiter.limits("m")["in_force"]["rpm"] == 180  # not unlimited: paced at what is found
    assert [succeed(limiter) for _ in range(4)] == [360, 720, 1440, 2880]
    assert limiter.limits("m")["in_force"]["rpm"] == 2880
    assert limiter.limits("m")["how"] == {"rpm": "found from 429s", "tpm": "none"}


def test_a_success_at_a_fraction_of_the_rate_does_not_raise_it(client, prefix):
    limiter = make(client, prefix)
    limiter.observe("m", {})
    for _ in range(5):
        limiter._grown.clear()
        limiter.observe("m", {})  # the bucket is full: the rate is not being used
    assert found(limiter) == 180


def test_a_429_cuts_the_rate_once_per_period_however_many_come(client, prefix):
    limiter = make(client, prefix)
    limiter.observe("m", {})
    succeed(limiter)
    succeed(limiter)  # 720
    limiter.aimd_period_ms = LONG_MS
    for _ in range(20):  # a burst of 429s: the calls in flight at the old rate
        limiter.cooldown(0.001, model="m")
    state = controller(limiter)
    assert (float(state["found"]), float(state["peak"]), state["phase"], state["gen"]) == (
        pytest.approx(504), 720, "avoid", "1")
    assert succeed(limiter) == pytest.approx(504)  # no increase within the period of the cut either
    limiter.aimd_period_ms = 100
    wait_for_redis_clock(limiter, float(state["cut"]) + 100)
    limiter.cooldown(0.001, model="m")  # a period later: a second cut
    assert found(limiter) == pytest.approx(504 * 0.7)


def test_after_a_cut_half_way_back_to_the_peak_then_a_probe_past_it(client, prefix):
    limiter = make(client, prefix)
    limiter.observe("m", {})
    succeed(limiter)
    succeed(limiter)  # 720
    limiter.cooldown(0.001, model="m")  # 504, peak 720; step 5 % of the peak: 36
    grown = [succeed(limiter) for _ in range(8)]
    assert grown == pytest.approx([612, 666, 702, 720, 756, 792, 864, 1008])


def test_the_ceiling_caps_the_rate_found(client, prefix):
    limiter = make(client, prefix, rpm=500)
    limiter.observe("m", {})
    assert [succeed(limiter) for _ in range(3)] == [360, 500, 500]
    assert limiter.limits("m")["in_force"]["rpm"] == 500
    assert limiter.limits("m")["how"]["rpm"] == "ceiling"
    limiter.cooldown(0.001, model="m")
    assert limiter.limits("m")["in_force"]["rpm"] == 350  # min(found, ceiling)
    assert limiter.limits("m")["how"]["rpm"] == "found from 429s"


def test_a_stated_limit_resets_the_controller_and_is_never_probed_past(client, prefix):
    limiter = make(client, prefix)
    stated = {"x-ratelimit-limit-requests": "600", "x-ratelimit-limit-tokens": "100000"}
    limiter.observe("m", stated)
    assert found(limiter) == 600 and limiter.limits("m")["how"] == {"rpm": "stated", "tpm": "stated"}
    limiter.cooldown(0.001, model="m")  # the stated limit was wrong (or shared): cut below it
    assert limiter.limits("m")["in_force"]["rpm"] == 420
    assert limiter.limits("m")["how"]["rpm"] == "found from 429s"
    assert [succeed(limiter, headers=stated) for _ in range(6)][-1] == 600  # back up, and no further
    assert limiter.limits("m")["how"]["rpm"] == "stated"
    limiter._seen.clear()
    limiter.observe("m", {**stated, "x-ratelimit-limit-requests": "1200"})  # a tier upgrade
    assert found(limiter) == 1200 and limiter.limits("m")["in_force"]["rpm"] == 1200


def test_a_cut_forgives_the_bookings_made_at_the_old_rate_and_they_book_again(client, prefix):
    limiter = make(client, prefix)
    limiter.observe("m", {})  # 180 a minute: 3 at once, then one every 333 ms
    waits = [limiter._book(1, None, "m") for _ in range(8)]
    assert waits[-1][1] > 1000 and {w[3] for w in waits} == {0}
    limiter.cooldown(0.001, model="m")
    requests_bucket = limiter._keys("m")[0]
    assert float(client.hget(requests_bucket, "level")) >= 0  # the 5 not yet due: forgiven
    assert limiter._cooldown_state("m")[1] == 1  # their callers find a new generation on waking

    booked: list[int] = []
    other = make(client, prefix)

    def sleep(seconds: float) -> None:  # another process's 429 cuts the rate while this caller waits
        if not booked:
            booked.append(1)
            other.cooldown(0.001, model="m")
        threading.Event().wait(seconds)

    calls = []
    waiter = make(client, prefix, sleep=sleep)
    original = waiter._book
    waiter._book = lambda *a, **k: calls.append(1) or original(*a, **k)
    waiter.acquire(1, model="m")
    assert len(calls) == 2  # booked at the old rate, then again at the new one


def test_several_processes_update_one_controller(client, prefix):
    first = make(client, prefix, period_ms=LONG_MS)
    first.observe("m", {})
    limiters = [RateLimiter(redis.Redis.from_url(REDIS_URL), rpm=0, tpm=0, prefix=prefix, start_rpm=180)
                for _ in range(8)]
    for limiter in limiters:
        limiter.aimd_period_ms = LONG_MS
    for _ in range(3):
        first._reserve(1, None, "m")  # the rate in use
    barrier = threading.Barrier(len(limiters))

    def run(limiter: RateLimiter, action) -> None:
        barrier.wait()
        for _ in range(25):
            limiter._grown.clear()
            action(limiter)

    def all_at_once(action) -> None:
        threads = [threading.Thread(target=run, args=(limiter, action)) for limiter in limiters]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    all_at_once(lambda limiter: limiter.observe("m", {}))
    assert found(first) == 180  # 200 successes within one period of the first answer: no increase
    key = first._keys("m")[3]
    # that period over, and the rate was used through it (as many bookings as 180 a minute makes)
    client.hset(key, mapping={"last": 0, "win": server_ms(client, key) - LONG_MS, "used": 1800})
    all_at_once(lambda limiter: limiter.observe("m", {}))
    assert found(first) == 360  # 200 successes from 8 processes: one doubling
    all_at_once(lambda limiter: limiter.cooldown(0.001, model="m"))
    state = controller(first)
    assert (float(state["found"]), state["gen"]) == (pytest.approx(252), "1")  # 200 429s: one cut
    for limiter in limiters:
        limiter._redis.close()


def test_limits_before_any_answer_say_cautious_start(client, prefix):
    limiter = make(client, prefix)
    assert limiter.limits("m") == {"learned": None, "ceiling": {"rpm": 0, "tpm": 0}, "found": None,
                                   "in_force": {"rpm": 180, "tpm": 0},
                                   "how": {"rpm": "cautious start", "tpm": "none"}}
    limiter.observe("m", {})
    assert limiter.limits("m")["found"] == {"rpm": 180.0, "phase": "slow start", "estimate": None, "tokens": None}
