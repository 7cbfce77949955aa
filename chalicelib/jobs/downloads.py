"""Downloads: the results CSV served from S3 when it is up to date, built in the request when the
file is small, else built in the background while the download answers 202.

API Gateway ends a request at 29 s and a 100,000-row × 40-column export takes about 48 s to build,
so a download never builds a big export itself. A file of up to EXPORT_INLINE_ROWS rows (and a
presigned upload of up to INLINE_BYTES) is built in the request as before: the common case stays
one request. Beyond it the download claims the build of the job's view (`job_exports`, one
`INSERT … ON CONFLICT … WHERE` statement: concurrent downloads start one build, not N), sends an
export message on the ingest queue and answers `("building", retry_after)`; the ingest function
builds it (`build_export`) and every later download is a 302 to it while it is fresh.

Fresh means: a completed job's full results CSV while `result_path` is set (edits and regenerate
clear it); otherwise the export of the job's current version (`export_key`: its counters and last
update, which edits and review marks move). A job still running changes every second, so its
download is the last export built if that build read the job less than
max(RUNNING_FRESH_S, 2 × its build time) ago; it shows the rows done since as pending.

A big job's `job.completed` webhook waits for its results CSV (`webhook_hold_s`): queued held at
completion, released by `build_export` once the CSV exists (`results_ready`), made due by a build
that fails, and sent by the sweep after RESULTS_HOLD_S whatever the build did: a client that
downloads on the webhook gets a 302, and no webhook is lost to a build that never ends."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime

from chalicelib.adapters import db
from chalicelib.adapters.queue import ChunkQueue
from chalicelib.adapters.storage import Storage
from chalicelib.errors import BadRequest, Conflict, DomainError
from chalicelib.jobs import export as rendering
from chalicelib.jobs.export import (
    download_name,
    drop_older_exports,
    export_job,
    export_key,
    export_results,
    result_keys,
)
from chalicelib.jobs.views import require_job
from chalicelib.logs import get_logger
from chalicelib.outbound import webhooks
from chalicelib.settings import Settings

log = get_logger("jobs")

INLINE_BYTES = 16 * 1024 * 1024  # a presigned upload bigger than this is exported in the background
BUILD_TAKEN_OVER_S = 16 * 60  # the ingest function's 900 s timeout and a minute: its build died
RESULTS_HOLD_S = BUILD_TAKEN_OVER_S  # a big job's job.completed waits at most this for its results CSV
RUNNING_FRESH_S = 60.0
ROWS_PER_S = 2000  # measured: 100,000 × 40 columns in 47.7 s; what the Retry-After is guessed from
RETRY_AFTER_S = (2, 15)
RUNNING = ("ingesting", "processing")


def download(conn, storage: Storage, queue: ChunkQueue, settings: Settings, account_id: str, job_id: str,
             review: str | None = None) -> tuple[str, str | bytes | int, str]:
    """-> ("inline", csv bytes, file name), ("redirect", presigned URL, file name) or
    ("building", seconds to wait, file name); with `review=approved`, only the rows a person approved."""
    if review not in (None, "", "approved"):
        raise BadRequest("review must be approved (only approved rows), or left out", code="bad_review")
    review = review or None
    job = require_job(conn, account_id, job_id)
    if job["layout"] is None:
        raise Conflict("The file has not been validated yet; call /api/upload/process first", code="not_ready")
    name = download_name(job["file_name"])
    view = review or "all"
    served = fresh_export(conn, storage, job, view)
    if served is not None:
        return "redirect", storage.presigned_get(served, name), name
    if builds_inline(job, settings):
        return (*build_inline(conn, storage, job, review), name)
    request_export(conn, queue, job, view)
    return "building", retry_after(conn, job, view), name


def fresh_export(conn, storage: Storage, job: dict, view: str) -> str | None:
    """The S3 key of an up-to-date export of the job's view, or None (see the module docstring)."""
    if view == "all" and job["status"] == "completed" and job["result_path"] and storage.exists(job["result_path"]):
        return job["result_path"]  # written once, not rebuilt
    key = export_key(job, None if view == "all" else view)
    if storage.exists(key):  # no progress since this version was rendered
        return key
    if job["status"] in RUNNING:
        built = db.get_export(conn, str(job["id"]), view)
        if built is not None and built["built_key"] and built["snapshot_at"] is not None:
            age = (built["now"] - built["snapshot_at"]).total_seconds()
            if age <= max(RUNNING_FRESH_S, 2 * (built["build_seconds"] or 0)) and storage.exists(built["built_key"]):
                return built["built_key"]
    return None


def file_rows(job: dict) -> int:
    return max(job["total_rows"] + job["invalid_rows"], job["estimated_rows"] or 0)


def builds_inline(job: dict, settings: Settings) -> bool:
    """Whether the job's export is cheap enough to build within a request (or a chunk handler)."""
    return file_rows(job) <= settings.export_inline_rows and (job["upload_size"] or 0) <= INLINE_BYTES


def build_inline(conn, storage: Storage, job: dict, review: str | None) -> tuple[str, str | bytes]:
    """A small job's download built now: its bytes, or a 302 past the inline response limit."""
    key = export_key(job, review)
    limit = rendering.INLINE_DOWNLOAD_LIMIT  # through the module: tests lower it
    with rendering.render_csv(conn, storage, job, limit + 1, review) as buffer:
        data = buffer.read(limit + 1)
        if len(data) <= limit:
            return "inline", data
        buffer.seek(0)
        storage.put_file(key, buffer)
    drop_older_exports(storage, key)
    return "redirect", storage.presigned_get(key, download_name(job["file_name"]))


def request_export(conn, queue: ChunkQueue, job: dict, view: str) -> bool:
    """Start a background build of the job's view unless one is running. -> whether one started.
    A message that cannot be sent gives the claim back (the next download tries again) and
    answers 503."""
    job_id = str(job["id"])
    if not db.claim_export(conn, job_id, view, taken_over_after_s=BUILD_TAKEN_OVER_S):
        return False
    try:
        queue.send_export(job_id, view)
    except Exception as exc:
        log.exception("export message not sent", extra={"job_id": job_id, "view": view})
        db.fail_export(conn, job_id, view, f"export message not sent ({type(exc).__name__})")
        raise DomainError("The export could not be started just now; try the download again in a minute.",
                          code="export_unavailable", status=503) from None
    log.info("export requested", extra={"job_id": job_id, "view": view})
    return True


def retry_after(conn, job: dict, view: str) -> int:
    """Seconds a client waits before asking again: a share of what the build has left, guessed
    from the file's rows (or the last build's time), within RETRY_AFTER_S."""
    state = db.get_export(conn, str(job["id"]), view)
    expected = (state and state["build_seconds"]) or file_rows(job) / ROWS_PER_S
    elapsed = (state["now"] - state["building_since"]).total_seconds() if state and state["building_since"] else 0
    low, high = RETRY_AFTER_S
    return int(min(high, max(low, math.ceil((expected - elapsed) / 2))))


def build_export(get_conn, storage: Storage, job_id: str, view: str, *,
                 results_ready: Callable[[dict], None] | None = None) -> str | None:
    """The export message's work (the ingest function): the job's view rendered to S3 as the job
    is now, recorded as its last build. A completed job's full view is its results CSV
    (`result_path`, set only if the job did not change meanwhile); once it is set,
    `results_ready(job)` for that completion (its held webhook goes: deps.results_ready; a job
    retried or regenerated since is another completion's, or none). -> the key written (None: no
    such job, or nothing to export). A failure is recorded, makes a held webhook due, and is
    raised (SQS delivers again)."""
    conn = get_conn()
    job = db.get_job(conn, job_id)
    if job is None or job["layout"] is None:
        log.info("nothing to export", extra={"job_id": job_id, "view": view})
        return None
    review = None if view == "all" else view
    results = view == "all" and job["status"] == "completed"
    if results and job["result_path"] and storage.exists(job["result_path"]):
        if results_ready is not None:  # a message delivered again, maybe after a crash before the release
            results_ready(job)
        return job["result_path"]
    db.start_export(conn, job_id, view)
    started, snapshot_at = time.monotonic(), datetime.now(UTC)
    written = False
    try:
        if results:
            keys = result_keys(job)
            export_results(conn, storage, job, keys)
            written = db.set_result_path_if_unchanged(conn, job_id, keys[0], job["updated_at"])
            if not written:
                log.info("job changed while its results CSV was built", extra={"job_id": job_id})
            key = keys[0]
        else:
            key = export_key(job, review)
            with rendering.render_csv(conn, storage, job, 8 * 1024 * 1024, review) as buffer:
                storage.put_file(key, buffer)
            drop_older_exports(storage, key)
    except Exception as exc:
        log.exception("export build failed", extra={"job_id": job_id, "view": view})
        db.fail_export(get_conn(), job_id, view, f"export not built ({type(exc).__name__}: {str(exc)[:200]})")
        if results:
            webhooks.stop_holding(get_conn(), job_id)
        raise
    seconds = time.monotonic() - started
    db.finish_export(conn, job_id, view, key=key, version=export_key(job, review), snapshot_at=snapshot_at,
                     seconds=seconds)
    log.info("export built", extra={"job_id": job_id, "view": view, "key": key, "seconds": round(seconds, 2)})
    if written and results_ready is not None:
        current = db.get_job(conn, job_id)
        if current["finished_at"] == job["finished_at"]:  # else retried since: its webhook went then (end_holds)
            results_ready(current)
    return key


def webhook_hold_s(job: dict, settings: Settings) -> float | None:
    """How long a just-completed job's `job.completed` webhook may wait for its results CSV:
    None (sent at once) when the CSV is written at completion; RESULTS_HOLD_S when it is built in
    the background (sent as soon as it exists, by the sweep after that whatever the build did)."""
    return None if builds_inline(job, settings) else RESULTS_HOLD_S


def results_on_completion(get_conn, storage: Storage, queue: ChunkQueue, settings: Settings, job: dict) -> bool:
    """A job just completed (exactly once) or was found without its results CSV: a small one's is
    written now; a big one's build is requested (the ingest function writes it). -> whether the
    CSV was written or its build requested."""
    if builds_inline(job, settings):
        return export_job(get_conn, storage, job)
    try:
        return request_export(get_conn(), queue, job, "all")
    except DomainError:
        return False  # the sweep requests it again
