"""Starting a job: the account's capacity taken, the job ingesting, its file read (jobs/ingest.py)
into URL rows whose chunks are enqueued as they are stored, exactly once.

Every refusal a request can earn (quota, job limit, budget, a callback without a webhook
secret) is decided before the file is read whole: the job row holds the number of valid URLs
since its upload (exact) or the sample `process` reads of a presigned or dropped file
(estimated), so refusing a 250,000-row file costs what refusing a 10-row one does. The quota
check is made again under the account row lock, where it is race-safe; the ingest corrects the
quota taken with the exact count."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta

import psycopg

from chalicelib.adapters import db
from chalicelib.adapters.queue import ChunkQueue
from chalicelib.adapters.storage import Storage
from chalicelib.errors import BadRequest, Conflict, RateLimited
from chalicelib.generation import pricing
from chalicelib.generation.reuse import expected_reused
from chalicelib.jobs.options import (
    MAX_INSTRUCTIONS,
    account_limits,
    allowed_model,
    check_variants_mode,
    clean_text,
    flag,
    job_mode,
    money,
    quality_options,
    template_columns,
    variants_option,
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
          language: object = None, reuse: object = None, variants: object = None,
          completed: Callable[[dict], None] | None = None,
          notify: Callable[[dict], None] | None = None) -> dict:
    """Job -> ingesting with the quota taken for its (estimated) URL count, then its file read:
    within this call for a file up to INGEST_INLINE_BYTES, else by the ingest function (one
    message), so the answer comes at once. -> 202 body.

    Exactly once: the job row is locked NOWAIT and must be pending, so a concurrent or second
    call gets 409. If the ingest message cannot be sent, the start is undone (job pending again,
    quota given back) so the job is never left half-started, and the caller can simply call
    again. `completed` and `notify` are passed to the ingest (see jobs/ingest.py)."""
    from chalicelib.jobs import ingest  # ingest builds on this module's capacity checks

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
    checks["variants"] = variants_option(variants)
    if asked_mode is not None:
        check_variants_mode(checks["variants"], asked_mode)
    if job["status"] != "pending":
        raise Conflict(f"Job is already {job['status']}; it can be started once", code="already_started")
    if job["layout"] is None:  # a presigned upload or a drop: first what can be refused without a count
        check_capacity(conn, limits, account_id, None)
    job, size = ingest.check_sample(conn, storage, settings, job)
    fields = list(template_columns(instructions, job))
    # Refusals from the count the upload or the sample stored, before the file is read whole.
    check_capacity(conn, limits, account_id, job["total_rows"])
    check_budget(settings.prices, model, max_cost_usd,
                 resolve_mode(asked_mode, settings, job["total_rows"], checks["variants"]),
                 job["total_rows"], instructions, fields, page_context, checks, preview_calibration(job))
    try:
        with conn.transaction():
            job = db.get_job(conn, job["id"], lock=True)
            if job["status"] != "pending":
                raise Conflict(f"Job is already {job['status']}; it can be started once", code="already_started")
            expected = job["total_rows"]
            mode = resolve_mode(asked_mode, settings, expected, checks["variants"])
            estimate = check_budget(settings.prices, model, max_cost_usd, mode, expected, instructions, fields,
                                    page_context, checks, preview_calibration(job))
            take_account_capacity(conn, settings, account_id, expected)
            job = db.begin_ingest(conn, job["id"], estimated_rows=expected, instructions=instructions, model=model,
                                  page_context=page_context, max_cost_usd=max_cost_usd, callback_url=callback_url,
                                  mode=mode, **checks)
            db.set_estimate(conn, job["id"], estimate, expected="ingesting")
    except psycopg.errors.LockNotAvailable:
        raise Conflict("Job is being started by another request", code="already_started") from None
    log.info("job ingesting", extra={"job_id": str(job["id"]), "estimated_rows": expected, "bytes": size,
                                     "mode": mode})
    try:
        if size <= settings.ingest_inline_bytes:
            job = ingest.ingest_file(conn, storage, queue, settings, str(job["id"]), completed=completed,
                                     notify=notify)
            estimate, job = _with_reused_rows(conn, settings, job, estimate, fields, checks)
        else:
            queue.send_ingest(str(job["id"]))
            job = db.get_job(conn, job["id"])
    except Exception:
        log.exception("the ingest could not be started or sent; undoing the start", extra={"job_id": str(job["id"])})
        unstart(conn, job["id"], account_id)
        raise
    job = db.get_job(conn, job["id"]) if job is None else job
    return {"job": job_json({**job, "estimate": job.get("estimate") or estimate}), "chunks": job["chunks"],
            "estimate": estimate}


def _with_reused_rows(conn, settings: Settings, job: dict | None, estimate: dict, fields: list[str],
                      checks: dict) -> tuple[dict, dict | None]:
    """The estimate again with its ``reused_rows`` once the job's rows are stored (an inline
    ingest); a file read in the background keeps 0 (nothing stored to count yet). Batch jobs
    never reuse. -> (estimate, the job as stored)."""
    if job is None or job["status"] not in ("processing", "completed") or job["mode"] == "batch":
        return estimate, job
    reused = expected_reused(conn, job, settings.reuse_days) or 0
    if not reused:
        return estimate, job
    estimate = check_budget(settings.prices, job["model"], job["max_cost_usd"], job["mode"], job["total_rows"],
                            job["instructions"], fields, job["page_context"], checks, preview_calibration(job),
                            reused_rows=reused)
    db.set_estimate(conn, job["id"], estimate, expected=job["status"])
    return estimate, db.get_job(conn, job["id"])


def unstart(conn, job_id, account_id: str) -> None:
    """Undo a start whose ingest could not run or be sent: its rows deleted, the job pending again
    (unless it moved on meanwhile), the quota it took given back."""
    with conn.transaction():
        job = db.get_job(conn, job_id, lock=True, nowait=False)
        if job["status"] in ("ingesting", "processing") and job["processed_rows"] + job["failed_rows"] == 0:
            db.unstart_job(conn, job_id)
            db.give_back_urls_today(conn, account_id, job["reserved_rows"])


def resolve_mode(asked: str | None, settings: Settings, urls: int, variants: int = 1) -> str:
    """The job's mode: as asked, else batch above BATCH_MODE_ABOVE URLs (when set), else live;
    always live for a job with variants (batch mode writes one opener per row)."""
    if asked is not None:
        return asked
    if variants > 1:
        return "live"
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
    words = {k: v for k, v in (checks or {}).items() if k in ("min_words", "max_words", "variants")}
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
