"""Starting a job: its URLs stored (COPY), the account's capacity taken, the job processing,
its first chunks enqueued, exactly once."""

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
    template_columns,
)
from chalicelib.jobs.views import job_json, require_job
from chalicelib.logs import get_logger
from chalicelib.outbound import webhooks
from chalicelib.settings import Settings

log = get_logger("jobs")



def start(conn, storage: Storage, queue: ChunkQueue, settings: Settings, account_id: str, job_id: str, *,
          instructions: str | None = None, model: str | None = None, page_context: object = None,
          max_cost_usd: object = None, callback_url: object = None, mode: object = None) -> dict:
    """Store the job's URLs (COPY), job -> processing, then enqueue one message per chunk. -> 202 body.

    Exactly once: the job row is locked NOWAIT and must be pending, so a concurrent or second
    call gets 409. Messages go out only after the commit (a worker never sees a message before
    its rows); if enqueueing then fails, the start is undone (rows deleted, job pending again) so
    the job is never left half-started, and the caller can simply call again.
    """
    instructions = clean_text(instructions, "instructions", MAX_INSTRUCTIONS, allowed_controls="\n\r\t")
    model = clean_text(model, "model", 100)
    job = require_job(conn, account_id, job_id)
    model = allowed_model(account_limits(db.get_account(conn, account_id), settings), model)
    page_context = flag(page_context, "page_context", settings.page_context_default)
    max_cost_usd = money(max_cost_usd, "max_cost_usd")
    callback_url = webhooks.clean_callback_url(callback_url, https_only=settings.stage == "prod")
    mode = job_mode(mode, settings)
    if job["status"] == "pending" and job["layout"] is None:
        job = validate_stored(conn, storage, settings, job)
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
            take_account_capacity(conn, settings, account_id, total)
            chunks = -(-total // settings.chunk_size)
            if mode is None:  # the default: batch above BATCH_MODE_ABOVE URLs (when set)
                mode = "batch" if settings.batch_mode_above and total > settings.batch_mode_above else "live"
            first, waiting = window(list(range(chunks)), settings, mode)
            job = db.start_job(conn, job["id"], total_rows=total, invalid_rows=job["invalid_rows"],
                               chunks=chunks, instructions=instructions, model=model, undispatched=waiting,
                               page_context=page_context, max_cost_usd=max_cost_usd, callback_url=callback_url,
                               mode=mode)
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
    estimate = pricing.estimate(settings.prices, model, total, instructions, list(fields), page_context)
    return {"job": job_json(job), "chunks": chunks, "estimate": estimate}


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


def take_account_capacity(conn, settings: Settings, account_id: str, urls: int) -> None:
    """Inside a start or retry transaction: refuse (nothing enqueued, everything rolled back) when
    the account is at its concurrent-job limit or `urls` would pass its URLs-per-day quota; else
    count them. The account row lock makes concurrent starts take their share one at a time."""
    limits = account_limits(db.lock_account(conn, account_id), settings)
    if limits.max_jobs and db.processing_jobs(conn, account_id) >= limits.max_jobs:
        raise RateLimited(f"This account already has {limits.max_jobs} jobs processing, its limit; wait for one "
                          "to finish or cancel one, then call again", code="too_many_jobs")
    if limits.urls_per_day:
        remaining = max(0, limits.urls_per_day - db.urls_today(conn, account_id))
        if urls > remaining:
            raise RateLimited(
                f"This needs {urls:,} URLs but the account has {remaining:,} of its {limits.urls_per_day:,} "
                "URLs per day left (the day ends at midnight UTC); process a smaller file or ask for a higher limit",
                code="quota_exceeded", headers={"Retry-After": str(_seconds_to_utc_midnight())})
    db.add_urls_today(conn, account_id, urls)
