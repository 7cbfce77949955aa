"""Job service: create a job from an upload, start it, cancel, retry, read it back, export it.

Functions take primitives plus the adapters they need (connection, Storage, ChunkQueue,
Settings), so tests hand in real or fake ones. Nothing half-written survives a failure: an
upload that fails validation stores nothing; a start that fails midway rolls back.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime, time, timedelta
from typing import IO

import psycopg
import tenacity

from chalicelib import accounts, csvfile, db, pricing, prompt, webhooks
from chalicelib.errors import BadRequest, Conflict, DomainError, Gone, NotFound, RateLimited
from chalicelib.logs import get_logger
from chalicelib.queue import ChunkQueue
from chalicelib.settings import BINARY_BODY_LIMIT, Settings, get_settings
from chalicelib.storage import ObjectChanged, ObjectMissing, Storage
from chalicelib.uploads import (
    check_file_type,
    check_size,
    clean_file_name,
    clean_url_column,
    has_control_characters,
    safe_file_name,
)

log = get_logger("jobs")

JOB_STATUSES = ("pending", "processing", "completed", "failed", "canceled")
URL_STATUSES = ("pending", "processing", "completed", "failed")
EXTRA_COLUMNS = ("opener", "opener_status", "opener_error", "context_status")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
INLINE_DOWNLOAD_LIMIT = BINARY_BODY_LIMIT  # larger downloads go through S3 (base64 in a 6 MB response)
MAX_INSTRUCTIONS = 2000


# ---------------------------------------------------------------- shapes

def _iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC ("…Z"), whatever the database session's time zone."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def job_json(job: dict) -> dict:
    cost = pricing.cost_usd(get_settings().prices, job["model"], job["prompt_tokens"], job["completion_tokens"],
                            job["mode"])
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
        "url_column": job["url_column"],
        "chunks": job["chunks"],
        "source": job["source"],
        "instructions": job["instructions"],
        "model": job["model"],
        "error": job["error"],
        "result_path": job["result_path"],
        "prompt_tokens": job["prompt_tokens"],
        "completion_tokens": job["completion_tokens"],
        "cost_usd": None if cost is None else round(cost, 6),
        "max_cost_usd": None if job["max_cost_usd"] is None else float(job["max_cost_usd"]),
        "page_context": job["page_context"],
        "mode": job["mode"],
        "callback_url": job["callback_url"],
        "created_at": _iso(job["created_at"]),
        "updated_at": _iso(job["updated_at"]),
        "started_at": _iso(job["started_at"]),
        "finished_at": _iso(job["finished_at"]),
    }


def _encode_cursor(*parts: object) -> str:
    return base64.urlsafe_b64encode("|".join(str(p) for p in parts).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, count: int) -> list[str]:
    try:
        parts = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("|")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        parts = []
    if len(parts) != count:
        raise BadRequest("cursor is not valid; pass back next_cursor from the previous page", code="bad_cursor")
    return parts


def _plain_number(text: str, max_digits: int = 9) -> int | None:
    """`text` as a non-negative int if it is 1-9 ASCII digits (str.isdigit() also accepts '²'
    and '٣', which int() refuses or reads differently), else None."""
    if text.isascii() and text.isdigit() and len(text) <= max_digits:
        return int(text)
    return None


def parse_limit(value: str | None, default: int, maximum: int) -> int:
    if value is None or value == "":
        return default
    number = _plain_number(value)
    if number is None or not 1 <= number <= maximum:
        raise BadRequest(f"limit must be a whole number from 1 to {maximum}", code="bad_limit")
    return number


def _check_status(value: str | None, allowed: tuple[str, ...]) -> str | None:
    if value and value not in allowed:
        raise BadRequest(f"status must be one of {', '.join(allowed)}", code="bad_status")
    return value or None


def _job_id(value: str | None) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise NotFound(f"No job with id '{value}'", code="job_not_found") from None


def require_job(conn, account_id: str, job_id: str) -> dict:
    """The caller's job; another account's id is exactly an unknown id (same query, same 404)."""
    job = db.get_account_job(conn, account_id, _job_id(job_id))
    if job is None:
        raise NotFound(f"No job with id '{job_id}'", code="job_not_found")
    return job


def _csv_error(exc: csvfile.CsvError) -> DomainError:
    return DomainError(exc.message, code=exc.code, status=exc.status)


def _layout(job: dict) -> csvfile.Layout:
    data = dict(job["layout"])
    data["columns"] = tuple(data["columns"])
    return csvfile.Layout(**data)


# ---------------------------------------------------------------- create

def upload_key(account_id: str, job_id: str, file_name: str) -> str:
    return f"uploads/{account_id}/{job_id}/{safe_file_name(file_name)}"


def create_from_upload(conn, storage: Storage, *, account_id: str, file_name: str, data: bytes,
                       url_column: str | None) -> dict:
    """Validate the CSV, store the original in S3, create the pending job. -> 201 body."""
    try:
        summary = csvfile.summarize([data], url_column)
    except csvfile.CsvError as exc:
        raise _csv_error(exc) from None
    job_id = str(uuid.uuid4())
    key = upload_key(account_id, job_id, file_name)
    etag = storage.put_bytes(key, data)
    try:
        job = db.insert_job(conn, job_id=job_id, account_id=account_id, file_name=file_name, file_path=key,
                            source="upload", source_etag=etag, **_summary_fields(summary))
    except Exception:
        storage.delete(key)  # no orphan object for a job that does not exist
        raise
    log.info("upload stored", extra={"job_id": job_id, "total_rows": summary.total_rows,
                                     "invalid_rows": summary.invalid_rows, "bytes": len(data)})
    return upload_body(job, summary)


def _summary_fields(summary: csvfile.Summary) -> dict:
    """What validation learned about a file, as job columns."""
    return {"layout": asdict(summary.layout), "columns": list(summary.layout.columns),
            "url_column": summary.layout.url_column, "total_rows": summary.total_rows,
            "invalid_rows": summary.invalid_rows, "errors": summary.errors}


def upload_body(job: dict, summary: csvfile.Summary) -> dict:
    return {
        "job": job_json(job),
        "url_column": summary.layout.url_column,
        "columns": list(summary.layout.columns),
        "total_rows": summary.total_rows,
        "invalid_rows": summary.invalid_rows,
        "errors": summary.errors,
    }


def create_presigned_upload(conn, storage: Storage, *, account_id: str, file_name: str | None,
                            url_column: str | None = None) -> dict:
    """A pending job plus a presigned PUT URL; the file is validated by `start`."""
    name = clean_file_name(file_name)
    url_column = clean_url_column(url_column)
    check_file_type(name, "text/csv")
    job_id = str(uuid.uuid4())
    key = upload_key(account_id, job_id, name)
    job = db.insert_job(conn, job_id=job_id, account_id=account_id, file_name=name, file_path=key, source="presigned",
                        url_column=url_column or None)
    return {"job": job_json(job), "upload_url": storage.presigned_put(key), "method": "PUT",
            "headers": {"Content-Type": "text/csv"}}


def _validate_stored(conn, storage: Storage, settings: Settings, job: dict) -> dict:
    """Validate a presigned upload as /api/upload would; a bad file fails the job with the reason."""
    try:
        size, etag = storage.head(job["file_path"])
    except ObjectMissing:
        raise BadRequest("The file has not been uploaded yet; PUT it to upload_url first",
                         code="file_not_uploaded") from None
    try:
        check_size(size, settings.max_file_size)  # before reading: the PUT itself is not capped
        summary = csvfile.summarize(read_source(storage, {**job, "source_etag": etag}), job["url_column"])
    except csvfile.CsvError as exc:
        error = _csv_error(exc)
    except DomainError as exc:
        error = exc
    else:  # from now on the job reads exactly this version of the file
        return db.update_job(conn, job["id"], source_etag=etag, **_summary_fields(summary))
    db.fail_job(conn, job["id"], error.message, expected="pending")
    raise error


# ---------------------------------------------------------------- start

def start(conn, storage: Storage, queue: ChunkQueue, settings: Settings, account_id: str, job_id: str, *,
          instructions: str | None = None, model: str | None = None, page_context: object = None,
          max_cost_usd: object = None, callback_url: object = None, mode: object = None) -> dict:
    """Store the job's URLs (COPY), job -> processing, then enqueue one message per chunk. -> 202 body.

    Exactly once: the job row is locked NOWAIT and must be pending, so a concurrent or second
    call gets 409. Messages go out only after the commit (a worker never sees a message before
    its rows); if enqueueing then fails, the start is undone (rows deleted, job pending again) so
    the job is never left half-started, and the caller can simply call again.
    """
    instructions = _clean_text(instructions, "instructions", MAX_INSTRUCTIONS, allowed_controls="\n\r\t")
    model = _clean_text(model, "model", 100)
    job = require_job(conn, account_id, job_id)
    model = allowed_model(_limits(db.get_account(conn, account_id), settings), model)
    page_context = _flag(page_context, "page_context", settings.page_context_default)
    max_cost_usd = _money(max_cost_usd, "max_cost_usd")
    callback_url = webhooks.clean_callback_url(callback_url, https_only=settings.stage == "prod")
    mode = _mode(mode, settings)
    if job["status"] == "pending" and job["layout"] is None:
        job = _validate_stored(conn, storage, settings, job)
    fields = _template_columns(instructions, job)
    try:
        with conn.transaction():
            job = db.get_job(conn, job["id"], lock=True)
            if job["status"] != "pending":
                raise Conflict(f"Job is already {job['status']}; it can be started once", code="already_started")
            rows = _url_rows(read_source(storage, job), _layout(job), settings.chunk_size, fields)
            total = db.copy_urls(conn, job["id"], rows)
            if total == 0:
                raise BadRequest("The file has no valid URL", code="no_valid_urls")
            take_account_capacity(conn, settings, account_id, total)
            chunks = -(-total // settings.chunk_size)
            if mode is None:  # the default: batch above BATCH_MODE_ABOVE URLs (when set)
                mode = "batch" if settings.batch_mode_above and total > settings.batch_mode_above else "live"
            first, waiting = _window(list(range(chunks)), settings, mode)
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


def _mode(value: object, settings: Settings) -> str | None:
    """The job's mode as asked ("live" or "batch"); None: the default, decided by its size."""
    if value is None:
        return None if not settings.openai_dummy_mode else "live"
    if value not in ("live", "batch"):
        raise BadRequest('mode must be "live" or "batch"', code="bad_mode")
    if value == "batch" and settings.openai_dummy_mode:
        raise BadRequest("Batch mode needs a provider with a Batch API (OPENAI_API_KEY or OPENAI_BASE_URL); "
                         "dummy mode answers live calls only", code="batch_unavailable")
    return value


def _flag(value: object, name: str, default: bool = True) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false", code=f"bad_{name}")
    return value


def _money(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1_000_000:
        raise BadRequest(f"{name} must be a number of US dollars above 0 and at most 1,000,000", code=f"bad_{name}")
    return float(value)


def _template_columns(instructions: str | None, job: dict) -> dict[str, int]:
    """The columns the instructions name as {{column}}: {name: index}; 400 unknown_column if one
    is not a column of the file."""
    names = prompt.template_fields(instructions)
    if not names:
        return {}
    columns = list(job["columns"] or [])
    resolved = prompt.resolve_fields(names, columns)
    if isinstance(resolved, list):
        raise BadRequest(f"The instructions name {', '.join('{{' + n + '}}' for n in resolved)}, which is not a "
                         f"column of the file; its columns are: {', '.join(columns)}", code="unknown_column")
    return resolved


def read_source(storage: Storage, job: dict) -> Iterator[bytes]:
    """The job's file, exactly the version it validated (its ETag), as chunks of bytes."""
    try:
        yield from storage.iter_chunks(job["file_path"], job["source_etag"])
    except ObjectChanged:
        raise Conflict("The file was replaced after it was validated, so its rows no longer match this job; "
                       "upload the new file as a new job", code="source_changed") from None
    except ObjectMissing:
        raise Gone("The uploaded file is no longer stored (deleted, or past the retention period); "
                   "GET /api/jobs/{id}/results still lists every opener", code="source_gone") from None


def _window(chunks: list[int], settings: Settings, mode: str = "live") -> tuple[list[int], list[int]]:
    """(chunks to send now, chunks that wait for one of those to finish). A batch job's chunk
    handlers only write and send files: all go at once."""
    if mode == "batch":
        return chunks, []
    return chunks[: settings.chunk_window], chunks[settings.chunk_window:]


def dispatch_next(conn, queue: ChunkQueue, job_id: str) -> int | None:
    """A chunk of the job finished: send the next waiting one. Sent before it is taken off the
    list (a crash in between sends it twice, which handlers tolerate, never zero times)."""
    while True:
        chunk = db.peek_undispatched(conn, job_id)
        if chunk is None:
            return None
        queue.send_chunks(job_id, [chunk])
        if db.pop_undispatched(conn, job_id, chunk):
            return chunk


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


def _limits(account: dict | None, settings: Settings) -> accounts.Limits:
    if account is None:
        raise NotFound("The account no longer exists", code="account_not_found")
    return accounts.effective_limits(
        account, default_rpm=settings.api_rate_limit_per_minute, default_urls_per_day=settings.account_urls_per_day,
        default_max_jobs=settings.account_max_jobs, default_model=settings.openai_model)


def account_models(conn, settings: Settings, account_id: str) -> tuple[str, ...]:
    """The models the account may use (the first is its default)."""
    return _limits(db.get_account(conn, account_id), settings).models


def allowed_model(limits: accounts.Limits, model: str | None) -> str:
    """The job's model: the one asked for if the account may use it, else the default."""
    if model is None:
        return limits.models[0]
    if model not in limits.models:
        raise BadRequest(f"Model '{model}' is not allowed for this account; allowed: {', '.join(limits.models)}",
                         code="model_not_allowed")
    return model


def _seconds_to_utc_midnight() -> int:
    now = datetime.now(UTC)
    return int((datetime.combine(now.date() + timedelta(days=1), time.min, UTC) - now).total_seconds()) + 1


def take_account_capacity(conn, settings: Settings, account_id: str, urls: int) -> None:
    """Inside a start or retry transaction: refuse (nothing enqueued, everything rolled back) when
    the account is at its concurrent-job limit or `urls` would pass its URLs-per-day quota; else
    count them. The account row lock makes concurrent starts take their share one at a time."""
    limits = _limits(db.lock_account(conn, account_id), settings)
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


def _clean_text(value, name: str, limit: int, allowed_controls: str = "") -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string", code=f"bad_{name}")
    value = value.strip()
    if len(value) > limit:
        raise BadRequest(f"{name} is longer than {limit} characters", code=f"bad_{name}")
    if has_control_characters(value, allowed_controls):
        raise BadRequest(f"{name} contains a NUL or another control character", code=f"bad_{name}")
    return value or None


def drop_account(conn, key: str) -> tuple[str | None, str]:
    """`incoming/{account_id}/{name}.csv` -> (account id, "") or (None, why it starts nothing)."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "incoming" or not parts[2]:
        return None, "not in an account folder: drop files at incoming/{account_id}/{name}.csv"
    try:
        account_id = str(uuid.UUID(parts[1]))
    except ValueError:
        return None, f"'{parts[1][:100]}' is not an account id: drop files at incoming/{{account_id}}/{{name}}.csv"
    account = db.get_account(conn, account_id)
    if account is None:
        return None, f"no account with id {account_id}"
    if account["disabled_at"] is not None:
        return None, f"account {account_id} is disabled"
    return account_id, ""


def reject_drop(storage: Storage, key: str, reason: str) -> str:
    """Move a drop that starts nothing to rejected/ (same path) with a .reason.txt beside it."""
    target = "rejected/" + key.removeprefix("incoming/")
    storage.copy(key, target)
    storage.put_bytes(target + ".reason.txt", (reason + "\n").encode(), content_type="text/plain; charset=utf-8")
    storage.delete(key)
    log.warning("dropped file rejected", extra={"key": key, "moved_to": target, "reason": reason})
    return target


def start_from_drop(conn, storage: Storage, queue: ChunkQueue, settings: Settings, *, key: str,
                    version: str | None, etag: str | None = None) -> dict | None:
    """A CSV dropped under incoming/{account_id}/ -> a job of that account started with default
    options, as upload + process would. `version` (the event's sequencer or ETag) makes a repeated
    notification a no-op. A drop outside an account folder, or for an unknown or disabled account,
    is moved to rejected/ with the reason; a bad file becomes a failed job with the reason (never
    an exception, so no redelivery loop)."""
    account_id, why = drop_account(conn, key)
    if account_id is None:
        try:
            reject_drop(storage, key, why)
        except ObjectMissing:
            log.info("rejected drop already moved", extra={"key": key})
        return None
    name = safe_file_name(key.rsplit("/", 1)[-1])
    source_key = f"{storage.bucket}/{key}@{version or ''}"
    if etag is None:  # the event names the version it is about; without one, pin what is there now
        try:
            etag = storage.head(key)[1]
        except ObjectMissing:
            log.info("dropped file already gone", extra={"key": key})
            return None
    job = db.insert_job(conn, job_id=str(uuid.uuid4()), account_id=account_id, file_name=name, file_path=key,
                        source="s3", source_key=source_key, source_etag=etag)
    if job is None:  # a repeated notification: resume the job if its start never happened
        job = db.get_job_by_source_key(conn, source_key)
        if job is None or job["status"] != "pending":
            log.info("duplicate S3 notification ignored", extra={"key": key})
            return None
        log.info("resuming a dropped file's start", extra={"job_id": str(job["id"]), "key": key})
    return start_drop_job(conn, storage, queue, settings, job)


def start_drop_job(conn, storage: Storage, queue: ChunkQueue, settings: Settings, job: dict) -> dict | None:
    """Start a pending drop's job; a bad file (or a refused start) fails it with the reason."""
    try:
        return start(conn, storage, queue, settings, str(job["account_id"]), str(job["id"]))
    except DomainError as exc:
        log.warning("dropped file rejected", extra={"job_id": str(job["id"]), "key": job["file_path"],
                                                   "error": exc.message})
        db.fail_job(conn, job["id"], exc.message, expected="pending")
        return None


def give_up_chunk(get_conn, storage: Storage, queue: ChunkQueue, job_id: str, chunk: int, receive_count: int,
                  error: BaseException, notify: Callable[[dict], None] | None = None) -> None:
    """The chunk's message failed its last delivery and goes to the dead-letter queue: its
    unfinished URLs fail with the reason, the job says why, and it can complete (and be retried)."""
    reason = (f"chunk {chunk} failed {receive_count} deliveries ({type(error).__name__}: {str(error)[:200]}); "
              "its message is in the dead-letter queue. Retry the job to try again.")
    conn = get_conn()
    with conn.transaction():
        result = db.fail_chunk(conn, job_id, chunk, reason)
    log.error("chunk given up", extra={"job_id": job_id, "chunk": chunk, "failed": result and result["failed"]})
    completed = db.complete_job_if_done(conn, job_id)
    if completed is not None:  # its last work was this chunk: write the results CSV, as a worker would
        export_job(get_conn, storage, completed)
        if notify is not None:
            notify(completed)
    dispatch_next(conn, queue, job_id)


# ---------------------------------------------------------------- control

def cancel(conn, account_id: str, job_id: str, notify: Callable[[dict], None] | None = None,
           cancel_batches: Callable[[str], int] | None = None) -> dict:
    job = require_job(conn, account_id, job_id)
    canceled = db.cancel_job(conn, job["id"])
    if canceled is None:
        raise Conflict(f"Job is already {job['status']}; only pending or processing jobs can be canceled",
                       code="not_cancelable")
    log.info("job canceled", extra={"job_id": str(job["id"])})
    if canceled["mode"] == "batch" and cancel_batches is not None:
        try:
            cancel_batches(str(job["id"]))  # what the batches finished is kept when the sweep reads them
        except Exception:  # the provider unreachable: the sweep asks again
            log.exception("cancelling the job's batches failed", extra={"job_id": str(job["id"])})
    if notify is not None:
        notify(canceled)
    return {"job": job_json(canceled)}


def retry(conn, queue: ChunkQueue, settings: Settings, account_id: str, job_id: str) -> dict:
    """Failed URLs (and a canceled or failed job's unfinished ones) back to pending, job ->
    processing, then their chunks are enqueued again (after the commit, as in `start`). The
    retried URLs count against the account's daily quota like a start's."""
    job = require_job(conn, account_id, job_id)
    seen = job["status"]
    if seen not in ("completed", "failed", "canceled"):
        raise Conflict(f"Job is {seen}; retry a completed, failed or canceled job", code="not_retryable")
    try:
        with conn.transaction():
            # One lock order everywhere: a job's URL rows, then the job row (as save_results and
            # fail_chunk take them), then the account row.
            conn.execute("SET LOCAL lock_timeout = '5s'")
            retried, failed, chunks = db.reset_for_retry(conn, job["id"], seen != "completed")
            job = db.get_job(conn, job["id"], lock=True, nowait=False)
            if job["status"] != seen:
                raise Conflict(f"Job became {job['status']} meanwhile; look at it again", code="busy")
            if retried == 0:
                raise Conflict("Nothing to retry: no failed or unprocessed URLs", code="nothing_to_retry")
            take_account_capacity(conn, settings, account_id, retried)
            chunks, waiting = _window(chunks, settings, job["mode"])
            job = db.restart_job(conn, job["id"], failed, waiting)
    except psycopg.errors.LockNotAvailable:
        raise Conflict("Job is being changed by another request", code="busy") from None
    try:
        queue.send_chunks(str(job["id"]), chunks)
    except Exception as exc:
        log.exception("enqueueing the retry failed", extra={"job_id": str(job["id"])})
        db.fail_job(conn, job["id"], f"Could not queue the retry ({type(exc).__name__}); call retry again",
                    expected="processing")
        raise
    log.info("job retried", extra={"job_id": str(job["id"]), "retried": retried, "chunks": len(chunks)})
    return {"job": job_json(job), "retried": retried, "chunks": len(chunks)}


EXPORT_AFTER_S = 60  # a completed job without its results CSV this long after finishing: export it
DROP_START_AFTER_S = 300  # a drop still pending this long after its notification: start it


def sweep(conn, get_conn, storage: Storage, queue: ChunkQueue, settings: Settings, fetcher=None,
          poll_batches: Callable[[], dict] | None = None) -> dict:
    """The scheduled sweep: chunks of stalled jobs enqueued again, results CSVs that a crash
    never wrote, drops whose start never happened, webhook deliveries due for another attempt,
    and batch-mode batches read back when the provider has finished them. Returns what it did."""
    done = {"requeued": requeue_unfinished(conn, queue, idle_s=settings.stall_after_s), "exported": 0,
            "drops_started": 0,
            "webhooks_delivered": webhooks.deliver_due(conn, fetcher) if fetcher is not None else 0}
    for job in db.completed_without_results(conn, EXPORT_AFTER_S):
        done["exported"] += export_job(get_conn, storage, job)
    for job in db.stale_pending_drops(conn, DROP_START_AFTER_S):
        log.info("starting a dropped file left pending", extra={"job_id": str(job["id"])})
        done["drops_started"] += start_drop_job(conn, storage, queue, settings, job) is not None
    if poll_batches is not None:
        done["batches"] = poll_batches()
    return done



def requeue_unfinished(conn, queue: ChunkQueue, idle_s: float | None = None) -> int:
    """Enqueue again the chunks of processing jobs that have work nobody holds: for a queue that
    lost its messages (a restarted LocalStack keeps none; a crash between a start's commit and
    its messages). With `idle_s`, only jobs without progress for that long (the scheduled
    sweep). Extra messages are harmless: a handler skips finished rows and rows another holds.
    Returns the messages sent."""
    sent = 0
    for job_id, chunks in db.unfinished_chunks(conn, idle_s).items():
        sent += queue.send_chunks(job_id, chunks)
        log.info("chunks enqueued again", extra={"job_id": job_id, "chunks": len(chunks)})
    return sent


# ---------------------------------------------------------------- read

def get(conn, account_id: str, job_id: str) -> dict:
    """The job, with its webhook's delivery state when it has a callback URL."""
    job = require_job(conn, account_id, job_id)
    body = job_json(job)
    if job["callback_url"]:
        latest = webhooks.latest(conn, job["id"]) or {}
        body["callback"] = {"url": job["callback_url"], **{k: _iso(v) if isinstance(v, datetime) else v
                                                            for k, v in latest.items()}}
    return {"job": body}


def list_(conn, account_id: str, *, status: str | None, limit: str | None, cursor: str | None) -> dict:
    status = _check_status(status, JOB_STATUSES)
    size = parse_limit(limit, 20, 100)
    after = None
    if cursor:
        created, job_id = _decode_cursor(cursor, 2)
        try:
            after = (datetime.fromisoformat(created), str(uuid.UUID(job_id)))
        except ValueError:
            raise BadRequest("cursor is not valid", code="bad_cursor") from None
    rows = db.list_jobs(conn, account_id, status=status, limit=size + 1, after=after)
    page = rows[:size]
    next_cursor = _encode_cursor(page[-1]["created_at"].isoformat(), page[-1]["id"]) if len(rows) > size else None
    return {"jobs": [job_json(j) for j in page], "next_cursor": next_cursor}


def results(conn, account_id: str, job_id: str, *, status: str | None, limit: str | None,
            cursor: str | None) -> dict:
    job = require_job(conn, account_id, job_id)
    status = _check_status(status, URL_STATUSES)
    size = parse_limit(limit, 100, 1000)
    after = 0
    if cursor:
        (row,) = _decode_cursor(cursor, 1)
        after = _plain_number(row)
        if after is None:
            raise BadRequest("cursor is not valid", code="bad_cursor")
    rows = db.results_page(conn, job["id"], status=status, limit=size + 1, after_row=after)
    page = rows[:size]
    next_cursor = _encode_cursor(page[-1]["row"]) if len(rows) > size else None
    return {
        "results": [{**r, "id": str(r["id"])} for r in page],
        "next_cursor": next_cursor,
    }


# ---------------------------------------------------------------- export / download

def neutralize(cell: str) -> str:
    """Keep spreadsheets from running a cell as a formula."""
    return "'" + cell if cell.startswith(FORMULA_PREFIXES) else cell


def write_csv(conn, storage: Storage, job: dict, out: IO[str]) -> int:
    """The original rows in order plus opener columns, merge-joined with the URL rows by row
    number (both in file order, so memory stays bounded). Returns the rows written."""
    layout = _layout(job)
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([neutralize(c) for c in (*layout.columns, *EXTRA_COLUMNS)])
    width = len(layout.columns)
    results = db.iter_results(conn, job["id"]) if job["status"] != "pending" else iter(())
    current = next(results, None)
    written = 0
    for row, record in csvfile.iter_rows(read_source(storage, job), layout):
        while current is not None and current["row_number"] < row.row:
            current = next(results, None)
        match = current if current is not None and current["row_number"] == row.row else None
        extra = _extra_cells(row, match)
        cells = record + [""] * (width - len(record))
        writer.writerow([neutralize(c) for c in (*cells, *extra)])
        written += 1
    return written


def _extra_cells(row, result: dict | None) -> tuple[str, ...]:
    """The EXTRA_COLUMNS cells of one file row: an invalid row, a row with its URL result, or
    one not (yet) processed."""
    if row.url is None:
        return "", "invalid", row.error or "", ""
    if result is None:
        return "", "pending", "", ""
    status = result["status"] if result["status"] in ("completed", "failed") else "pending"
    return result["opener"] or "", status, result["error"] or "", result["context_status"] or ""


def render_csv(conn, storage: Storage, job: dict, spool_limit: int) -> IO[bytes]:
    """The download CSV in a temporary file (in memory up to `spool_limit` bytes), rewound."""
    buffer = tempfile.SpooledTemporaryFile(max_size=spool_limit, mode="w+b")
    text = io.TextIOWrapper(buffer, encoding="utf-8", newline="")
    write_csv(conn, storage, job, text)
    text.flush()
    text.detach()
    buffer.seek(0)
    return buffer


def download(conn, storage: Storage, account_id: str, job_id: str) -> tuple[str, str | bytes, str]:
    """-> ("inline", csv bytes, file name) or ("redirect", presigned URL, file name)."""
    job = require_job(conn, account_id, job_id)
    if job["layout"] is None:
        raise Conflict("The file has not been validated yet; call /api/upload/process first", code="not_ready")
    name = download_name(job["file_name"])
    if job["status"] == "completed" and job["result_path"] and storage.exists(job["result_path"]):
        return "redirect", storage.presigned_get(job["result_path"], name), name  # written once, not rebuilt
    with render_csv(conn, storage, job, INLINE_DOWNLOAD_LIMIT + 1) as buffer:
        data = buffer.read(INLINE_DOWNLOAD_LIMIT + 1)
        if len(data) <= INLINE_DOWNLOAD_LIMIT:
            return "inline", data, name
        buffer.seek(0)
        key = f"exports/{job['account_id']}/{job['id']}/{uuid.uuid4().hex}.csv"
        storage.put_file(key, buffer)
    return "redirect", storage.presigned_get(key, name), name


def download_name(file_name: str) -> str:
    stem = file_name.rsplit(".", 1)[0] if "." in file_name else file_name
    return f"{stem}-openers.csv"


def export_results(conn, storage: Storage, job: dict, keys: list[str]) -> None:
    """Write the results CSV to S3 under each key (results/{job_id}.csv, and for drops also
    results/<name>-openers.csv)."""
    with render_csv(conn, storage, job, 8 * 1024 * 1024) as buffer:
        storage.put_file(keys[0], buffer)
    for key in keys[1:]:
        storage.copy(keys[0], key)


def result_keys(job: dict) -> list[str]:
    keys = [f"results/{job['account_id']}/{job['id']}.csv"]
    if job["source"] == "s3":
        keys.append(f"results/{job['account_id']}/{download_name(job['file_name'])}")
    return keys


def export_job(get_conn, storage: Storage, job: dict) -> bool:
    """Write the results CSV(s) of a completed job, retrying; a failure is logged and noted on
    the job (the download still works) and never changes its status."""
    keys = result_keys(job)

    @tenacity.retry(stop=tenacity.stop_after_attempt(4), wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=8),
                    reraise=True)
    def attempt() -> None:
        conn = get_conn()
        export_results(conn, storage, db.get_job(conn, job["id"]), keys)
        db.update_job(conn, job["id"], result_path=keys[0])

    try:
        attempt()
    except Exception as exc:
        log.exception("results export failed", extra={"job_id": str(job["id"])})
        try:
            db.update_job(get_conn(), job["id"], error=f"results file not written ({type(exc).__name__}); "
                                                        "the download endpoint still works")
        except Exception:
            log.exception("could not record the export failure", extra={"job_id": str(job["id"])})
        return False
    log.info("results exported", extra={"job_id": str(job["id"]), "keys": keys})
    return True


# ---------------------------------------------------------------- account


def account_view(conn, settings: Settings, caller: accounts.Caller) -> dict:
    """GET /api/account: who the key belongs to, the account's limits and today's usage (UTC)."""
    account = db.get_account(conn, caller.account_id)
    limits = _limits(account, settings)
    usage = accounts.usage_today(conn, caller.account_id)
    usage["day"] = usage["day"].isoformat()
    usage["cost_usd"] = round(sum(pricing.cost_usd(settings.prices, m["model"] or settings.openai_model,
                                                    m["prompt_tokens"], m["completion_tokens"], m["mode"]) or 0
                                  for m in usage["by_model"]), 6)
    return {"account": {
        "id": str(account["id"]), "name": account["name"],
        "key": {"prefix": caller.key_prefix, "role": caller.role},
        "limits": {"requests_per_minute": limits.rpm, "urls_per_day": limits.urls_per_day,
                   "concurrent_jobs": limits.max_jobs, "models": list(limits.models)},
        "usage_today": {**usage, "processing_jobs": db.processing_jobs(conn, caller.account_id),
                        "urls_remaining": max(0, limits.urls_per_day - usage["urls"]) if limits.urls_per_day else None},
    }}


# ---------------------------------------------------------------- metrics

def metrics(conn, queue: ChunkQueue, account_id: str, *, admin: bool, limiter=None, models=()) -> dict:
    """The account's jobs and URLs; queue depths and the provider limits of `models` (shared by
    every account) for admin keys only."""
    urls = db.url_totals(conn, account_id)
    per_minute = urls.pop("finished_last_minute")
    body = {
        "jobs": {status: 0 for status in JOB_STATUSES} | db.jobs_by_status(conn, account_id),
        "urls": urls,
        "throughput": {"urls_last_minute": per_minute, "urls_per_second": round(per_minute / 60, 2)},
        "discarded_results": int(db.discarded_results(conn, account_id)),  # generated after a cancel, thrown away
    }
    if not admin:
        return body
    body["queues"] = {}
    for name, url in (("chunks", queue.queue_url), ("dead_letter", queue.dlq_url)):
        try:
            body["queues"][name] = queue.depth(url)
        except Exception as exc:  # metrics still answer when a queue is unreachable
            body["queues"][name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    if limiter is not None:
        body["provider_limits"] = {}
        for model in models:
            try:
                body["provider_limits"][model] = limiter.limits(model)
            except Exception as exc:  # Redis unreachable
                body["provider_limits"][model] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return body
