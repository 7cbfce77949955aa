"""The shared OpenAI rate limiter against a real Redis (REDIS_URL, default db 0 on localhost).

Every test uses its own key prefix and deletes its keys afterwards, so it can share the database.

No assertion here depends on how fast this machine runs the test. Times are the limiter's own:
its Lua scripts run on the Redis server clock, and after a reservation the bucket hash
``{level, ts}`` holds the script's ``now`` in ``ts`` (during a cooldown: the end of the pause), so
``ts + wait`` is exactly when that reservation is due. Expected due times are computed from those
stamps (``expected_dues``); where the stamp is not visible, a reservation is bracketed between two
reads of the server clock. Sleeps are recorded through the limiter's ``sleep`` hook, and the
cross-process test counts grants against what the limiter may allow on the server clock.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from chalicelib.generation.ratelimit import LimiterStopped, RateLimiter
from tests.support.limiter import (
    EXACT,
    REDIS_URL,
    bucket,
    due_of_last,
    expected_dues,
    key_prefix,
    no_sleep,
    per_ms,
    recording_sleep,
    redis_client,
    reserve,
    server_ms,
)


@pytest.fixture
def client():
    yield from redis_client()


@pytest.fixture
def prefix(client):
    yield from key_prefix(client, "ratelimit")


def reserve_bracketed(limiter: RateLimiter, client: redis.Redis) -> tuple[float, float]:
    """Reserve without sleeping; return the earliest and the latest server time (ms) the reservation
    can be due, from the wait the script returned: the script ran between the two clock reads.
    Load on this machine only widens the bracket; it cannot move it off the true due time."""
    before = server_ms(client)
    wait = limiter._reserve_ms(1)
    after = server_ms(client)
    return before + wait, after + wait


# -- single process ---------------------------------------------------------------------------


def test_burst_is_immediate_then_grants_are_spaced_at_the_rate(client, prefix):
    slept: list[float] = []
    limiter = RateLimiter(client, rpm=600, tpm=0, prefix=prefix, sleep=recording_sleep(slept))  # 10/s, burst 10
    stamps, waits, grants = [], [], []
    for _ in range(15):
        before = len(slept)
        waited = limiter.acquire(1)
        grants.append(server_ms(client))
        assert waited == pytest.approx(sum(slept[before:]))  # acquire reports what it slept
        waits.append(waited * 1000)
        stamps.append(bucket(client, limiter)[1])  # the script's now for this reservation
    dues = [t + w for t, w in zip(stamps, waits, strict=True)]

    assert waits[:10] == [0.0] * 10  # the burst: not one sleep
    # every sleep lasted exactly until the reservation was due by a 10-burst refilled at 10/s
    assert dues == pytest.approx(expected_dues(stamps, per_ms(600), 10), abs=EXACT)
    # beyond the burst, acquire queues: consecutive grants are due one slot (100 ms) apart
    gaps = [b - a for (a, b), (w0, w1) in zip(itertools.pairwise(dues), itertools.pairwise(waits), strict=True)
            if w0 > 0 and w1 > 0]
    assert gaps and all(g == pytest.approx(100, abs=EXACT) for g in gaps), (waits, gaps)
    # and it never returned before its reservation was due (server clock; 1 ms for rounding)
    assert all(g >= d - 1 for g, d in zip(grants, dues, strict=True)), list(zip(grants, dues, strict=True))


def test_reservations_queue_first_come_first_served(client, prefix):
    limiter = RateLimiter(client, rpm=600, tpm=0, prefix=prefix, sleep=no_sleep)  # 10/s, burst 10
    stamps, dues = map(list, zip(*(reserve(limiter, client) for _ in range(15)), strict=True))
    assert dues[:10] == stamps[:10]  # the burst: due at once
    assert dues == pytest.approx(expected_dues(stamps, per_ms(600), 10), abs=EXACT)
    assert dues == sorted(dues)  # nobody is due before someone who reserved earlier
    # the rest queue one slot (100 ms) after another
    queued = [d for d, t in zip(dues, stamps, strict=True) if d > t]
    gaps = [b - a for a, b in itertools.pairwise(queued)]
    assert len(queued) >= 2 and all(g == pytest.approx(100, abs=EXACT) for g in gaps), (queued, gaps)


def test_tokens_per_minute_limits_when_tokens_dominate(client, prefix):
    limiter = RateLimiter(client, rpm=6000, tpm=60_000, prefix=prefix)  # 1000 tokens/s, burst 1000
    stamps, dues = map(list, zip(*(reserve(limiter, client, 400, "tokens") for _ in range(4)), strict=True))
    assert dues[:2] == stamps[:2]  # 800 tokens fit the burst
    # the third is 200 tokens short at 1 token/ms, the fourth 600: due 200 and 600 ms after the first
    assert dues == pytest.approx(expected_dues(stamps, per_ms(60_000), 1000, need=400), abs=EXACT)
    assert dues[3] - dues[2] == pytest.approx(400, abs=EXACT)
    # the requests bucket (100/s, burst 100) is nowhere near its limit
    assert bucket(client, limiter, "requests")[0] >= 96


def test_a_request_bigger_than_one_seconds_burst_waits_until_the_bucket_holds_it(client, prefix):
    limiter = RateLimiter(client, rpm=0, tpm=60_000, prefix=prefix)  # 1 token/ms, burst 1000
    first, due = reserve(limiter, client, 3000, "tokens")
    assert due == first  # an idle bucket lets one big request through
    second, due = reserve(limiter, client, 3000, "tokens")
    assert due == pytest.approx(max(second, first + 3000), abs=EXACT)  # the next waits for 3000 tokens of refill


def test_zero_means_unlimited(client, prefix):
    limiter = RateLimiter(client, rpm=0, tpm=0, prefix=prefix, sleep=no_sleep)
    assert all(limiter.acquire(10_000) == 0.0 for _ in range(300))
    assert not client.exists(f"{{{prefix}}}:requests", f"{{{prefix}}}:tokens")

    tokens_only = RateLimiter(client, rpm=0, tpm=6000, prefix=prefix)  # 0.1 token/ms, burst 100
    stamps, dues = map(list, zip(*(reserve(tokens_only, client, 1, "tokens") for _ in range(300)), strict=True))
    assert dues[:100] == stamps[:100]
    assert dues == pytest.approx(expected_dues(stamps, per_ms(6000), 100), abs=EXACT)
    assert dues[-1] >= stamps[0] + 2000 - EXACT  # 200 tokens beyond the burst: 2 s of refill, however fast we asked
    assert not client.exists(f"{{{prefix}}}:requests")


def test_refund_gives_unused_tokens_back_and_takes_overruns(client, prefix):
    limiter = RateLimiter(client, rpm=0, tpm=60_000, prefix=prefix)  # 1 token/ms, burst 1000
    now, due = reserve(limiter, client, 1000, "tokens")
    assert due == now
    limiter.refund(estimated=1000, actual=400)  # 600 back
    now, due = reserve(limiter, client, 600, "tokens")
    assert due == now  # fits in what was given back
    level, ts = bucket(client, limiter, "tokens")
    empty_at = ts - level  # when the bucket stood empty (at 1 token/ms): at the first reservation
    limiter.refund(estimated=100, actual=1100)  # used 1000 more than reserved
    _, due = reserve(limiter, client, 1, "tokens")
    assert due == pytest.approx(empty_at + 1001, abs=EXACT)  # the overrun and this token refill first


def test_refund_never_fills_beyond_the_burst(client, prefix):
    limiter = RateLimiter(client, rpm=0, tpm=60_000, prefix=prefix)  # 1 token/ms, burst 1000
    limiter.refund(estimated=5000, actual=0)
    first, due = reserve(limiter, client, 1000, "tokens")
    assert due == first
    second, due = reserve(limiter, client, 1000, "tokens")
    assert due == pytest.approx(max(second, first + 1000), abs=EXACT)  # nothing beyond the burst was banked


def test_cooldown_delays_every_acquirer_in_every_client(client, prefix):
    setter = RateLimiter(client, rpm=600, tpm=60_000, prefix=prefix)
    setter.cooldown(1.0)
    until = float(client.get(f"{{{prefix}}}:cooldown_until"))

    def worker() -> tuple[float, list[float], float]:
        own = redis.Redis.from_url(REDIS_URL)
        slept: list[float] = []
        try:
            limiter = RateLimiter(own, rpm=600, tpm=60_000, prefix=prefix, sleep=recording_sleep(slept))
            remaining = limiter.cooldown_remaining()
            limiter.acquire(10)
            return remaining, slept, server_ms(own)
        finally:
            own.close()

    with ThreadPoolExecutor(4) as pool:
        results = [f.result(timeout=30) for f in [pool.submit(worker) for _ in range(4)]]
    for remaining, slept, granted in results:
        assert 0 < remaining <= 1.0  # every client sees the pause
        assert slept  # and sleeps through it
        assert granted >= until - 1, (until, granted)  # nobody goes before it ends (server clock)
    # the burst survives a pause: all four reservations came out of the frozen buckets (no credit
    # added, ts held at the end of the pause), so each was due right at its end, none queued
    assert bucket(client, setter, "requests") == pytest.approx((10 - 4, until), abs=EXACT)
    assert bucket(client, setter, "tokens") == pytest.approx((1000 - 4 * 10, until), abs=EXACT)


def test_cooldown_never_shortens_a_longer_one(client, prefix):
    limiter = RateLimiter(client, rpm=600, tpm=0, prefix=prefix)
    limiter.cooldown(2.0)
    until = float(client.get(f"{{{prefix}}}:cooldown_until"))
    limiter.cooldown(0.1)
    assert float(client.get(f"{{{prefix}}}:cooldown_until")) == pytest.approx(until, abs=EXACT)
    assert 0 < limiter.cooldown_remaining() <= 2.0
    earliest, latest = reserve_bracketed(limiter, client)
    assert earliest - EXACT <= until <= latest + EXACT  # due at the end of the longer pause
    assert bucket(client, limiter) == pytest.approx((10 - 1, until), abs=EXACT)


def test_after_a_cooldown_requests_resume_at_the_rate_not_all_at_once(client, prefix):
    limiter = RateLimiter(client, rpm=600, tpm=0, prefix=prefix)  # 10/s, burst 10, one slot = 100 ms
    rate = per_ms(600)
    for _ in range(10):
        limiter._reserve_ms(1)  # burst spent
    spent_level, spent_at = bucket(client, limiter)
    limiter.cooldown(5.0)  # nothing here waits for it
    until = float(client.get(f"{{{prefix}}}:cooldown_until"))
    paused_at = until - 5000  # the cooldown script's now
    # what refilled before the pause, and nothing more: the bucket is frozen until its end
    credit = min(10, spent_level + (paused_at - spent_at) * rate)
    assert bucket(client, limiter) == pytest.approx((credit, until), abs=EXACT)
    for k in range(1, 11):
        earliest, latest = reserve_bracketed(limiter, client)
        # still frozen: exactly one taken each time, no credit for the time that passed
        assert bucket(client, limiter) == pytest.approx((credit - k, until), abs=EXACT)
        # so the queue resumes one slot (100 ms) after another from the end of the pause, the first
        # a little early by what had refilled before it
        due = until + (k - credit) / rate
        assert earliest - EXACT <= due <= latest + EXACT, (k, earliest - until, due - until, latest - until)


def test_a_sleeping_reservation_honours_a_cooldown_set_meanwhile(client, prefix):
    limiter = RateLimiter(client, rpm=600, tpm=0, prefix=prefix)  # one slot = 100 ms
    rate = per_ms(600)
    for _ in range(20):
        # burst spent and ten more booked: the worker's reservation is due about a second later, so
        # it sleeps on it however late its thread starts on a loaded machine (one slot ahead did not)
        limiter._reserve_ms(1)
    asleep, paused = threading.Event(), threading.Event()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 1:  # asleep on its first reservation: the 429 comes now, before it is due
            asleep.set()
            paused.wait(30)
        time.sleep(seconds)

    result: dict[str, float] = {}

    def worker() -> None:
        own = redis.Redis.from_url(REDIS_URL)
        try:
            result["waited"] = RateLimiter(own, rpm=600, tpm=0, prefix=prefix, sleep=sleep).acquire(1)
            result["granted"] = server_ms(own)
        finally:
            own.close()

    t = threading.Thread(target=worker)
    t.start()
    assert asleep.wait(30)
    first_due = due_of_last(*bucket(client, limiter), rate)
    limiter.cooldown(3.0)  # longer than the second of bookings ahead of the worker
    until = float(client.get(f"{{{prefix}}}:cooldown_until"))
    paused.set()
    t.join(30)
    assert not t.is_alive() and "granted" in result
    assert first_due < until  # its first slot fell inside the pause
    assert len(slept) >= 2  # it slept the rest of the pause off
    assert result["granted"] >= until - 1, (until, result)  # and was not let through inside it
    # its slot inside the pause was handed back; it queued again behind the pause, one slot after it
    level, ts = bucket(client, limiter)
    due = due_of_last(level, ts, rate)
    assert due == pytest.approx(max(ts, until + 1 / rate), abs=EXACT), (due - until, ts - until)
    assert result["granted"] >= due - 1


# -- Redis unreachable ------------------------------------------------------------------------


def unreachable_client() -> redis.Redis:
    return redis.Redis(port=1, socket_connect_timeout=0.1, socket_timeout=0.1, retry=Retry(NoBackoff(), 0))


def test_unreachable_redis_never_grants_and_stops_only_when_asked(caplog):
    sleeps: list[float] = []
    limiter = RateLimiter(unreachable_client(), rpm=600, tpm=60_000, sleep=sleeps.append)
    asked = {"n": 0}

    def should_stop() -> bool:
        asked["n"] += 1
        return asked["n"] > 5

    with caplog.at_level(logging.WARNING, logger="csv_opener.ratelimit"), pytest.raises(LimiterStopped):
        limiter.acquire(100, should_stop=should_stop)
    assert sleeps and sum(sleeps) > 0
    assert sum("Redis unreachable" in r.getMessage() for r in caplog.records) >= 2
    # backoff grows, capped
    assert max(sleeps) <= limiter.backoff_max


def test_unreachable_redis_blocks_acquire_until_should_stop(caplog):
    limiter = RateLimiter(unreachable_client(), rpm=600, tpm=60_000)
    limiter.backoff_initial = 0.05
    limiter.backoff_max = 0.1
    stop = threading.Event()
    outcome: dict[str, object] = {}

    def worker() -> None:
        try:
            outcome["returned"] = limiter.acquire(1, should_stop=stop.is_set)
        except LimiterStopped as exc:
            outcome["stopped"] = exc

    with caplog.at_level(logging.WARNING, logger="csv_opener.ratelimit"):
        t = threading.Thread(target=worker)
        t.start()
        t.join(0.6)
        assert t.is_alive(), outcome  # still waiting for Redis, not let through
        stop.set()
        t.join(30)  # it stops within one backoff step (0.1 s); the bound only guards against a hang
    assert not t.is_alive()
    assert "returned" not in outcome and isinstance(outcome.get("stopped"), LimiterStopped)


def test_unreachable_redis_makes_refund_and_cooldown_best_effort(caplog):
    limiter = RateLimiter(unreachable_client(), rpm=600, tpm=60_000)
    with caplog.at_level(logging.WARNING, logger="csv_opener.ratelimit"):
        limiter.refund(1000, 10)
        limiter.cooldown(5)
        assert limiter.cooldown_remaining() == 0.0
    assert len(caplog.records) == 3


# -- accuracy across processes (the acceptance test) ------------------------------------------

PROCS = 4
THREADS = 4
RPM = 3000  # 50/s, burst 50
DURATION_S = 10.0


def _hammer(url: str, prefix: str, barrier, results) -> None:
    """One process: THREADS threads acquire in a loop. For each grant, record the earliest and the
    latest server time its reservation can have been due: the server time before the call plus
    what acquire slept (the script ran after the first read, and its wait is what was slept), and
    the server time after it returned (it sleeps at least that wait)."""
    client = redis.Redis.from_url(url)
    limiter = RateLimiter(client, rpm=RPM, tpm=0, prefix=prefix)
    grants: list[tuple[float, float]] = []
    lock = threading.Lock()
    barrier.wait(30)
    start = server_ms(client)  # before any reservation of this process
    end = start + DURATION_S * 1000 + 500  # keep the window's far edge saturated

    def run() -> None:
        while True:
            before = server_ms(client)
            waited = limiter.acquire(1)
            after = server_ms(client)
            with lock:
                grants.append((before + waited * 1000, after))
            if after >= end:
                return

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    results.put((start, grants))


def test_many_processes_share_one_budget_accurately(client, prefix):
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    barrier = ctx.Barrier(PROCS)
    results = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(REDIS_URL, prefix, barrier, results)) for _ in range(PROCS)]
    for p in procs:
        p.start()
    try:
        outputs = [results.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)

    rate_per_ms = RPM / 60_000
    burst = RPM / 60
    # every reservation was made after t0, so by t0 + D the limiter may have let at most
    # burst + rate * D fall due. A grant that returned before then was due before then.
    t0 = min(start for start, _ in outputs)
    grants = sorted(g for _, gs in outputs for g in gs)  # (earliest, latest) due, by earliest
    window_end = t0 + DURATION_S * 1000
    in_window = sum(latest < window_end for _, latest in grants)
    allowed = burst + rate_per_ms * DURATION_S * 1000  # 50 + 500
    print(f"grants in the {DURATION_S:.0f}-s window: {in_window} (allowed {allowed:.0f})")
    assert in_window <= allowed + 1, (in_window, allowed)  # never more than the budget
    # and the budget is used, not wasted: reservations the limiter made due inside the window (its
    # own times, not when a loaded machine got round to waking the thread)
    booked = sum(earliest < window_end for earliest, _ in grants)
    assert booked >= 0.85 * allowed, (booked, allowed)

    # no 1-second window ever holds more than one burst plus one second's worth: count the grants
    # certainly due inside each window (both bounds in it), which cannot exceed the true number
    per_second = burst + rate_per_ms * 1000  # 100
    earliest = [e for e, _ in grants]
    busiest = 0
    for i, (start, _) in enumerate(grants):
        stop = bisect.bisect_left(earliest, start + 1000, lo=i)
        busiest = max(busiest, sum(latest < start + 1000 for _, latest in grants[i:stop]))
    print(f"busiest 1-s window: {busiest} grants (limit {per_second:.0f})")
    assert busiest <= per_second + 1, busiest
