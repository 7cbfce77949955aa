"""Per-container dependencies, built lazily once (the Chalice samples' `get_db()` pattern).

Handlers call these; services never do: they take what they need as arguments.
"""

from __future__ import annotations

from functools import lru_cache

import boto3
import redis
from botocore.config import Config

from chalicelib.adapters import db
from chalicelib.adapters.queue import ChunkQueue
from chalicelib.adapters.storage import Storage
from chalicelib.settings import Settings, get_secret_settings, get_settings


def settings() -> Settings:
    return get_settings()


def _aws_client(service: str):
    s = get_settings()
    config = Config(
        connect_timeout=3,
        read_timeout=30,
        retries={"mode": "standard", "max_attempts": 3},
        s3={"addressing_style": "path"} if s.aws_endpoint_url else None,
        signature_version="s3v4" if service == "s3" else None,
    )
    kwargs = {"region_name": s.aws_region, "config": config}
    if s.aws_endpoint_url:  # LocalStack: any credentials work, these are its documented defaults
        kwargs.update(endpoint_url=s.aws_endpoint_url, aws_access_key_id="test", aws_secret_access_key="test")
    return boto3.session.Session().client(service, **kwargs)


@lru_cache(maxsize=1)
def storage() -> Storage:
    return Storage(_aws_client("s3"), get_settings().upload_bucket)


@lru_cache(maxsize=1)
def chunk_queue() -> ChunkQueue:
    s = get_settings()
    return ChunkQueue(_aws_client("sqs"), s.chunk_queue_url, s.dlq_url, s.ingest_queue_url)


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis | redis.RedisCluster:
    """One pool per process (per node on a cluster). Blocking: when every connection is busy (many
    chunk handlers in one process, as the local runner runs them), a caller waits for one instead
    of failing.

    REDIS_CLUSTER=true: REDIS_URL is a Redis Cluster (for ElastiCache cluster mode, its
    configuration endpoint). The client reads the slot map as it is built (so it connects here,
    unlike the single-node pool) and sends each command to the node that owns its key's slot."""
    s = get_secret_settings()
    options = {"max_connections": 64, "timeout": 10, "socket_connect_timeout": 2, "socket_timeout": 5}
    if s.redis_cluster:
        # redis-py's cluster client drops health_check_interval; it reconnects and retries a
        # command on a connection error instead.
        return redis.RedisCluster.from_url(s.redis_url, connection_pool_class=redis.BlockingConnectionPool,
                                           **options)
    pool = redis.BlockingConnectionPool.from_url(s.redis_url, health_check_interval=30, **options)
    return redis.Redis(connection_pool=pool)


def conn():
    """This thread's PostgreSQL connection."""
    return db.get_conn(get_secret_settings().database_url)


@lru_cache(maxsize=1)
def authenticator():
    """API keys, cached per container for at most API_KEY_CACHE_S (≤ 60 s: how soon a revoked
    key stops working)."""
    from chalicelib.accounts import Authenticator

    return Authenticator(get_conn=conn, ttl_s=get_settings().api_key_cache_s)


@lru_cache(maxsize=1)
def rate_limiter():
    """The shared provider limiter (one per process): limits learned per model from the provider's
    answers, OPENAI_RPM / OPENAI_TPM as ceilings, a cautious start until the provider answers."""
    from chalicelib.generation.ratelimit import START_RPM, RateLimiter

    s = get_settings()
    return RateLimiter(redis_client(), s.openai_rpm, s.openai_tpm, prefix=s.ratelimit_prefix, start_rpm=START_RPM)


@lru_cache(maxsize=1)
def opener_generator():
    from chalicelib.generation.client import build_client
    from chalicelib.generation.openers import OpenerGenerator

    s = get_secret_settings()
    return OpenerGenerator(build_client(s), rate_limiter(), s.openai_model, max_retries=s.max_retries,
                           gate=concurrency_gate())


@lru_cache(maxsize=1)
def concurrency_gate():
    """The in-flight limit of each model, shared by every chunk handler through Redis (one per
    process), for a server named by OPENAI_BASE_URL (self-hosted, a gateway: its capacity may bind).
    Off for OpenAI's own API, which sells a rate (the rate limiter keeps it) and whose latency
    varies with the answers' length, not with our calls in flight (the gate would only slow the
    start), and in dummy mode (its answers take OPENAI_DUMMY_DELAY_MS whatever is in flight); a
    server that states its rate budget in its headers gets the ceiling from its first answer on."""
    from chalicelib.generation.ratelimit.gate import ConcurrencyGate

    s = get_settings()
    enabled = s.concurrency_adaptive and bool(s.openai_base_url) and not s.openai_dummy_mode
    return ConcurrencyGate(redis_client(), prefix=s.ratelimit_prefix, ceiling=s.chunk_concurrency, enabled=enabled)


@lru_cache(maxsize=1)
def page_summaries():
    """(url, account_id) -> (summary or None, context_status), and its ``submit`` (a Future of the
    same, the page fetched on the process's event loop): the SSRF-safe fetcher and the shared Redis
    cache of page summaries (per account: a cached page must not tell one account that another
    fetched it), one per process (the fetcher's per-host limits and pages in flight are per process)."""
    from chalicelib.outbound.summaries import PageCache, PageSummaries

    s = get_settings()
    cache = PageCache(redis_client(), prefix=f"{s.ratelimit_prefix}:page", ttl_s=s.page_cache_ttl_s)
    return PageSummaries(outbound_fetcher(), cache)


@lru_cache(maxsize=1)
def preview_generator():
    """The generator for previews: as the workers', but answering within an API request's time
    (API Gateway gives 29 s): a shorter timeout and two attempts."""
    import dataclasses

    from chalicelib.generation.client import build_client
    from chalicelib.generation.openers import OpenerGenerator

    s = dataclasses.replace(get_secret_settings(), openai_timeout_s=min(12.0, get_settings().openai_timeout_s))
    return OpenerGenerator(build_client(s), rate_limiter(), s.openai_model, max_retries=2)


@lru_cache(maxsize=1)
def chunk_worker():
    from chalicelib.generation.worker import ChunkWorker
    from chalicelib.quality import language

    # The language model loads in about a second alone, but took 25 s at a handler's first check
    # while its generator threads held the interpreter: load it before they start.
    language.warm()

    return ChunkWorker(get_conn=conn, generator=opener_generator(), queue=chunk_queue(), settings=get_settings(),
                       export=job_completed, page_summary=page_summaries(), notify=notify_job,
                       batches=batch_runner(), duplicates=duplicate_index())


@lru_cache(maxsize=1)
def duplicate_index():
    """The job-wide index of accepted openers (near-duplicates across every chunk and handler of
    a job), in the shared Redis under the settings' prefix. None in dummy mode: its openers come
    from a dozen templates, near-duplicates of each other by construction, so asking again would
    only double every dummy job's calls (the other checks still run)."""
    from chalicelib.quality.duplicates import DuplicateIndex

    s = get_settings()
    if s.openai_dummy_mode:
        return None
    return DuplicateIndex(redis_client(), prefix=f"{s.ratelimit_prefix}:dup")


def job_completed(job: dict) -> None:
    """A job moved to completed: its results CSV and its webhook. A small job's CSV is written
    now, then its webhook sent; a big one's webhook is queued held first, then its CSV's build
    requested (the ingest function's): the build releases it once the CSV exists (`results_ready`;
    queued after the request, a quick build would find nothing to release)."""
    from chalicelib import jobs

    hold_s = jobs.webhook_hold_s(job, get_settings())
    if hold_s is not None:
        notify_job(job, hold_s=hold_s)
    jobs.results_on_completion(conn, storage(), chunk_queue(), get_settings(), job)
    if hold_s is None:
        notify_job(job)


def results_ready(job: dict) -> None:
    """A completed job's results CSV was built in the background: its held job.completed goes now."""
    from chalicelib import jobs
    from chalicelib.outbound import webhooks

    if job.get("callback_url"):
        webhooks.release(conn(), outbound_fetcher(), webhook_box, job, jobs.job_json(job))


def send_webhooks(delivery_ids: list) -> None:
    """Deliveries a request made due (a retry or a regeneration ended a completion's hold): attempted now."""
    from chalicelib.outbound import webhooks

    webhooks.send_now(conn(), outbound_fetcher(), webhook_box, delivery_ids)


@lru_cache(maxsize=1)
def batch_runner():
    """Batch mode's submit, poll and cancel, on the workers' provider client and prompt."""
    from chalicelib.generation.batches import BatchRunner

    generator = opener_generator()
    return BatchRunner(get_conn=conn, client=generator.client, generator=generator, settings=get_settings(),
                       page_summary=page_summaries(), completed=job_completed, notify=notify_job,
                       duplicates=duplicate_index(), queue=chunk_queue())


@lru_cache(maxsize=1)
def outbound_fetcher():
    """The SSRF-safe fetcher of this process, for pages (on its event loop) and webhooks alike
    (thread-safe: one robots cache, one memory of failed hosts, PAGE_FETCH_CONCURRENCY pages in flight)."""
    from chalicelib.outbound import Fetcher

    return Fetcher.from_settings(get_settings())


@lru_cache(maxsize=1)
def webhook_box():
    """Seals and opens the accounts' webhook secrets (WEBHOOK_SECRET_KEYS; the local stack's
    development key when empty outside prod). Checked against what is stored when built, so a
    wrong or missing key fails here, loudly, the first time a container needs it (and again on
    every call until fixed: a failed build is not cached)."""
    from chalicelib.outbound import sealing, webhooks

    s = get_secret_settings()
    keys = s.webhook_secret_keys or ((sealing.LOCAL_DEV_KEY,) if s.stage != "prod" else ())
    box = sealing.SecretBox(keys)
    webhooks.check_keys(conn(), box)
    return box


def notify_job(job: dict, hold_s: float | None = None) -> None:
    """A job moved to completed, failed or canceled: its webhook, if it has a callback URL (with
    `hold_s`, a completion held until its results CSV exists, at most that long)."""
    from chalicelib import jobs
    from chalicelib.outbound import webhooks

    if job.get("callback_url"):
        webhooks.notify(conn(), outbound_fetcher(), webhook_box, job, jobs.job_json(job), hold_s=hold_s)


def reset() -> None:
    """Forget the settings and every client and service built in this process (tests and
    benchmarks change the environment between runs)."""
    get_settings.cache_clear()
    get_secret_settings.cache_clear()
    for factory in list(globals().values()):
        if callable(getattr(factory, "cache_clear", None)) and getattr(factory, "__module__", "") == __name__:
            factory.cache_clear()
