"""The job-wide duplicate index on the real Redis of `make test` (keys under the run's
RATELIMIT_PREFIX) and on its Redis Cluster: duplicates across handlers, each job its own, TTL
and forget, two handlers racing with near-identical openers (made deterministic with a barrier),
and the work per opener at 1,000 vs 100,000 stored openers, counted in Redis commands and
candidates examined."""

from __future__ import annotations

import itertools
import os
import random
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster

from chalicelib.quality.duplicates import BANDS, BUCKET_CAP, DuplicateIndex, first_words_key, similarity
from tests.support.teststack import require_test_stack

BASE = "Loved your new storefront in Berlin Mitte and the sourdough selection looks amazing this spring."
SAME_START = "Loved your new storefront in Berlin Mitte and honestly, what a wonderful rye you bake."
REWORDED = "Loved the new storefront in Berlin Mitte, and your sourdough selection looks amazing this spring!"
UNRELATED = "Your article about zero-downtime Postgres migrations was the clearest explanation I have read this year."


class CountingRedis(redis.Redis):
    """A real client that counts the commands it sends (not a fake: every command reaches Redis)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.commands = 0
        self._count_lock = threading.Lock()

    def execute_command(self, *args, **options):
        with self._count_lock:
            self.commands += 1
        return super().execute_command(*args, **options)


@pytest.fixture
def prefix() -> Iterator[str]:
    require_test_stack()
    p = f"{os.environ['RATELIMIT_PREFIX']}:test:dup:{uuid.uuid4().hex[:12]}"
    yield p
    with redis.Redis.from_url(os.environ["REDIS_URL"]) as client:
        keys = list(client.scan_iter(match=f"{{{p}:*"))
        if keys:
            client.delete(*keys)


@pytest.fixture
def client() -> Iterator[CountingRedis]:
    require_test_stack()
    c = CountingRedis.from_url(os.environ["REDIS_URL"], socket_connect_timeout=2, socket_timeout=30)
    yield c
    c.close()


@pytest.fixture
def handler(prefix) -> Iterator:
    """Make one chunk handler's index: its own client (its own connections), the job's shared
    keys under ``prefix``; the clients are closed after the test."""
    clients: list[CountingRedis] = []

    def make(client: CountingRedis | None = None, **kwargs) -> DuplicateIndex:
        if client is None:
            client = CountingRedis.from_url(os.environ["REDIS_URL"], socket_connect_timeout=2, socket_timeout=30)
            clients.append(client)
        return DuplicateIndex(client, **{"prefix": prefix, **kwargs})

    yield make
    for c in clients:
        c.close()


def test_duplicates_are_found_across_handlers(client, handler):
    job = "job-1"
    first, second = handler(client), handler()
    assert first.check_and_add(job, BASE) is None
    verdict = second.check(job, SAME_START)
    assert verdict.duplicate_of == BASE and verdict.reason == "first_words"
    verdict = second.check(job, REWORDED)
    assert verdict.duplicate_of == BASE and verdict.reason == "similar" and verdict.candidates >= 1
    assert second.check_and_add(job, UNRELATED) is None
    # Duplicates are not stored: the index holds the two accepted openers only, each with its
    # compared words (normalised once, when it was added).
    assert set(client.hvals(first.keys(job)[1])) == {
        ("loved your new storefront in berlin mitte and the sourdough selection looks amazing this spring\n"
         + BASE).encode(),
        ("your article about zero-downtime postgres migrations was the clearest explanation i have read this year\n"
         + UNRELATED).encode()}


def test_a_lookup_returns_the_candidates_words_not_their_openers(client, handler):
    index = handler(client)
    assert index.check_and_add("job-1", BASE) is None
    before = client.commands
    verdict = index.check("job-1", REWORDED)
    # lookup (words only), then one HGET for the line repeated: never the openers of the bucket
    assert verdict.duplicate_of == BASE and verdict.reason == "similar" and client.commands - before == 2
    before = client.commands
    assert index.check("job-1", UNRELATED).duplicate_of is None and client.commands - before == 2  # lookup, add


def test_an_index_written_before_the_words_were_stored_still_finds_duplicates(client, handler):
    """Records of the previous form (the opener alone) live up to a day in Redis after a deploy."""
    index = handler(client)
    assert index.check_and_add("job-1", BASE) is None and index.check_and_add("job-1", UNRELATED) is None
    texts = index.keys("job-1")[1]
    for member, value in list(client.hscan_iter(texts)):
        client.hset(texts, member, value.split(b"\n", 1)[1])  # every record in the old form
    assert set(client.hvals(texts)) == {BASE.encode(), UNRELATED.encode()}
    assert index.check("job-1", REWORDED).duplicate_of == BASE  # similar: its words made here
    assert index.check("job-1", SAME_START).duplicate_of == BASE  # same first words
    assert index.check_and_add("job-1", "An opener about something else entirely, for a florist in Leeds.") is None


def test_each_job_has_its_own_index(client, handler):
    index = handler(client)
    assert index.check_and_add("job-a", BASE) is None
    assert index.check_and_add("job-b", BASE) is None
    assert index.check_and_add("job-a", BASE) == BASE


def test_keys_share_one_hash_tag_expire_and_are_forgotten(client, handler, prefix):
    index = handler(client, ttl_s=600)
    index.check_and_add("job-1", BASE)
    keys = index.keys("job-1")
    assert all(k.startswith(f"{{{prefix}:job-1}}:") for k in keys)
    assert all(0 < client.ttl(k) <= 600 for k in keys)
    index.forget("job-1")
    assert client.exists(*keys) == 0
    assert index.check_and_add("job-1", REWORDED) is None


def test_a_prefix_with_its_own_hash_tag_is_used_as_it_is(client, handler, prefix):
    index = handler(client, prefix=f"{{{prefix}:tagged}}")
    assert index.keys("j")[0] == f"{{{prefix}:tagged}}:j:first8"
    assert index.check_and_add("j", BASE) is None and index.check_and_add("j", REWORDED) == BASE


def test_the_last_try_stores_the_opener_without_comparing_stamps(client, handler):
    index = handler(client, max_tries=1)  # every add is the last try: forced
    assert [index.check_and_add("job-1", o) for o in (BASE, UNRELATED)] == [None, None]
    assert index.check_and_add("job-1", REWORDED) == BASE  # still compared before the add
    assert client.hlen(index.keys("job-1")[1]) == 2


def _race(indexes: list[DuplicateIndex], openers: list[str], job: str) -> list:
    """Both handlers look up before either adds: each waits at the barrier after its first lookup."""
    barrier = threading.Barrier(len(indexes), timeout=30)
    results: list = [None] * len(indexes)
    for index in indexes:
        waited = threading.local()

        def after_lookup(waited=waited) -> None:
            if not getattr(waited, "done", False):
                waited.done = True
                barrier.wait()

        index.after_lookup = after_lookup

    def run(i: int) -> None:
        results[i] = indexes[i].check(job, openers[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(indexes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for index in indexes:
        index.after_lookup = None
    return results


@pytest.mark.parametrize("other", [REWORDED, SAME_START], ids=["similar", "same-first-words"])
def test_two_handlers_adding_near_identical_openers_at_once_accept_one(handler, other):
    assert first_words_key(REWORDED) != first_words_key(BASE) and similarity(REWORDED, BASE) >= 85
    indexes = [handler(), handler()]
    results = _race(indexes, [BASE, other], "job-race")
    accepted = [r for r in results if r.duplicate_of is None]
    refused = [r for r in results if r.duplicate_of is not None]
    assert len(accepted) == 1 and len(refused) == 1
    winner = BASE if results[0].duplicate_of is None else other
    assert refused[0].duplicate_of == winner
    # Both looked up before either added: the loser found out at its add, or by looking again.
    assert refused[0].tries == 2 or refused[0].reason == "first_words"


def test_racing_unrelated_openers_are_both_accepted(handler):
    results = _race([handler(), handler()], [BASE, UNRELATED], "job-race")
    assert [r.duplicate_of for r in results] == [None, None]
    assert [r.tries for r in results] == [1, 1]  # no shared bucket: no conflict, no second lookup


# -- the work per opener does not grow with the job ---------------------------------------------------


def synthetic_openers(count: int, seed: int) -> list[str]:
    """Openers over a 20,000-word vocabulary with a skewed (Zipf-like) use of words, as real
    openers share "your", "team", "love": buckets of frequent words fill up as the job grows."""
    rng = random.Random(seed)
    vocabulary = [f"w{i:05d}" for i in range(20_000)]
    cumulative = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(vocabulary))))
    return [" ".join(rng.choices(vocabulary, cum_weights=cumulative, k=rng.randint(12, 20))) for _ in range(count)]


def _probe(index: DuplicateIndex, client: CountingRedis, job: str, openers: list[str]) -> tuple[float, float, int]:
    before = client.commands
    verdicts = [index.check(job, opener) for opener in openers]
    commands = (client.commands - before) / len(openers)
    candidates = [v.candidates for v in verdicts]
    return commands, sum(candidates) / len(candidates), max(candidates)


@pytest.mark.slow
def test_work_per_opener_stays_bounded_from_1k_to_100k_stored_openers(client, handler):
    index = handler(client)
    stored = synthetic_openers(100_000, seed=1)
    stored[70_000] = BASE  # one real opener deep in the big job: still found at the end
    index.seed("small", stored[:1_000])
    index.seed("big", stored)
    probes = synthetic_openers(200, seed=2)  # new openers, none a duplicate of the stored ones
    small = _probe(index, client, "small", probes)
    big = _probe(index, client, "big", probes)
    # Two commands per new opener (lookup, add), whatever the size of the job.
    assert small[0] == big[0] == 2
    # Candidates compared per opener are bounded by the buckets' capacity, not the job's size.
    assert big[2] <= BANDS * BUCKET_CAP
    assert big[1] <= BANDS * BUCKET_CAP
    assert index.check("big", REWORDED).duplicate_of == BASE
    assert client.hlen(index.keys("big")[0]) == 100_000 + 200


# -- Redis Cluster -------------------------------------------------------------------------------


def test_the_index_works_on_redis_cluster(prefix):
    url = os.environ.get("REDIS_CLUSTER_URL")
    if not url:
        pytest.skip("REDIS_CLUSTER_URL is set by `make test`")
    clients = [RedisCluster.from_url(url) for _ in range(2)]
    try:
        indexes = [DuplicateIndex(c, prefix=prefix) for c in clients]
        results = _race(indexes, [BASE, REWORDED], "job-cluster")
        assert sorted(r.duplicate_of is None for r in results) == [False, True]
        assert indexes[0].check_and_add("job-cluster", UNRELATED) is None
        indexes[0].seed("job-seeded", [BASE])
        assert indexes[1].check_and_add("job-seeded", SAME_START) == BASE
        for job in ("job-cluster", "job-seeded"):
            indexes[0].forget(job)
            assert clients[0].exists(*indexes[0].keys(job)) == 0
    finally:
        for c in clients:
            c.close()
