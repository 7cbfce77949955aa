"""Changing a running job from outside: cancel, retry, and giving up a dead-lettered chunk."""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from chalicelib.adapters import db
from chalicelib.adapters.queue import ChunkQueue
from chalicelib.adapters.storage import Storage
from chalicelib.errors import BadRequest, Conflict
from chalicelib.generation import pricing
from chalicelib.generation.dispatch import dispatch_next, window
from chalicelib.jobs import multipart
from chalicelib.jobs.export import export_job
from chalicelib.jobs.start import take_account_capacity
from chalicelib.jobs.views import job_json, require_job
from chalicelib.logs import get_logger
from chalicelib.outbound import webhooks
from chalicelib.settings import Settings

log = get_logger("jobs")



def cancel(conn, account_id: str, job_id: str, notify: Callable[[dict], None] | None = None,
           cancel_batches: Callable[[str], int] | None = None, storage: Storage | None = None) -> dict:
    job = require_job(conn, account_id, job_id)
    canceled = db.cancel_job(conn, job["id"])
    if canceled is None:
        raise Conflict(f"Job is already {job['status']}; only pending or processing jobs can be canceled",
                       code="not_cancelable")
    log.info("job canceled", extra={"job_id": str(job["id"])})
    if storage is not None and canceled["upload_id"]:
        try:  # its parts would only take space; the bucket's lifecycle rule aborts it later otherwise
            multipart.abort(conn, storage, canceled)
        except Exception:
            log.exception("aborting the canceled job's multipart upload failed", extra={"job_id": str(job["id"])})
    if canceled["mode"] == "batch" and cancel_batches is not None:
        try:
            cancel_batches(str(job["id"]))  # what the batches finished is kept when the sweep reads them
        except Exception:  # the provider unreachable: the sweep asks again
            log.exception("cancelling the job's batches failed", extra={"job_id": str(job["id"])})
    if notify is not None:
        notify(canceled)
    return {"job": job_json(canceled)}


def retry(conn, queue: ChunkQueue, settings: Settings, account_id: str, job_id: str,
          send_webhooks: Callable[[list], None] | None = None) -> dict:
    """Failed URLs (and a canceled or failed job's unfinished ones) back to pending, job ->
    processing, then their chunks are enqueued again (after the commit, as in `start`). The
    retried URLs count against the account's daily quota like a start's. A completion's webhook
    still held for its results CSV goes now, as it was (`webhooks.end_holds`, in the same
    transaction; `send_webhooks(ids)` attempts it after the commit, else the sweep does)."""
    job = require_job(conn, account_id, job_id)
    seen = job["status"]
    if seen not in ("completed", "failed", "canceled"):
        raise Conflict(f"Job is {seen}; retry a completed, failed or canceled job", code="not_retryable")
    try:
        with conn.transaction():
            # One lock order everywhere: a job's URL rows, then the job row (as save_results and
            # fail_chunk take them), then the account row, then the job's webhook deliveries.
            conn.execute("SET LOCAL lock_timeout = '5s'")
            retried, failed, chunks = db.reset_for_retry(conn, job["id"], seen != "completed")
            job = db.get_job(conn, job["id"], lock=True, nowait=False)
            if job["status"] != seen:
                raise Conflict(f"Job became {job['status']} meanwhile; look at it again", code="busy")
            if retried == 0:
                raise Conflict("Nothing to retry: no failed or unprocessed URLs", code="nothing_to_retry")
            check_retry_budget(settings.prices, job, retried)
            take_account_capacity(conn, settings, account_id, retried)
            chunks, waiting = window(chunks, settings, job["mode"])
            job = db.restart_job(conn, job["id"], failed, waiting, expected=seen)
            if job is None:  # not reached: the row is locked and was `seen`
                raise Conflict("Job changed meanwhile; look at it again", code="busy")
            held = webhooks.end_holds(conn, job["id"])
    except psycopg.errors.LockNotAvailable:
        raise Conflict("Job is being changed by another request", code="busy") from None
    send_or_fail(conn, queue, job, chunks, "retry", then="call retry again")
    send_held(send_webhooks, held)  # after the chunks: a slow receiver does not hold the work back
    log.info("job retried", extra={"job_id": str(job["id"]), "retried": retried, "chunks": len(chunks)})
    return {"job": job_json(job), "retried": retried, "chunks": len(chunks)}


def send_held(send_webhooks: Callable[[list], None] | None, held: list) -> None:
    """The webhooks a retry or a regeneration made due (`webhooks.end_holds`), attempted after its commit."""
    if held and send_webhooks is not None:
        send_webhooks(held)


def send_or_fail(conn, queue: ChunkQueue, job: dict, chunks: list[int], what: str, then: str) -> None:
    """Send the chunk messages of a job just put back to processing (after the commit); when
    that fails, the job fails with why and what to do (`then`), and the error is raised."""
    try:
        queue.send_chunks(str(job["id"]), chunks)
    except Exception as exc:
        log.exception(f"enqueueing the {what} failed", extra={"job_id": str(job["id"])})
        db.fail_job(conn, job["id"], f"Could not queue the {what} ({type(exc).__name__}); {then}",
                    expected="processing")
        raise


def check_retry_budget(prices: dict, job: dict, urls: int) -> None:
    """A batch job is paid for as a whole once submitted: a retry whose rows are expected to take
    its cost past max_cost_usd is refused (400 over_budget, nothing reset or enqueued), as a
    start would be. A live job's budget stops it at the next save instead."""
    if job["mode"] != "batch" or job["max_cost_usd"] is None:
        return
    spent, more = pricing.job_cost(prices, job), pricing.retry_cost(prices, job, urls)
    if spent is None or more is None or spent + more <= float(job["max_cost_usd"]):
        return
    raise BadRequest(f"Retrying {urls:,} URLs of this batch job is estimated at ${more:,.4f} on top of the "
                     f"${spent:,.4f} it cost, above its max_cost_usd of ${float(job['max_cost_usd']):,.4f}; "
                     "raise max_cost_usd (a new job) or retry fewer URLs", code="over_budget")


def give_up_chunk(get_conn, storage: Storage, queue: ChunkQueue, job_id: str, chunk: int, receive_count: int,
                  error: BaseException, completed: Callable[[dict], None] | None = None) -> None:
    """The chunk's message failed its last delivery and goes to the dead-letter queue: its
    unfinished URLs fail with the reason, the job says why, and it can complete (and be retried).
    A completion does what a worker's does, `completed(job)` (deps.job_completed: the results CSV,
    a big one's built in the background, and the webhook); without it, the CSV is written here."""
    reason = (f"chunk {chunk} failed {receive_count} deliveries ({type(error).__name__}); "
              "its message is in the dead-letter queue. Retry the job to try again.")
    log.error("chunk given up: its last delivery failed", exc_info=error, extra={"job_id": job_id, "chunk": chunk})
    conn = get_conn()
    with conn.transaction():
        result = db.fail_chunk(conn, job_id, chunk, reason)
    log.error("chunk given up", extra={"job_id": job_id, "chunk": chunk, "failed": result and result["failed"]})
    finished = db.complete_job_if_done(conn, job_id)
    if finished is not None:  # its last work was this chunk: as a worker's completion
        if completed is not None:
            completed(finished)
        else:
            export_job(get_conn, storage, finished)
    dispatch_next(conn, queue, job_id)
