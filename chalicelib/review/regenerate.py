"""Regenerating rows of a finished job (SPEC "Review before sending"): the rows named by id, or
matching a filter (rows a person edited or picked a variant of left alone), go back to pending
with the request's feedback and the mark that no earlier opener is reused for them; the job returns to processing
and its chunks are enqueued through the chunk window, as a retry's are. Quota, limiter, cost,
checks and fair share are then those of any row; the job completes again exactly once
(``complete_job_if_done``) and its webhook says ``job.completed`` with ``regenerated``.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from chalicelib.adapters import db
from chalicelib.adapters.db import review as store
from chalicelib.adapters.queue import ChunkQueue
from chalicelib.errors import BadRequest, Conflict
from chalicelib.generation import prompt
from chalicelib.generation.dispatch import window
from chalicelib.jobs.control import send_held, send_or_fail
from chalicelib.jobs.options import MAX_INSTRUCTIONS, account_limits, clean_text, template_columns
from chalicelib.jobs.start import capacity_refusal
from chalicelib.jobs.views import job_json, require_job
from chalicelib.logs import get_logger
from chalicelib.outbound import webhooks
from chalicelib.review.edits import require_rows, selection
from chalicelib.settings import Settings

log = get_logger("review")

MAX_FEEDBACK = 500
FIELDS = {"result_ids", "filter", "feedback", "instructions"}


def regenerate(conn, queue: ChunkQueue, settings: Settings, account_id: str, job_id: str, body: dict,
               send_webhooks: Callable[[list], None] | None = None) -> dict:
    """POST regenerate -> 202 {"job", "regenerating": rows}. 409 while the job is not finished or
    has unfinished rows (a canceled job: retry it first), and when no row matches. A webhook still
    held for the results CSV of the completion regenerated goes now, as a retry's (`send_held`)."""
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise BadRequest(f"Unknown field(s): {', '.join(unknown)}; regenerate takes result_ids or filter, "
                         "feedback and instructions", code="unknown_field")
    ids, filters = selection(body)
    feedback = clean_text(body.get("feedback"), "feedback", MAX_FEEDBACK, allowed_controls="\n\r\t")
    instructions = clean_text(body.get("instructions"), "instructions", MAX_INSTRUCTIONS, allowed_controls="\n\r\t")
    job = require_job(conn, account_id, job_id)
    if instructions is not None:
        check_fields(instructions, job)
    if job["status"] not in ("completed", "failed", "canceled"):
        raise Conflict(f"Job is {job['status']}; regenerate rows of a finished job", code="not_regenerable")
    if job["processed_rows"] + job["failed_rows"] != job["total_rows"]:
        raise Conflict("Job has unfinished rows; retry it first, then regenerate", code="not_regenerable")
    try:
        with conn.transaction():
            # One lock order everywhere: the job's URL rows, then the job row, then the account row,
            # then the job's webhook deliveries.
            conn.execute("SET LOCAL lock_timeout = '5s'")
            require_rows(conn, job, ids)
            reset = store.reset_for_regenerate(conn, job["id"], ids=ids, filters=filters, feedback=feedback)
            if reset is None:
                raise Conflict("Job changed meanwhile; look at it again", code="busy")
            if reset["n"] == 0:
                raise Conflict("Nothing to regenerate: no finished row matches (rows a person edited, or "
                               "picked a variant of, are regenerated only when named by id)",
                               code="nothing_to_regenerate")
            take_capacity(conn, settings, account_id, reset["n"])
            first, waiting = window(list(reset["chunks"]), settings, reset["mode"])
            job = store.set_undispatched(conn, job["id"], waiting)
            if instructions is not None:
                job = db.update_job(conn, job["id"], instructions=instructions)
            held = webhooks.end_holds(conn, job["id"])
    except psycopg.errors.LockNotAvailable:
        raise Conflict("Job is being changed by another request", code="busy") from None
    send_or_fail(conn, queue, job, first, "regeneration", then="call retry")
    send_held(send_webhooks, held)  # after the chunks: a slow receiver does not hold the work back
    log.info("job regenerating", extra={"job_id": str(job["id"]), "rows": reset["n"], "chunks": len(first)})
    return {"job": job_json(job), "regenerating": reset["n"]}


def check_fields(instructions: str, job: dict) -> None:
    """New instructions may name only the {{columns}} the job's rows carry (those of its own)."""
    named = set(template_columns(instructions, job))
    kept = set(prompt.template_fields(job["instructions"]))
    if not named <= kept:
        raise BadRequest(f"The new instructions name {', '.join(sorted('{{' + n + '}}' for n in named - kept))}, "
                         "which the job's rows do not carry; only the job's own {{columns}} can be used",
                         code="unknown_column")


def take_capacity(conn, settings: Settings, account_id: str, urls: int) -> None:
    """As a start's ``take_account_capacity``: refuse (429, everything rolled back, nothing
    enqueued) past the account's URLs-per-day quota or its concurrent-job limit, else count the
    rows. This job is already processing in this transaction, so it is not counted twice."""
    limits = account_limits(db.lock_account(conn, account_id), settings)
    processing = max(0, db.processing_jobs(conn, account_id) - 1) if limits.max_jobs else 0
    refusal = capacity_refusal(limits, processing, db.urls_today(conn, account_id), urls)
    if refusal is not None:
        raise refusal
    db.add_urls_today(conn, account_id, urls)
