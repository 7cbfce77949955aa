"""Rate limiter logic that needs no Redis: header parsing, token estimates, sleeping and retrying."""

from __future__ import annotations

import email.utils
import time

import pytest
import redis

from chalicelib.generation.ratelimit import (
    LimiterStopped,
    RateLimiter,
    estimate_tokens,
    retry_after_seconds,
)
from chalicelib.generation.ratelimit import limiter as ratelimit

# -- retry_after_seconds ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"content-type": "application/json"}, None),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "3"}, 3.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"x-ratelimit-reset-requests": "1s"}, 1.0),
        ({"x-ratelimit-reset-tokens": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-tokens": "20ms"}, 0.02),
        ({"x-ratelimit-reset-requests": "1.5s"}, 1.5),
        ({"x-ratelimit-reset-requests": "1h2m3.5s"}, 3723.5),
        ({"x-ratelimit-reset-requests": "500us"}, 0.0005),
        ({"retry-after-ms": "100", "retry-after": "2", "x-ratelimit-reset-tokens": "750ms"}, 2.0),
        ({"x-ratelimit-reset-requests": "120ms", "x-ratelimit-reset-tokens": "2.5s"}, 2.5),
        ({"retry-after": "soon"}, None),
        ({"x-ratelimit-reset-tokens": "1x"}, None),
        ({"x-ratelimit-reset-tokens": "s1"}, None),
        ({"retry-after": "soon", "x-ratelimit-reset-tokens": "1s"}, 1.0),
        ({"retry-after": "-5"}, 0.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # in the past
    ],
)
def test_retry_after_seconds(headers, expected):
    result = retry_after_seconds(headers)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def test_retry_after_http_date_in_the_future():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert retry_after_seconds({"retry-after": when}) == pytest.approx(30, abs=1.5)


# -- estimate_tokens --------------------------------------------------------------------------


def test_estimate_tokens_counts_chars_messages_and_max_tokens():
    messages = [
        {"role": "system", "content": "x" * 400},  # 100 tokens
        {"role": "user", "content": "y" * 41},  # 10.25 -> rounded up with the rest
    ]
    assert estimate_tokens(messages, max_tokens=256) == 111 + 2 * 4 + 256


def test_estimate_tokens_handles_content_parts_names_and_empty_content():
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "a" * 8}, {"type": "image_url", "image_url": {}}]},
        {"role": "assistant", "content": None, "name": "bot1"},
    ]
    assert estimate_tokens(messages, max_tokens=0) == 3 + 2 * 4
    assert estimate_tokens([], max_tokens=100) == 100


# -- sleeping, cooldown re-check and Redis outages, with a scripted fake Redis ---------------


class FakeRedis:
    """Answers the limiter's scripts from queues of canned replies."""

    def __init__(self, acquire=(), cooldown_left=(), fail: Exception | None = None):
        self.replies = {
            ratelimit._ACQUIRE_LUA: list(acquire),
            ratelimit._COOLDOWN_LEFT_LUA: list(cooldown_left),
            ratelimit._COOLDOWN_LUA: [],
            ratelimit._REFUND_LUA: [],
            ratelimit._LEARN_LUA: [],
            ratelimit._GROW_LUA: [],
        }
        self.calls: list[str] = []
        self.fail = fail

    def register_script(self, source):
        def run(keys=(), args=()):
            self.calls.append({ratelimit._ACQUIRE_LUA: "acquire", ratelimit._GROW_LUA: "grow"}.get(source, "other"))
            if self.fail is not None:
                raise self.fail
            queue = self.replies[source]
            reply = queue.pop(0) if queue else b"0.000"
            if source is ratelimit._ACQUIRE_LUA and reply[:1] not in (b"g", b"r"):
                reply = b"g" + reply  # granted, due in that many ms
            return reply

        return run


def test_an_accounts_full_share_is_asked_again_later_without_reserving():
    sleeps: list[float] = []
    fake = FakeRedis(acquire=[b"r400.000", b"r100.000", b"g0.000"])
    limiter = RateLimiter(fake, rpm=60, tpm=0, sleep=sleeps.append)
    limiter.acquire(1, account="a1")
    assert fake.calls == ["acquire"] * 3
    # each "come back later" is slept (with up to 50 % jitter against a thundering herd)
    assert 0.4 <= sleeps[0] <= 0.6 and 0.1 <= sleeps[1] <= 0.15 and len(sleeps) == 2


def test_long_waits_are_slept_in_slices_of_at_most_one_second():
    sleeps: list[float] = []
    limiter = RateLimiter(FakeRedis(acquire=[b"3500.000"]), rpm=60, tpm=0, sleep=sleeps.append)
    assert limiter.acquire(1) == pytest.approx(3.5)
    assert sleeps == pytest.approx([1.0, 1.0, 1.0, 0.5])


def test_should_stop_interrupts_a_long_wait():
    sleeps: list[float] = []
    limiter = RateLimiter(FakeRedis(acquire=[b"10000.000"]), rpm=60, tpm=0, sleep=sleeps.append)
    with pytest.raises(LimiterStopped):
        limiter.acquire(1, should_stop=lambda: len(sleeps) >= 2)
    assert sleeps == [1.0, 1.0]


def test_an_immediate_grant_does_not_sleep_or_recheck():
    fake = FakeRedis(acquire=[b"0.000"])
    limiter = RateLimiter(fake, rpm=60, tpm=0, sleep=lambda s: pytest.fail("slept"))
    assert limiter.acquire(1) == 0.0
    assert fake.calls == ["acquire"]


def test_a_cooldown_found_after_sleeping_is_slept_off_then_a_new_reservation_is_taken():
    sleeps: list[float] = []
    fake = FakeRedis(acquire=[b"200.000", b"0.000"], cooldown_left=[b"1500.000"])
    limiter = RateLimiter(fake, rpm=60, tpm=0, sleep=sleeps.append)
    assert limiter.acquire(1) == pytest.approx(0.2 + 1.5)
    assert sleeps == pytest.approx([0.2, 1.0, 0.5])
    assert fake.calls == ["acquire", "other", "acquire"]


def test_outage_backs_off_exponentially_with_a_cap_and_never_grants():
    sleeps: list[float] = []
    fake = FakeRedis(fail=redis.ConnectionError("refused"))
    limiter = RateLimiter(fake, rpm=60, tpm=0, sleep=sleeps.append)
    limiter.backoff_initial, limiter.backoff_max = 0.5, 2.0
    with pytest.raises(LimiterStopped):
        limiter.acquire(1, should_stop=lambda: len(fake.calls) >= 8)
    assert len(fake.calls) == 8
    assert 0 < sum(sleeps) <= 0.5 + 1 + 2 * 5
    assert max(sleeps) <= 1.0  # sliced


def test_redis_recovering_lets_the_caller_through_with_the_backoff_counted():
    class Flaky(FakeRedis):
        def register_script(self, source):
            inner = super().register_script(source)

            def run(keys=(), args=()):
                if len(self.calls) < 2:
                    self.calls.append("fail")
                    raise redis.TimeoutError("slow")
                return inner(keys=keys, args=args)

            return run

    sleeps: list[float] = []
    limiter = RateLimiter(Flaky(acquire=[b"0.000"]), rpm=60, tpm=0, sleep=sleeps.append)
    waited = limiter.acquire(1)
    assert len(sleeps) == 2 and waited == pytest.approx(sum(sleeps))


def test_other_redis_errors_are_not_swallowed():
    limiter = RateLimiter(FakeRedis(fail=redis.ResponseError("ERR wrong number of arguments")), rpm=60, tpm=0)
    with pytest.raises(redis.ResponseError):
        limiter.acquire(1)


def test_arguments_are_validated():
    with pytest.raises(ValueError):
        RateLimiter(FakeRedis(), rpm=-1, tpm=0)
    with pytest.raises(ValueError):
        RateLimiter(FakeRedis(), rpm=1, tpm=0).acquire(-5)


def test_nothing_to_refund_skips_redis_but_no_ceiling_still_refunds_a_learned_limit():
    fake = FakeRedis()
    RateLimiter(fake, rpm=60, tpm=1000).refund(100, 100)
    RateLimiter(fake, rpm=60, tpm=1000).cooldown(0)
    assert fake.calls == []
    limiter = RateLimiter(fake, rpm=60, tpm=0)
    limiter.refund(100, 10)  # no ceiling: the provider's TPM may be known
    assert len(fake.calls) == 1
    limiter.observe("m", {"x-ratelimit-limit-requests": "500"})  # a provider that states no TPM
    limiter.refund(100, 10, model="m")
    assert fake.calls[1:] == ["other", "grow"]  # (the observation's write, and the success reported)


# -- the rate controller's seams: a cut makes earlier bookings stale; successes reported sparingly --


def test_a_booking_made_before_a_cut_of_the_rate_is_booked_again():
    sleeps: list[float] = []
    # booked in generation 4 at the old rate; on waking the controller is in generation 5 (a 429
    # cut the rate and forgave every booking not yet due), the cooldown already over
    fake = FakeRedis(acquire=[b"g200.000:0:4", b"g50.000:0:5"], cooldown_left=[b"0.000 5", b"0.000 5"])
    limiter = RateLimiter(fake, rpm=0, tpm=0, sleep=sleeps.append)
    assert limiter.acquire(1) == pytest.approx(0.25)
    assert fake.calls == ["acquire", "other", "acquire", "other"]
    assert sleeps == pytest.approx([0.2, 0.05])


def test_a_booking_of_the_current_generation_goes_ahead():
    fake = FakeRedis(acquire=[b"g200.000:0:4"], cooldown_left=[b"0.000 4"])
    limiter = RateLimiter(fake, rpm=0, tpm=0, sleep=lambda s: None)
    limiter.acquire(1)
    assert fake.calls == ["acquire", "other"]


def test_successes_are_reported_at_most_four_times_a_period_by_a_process():
    fake = FakeRedis()
    limiter = RateLimiter(fake, rpm=0, tpm=0)
    limiter.aimd_period_ms = 60_000  # (a period no test outlasts)
    for _ in range(50):
        limiter.observe("m", {})
    limiter.observe("other-model", {})
    limiter.observe("m", {}, ok=False)  # a 429's headers: no success
    assert fake.calls.count("grow") == 2  # one per model
