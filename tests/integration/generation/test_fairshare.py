"""Fair share between accounts, against the real Redis: the limiter gives each active account its
share of the provider rate, and a job keeps only a window of chunk messages out at once.

Counts are taken on the limiter's own (Redis server) clock; margins hold under load."""

from __future__ import annotations

import threading

import pytest
import redis

from chalicelib.generation.ratelimit import LimiterStopped, RateLimiter
from tests.support.limiter import REDIS_URL, fair_turns, key_prefix, redis_client, server_ms


@pytest.fixture
def client():
    yield from redis_client()


@pytest.fixture
def prefix(client):
    yield from key_prefix(client, "fairshare")


def test_one_account_alone_gets_the_whole_rate_booked_at_most_max_ahead(client, prefix):
    limiter = RateLimiter(client, rpm=600, tpm=0, prefix=prefix)  # 10/s, burst 10
    answers = [limiter._reserve(1, "a") for _ in range(30)]
    due = [ms for ok, ms, _ in answers if ok]
    # the burst at once, then one second ahead at 10/s: about 20 grants; the rest are told to
    # come back later (nothing reserved for them), so nobody queues minutes ahead
    assert due[:10] == [0.0] * 10
    assert 19 <= len(due) <= 23, len(due)
    assert max(due) <= limiter.max_ahead_ms
    assert [ok for ok, _, _ in answers] == [True] * len(due) + [False] * (30 - len(due))


def test_a_second_active_account_halves_the_first_ones_share(client, prefix):
    limiter = RateLimiter(client, rpm=600, tpm=0, prefix=prefix)
    limiter.max_ahead_ms = 0.0  # only what is due now: counts show the shares directly
    for _ in range(10):
        assert limiter._reserve(1, "a")[0]  # a's full burst while alone
    assert not limiter._reserve(1, "a")[0]
    assert limiter._reserve(1, "b")[0]  # b joins: its own share, at once
    while limiter._reserve(1, "b")[0]:  # b's burst (one second of its share)
        pass
    # from now on each refills at 5/s: over the same span b gets as many turns as a
    counts = fair_turns(limiter, lambda: server_ms(client))
    assert counts["a"] + counts["b"] <= 30 + 3, counts  # together never more than the whole rate
    assert abs(counts["a"] - counts["b"]) <= 3, counts
    assert min(counts.values()) >= 10, counts  # ~15 each at 5/s for 3 s


def test_a_small_account_is_not_queued_behind_a_big_ones_threads(client, prefix):
    """Thirty threads of account A saturate the limiter; account B's single caller, arriving
    later, gets its turns at about half the rate instead of waiting behind A's queue."""
    rpm = 1200  # 20/s
    stop = threading.Event()
    grants: dict[str, list[float]] = {"a": [], "b": []}
    lock = threading.Lock()

    def run(account: str, count: int | None = None) -> None:
        own = redis.Redis.from_url(REDIS_URL)
        limiter = RateLimiter(own, rpm=rpm, tpm=0, prefix=prefix)
        try:
            while count is None or len(grants[account]) < count:
                limiter.acquire(1, should_stop=stop.is_set, account=account)
                with lock:
                    grants[account].append(server_ms(own))
        except LimiterStopped:
            pass
        finally:
            own.close()

    def a_thread() -> None:
        run("a")

    threads = [threading.Thread(target=a_thread) for _ in range(30)]
    for t in threads:
        t.start()
    try:
        # A alone for a moment, building up its queue of waiters
        threading.Event().wait(1.5)
        b_started = server_ms(client)
        b = threading.Thread(target=run, args=("b",), kwargs={"count": 20})
        b.start()
        b.join(30)
        assert not b.is_alive()
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    b_took = grants["b"][-1] - b_started
    # at the fair share (10/s) 20 grants take ~1.9 s (one burst second of its own share is
    # immediate); queued behind thirty waiters of A at 20/s they would take far longer
    assert b_took < 4000, b_took
    a_during = [g for g in grants["a"] if b_started <= g <= grants["b"][-1]]
    total_rate = (len(a_during) + 20) / (b_took / 1000)
    assert total_rate <= 20 * 1.25 + 5, total_rate  # the provider's rate is still the ceiling
