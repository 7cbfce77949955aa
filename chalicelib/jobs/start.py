"""Starting a job: its URLs stored (COPY), the account's capacity taken, the job processing,
its first chunks enqueued, exactly once.

Every refusal a request can earn (quota, job limit, budget, a callback without a webhook
secret) is decided before the file is read: the job row already holds the number of valid URLs
since its upload or validation, so refusing a 250,000-row file costs what refusing a 10-row one
does. The exact quota check is made again under the account row lock, where it is race-safe."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, time, timedelta

import psycopg

from chalicelib.adapters import db
from chalicelib.adapters.queue import ChunkQueue
from chalicelib.adapters.storage import Storage
from chalicelib.errors import BadRequest, Conflict, RateLimited
from chalicelib.generation import pricing, prompt
from chalicelib.generation.dispatch import window
from chalicelib.generation.reuse import expected_reused
from chalicelib.intake import csvfile
from chalicelib.jobs.create import layout_of, read_source, validate_stored
from chalicelib.jobs.options import (
    MAX_INSTRUCTIONS,
    account_limits,
    allowed_model,
    clean_text,
    flag,
    job_mode,
    money,
    quality_options,
    template_columns,
)
from chalicelib.jobs.views import job_json, require_job
from chalicelib.logs import get_logger
from chalicelib.outbound import webhooks
from chalicelib.settings import Settings

log = get_logger("jobs")



def start(conn, storage: Storage, queue: ChunkQueue, settings: Settings, account_id: str, job_id: str, *,
          instructions: str | None = None, model: str | None = None, page_context: object = None,
          max_cost_usd: object = None, callback_url: object = None, mode: object = None,
          grounding: object = None, min_words: object = None, max_words: object = None,
          language: object = None, reuse: object = None) -> dict:
    """Store the job's URLs (COPY), job -> processing, then enqueue one message per chunk. -> 202 body.

    Exactly once: the job row is locked NOWAIT and must be pending, so a concurrent or second
    call gets 409. Messages go out only after the commit (a worker never sees a message before
    its rows); if enqueueing then fails, the start is undone (rows deleted, job pending again) so
    the job is never left half-started, and the caller can simply call again.
    """
    instructions = clean_text(instructions, "instructions", MAX_INSTRUCTIONS, allowed_controls="\n\r\t")
    model = clean_text(model, "model", 100)
    job = require_job(conn, account_id, job_id)
    account = db.get_account(conn, account_id)
    limits = account_limits(account, settings)
    model = allowed_model(limits, model)
    page_context = flag(page_context, "page_context", settings.page_context_default)
    max_cost_usd = money(max_cost_usd, "max_cost_usd")
    check_priced(settings.prices, model, max_cost_usd)
    callback_url = webhooks.clean_callback_url(callback_url, https_only=settings.stage == "prod")
    if callback_url is not None and not account["has_webhook_secret"]:
        raise BadRequest("A callback_url needs the account's webhook secret, since nothing is ever sent unsigned: "
                         "create it with POST /api/account/webhook-secret, then call again",
                         code="webhook_secret_missing")
    asked_mode = job_mode(mode, settings)
    checks = quality_options(grounding, min_words, max_words, language)
    checks["reuse"] = flag(reuse, "reuse", True)
    if job["status"] == "pending":  # anything else is the 409 below
        if job["layout"] is None:  # a presigned upload: its count is known once it is read, so first
            check_capacity(conn, limits, account_id, None)  # what can be refused without it
            job = validate_stored(conn, storage, settings, job)
        fields = template_columns(instructions, job)
        # Refusals from the counts validation stored, before the file is read again and COPYed.
        check_capacity(conn, limits, account_id, job["total_rows"])
        check_budget(settings.prices, model, max_cost_usd, resolve_mode(asked_mode, settings, job["total_rows"]),
                     job["total_rows"], instructions, list(fields), page_context, checks, preview_calibration(job))
    else:
        fields = template_columns(instructions, job)
    try:
        with conn.transaction():
            job = db.get_job(conn, job["id"], lock=True)
            if job["status"] != "pending":
                raise Conflict(f"Job is already {job['status']}; it can be started once", code="already_started")
            rows = _url_rows(read_source(storage, job), layout_of(job), settings.chunk_size, fields)
            total = db.copy_urls(conn, job["id"], rows)
            if total == 0:
                raise BadRequest("The file has no valid URL", code="no_valid_urls")
            mode = resolve_mode(asked_mode, settings, total)
            reused = 0 if mode == "batch" else expected_reused(conn, {  # the rows just stored, as the job
                **job, "instructions": instructions, "model": model, "page_context": page_context, **checks},
                settings.reuse_days) or 0
            estimate = check_budget(settings.prices, model, max_cost_usd, mode, total, instructions, list(fields),
                                    page_context, checks, preview_calibration(job), reused_rows=reused)
            take_account_capacity(conn, settings, account_id, total)
            chunks = -(-total // settings.chunk_size)
            first, waiting = window(list(range(chunks)), settings, mode)
            job = db.start_job(conn, job["id"], total_rows=total, invalid_rows=job["invalid_rows"],
                               chunks=chunks, instructions=instructions, model=model, undispatched=waiting,
                               page_context=page_context, max_cost_usd=max_cost_usd, callback_url=callback_url,
                               mode=mode, **checks)
            db.set_estimate(conn, job["id"], estimate, expected="processing")
    except psycopg.errors.LockNotAvailable:
        raise Conflict("Job is being started by another request", code="already_started") from None
    try:
        queue.send_chunks(str(job["id"]), first)
    except Exception:
        log.exception("enqueueing failed; undoing the start", extra={"job_id": str(job["id"])})
        with conn.transaction():
            db.unstart_job(conn, job["id"])
        raise
    log.info("job started", extra={"job_id": str(job["id"]), "total_rows": total, "chunks": chunks, "mode": mode})
    return {"job": job_json({**job, "estimate": estimate}), "chunks": chunks, "estimate": estimate}


def _url_rows(chunks: Iterable[bytes], layout: csvfile.Layout, chunk_size: int,
              fields: dict[str, int] | None = None) -> Iterator[tuple[int, int, str, dict | None]]:
    """(row number, chunk, URL, template values or None) of each valid row."""
    index = 0
    for row, record in csvfile.iter_rows(chunks, layout):
        if row.url is not None:
            values = ({name: (record[i] if i < len(record) else "")[:prompt.MAX_FIELD_CHARS]
                       for name, i in fields.items()} if fields else None)
            yield row.row, index // chunk_size, row.url, values
            index += 1


def _seconds_to_utc_midnight() -> int:
    now = datetime.now(UTC)
    return int((datetime.combine(now.date() + timedelta(days=1), time.min, UTC) - now).total_seconds()) + 1


def resolve_mode(asked: str | None, settings: Settings, urls: int) -> str:
    """The job's mode: as asked, else batch above BATCH_MODE_ABOVE URLs (when set), else live."""
    if asked is not None:
        return asked
    return "batch" if settings.batch_mode_above and urls > settings.batch_mode_above else "live"


def check_priced(prices: dict, model: str, max_cost_usd: float | None) -> None:
    """A budget needs a price to be counted against: 400 no_price for a model without one."""
    if max_cost_usd is not None and pricing.cost_usd(prices, model, 0, 0) is None:
        raise BadRequest(f"Model '{model}' has no price in this deployment's table (MODEL_PRICES), so a max_cost_usd "
                         "cannot be held; leave max_cost_usd out or pick a priced model", code="no_price")


def preview_calibration(job: dict) -> dict | None:
    """What the job's last preview measured against the estimate (sql/0017), if it had one."""
    return (job.get("estimate") or {}).get("preview")


def check_budget(prices: dict, model: str, max_cost_usd: float | None, mode: str, urls: int,
                 instructions: str | None, fields: list[str], page_context: bool, checks: dict | None = None,
                 calibrated: dict | None = None, reused_rows: int = 0) -> dict:
    """The job's estimate (``pricing.estimate``, corrected by its preview's real usage when it had
    one). A batch job is paid for as a whole once submitted, so one whose estimate is above its
    max_cost_usd is refused (400 over_budget) instead of being stopped halfway, as a live job is."""
    words = {k: v for k, v in (checks or {}).items() if k in ("min_words", "max_words")}
    estimate = pricing.estimate(prices, model, urls, instructions, fields, page_context, calibrated=calibrated,
                                reused_rows=reused_rows, **words)
    if max_cost_usd is None or mode != "batch":
        return estimate
    expected = estimate["batch_cost_usd"]
    if expected is not None and expected > max_cost_usd:
        raise BadRequest(f"This batch job of {urls:,} URLs is estimated at ${expected:,.4f}, above its max_cost_usd "
                         f"of ${max_cost_usd:,.4f}; raise max_cost_usd, shorten the instructions or process fewer "
                         "URLs", code="over_budget")
    return estimate


def _seconds_to_utc_midnight() -> int:
    now = datetime.now(UTC)
    return int((datetime.combine(now.date() + timedelta(days=1), time.min, UTC) - now).total_seconds()) + 1


def capacity_refusal(limits, processing: int, used_today: int, urls: int | None) -> RateLimited | None:
    """Why the account cannot take `urls` more URLs now (None: it can): at its concurrent-job
    limit, or past its URLs-per-day quota. `urls` None: the count is not known yet, so only an
    exhausted quota refuses."""
    if limits.max_jobs and processing >= limits.max_jobs:
        return RateLimited(f"This account already has {limits.max_jobs} jobs processing, its limit; wait for one "
                           "to finish or cancel one, then call again", code="too_many_jobs")
    if limits.urls_per_day:
        remaining = max(0, limits.urls_per_day - used_today)
        if (remaining == 0) if urls is None else (urls > remaining):
            needs = "This needs more URLs" if urls is None else f"This needs {urls:,} URLs"
            return RateLimited(
                f"{needs} but the account has {remaining:,} of its {limits.urls_per_day:,} URLs per day left "
                "(the day ends at midnight UTC); process a smaller file or ask for a higher limit",
                code="quota_exceeded", headers={"Retry-After": str(_seconds_to_utc_midnight())})
    return None


def check_capacity(conn, limits, account_id: str, urls: int | None) -> None:
    """The early look, without locks: refuse before any heavy work when the account cannot take
    `urls` URLs. Not a reservation: `take_account_capacity` decides again under the lock."""
    refusal = capacity_refusal(limits, db.processing_jobs(conn, account_id) if limits.max_jobs else 0,
                               db.urls_today(conn, account_id) if limits.urls_per_day else 0, urls)
    if refusal is not None:
        raise refusal


def take_account_capacity(conn, settings: Settings, account_id: str, urls: int, *, new_job: bool = True) -> None:
    """Inside a start, retry or preview transaction: refuse (nothing enqueued, everything rolled
    back) when the account is at its concurrent-job limit (unless not `new_job`: a preview) or
    `urls` would pass its URLs-per-day quota; else count them. The account row lock makes
    concurrent starts take their share one at a time."""
    limits = account_limits(db.lock_account(conn, account_id), settings)
    processing = db.processing_jobs(conn, account_id) if new_job and limits.max_jobs else 0
    refusal = capacity_refusal(limits, processing,
                               db.urls_today(conn, account_id), urls)
    if refusal is not None:
        raise refusal
    db.add_urls_today(conn, account_id, urls)
