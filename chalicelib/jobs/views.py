"""What the API shows of jobs: the job object, one job, the list, the results page, the
account view and the metrics. Reads only."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from chalicelib import accounts, logs
from chalicelib.adapters import db
from chalicelib.adapters.queue import ChunkQueue
from chalicelib.errors import BadRequest, NotFound
from chalicelib.generation import pricing
from chalicelib.jobs.options import (
    JOB_STATUSES,
    URL_STATUSES,
    account_limits,
    check_status,
    decode_cursor,
    encode_cursor,
    job_uuid,
    parse_limit,
    plain_number,
)
from chalicelib.logs import get_logger
from chalicelib.outbound import webhooks
from chalicelib.quality.flags import DUPLICATE, FLAGS
from chalicelib.settings import Settings, get_settings

log = get_logger("jobs")


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC ("…Z"), whatever the database session's time zone."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def job_json(job: dict) -> dict:
    prices = get_settings().prices
    cost = pricing.job_cost(prices, job)
    return {
        "id": str(job["id"]),
        "account_id": str(job["account_id"]),
        "file_name": job["file_name"],
        "status": job["status"],
        "total_rows": job["total_rows"],
        "processed_rows": job["processed_rows"],
        "failed_rows": job["failed_rows"],
        "progress": job["progress"],
        "invalid_rows": job["invalid_rows"],
        "ingested_rows": job["ingest_row"],
        "estimated_rows": job["estimated_rows"],
        "url_column": job["url_column"],
        "chunks": job["chunks"],
        "source": job["source"],
        "instructions": job["instructions"],
        "model": job["model"],
        "error": job["error"],
        "result_path": job["result_path"],
        "prompt_tokens": job["prompt_tokens"],
        "completion_tokens": job["completion_tokens"],
        "cached_tokens": int(job.get("cached_tokens") or 0),
        "cost_usd": None if cost is None else round(cost, 6),
        "estimate": pricing.job_estimate(prices, job),
        "max_cost_usd": None if job["max_cost_usd"] is None else float(job["max_cost_usd"]),
        "page_context": job["page_context"],
        "mode": job["mode"],
        "callback_url": job["callback_url"],
        "grounding": job["grounding"],
        "min_words": job["min_words"],
        "max_words": job["max_words"],
        "language": job["language"],
        "variants": int(job.get("variants") or 1),
        "reuse": job.get("reuse", True),
        "quality": quality_summary(job["quality"] or {}, job["processed_rows"]),
        "regenerated": job["regenerated"],
        "created_at": iso(job["created_at"]),
        "updated_at": iso(job["updated_at"]),
        "started_at": iso(job["started_at"]),
        "finished_at": iso(job["finished_at"]),
    }


def quality_summary(counters: dict, written: int) -> dict:
    """SPEC's job `quality` from the counters the worker keeps in jobs.quality (see
    sql/0012_quality.sql): `written` is the openers the job has written (its completed rows)."""
    counts = counters.get("flagged") or {}
    # SPEC's order of the flags (jsonb keeps keys in its own order), any other after them
    order = [*FLAGS, *sorted(set(counts) - set(FLAGS))]
    flagged = {flag: int(counts[flag]) for flag in order if counts.get(flag)}
    return {
        "verified": int(counters.get("verified", 0)),
        "generic": int(counters.get("generic", 0)),
        "flagged": flagged,
        "duplicate_rate": round(flagged.get(DUPLICATE, 0) / written, 4) if written else 0,
        "median_words": histogram_median(counters.get("words") or {}),
        "regenerated": int(counters.get("regenerated", 0)),
        "reused": int(counters.get("reused", 0)),
    }


def histogram_median(histogram: dict) -> float | int | None:
    """The median of a {"<value>": count} histogram (the mean of the two middle values when the
    count is even) without expanding it; None when it is empty."""
    counts = sorted((int(value), int(n)) for value, n in histogram.items() if int(n) > 0)
    total = sum(n for _, n in counts)
    if not total:
        return None

    def value_at(position: int) -> int:  # the value at a 0-based position of the sorted values
        seen = 0
        for value, n in counts:
            seen += n
            if position < seen:
                return value
        raise AssertionError("position beyond the histogram")

    median = (value_at((total - 1) // 2) + value_at(total // 2)) / 2
    return int(median) if median.is_integer() else median


def check_quality(value: str | None) -> str | None:
    if value and value not in FLAGS:
        raise BadRequest(f"quality must be one of {', '.join(FLAGS)}", code="bad_quality")
    return value or None


def require_job(conn, account_id: str, job_id: str) -> dict:
    """The caller's job; another account's id is exactly an unknown id (same query, same 404)."""
    job = db.get_account_job(conn, account_id, job_uuid(job_id))
    if job is None:
        raise NotFound(f"No job with id '{job_id}'", code="job_not_found")
    return job


def get(conn, account_id: str, job_id: str, limiter=None) -> dict:
    """The job, with its webhook's delivery state when it has a callback URL, and with
    ``limiter`` (``RateLimiter``) its ``calls_per_minute``: the provider calls admitted for it in
    the last minute while it is processing (0 otherwise; None when Redis cannot be read)."""
    job = require_job(conn, account_id, job_id)
    body = job_json(job)
    if limiter is not None:
        body["calls_per_minute"] = job_calls_per_minute(limiter, job)
    if job["callback_url"]:
        latest = webhooks.latest(conn, job["id"]) or {}
        body["callback"] = {"url": job["callback_url"], **{k: iso(v) if isinstance(v, datetime) else v
                                                            for k, v in latest.items()}}
    return {"job": body}


def job_calls_per_minute(limiter, job: dict) -> int | None:
    """The calls admitted for a processing job in the last minute (one Redis call); 0 for a job
    not processing; None, logged, when Redis cannot be read (the job is shown all the same)."""
    if job["status"] != "processing":
        return 0
    job_id = str(job["id"])
    try:
        return limiter.calls_per_minute(jobs=[job_id])["jobs"][job_id]
    except Exception as exc:  # Redis unreachable: the job view still answers
        log.warning("calls per minute unavailable", extra={"job_id": job_id, "error": f"{type(exc).__name__}: {exc}"})
        return None


def list_(conn, account_id: str, *, status: str | None, limit: str | None, cursor: str | None) -> dict:
    status = check_status(status, JOB_STATUSES)
    size = parse_limit(limit, 20, 100)
    after = None
    if cursor:
        created, job_id = decode_cursor(cursor, 2)
        try:
            after = (datetime.fromisoformat(created), str(uuid.UUID(job_id)))
        except ValueError:
            raise BadRequest("cursor is not valid", code="bad_cursor") from None
    rows = db.list_jobs(conn, account_id, status=status, limit=size + 1, after=after)
    page = rows[:size]
    next_cursor = encode_cursor(page[-1]["created_at"].isoformat(), page[-1]["id"]) if len(rows) > size else None
    return {"jobs": [job_json(j) for j in page], "next_cursor": next_cursor}


def results(conn, account_id: str, job_id: str, *, status: str | None, limit: str | None,
            cursor: str | None, quality: str | None = None, review: str | None = None) -> dict:
    job = require_job(conn, account_id, job_id)
    status = check_status(status, URL_STATUSES)
    quality = check_quality(quality)
    if review and review not in ("approved", "rejected", "none"):
        raise BadRequest("review must be one of approved, rejected, none", code="bad_review")
    size = parse_limit(limit, 100, 1000)
    after = 0
    if cursor:
        (row,) = decode_cursor(cursor, 1)
        after = plain_number(row)
        if after is None:
            raise BadRequest("cursor is not valid", code="bad_cursor")
    rows = db.results_page(conn, job["id"], status=status, limit=size + 1, after_row=after,
                           quality=quality, review=review or None)
    page = rows[:size]
    next_cursor = encode_cursor(page[-1]["row"]) if len(rows) > size else None
    return {
        "results": [{**r, "id": str(r["id"]), "updated_at": iso(r["updated_at"])} for r in page],
        "next_cursor": next_cursor,
    }


def account_view(conn, settings: Settings, caller: accounts.Caller) -> dict:
    """GET /api/account: who the key belongs to, the account's limits and today's usage (UTC)."""
    account = db.get_account(conn, caller.account_id)
    limits = account_limits(account, settings)
    usage = accounts.usage_today(conn, caller.account_id)
    usage["day"] = usage["day"].isoformat()
    usage["cost_usd"] = round(sum(pricing.usage_cost(settings.prices, m["model"] or settings.openai_model,
                                                     m["mode"], m) or 0 for m in usage["by_model"]), 6)
    usage["by_model"] = [{k: v for k, v in m.items() if not k.startswith("live_")}  # the pricing's detail
                         for m in usage["by_model"]]
    return {"account": {
        "id": str(account["id"]), "name": account["name"], "operator": caller.is_operator,
        "key": {"prefix": caller.key_prefix, "role": caller.role},
        "limits": {"requests_per_minute": limits.rpm, "urls_per_day": limits.urls_per_day,
                   "concurrent_jobs": limits.max_jobs, "models": list(limits.models)},
        "usage_today": {**usage, "processing_jobs": db.processing_jobs(conn, caller.account_id),
                        "urls_remaining": max(0, limits.urls_per_day - usage["urls"]) if limits.urls_per_day else None},
    }}


def metrics(conn, queue: ChunkQueue, account_id: str, *, operator: bool, limiter=None, models=(),
            gate=None) -> dict:
    """The account's jobs and URLs; for an operator account's keys only (SPEC "Roles") also what
    every account shares: the queue depths and the provider limits of `models` (``RateLimiter.limits``:
    learned, ceilings, the rate found from 429s or gauged from remaining/reset, in force, and how each
    was set; and the calls admitted per minute now, ``RateLimiter.calls_per_minute``) and the calls in
    flight in force per model (``ConcurrencyGate.describe``). A failure to read
    one of those is described, never quoted (library errors name hosts and queue URLs)."""
    urls = db.url_totals(conn, account_id)
    per_minute = urls.pop("finished_last_minute")
    body = {
        "jobs": {status: 0 for status in JOB_STATUSES} | db.jobs_by_status(conn, account_id),
        "urls": urls,
        "throughput": {"urls_last_minute": per_minute, "urls_per_second": round(per_minute / 60, 2)},
        "discarded_results": int(db.discarded_results(conn, account_id)),  # generated after a cancel, thrown away
    }
    if not operator:
        return body
    body["queues"] = {}
    for name, url in (("chunks", queue.queue_url), ("dead_letter", queue.dlq_url)):
        try:
            body["queues"][name] = queue.depth(url)
        except Exception as exc:  # metrics still answer when a queue is unreachable
            log.warning("queue depth unavailable", extra={"queue": name, "error": f"{type(exc).__name__}: {exc}"})
            body["queues"][name] = {"error": logs.public_error(f"the {name} queue could not be reached", exc)}
    if limiter is not None:
        body["provider_limits"] = {}
        try:
            calls = limiter.calls_per_minute(models=list(models))["models"]
        except Exception:  # Redis unreachable: each model below says so
            calls = {}
        for model in models:
            try:
                body["provider_limits"][model] = {**limiter.limits(model), "calls_per_minute": calls[model]}
            except Exception as exc:  # Redis unreachable
                log.warning("provider limits unavailable", extra={"model": model,
                                                                  "error": f"{type(exc).__name__}: {exc}"})
                body["provider_limits"][model] = {
                    "error": logs.public_error("the rate limiter's store (Redis) could not be reached", exc)}
    if gate is not None:
        body["concurrency"] = {}
        for model in models:  # the calls in flight in force (ratelimit.gate.describe)
            try:
                body["concurrency"][model] = gate.describe(model)
            except Exception as exc:  # Redis unreachable
                log.warning("concurrency unavailable", extra={"model": model, "error": f"{type(exc).__name__}: {exc}"})
                body["concurrency"][model] = {
                    "error": logs.public_error("the rate limiter's store (Redis) could not be reached", exc)}
    return body
