"""Settings: one frozen object read from the environment once per container.

Defaults point at the local stack (LocalStack on 127.0.0.1:4566, local PostgreSQL and Redis),
so `chalice local` works with no edits; Lambda gets its values from `.chalice/config.json`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

LOCALSTACK_URL = "http://127.0.0.1:4566"
REGION = "us-east-1"

# Lambda takes and returns at most 6 MB of payload behind API Gateway, and CSV and multipart bodies
# are binary types here, so they travel base64-encoded (4 bytes for every 3). What fits in one
# request or response, leaving room for the headers and the event around the body:
LAMBDA_PAYLOAD_LIMIT = 6 * 1024 * 1024
ENVELOPE_HEADROOM = 64 * 1024
BINARY_BODY_LIMIT = (LAMBDA_PAYLOAD_LIMIT - ENVELOPE_HEADROOM) * 3 // 4  # 4,669,440 bytes
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's smallest part of a multipart upload (but the last)


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def parse_delay_ms(value: str) -> tuple[int, int]:
    """`"2000-3000"` -> (2000, 3000); `"150"` -> (150, 150); `"0"` -> (0, 0)."""
    text = value.strip()
    low, sep, high = text.partition("-")
    try:
        lo = int(low)
        hi = int(high) if sep else lo
    except ValueError as exc:
        raise ValueError(f"OPENAI_DUMMY_DELAY_MS must be a number or a range like 2000-3000, got {value!r}") from exc
    if lo < 0 or hi < lo:
        raise ValueError(f"OPENAI_DUMMY_DELAY_MS range is invalid: {value!r}")
    return lo, hi


def parse_networks(value: str) -> tuple[str, ...]:
    """`"127.0.0.1/32, ::1"` -> ("127.0.0.1/32", "::1/128"): comma-separated CIDRs, checked."""
    networks = []
    for item in value.split(","):
        if item.strip():
            try:
                networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
            except ValueError as exc:
                raise ValueError(f"OUTBOUND_ALLOW_NETWORKS holds an invalid network: {item.strip()!r}") from exc
    return tuple(networks)


@dataclass(frozen=True)
class Settings:
    database_url: str = "postgresql://127.0.0.1:5432/csv_opener"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False  # REDIS_URL is a Redis Cluster (ElastiCache cluster mode) endpoint
    openai_api_key: str = ""
    openai_base_url: str = ""
    openai_model: str = "gpt-4o-mini"
    openai_timeout_s: float = 30.0
    openai_dummy_mode: bool = True
    openai_dummy_delay_ms: tuple[int, int] = (2000, 3000)
    openai_rpm: int = 0  # ceilings over the limits learned from the provider's headers; 0 = none
    openai_tpm: int = 0
    chunk_concurrency: int = 16
    concurrency_adaptive: bool = True  # CONCURRENCY_ADAPTIVE: calls in flight per model found from latency
    chunk_size: int = 500
    max_file_size: int = 1024 * 1024 * 1024  # 1 GiB: a 100,000-row x 40-column export is ~105 MB
    max_direct_upload: int = BINARY_BODY_LIMIT  # bigger files go through POST /api/upload/url
    max_concurrent_jobs: int = 10
    chunks_per_job: int = 0  # chunk messages one job has out at once; 0 = half of max_concurrent_jobs
    max_retries: int = 3
    max_receive_count: int = 5
    upload_bucket: str = "csv-opener-uploads"
    chunk_queue_url: str = f"{LOCALSTACK_URL}/000000000000/csv-opener-chunks"
    dlq_url: str = f"{LOCALSTACK_URL}/000000000000/csv-opener-chunks-dlq"
    ingest_queue_url: str = f"{LOCALSTACK_URL}/000000000000/csv-opener-ingest"
    # files up to this size are read by `process` itself (the same ingest, within the request);
    # bigger ones answer `ingesting` at once and are read by the ingest function
    ingest_inline_bytes: int = 1024 * 1024
    # downloads of files up to this many rows are built within the request; bigger ones in the
    # background (the export message on the ingest queue), the download answering 202 meanwhile
    export_inline_rows: int = 5000
    aws_endpoint_url: str | None = LOCALSTACK_URL
    aws_region: str = REGION
    cors_allow_origin: str = "*"  # comma-separated origins; "*" (any) is refused in the prod stage
    stage: str = "local"
    page_context_default: bool = True  # PAGE_CONTEXT_DEFAULT: a job's page_context when process does not say
    model_prices: str = ""  # MODEL_PRICES: "model=input/output[/cached],..." USD per 1M tokens, over the built-ins
    reuse_days: int = 30  # REUSE_DAYS: an opener is reused for rows of the same fingerprint this long; 0 = never
    api_rate_limit_per_minute: int = 600  # per account, unless the account sets its own
    api_rate_window_s: int = 60
    ip_rate_limit_per_minute: int = 600  # per client address: /health and failed authentications
    account_urls_per_day: int = 100_000
    account_max_jobs: int = 10
    # jobs an account may hold uploaded (or promised a presigned upload) but not yet processed;
    # each one may hold a file of up to max_file_size in the bucket; 0 = no limit
    account_max_pending: int = 20
    api_key_cache_s: float = 30.0
    presign_expires_s: int = 900
    # presigned uploads above this many bytes go to S3 as a multipart upload (parts PUT in
    # parallel, retried and resumed one by one), cut in parts of multipart_part_size (S3: >= 5 MiB)
    multipart_threshold: int = 64 * 1024 * 1024
    multipart_part_size: int = 16 * 1024 * 1024
    ratelimit_prefix: str = "csv-opener:ratelimit"
    lease_seconds: int = 300
    stall_after_s: int = 600  # the sweep enqueues again the chunks of a job idle this long
    batch_mode_above: int = 0  # jobs of more URLs run through the Batch API unless process says; 0 = never
    log_level: str = "INFO"
    # Outbound requests (page fetching, webhooks): networks allowed besides public addresses, e.g.
    # ("127.0.0.1/32",) for tests; refused by the prod stage. Ports other than 80/443 only there.
    outbound_allow_networks: tuple[str, ...] = ()
    page_fetch_timeout_s: float = 5.0  # one deadline over a page fetch: robots.txt, redirects, body
    page_cache_ttl_s: int = 86_400  # page summaries in Redis; failed fetches are kept briefly
    page_host_concurrency: int = 2  # fetches at once per host, per process (Lambda container)
    page_fetch_concurrency: int = 256  # page fetches in flight on a process's event loop (~15 KB each, no thread)
    page_dns_timeout_s: float = 1.0  # a page's name lookup, within PAGE_FETCH_TIMEOUT_S
    page_host_failure_ttl_s: float = 60.0  # a host that timed out or did not resolve is skipped this long
    # Fernet keys sealing the accounts' webhook secrets (chalicelib/outbound/sealing.py): the first
    # seals, all open. Empty: the local stack's development key; the prod stage refuses that.
    webhook_secret_keys: tuple[str, ...] = ()

    @property
    def prices(self) -> dict:
        """Per-model prices: the built-in table, then MODEL_PRICES over it."""
        return _prices(self.model_prices)

    @property
    def cors_origins(self) -> tuple[str, ...]:
        return tuple(o.strip() for o in self.cors_allow_origin.split(",") if o.strip())

    def check_stage(self) -> None:
        """Refuse to start the prod stage with settings only fit for a laptop."""
        if self.stage != "prod":
            return
        origins = self.cors_origins
        bad = [o for o in origins if not re.fullmatch(r"https://[A-Za-z0-9.-]+(:\d{1,5})?", o)]
        if not origins or bad:
            raise RuntimeError(
                "The prod stage needs CORS_ALLOW_ORIGIN: the comma-separated https origins allowed to call the "
                f"API from a browser (not '*'); got {self.cors_allow_origin!r}")
        if not self.webhook_secret_keys:
            raise RuntimeError(
                "The prod stage needs WEBHOOK_SECRET_KEYS (Fernet keys sealing the webhook secrets, e.g. "
                "ssm:/csv-opener/WEBHOOK_SECRET_KEYS); the local development key is for the local stack only")
        if self.outbound_allow_networks:
            raise RuntimeError(
                "The prod stage refuses OUTBOUND_ALLOW_NETWORKS (outbound requests go to public addresses only); "
                f"got {','.join(self.outbound_allow_networks)!r}")

    @property
    def chunk_window(self) -> int:
        """Chunk messages one job keeps out at once (the rest are sent as chunks finish), so that
        a big job leaves handler slots free for other jobs: half of MAX_CONCURRENT_JOBS by default."""
        return self.chunks_per_job if self.chunks_per_job > 0 else max(1, -(-self.max_concurrent_jobs // 2))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        get = env.get
        api_key = get("OPENAI_API_KEY", "")
        endpoint = get("AWS_ENDPOINT_URL", LOCALSTACK_URL if not get("AWS_LAMBDA_FUNCTION_NAME") else "")
        dummy = get("OPENAI_DUMMY_MODE")
        return cls(
            database_url=get("DATABASE_URL", cls.database_url),
            redis_url=get("REDIS_URL", cls.redis_url),
            redis_cluster=_bool(get("REDIS_CLUSTER", "false")),
            openai_api_key=api_key,
            openai_base_url=get("OPENAI_BASE_URL", ""),
            openai_model=get("OPENAI_MODEL", cls.openai_model),
            openai_timeout_s=float(get("OPENAI_TIMEOUT_S", cls.openai_timeout_s)),
            openai_dummy_mode=_bool(dummy) if dummy else not api_key,
            openai_dummy_delay_ms=parse_delay_ms(get("OPENAI_DUMMY_DELAY_MS", "2000-3000")),
            openai_rpm=int(get("OPENAI_RPM") or cls.openai_rpm),
            openai_tpm=int(get("OPENAI_TPM") or cls.openai_tpm),
            chunk_concurrency=int(get("CHUNK_CONCURRENCY", cls.chunk_concurrency)),
            concurrency_adaptive=_bool(get("CONCURRENCY_ADAPTIVE", "true")),
            chunk_size=int(get("CHUNK_SIZE", cls.chunk_size)),
            max_file_size=int(get("MAX_FILE_SIZE", cls.max_file_size)),
            max_direct_upload=int(get("MAX_DIRECT_UPLOAD", cls.max_direct_upload)),
            max_concurrent_jobs=int(get("MAX_CONCURRENT_JOBS", cls.max_concurrent_jobs)),
            chunks_per_job=int(get("CHUNKS_PER_JOB", cls.chunks_per_job)),
            max_retries=int(get("MAX_RETRIES", cls.max_retries)),
            max_receive_count=int(get("MAX_RECEIVE_COUNT", cls.max_receive_count)),
            upload_bucket=get("UPLOAD_BUCKET", cls.upload_bucket),
            chunk_queue_url=get("CHUNK_QUEUE_URL", cls.chunk_queue_url),
            ingest_queue_url=get("INGEST_QUEUE_URL", cls.ingest_queue_url),
            ingest_inline_bytes=int(get("INGEST_INLINE_BYTES", cls.ingest_inline_bytes)),
            export_inline_rows=int(get("EXPORT_INLINE_ROWS", cls.export_inline_rows)),
            dlq_url=get("DLQ_URL", cls.dlq_url),
            aws_endpoint_url=endpoint or None,
            aws_region=get("AWS_REGION", get("AWS_DEFAULT_REGION", REGION)),
            cors_allow_origin=get("CORS_ALLOW_ORIGIN", cls.cors_allow_origin),
            stage=get("STAGE", cls.stage),
            page_context_default=_bool(get("PAGE_CONTEXT_DEFAULT", "true")),
            model_prices=get("MODEL_PRICES", cls.model_prices),
            reuse_days=max(0, int(get("REUSE_DAYS") or cls.reuse_days)),
            api_rate_limit_per_minute=int(get("API_RATE_LIMIT_PER_MINUTE", cls.api_rate_limit_per_minute)),
            api_rate_window_s=int(get("API_RATE_WINDOW_S", cls.api_rate_window_s)),
            ip_rate_limit_per_minute=int(get("IP_RATE_LIMIT_PER_MINUTE", cls.ip_rate_limit_per_minute)),
            account_urls_per_day=int(get("ACCOUNT_URLS_PER_DAY", cls.account_urls_per_day)),
            account_max_jobs=int(get("ACCOUNT_MAX_JOBS", cls.account_max_jobs)),
            account_max_pending=int(get("ACCOUNT_MAX_PENDING", cls.account_max_pending)),
            api_key_cache_s=min(60.0, float(get("API_KEY_CACHE_S", cls.api_key_cache_s))),
            presign_expires_s=min(900, int(get("PRESIGN_EXPIRES_S", cls.presign_expires_s))),
            multipart_threshold=max(1, int(get("MULTIPART_THRESHOLD", cls.multipart_threshold))),
            multipart_part_size=max(MIN_PART_SIZE, int(get("MULTIPART_PART_SIZE", cls.multipart_part_size))),
            ratelimit_prefix=get("RATELIMIT_PREFIX", cls.ratelimit_prefix),
            lease_seconds=int(get("LEASE_SECONDS", cls.lease_seconds)),
            stall_after_s=max(1, int(get("STALL_AFTER_S", cls.stall_after_s))),
            batch_mode_above=max(0, int(get("BATCH_MODE_ABOVE") or cls.batch_mode_above)),
            log_level=get("LOG_LEVEL", cls.log_level).upper(),
            outbound_allow_networks=parse_networks(get("OUTBOUND_ALLOW_NETWORKS", "")),
            page_fetch_timeout_s=float(get("PAGE_FETCH_TIMEOUT_S", cls.page_fetch_timeout_s)),
            page_cache_ttl_s=int(get("PAGE_CACHE_TTL_S", cls.page_cache_ttl_s)),
            page_host_concurrency=max(1, int(get("PAGE_HOST_CONCURRENCY", cls.page_host_concurrency))),
            page_fetch_concurrency=max(1, int(get("PAGE_FETCH_CONCURRENCY") or cls.page_fetch_concurrency)),
            page_dns_timeout_s=max(0.05, float(get("PAGE_DNS_TIMEOUT_S") or cls.page_dns_timeout_s)),
            page_host_failure_ttl_s=max(0.0, float(get("PAGE_HOST_FAILURE_TTL_S") or cls.page_host_failure_ttl_s)),
            webhook_secret_keys=tuple(k.strip() for k in get("WEBHOOK_SECRET_KEYS", "").split(",") if k.strip()),
        )


SECRET_NAMES = ("DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY", "WEBHOOK_SECRET_KEYS")
SSM_PREFIX = "ssm:"


def resolve_secrets(env: Mapping[str, str], fetch: Callable[[list[str]], dict[str, str]]) -> dict[str, str]:
    """Replace `ssm:/name` values of the secret settings with the SSM parameters they name, so
    the Lambda configuration never holds a secret. `fetch` maps parameter names to values."""
    refs = {key: env[key][len(SSM_PREFIX):] for key in SECRET_NAMES if env.get(key, "").startswith(SSM_PREFIX)}
    if not refs:
        return dict(env)
    values = fetch(sorted(set(refs.values())))
    missing = sorted(name for name in refs.values() if name not in values)
    if missing:
        raise RuntimeError(f"SSM parameters not found: {', '.join(missing)}")
    return {**env, **{key: values[name] for key, name in refs.items()}}


def fetch_ssm_parameters(names: list[str]) -> dict[str, str]:
    """SecureString parameters, decrypted, in one call (at most 10 names)."""
    import boto3

    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    kwargs = {}
    if endpoint:  # LocalStack
        kwargs = {"endpoint_url": endpoint, "aws_access_key_id": "test", "aws_secret_access_key": "test"}
    client = boto3.client("ssm", region_name=os.environ.get("AWS_REGION", REGION), **kwargs)
    response = client.get_parameters(Names=names, WithDecryption=True)
    return {p["Name"]: p["Value"] for p in response["Parameters"]}


# USD per million input/output/cached-input tokens (OpenAI's list prices); MODEL_PRICES adds to or
# overrides these.
DEFAULT_PRICES = ("gpt-4o-mini=0.15/0.60/0.075,gpt-4.1-mini=0.40/1.60/0.10,gpt-4.1-nano=0.10/0.40/0.025,"
                  "gpt-4o=2.50/10.00/1.25")


def parse_prices(text: str) -> dict[str, tuple[Decimal, Decimal, Decimal]]:
    """`"gpt-4o-mini=0.15/0.60/0.075,gpt-4o=2.50/10.00"` -> {model: (input, output, cached input)
    per million tokens}. The cached-input figure is optional: without it cached prompt tokens cost
    the input price (a server that does not say it discounts is not assumed to)."""
    prices = {}
    for item in text.split(","):
        if not item.strip():
            continue
        model, sep, figures = item.partition("=")
        parts = figures.split("/")
        try:
            if not (sep and model.strip() and len(parts) in (2, 3)):
                raise ValueError
            inp, out, *cached = (Decimal(p.strip()) for p in parts)
            if not all(v.is_finite() and v >= 0 for v in (inp, out, *cached)):
                raise ValueError
            prices[model.strip()] = (inp, out, cached[0] if cached else inp)
        except (ValueError, ArithmeticError):
            raise ValueError(f"MODEL_PRICES entry {item.strip()!r} is not model=input/output or "
                             "model=input/output/cached_input (USD per 1M tokens)") from None
    return prices



@lru_cache(maxsize=8)
def _prices(model_prices: str) -> dict:
    return {**parse_prices(DEFAULT_PRICES), **parse_prices(model_prices)}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings as configured; `ssm:` references are left as they are (no network), so
    importing the app (chalice package, cold start) never needs AWS."""
    return Settings.from_env()


@lru_cache(maxsize=1)
def get_secret_settings() -> Settings:
    """The settings with secrets read from SSM where referenced: what clients are built from."""
    return Settings.from_env(resolve_secrets(os.environ, fetch_ssm_parameters))
