"""The shared limiter and the API rate limit on a real Redis Cluster (REDIS_CLUSTER=true).

`make test` starts a private 3-node cluster (infra/devstack.py) and passes one node's URL in
REDIS_CLUSTER_URL; every cluster test here runs through the app's own client, `deps.redis_client()`
with REDIS_CLUSTER=true. Without REDIS_CLUSTER_URL (pytest run outside `make test`) they skip.

The limiter's scripts touch several keys at once, which a cluster only allows within one hash
slot: every key starts with the prefix in a hash tag (`{prefix}:requests`, ...), so they all hash
to the slot of the prefix. `test_the_old_key_layout_hits_crossslot` shows what happens without it.

As in test_ratelimit.py, no assertion depends on how fast this machine runs: times are the
limiter's own, on the Redis server clock (the TIME of the node that owns the limiter's slot, the
clock its scripts read), from the `{level, ts}` stamps its scripts store.
"""

from __future__ import annotations

import itertools
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from redis.cluster import RedisCluster
from redis.exceptions import ClusterCrossSlotError, RedisClusterException

from chalicelib import deps
from chalicelib.accounts import apilimit
from chalicelib.generation.ratelimit import RateLimiter
from chalicelib.generation.ratelimit.limiter import _ACQUIRE_LUA
from chalicelib.settings import Settings
from tests.support.limiter import (
    EXACT,
    bucket,
    expected_dues,
    fair_turns,
    no_sleep,
    per_ms,
    recording_sleep,
    reserve,
    server_ms,
)

CLUSTER_URL = os.environ.get("REDIS_CLUSTER_URL", "")
@pytest.fixture
def cluster_url() -> str:
    if not CLUSTER_URL:
        pytest.skip("REDIS_CLUSTER_URL is not set: `make test` starts a 3-node Redis Cluster and sets it")
    return CLUSTER_URL


@pytest.fixture
def cluster(cluster_url, env):
    """The app's client as configured for a cluster: REDIS_URL=<a node>, REDIS_CLUSTER=true."""
    env(REDIS_URL=cluster_url, REDIS_CLUSTER="true")
    client = deps.redis_client()
    yield client
    client.close()


@pytest.fixture
def prefix(cluster):
    p = f"test:cluster:{uuid.uuid4().hex}"
    yield p
    keys = [*cluster.scan_iter(match=f"{{{p}}}:*"), *cluster.scan_iter(match=f"{p}:*")]
    if keys:
        cluster.delete(*keys)


# -- configuration ------------------------------------------------------------------------------


def test_redis_cluster_setting_is_off_unless_asked_for():
    assert Settings.from_env({}).redis_cluster is False
    assert Settings.from_env({"REDIS_CLUSTER": "true"}).redis_cluster is True
    assert Settings.from_env({"REDIS_CLUSTER": "false"}).redis_cluster is False


def test_without_redis_cluster_the_client_is_one_blocking_pool(env):
    env(REDIS_URL="redis://127.0.0.1:6379/0", REDIS_CLUSTER="false")
    client = deps.redis_client()  # builds a pool; connects on first use only
    assert type(client) is redis.Redis
    pool = client.connection_pool
    assert isinstance(pool, redis.BlockingConnectionPool)
    assert (pool.max_connections, pool.timeout) == (64, 10)
    assert pool.connection_kwargs["health_check_interval"] == 30


def test_with_redis_cluster_the_client_has_a_blocking_pool_per_node(cluster):
    assert isinstance(cluster, RedisCluster)
    primaries = cluster.get_primaries()
    assert len(primaries) == 3
    for node in primaries:
        pool = node.redis_connection.connection_pool
        assert isinstance(pool, redis.BlockingConnectionPool)
        assert (pool.max_connections, pool.timeout) == (64, 10)
        assert (pool.connection_kwargs["socket_connect_timeout"], pool.connection_kwargs["socket_timeout"]) == (2, 5)


def test_limiter_keys_are_the_prefix_in_a_hash_tag():
    client = redis.Redis()  # not connected: building a limiter sends nothing
    assert RateLimiter(client, 1, 1, prefix="csv-opener:ratelimit").keys == [
        "{csv-opener:ratelimit}:requests", "{csv-opener:ratelimit}:tokens", "{csv-opener:ratelimit}:cooldown_until"]
    assert RateLimiter(client, 1, 1, prefix="app:{rl}").prefix == "app:{rl}"  # has a tag: used as it is
    assert RateLimiter(client, 1, 1, prefix="{app}").prefix == "{app}"
    assert RateLimiter(client, 1, 1, prefix="a{}b").prefix == "{a{}b}"  # '{}' is no tag
    with pytest.raises(ValueError):
        RateLimiter(client, 1, 1, prefix="")


# -- one slot -----------------------------------------------------------------------------------


def test_every_key_of_a_limiter_lives_in_the_slot_of_its_prefix(cluster, prefix):
    limiter = RateLimiter(cluster, rpm=600, tpm=60_000, prefix=prefix, sleep=no_sleep)
    assert limiter.prefix == f"{{{prefix}}}"
    for account in ("a", "b"):
        assert limiter.acquire(10, account=account) == 0.0
    limiter.refund(10, 4)
    limiter.cooldown(5.0)
    assert 0 < limiter.cooldown_remaining() <= 5.0
    keys = {k.decode() for k in cluster.scan_iter(match=f"{limiter.prefix}:*")}
    assert keys == {f"{limiter.prefix}:{name}" for name in (
        "requests", "tokens", "cooldown_until", "active_accounts", "calls",
        "share:a:requests", "share:a:tokens", "share:b:requests", "share:b:tokens")}
    assert {cluster.keyslot(k) for k in keys} == {cluster.keyslot(prefix)}  # the tag is what is hashed
    owner = cluster.get_node_from_key(limiter.keys[0])
    assert sorted(k.decode() for k in owner.redis_connection.keys(f"{limiter.prefix}:*")) == sorted(keys)


def test_the_old_key_layout_hits_crossslot(cluster, cluster_url, prefix):
    """The keys as they were (`<prefix>:requests`, ...) hash to different slots: Redis refuses the
    acquire script with CROSSSLOT, and redis-py's cluster client refuses to send it at all."""
    old = [f"{prefix}:{name}" for name in (
        "requests", "tokens", "cooldown_until", "active_accounts", "share:a:requests", "share:a:tokens", "limits")]
    args = [600, 0, 1, 1, "a", 5000, 1000, 0]
    assert len({cluster.keyslot(k) for k in old}) > 1
    node = redis.Redis.from_url(cluster_url)  # one node, as a client that knows nothing of slots
    try:
        with pytest.raises(redis.ResponseError) as refused:
            node.eval(_ACQUIRE_LUA, len(old), *old, *args)
        assert isinstance(refused.value, ClusterCrossSlotError)  # redis-py's class for the CROSSSLOT reply
        assert "don't hash to the same slot" in str(refused.value)
    finally:
        node.close()
    with pytest.raises(RedisClusterException, match="same key slot"):
        cluster.eval(_ACQUIRE_LUA, len(old), *old, *args)
    assert not any(cluster.exists(k) for k in old)  # nothing ran

    tagged = [f"{{{prefix}}}:{k[len(prefix) + 1:]}" for k in old]  # the same keys behind the hash tag
    assert cluster.eval(_ACQUIRE_LUA, len(tagged), *tagged, *args) == b"g0.000:1:0:600"


# -- the limiter on a cluster ---------------------------------------------------------------------


def test_burst_is_immediate_then_grants_are_spaced_at_the_rate(cluster, prefix):
    slept: list[float] = []
    limiter = RateLimiter(cluster, rpm=600, tpm=0, prefix=prefix, sleep=recording_sleep(slept))  # 10/s, burst 10
    stamps, waits, grants = [], [], []
    for _ in range(13):
        before = len(slept)
        waited = limiter.acquire(1)
        grants.append(server_ms(cluster, limiter.keys[0]))
        assert waited == pytest.approx(sum(slept[before:]))
        waits.append(waited * 1000)
        stamps.append(bucket(cluster, limiter)[1])  # the script's now for this reservation
    dues = [t + w for t, w in zip(stamps, waits, strict=True)]

    assert waits[:10] == [0.0] * 10  # the burst: not one sleep
    assert dues == pytest.approx(expected_dues(stamps, per_ms(600), 10), abs=EXACT)
    gaps = [b - a for (a, b), (w0, w1) in zip(itertools.pairwise(dues), itertools.pairwise(waits), strict=True)
            if w0 > 0 and w1 > 0]
    assert gaps and all(g == pytest.approx(100, abs=EXACT) for g in gaps), (waits, gaps)  # one slot apart
    assert all(g >= d - 1 for g, d in zip(grants, dues, strict=True))  # never before it was due


def test_a_cooldown_pauses_every_client(cluster, cluster_url, prefix):
    clients = [RedisCluster.from_url(cluster_url) for _ in range(3)]  # other processes' clients, connected
    setter = RateLimiter(cluster, rpm=600, tpm=60_000, prefix=prefix)
    setter.cooldown(2.0)
    until = float(cluster.get(f"{setter.prefix}:cooldown_until"))

    def worker(own: RedisCluster) -> tuple[float, list[float], float]:
        slept: list[float] = []
        limiter = RateLimiter(own, rpm=600, tpm=60_000, prefix=prefix, sleep=recording_sleep(slept))
        remaining = limiter.cooldown_remaining()
        limiter.acquire(10)
        return remaining, slept, server_ms(own, limiter.keys[0])

    try:
        with ThreadPoolExecutor(3) as pool:
            results = [f.result(timeout=30) for f in [pool.submit(worker, c) for c in clients]]
    finally:
        for c in clients:
            c.close()
    for remaining, slept, granted in results:
        assert 0 < remaining <= 2.0  # every client sees the pause
        assert slept  # and sleeps through it
        assert granted >= until - 1, (until, granted)  # nobody goes before it ends (server clock)
    # the buckets were frozen until the end of the pause: three reservations out of the burst
    assert bucket(cluster, setter, "requests") == pytest.approx((10 - 3, until), abs=EXACT)
    assert bucket(cluster, setter, "tokens") == pytest.approx((1000 - 3 * 10, until), abs=EXACT)


def test_refund_gives_unused_tokens_back_and_takes_overruns(cluster, prefix):
    limiter = RateLimiter(cluster, rpm=0, tpm=60_000, prefix=prefix)  # 1 token/ms, burst 1000
    now, due = reserve(limiter, cluster, 1000, "tokens")
    assert due == now
    limiter.refund(estimated=1000, actual=400)  # 600 back
    now, due = reserve(limiter, cluster, 600, "tokens")
    assert due == now  # fits in what was given back
    level, ts = bucket(cluster, limiter, "tokens")
    empty_at = ts - level  # when the bucket stood empty (at 1 token/ms)
    limiter.refund(estimated=100, actual=1100)  # used 1000 more than reserved
    _, due = reserve(limiter, cluster, 1, "tokens")
    assert due == pytest.approx(empty_at + 1001, abs=EXACT)


def test_two_accounts_share_the_rate_fairly(cluster, prefix):
    limiter = RateLimiter(cluster, rpm=600, tpm=0, prefix=prefix, sleep=no_sleep)
    limiter.max_ahead_ms = 0.0  # only what is due now: counts show the shares directly
    assert [limiter.acquire(1, account="a") for _ in range(10)] == [0.0] * 10  # a's burst while alone
    assert not limiter._reserve(1, "a")[0]
    assert limiter._reserve(1, "b")[0]  # b joins: its own share, at once
    while limiter._reserve(1, "b")[0]:  # b's burst (one second of its share)
        pass
    counts = fair_turns(limiter, lambda: server_ms(cluster, limiter.keys[0]))  # from now on each refills at 5/s
    assert counts["a"] + counts["b"] <= 30 + 3, counts  # together never more than the whole rate
    assert abs(counts["a"] - counts["b"]) <= 3, counts
    assert min(counts.values()) >= 10, counts  # ~15 each at 5/s for 3 s
    assert cluster.zcard(limiter.active_key) == 2


def test_acquire_with_an_account_from_many_threads(cluster, cluster_url, prefix):
    """Threads of two accounts through acquire() on their own cluster clients: every one is
    granted, and no more than the rate allows on the server clock."""
    grants: dict[str, list[float]] = {"a": [], "b": []}
    lock = threading.Lock()

    def run(account: str) -> None:
        own = RedisCluster.from_url(cluster_url)
        try:
            limiter = RateLimiter(own, rpm=1200, tpm=0, prefix=prefix)  # 20/s, burst 20
            for _ in range(5):
                limiter.acquire(1, account=account)
                with lock:
                    grants[account].append(server_ms(own, limiter.keys[0]))
        finally:
            own.close()

    threads = [threading.Thread(target=run, args=(a,)) for a in ("a", "b") for _ in range(4)]
    start = server_ms(cluster, f"{{{prefix}}}:requests")  # before the first reservation: buckets full
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert (len(grants["a"]), len(grants["b"])) == (20, 20)  # every caller was served
    # by any moment, at most the burst (20) plus 20/s since the start were granted (+1: rounding)
    for k, granted in enumerate(sorted(grants["a"] + grants["b"]), start=1):
        assert k <= 20 + 20 * (granted - start) / 1000 + 1, (k, granted - start)


# -- the API rate limit on a cluster --------------------------------------------------------------


def test_api_rate_limit_counts_on_a_cluster(cluster, prefix):
    """apilimit.check runs SET NX EX / INCR / TTL in one MULTI pipeline on one key: one slot, which
    redis-py's cluster client runs as a transaction on the node that owns it."""
    scope = f"account:{uuid.uuid4()}"
    other = f"ip:{uuid.uuid4()}"
    assert [apilimit.check(cluster, prefix, scope, 3, window_s=60) for _ in range(3)] == [None] * 3
    wait = apilimit.check(cluster, prefix, scope, 3, window_s=60)
    assert wait is not None and 1 <= wait <= 60  # the fourth in the window is refused
    assert apilimit.check(cluster, prefix, other, 3, window_s=60) is None  # another scope counts apart
    key = f"{prefix}:api:{{{scope}}}"
    assert int(cluster.get(key)) == 4
    assert 0 < cluster.ttl(key) <= 60
    assert int(cluster.get(f"{prefix}:api:{{{other}}}")) == 1
