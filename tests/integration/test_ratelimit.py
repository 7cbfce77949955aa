"""The shared OpenAI rate limiter against a real Redis (REDIS_URL, default db 0 on localhost).

Every test uses its own key prefix and deletes its keys afterwards, so it can share the database.
Times are read from the Redis server clock, the same clock the limiter's Lua scripts use.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import multiprocessing
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from chalicelib.ratelimit import LimiterStopped, RateLimiter

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def server_ms(client: redis.Redis) -> float:
    sec, usec = client.time()
    return sec * 1000 + usec / 1000


@pytest.fixture
def client():
    c = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    try:
        c.ping()
    except redis.ConnectionError as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    yield c
    c.close()


@pytest.fixture
def prefix(client):
    p = f"test:ratelimit:{uuid.uuid4().hex}"
    yield p
    keys = list(client.scan_iter(match=f"{p}:*"))
    if keys:
        client.delete(*keys)


def reserve_due(limiter: RateLimiter, client: redis.Redis, tokens: int = 1) -> float:
    """Reserve without sleeping; return the server time (ms) the reservation is due."""
    before = server_ms(client)
    return before + limiter._reserve_ms(tokens)


def reserve_due_exact(limiter: RateLimiter, client: redis.Redis) -> float:
    """As reserve_due, but on the script's own clock (the request bucket's `ts`, valid outside a
    cooldown), so load on this machine between two Redis calls cannot skew the figure."""
    wait = limiter._reserve_ms(1)
    return float(client.hget(f"{limiter.prefix}:requests", "ts")) + wait


def no_sleep(_seconds: float) -> None:
    raise AssertionError("this test expects no sleeping")


# -- single process ---------------------------------------------------------------------------


def test_burst_is_immediate_then_grants_are_spaced_at_the_rate(client, prefix):
    limiter = RateLimiter(client, rpm=600, tpm=0, prefix=prefix)  # 10/s, burst 10
    waits, grants = [], []
    for _ in range(14):
        waits.append(limiter.acquire(1))
        grants.append(server_ms(client))
    assert waits[:10] == [0.0] * 10
    assert all(w > 0.05 for w in waits[10:])
    assert grants[9] - grants[0] < 50
    gaps = [b - a for a, b in itertools.pairwise(grants[10:])]
    assert grants[10] - grants[0] == pytest.approx(100, abs=15)
    assert all(g == pytest.approx(100, abs=15) for g in gaps), gaps


def test_reservations_queue_first_come_first_served(client, prefix):
    limiter = RateLimiter(client, rpm=600, tpm=0, prefix=prefix, sleep=no_sleep)
    start = server_ms(client)
    due = [reserve_due_exact(limiter, client) for _ in range(15)]
    assert all(d - start < 20 for d in due[:10])  # the burst: due at once
    # then each reservation is due one slot (100 ms) after the previous one
    gaps = [b - a for a, b in itertools.pairwise(due[9:])]
    assert all(g == pytest.approx(100, abs=5) for g in gaps[1:]), gaps
    assert due[10] - start == pytest.approx(100, abs=10)


def test_tokens_per_minute_limits_when_tokens_dominate(client, prefix):
    limiter = RateLimiter(client, rpm=6000, tpm=60_000, prefix=prefix)  # 1000 tokens/s, burst 1000
    waits = [limiter._reserve_ms(400) for _ in range(4)]
    assert waits[:2] == [0.0, 0.0]
    assert waits[2] == pytest.approx(200, abs=10)  # 200 tokens short at 1 token/ms
    assert waits[3] == pytest.approx(600, abs=10)
    # the requests bucket (100/s, burst 100) is nowhere near its limit
    assert float(client.hget(f"{prefix}:requests", "level")) > 95


def test_a_request_bigger_than_one_seconds_burst_waits_until_the_bucket_holds_it(client, prefix):
    limiter = RateLimiter(client, rpm=0, tpm=60_000, prefix=prefix)  # burst 1000
    assert limiter._reserve_ms(3000) == 0.0  # an idle bucket lets one big request through
    assert limiter._reserve_ms(3000) == pytest.approx(3000, abs=10)


def test_zero_means_unlimited(client, prefix):
    limiter = RateLimiter(client, rpm=0, tpm=0, prefix=prefix, sleep=no_sleep)
    assert all(limiter.acquire(10_000) == 0.0 for _ in range(300))
    assert not client.exists(f"{prefix}:requests", f"{prefix}:tokens")

    tokens_only = RateLimiter(client, rpm=0, tpm=6000, prefix=prefix)  # 100 tokens/s, burst 100
    assert [tokens_only._reserve_ms(1) for _ in range(300)][:100] == [0.0] * 100
    assert tokens_only._reserve_ms(1) > 1000
    assert not client.exists(f"{prefix}:requests")


def test_refund_gives_unused_tokens_back_and_takes_overruns(client, prefix):
    limiter = RateLimiter(client, rpm=0, tpm=60_000, prefix=prefix)  # 1000 tokens/s, burst 1000
    assert limiter._reserve_ms(1000) == 0.0
    limiter.refund(estimated=1000, actual=400)  # 600 back
    assert limiter._reserve_ms(600) == pytest.approx(0, abs=5)
    limiter.refund(estimated=100, actual=1100)  # used 1000 more than reserved
    assert limiter._reserve_ms(1) == pytest.approx(1000, abs=10)


def test_refund_never_fills_beyond_the_burst(client, prefix):
    limiter = RateLimiter(client, rpm=0, tpm=60_000, prefix=prefix)
    limiter.refund(estimated=5000, actual=0)
    assert limiter._reserve_ms(1000) == 0.0
    assert limiter._reserve_ms(1000) == pytest.approx(1000, abs=10)


def test_cooldown_delays_every_acquirer_in_every_client(client, prefix):
    setter = RateLimiter(client, rpm=600, tpm=60_000, prefix=prefix)
    setter.cooldown(0.4)
    until = float(client.get(f"{prefix}:cooldown_until"))

    def worker() -> float:
        own = redis.Redis.from_url(REDIS_URL)
        try:
            limiter = RateLimiter(own, rpm=600, tpm=60_000, prefix=prefix)
            assert limiter.cooldown_remaining() == pytest.approx(0.4, abs=0.1)
            limiter.acquire(10)
            return server_ms(own)
        finally:
            own.close()

    with ThreadPoolExecutor(4) as pool:
        grants = [f.result(timeout=5) for f in [pool.submit(worker) for _ in range(4)]]
    assert all(g >= until for g in grants), (until, grants)
    # the burst survives a pause: four requests fit in it, so all four go right at the end
    assert max(grants) - until < 50


def test_cooldown_never_shortens_a_longer_one(client, prefix):
    limiter = RateLimiter(client, rpm=600, tpm=0, prefix=prefix)
    limiter.cooldown(2.0)
    limiter.cooldown(0.1)
    assert limiter.cooldown_remaining() == pytest.approx(2.0, abs=0.1)
    assert limiter._reserve_ms(1) == pytest.approx(2000, abs=100)


def test_after_a_cooldown_requests_resume_at_the_rate_not_all_at_once(client, prefix):
    limiter = RateLimiter(client, rpm=600, tpm=0, prefix=prefix)  # 10/s, burst 10
    for _ in range(10):
        limiter._reserve_ms(1)  # burst spent
    limiter.cooldown(0.3)
    until = float(client.get(f"{prefix}:cooldown_until"))
    due = [reserve_due(limiter, client) for _ in range(10)]
    # no credit accrued during the pause: the queue resumes one slot (100 ms) after another
    # (the first slot is a little early by what refilled while the burst was being spent)
    assert due[0] - until == pytest.approx(100, abs=20), due[0] - until
    gaps = [b - a for a, b in itertools.pairwise(due)]
    assert all(g == pytest.approx(100, abs=5) for g in gaps), gaps


def test_a_sleeping_reservation_honours_a_cooldown_set_meanwhile(client, prefix):
    limiter = RateLimiter(client, rpm=600, tpm=0, prefix=prefix)
    for _ in range(10):
        limiter._reserve_ms(1)  # burst spent: the next reservation is due in ~100 ms
    result: dict[str, float] = {}

    def worker() -> None:
        own = redis.Redis.from_url(REDIS_URL)
        result["waited"] = RateLimiter(own, rpm=600, tpm=0, prefix=prefix).acquire(1)
        result["granted"] = server_ms(own)
        own.close()

    t = threading.Thread(target=worker)
    t.start()
    time.sleep(0.02)  # the worker has reserved and is asleep
    limiter.cooldown(0.3)
    until = float(client.get(f"{prefix}:cooldown_until"))
    t.join(5)
    assert result["granted"] >= until
    # its slot inside the pause was handed back; it queued again behind the pause
    assert result["granted"] - until == pytest.approx(100, abs=30)


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
        t.join(2)
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
    """One process: THREADS threads acquire in a loop; record the server time of each grant."""
    client = redis.Redis.from_url(url)
    limiter = RateLimiter(client, rpm=RPM, tpm=0, prefix=prefix)
    grants: list[float] = []
    lock = threading.Lock()
    barrier.wait(30)
    end = server_ms(client) + DURATION_S * 1000 + 300  # keep the window's far edge saturated

    def run() -> None:
        while True:
            limiter.acquire(1)
            now = server_ms(client)
            with lock:
                grants.append(now)
            if now >= end:
                return

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    results.put(grants)


def test_many_processes_share_one_budget_accurately(client, prefix):
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    barrier = ctx.Barrier(PROCS)
    results = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(REDIS_URL, prefix, barrier, results)) for _ in range(PROCS)]
    for p in procs:
        p.start()
    try:
        grants = sorted(g for _ in procs for g in results.get(timeout=60))
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)

    rate_per_ms = RPM / 60_000
    burst = RPM / 60
    t0 = grants[0]
    in_window = bisect.bisect_left(grants, t0 + DURATION_S * 1000)
    allowed = burst + rate_per_ms * DURATION_S * 1000  # 50 + 500
    print(f"grants in the {DURATION_S:.0f}-s window: {in_window} (allowed {allowed:.0f})")
    assert abs(in_window - allowed) <= 0.02 * allowed, (in_window, allowed)

    # no 1-second window ever holds more than one burst plus one second's worth
    per_second = burst + rate_per_ms * 1000  # 100
    busiest = max(bisect.bisect_left(grants, g + 1000) - i for i, g in enumerate(grants))
    print(f"busiest 1-s window: {busiest} grants (limit {per_second:.0f})")
    assert busiest <= per_second + 2, busiest
