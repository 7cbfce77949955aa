"""Batch mode: a job's requests through the provider's Batch API, at half the price.

Why: a 100,000-row file that nobody needs within the hour costs twice what it should through live
calls. The Batch API takes the same requests as a JSONL file and answers within 24 hours.

How a batch job runs (a job with ``mode = 'batch'``; everything else is as for a live job):

* **Submit** (the chunk handler, for each of the job's chunk messages): the chunk's pending URL
  rows are claimed with the batch's id as ``claimed_by``, their page context and template values
  are resolved, and each becomes one JSONL line, ``custom_id`` = the row's id, with exactly the
  request a live call sends (``OpenerGenerator.request_body``). The file is uploaded (Files API),
  the batch created, and the rows stay held for the provider's window (``BATCH_LEASE_S``), so the
  stall sweep leaves them alone. A chunk message delivered twice finds nothing pending.
* **Poll** (the scheduled sweep, never a Lambda that waits): each open batch is retrieved; a
  finished one's output and error files are read back into the same rows through the same save
  as live results (statuses, counters, tokens, budget), each answer cleaned and checked by the
  output guard like a live one, then by the quality checks (``checks.generate_checked`` with the
  batch's answer as the first one): an answer that fails a check is asked again live, through
  the workers' generator and limiter, unless the job has reached its budget (then it is kept
  flagged, or fails ``ungrounded`` in strict mode). The job completes (results CSV, webhook) as a
  live job does.
* **Cancel**: a canceled job's batches are cancelled at the provider; what they finished is kept,
  the rest goes back to pending, so a retry sends it in a new batch. An expired batch keeps its
  partial output; only the rows without an answer go back to pending (one more try counted, at
  most MAX_RETRIES tries, then they fail with the reason) and their chunk is enqueued again, so
  the next batch holds those rows alone. A retried job's failed rows go into a new batch (the
  retry's chunk messages submit them).
* **Paying once**: every batch is created with metadata naming our batch row (``batch``), job and
  chunk. A crash between the provider creating a batch and our row recording it leaves the row
  ``submitting``; before a chunk's rows are claimed again (their short submit lease ran out, the
  sweep enqueued the chunk), its stale ``submitting`` batches are looked for among the provider's
  batches by that metadata (``recover``): one found is recorded and read as any other (its rows
  are not sent again); one not found was never created, and its rows go back to pending.
* **Reuse**: the claimed rows are looked up by fingerprint in one query (``reuse.lookup``); a
  row with an earlier opener (written from the same page) is saved at once, reused, and left out
  of the file; a chunk whose rows are all reused sends no batch. A batch answer keeps its
  fingerprint, so later jobs reuse it as they reuse a live one.
* **Cost**: the batch's answers are paid at the batch price, their cached prompt tokens at the
  batch rate's cached price; a re-ask made live by the checks at the live price (each row's
  ``live_*_tokens``, summed into the job's, sql/0021). The save that reaches the first chunk's
  worth of rows corrects the job's estimate from their real usage.
"""

from __future__ import annotations

import io
import json
import math
import uuid
from collections.abc import Callable
from typing import Any

import openai

from chalicelib.adapters import db
from chalicelib.generation import batch_recovery, checks, pricing, reuse
from chalicelib.generation.answers import error_text
from chalicelib.generation.batch_answers import EXPIRED_ERROR, BatchAnswers
from chalicelib.generation.client import describe_error
from chalicelib.generation.pages import page_source
from chalicelib.logs import get_logger, log_context

log = get_logger("batches")

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
BATCH_LEASE_S = 26 * 3600  # the provider's 24-hour window, and time for the sweep to read the result
MAX_REQUESTS = 50_000  # the Batch API's limits per batch
MAX_BYTES = 200 * 1024 * 1024
POLL_LIMIT = 100  # batches retrieved per sweep
ENDED = ("completed", "expired", "cancelled", "failed")
_REFUSED = (400, 401, 403, 404, 413, 415, 422)  # the provider will not take this batch: not worth retrying


class BatchUnavailable(Exception):
    """The provider refused the batch (no Batch API, a bad key, a bad file): its rows failed."""


class BatchRunner(BatchAnswers):
    """Submits, polls and cancels a job's batches. `client` is the provider's ``openai.OpenAI``;
    `generator` builds the requests (``request_body``); `page_summary` gives a page's (summary,
    context_status): ``outbound.summaries.PageSummaries`` (its ``submit``), or a callable;
    `completed(job)` exports a completed job's CSV; `notify(job)` sends the webhook of a job this
    runner stopped (budget)."""

    def __init__(self, *, get_conn: Callable, client: openai.OpenAI, generator, settings,
                 page_summary: Any = None,
                 completed: Callable[[dict], None] = lambda job: None,
                 notify: Callable[[dict], None] = lambda job: None, duplicates=None, queue=None) -> None:
        self.duplicates = duplicates  # the job-wide index of accepted openers (None: not checked)
        self.queue = queue  # chunk messages for rows an expired batch gave back (None: the sweep's requeue)
        self.get_conn = get_conn
        self.client = client
        self.generator = generator
        self.settings = settings
        self.page_summary = page_summary
        self.completed = completed
        self.notify = notify

    # ------------------------------------------------------------ submit

    def submit_chunk(self, job: dict, chunk: int) -> int:
        """Send the chunk's pending URLs as one batch; returns how many (0: nothing pending, or
        every row reused). Rows with an earlier opener of their fingerprint (``reuse``: one query
        for the claimed rows) are saved at once, reused, and left out of the batch."""
        conn = self.get_conn()
        self.recover(conn, str(job["id"]), chunk)
        batch_id = str(uuid.uuid4())
        limit = min(self.settings.chunk_size, MAX_REQUESTS)
        rows = db.claim_urls(conn, str(job["id"]), chunk, batch_id, limit, self.settings.lease_seconds)
        if not rows:
            return 0
        with log_context(job_id=str(job["id"]), chunk=chunk, batch=batch_id):
            try:
                earlier = reuse.lookup(conn, job, rows, self.settings.reuse_days)
                data, context, reused = self._jsonl(job, rows, earlier)
                if reused:
                    self._save_reused(conn, job, batch_id, reused)
                rows = [row for row in rows if str(row["id"]) in context]
                if not rows:
                    return 0
                db.insert_batch(conn, batch_id, str(job["id"]), chunk, len(rows), job["model"])
                db.batch_context(conn, batch_id, context)
                uploaded = self.client.files.create(file=(f"{job['id']}-{chunk}.jsonl", io.BytesIO(data)),
                                                    purpose="batch")
                created = self.client.batches.create(
                    input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window=COMPLETION_WINDOW,
                    metadata={"job_id": str(job["id"]), "chunk": str(chunk), "batch": batch_id})
            except (openai.APIStatusError, BatchUnavailable) as exc:
                if isinstance(exc, openai.APIStatusError) and exc.status_code not in _REFUSED:
                    self._unsend(conn, batch_id, rows, exc)
                    raise
                self._refused(conn, job, batch_id, rows, exc)
                return 0
            except Exception as exc:  # the provider unreachable, a timeout: the message comes back
                self._unsend(conn, batch_id, rows, exc)
                raise
            with conn.transaction():
                held = db.batch_submitted(conn, batch_id, uploaded.id, created.id, BATCH_LEASE_S)
            log.info("batch submitted", extra={"provider_batch_id": created.id, "requests": held,
                                               "bytes": len(data), "reused": len(reused)})
            return held

    def _save_reused(self, conn, job: dict, owner: str, reused: list[dict]) -> None:
        """Rows of a claim that reuse an earlier opener: saved (no call, no cost) before the batch
        is written, so a crash after it sends only the others."""
        saved = db.save_results(conn, str(job["id"]), owner, reused)
        log.info("rows reused instead of sent", extra={"reused": saved["saved"]})
        self._after_save(conn, str(job["id"]), saved)

    def recover(self, conn, job_id: str, chunk: int) -> dict:
        """The chunk's batches its submitter never recorded, found at the provider or given up
        (``batch_recovery.recover``)."""
        return batch_recovery.recover(conn, self.client, job_id, chunk, self.settings.lease_seconds, BATCH_LEASE_S)

    def _jsonl(self, job: dict, rows: list[dict], earlier: dict | None = None
               ) -> tuple[bytes, dict[str, str], list[dict]]:
        """The batch file (one request per row, the same a live call sends), each sent row's
        context_status, and the results of the rows that reuse an earlier opener instead
        (`earlier`: ``reuse.lookup`` of the rows; one written from the same page is reused).
        Every page is asked for at once (``pages.page_source``: on the process's event loop,
        PAGE_FETCH_CONCURRENCY in flight, no thread each), each line built as its page is in."""
        options = checks.Options.of(job)
        earlier = earlier or {}

        def line(row: dict, page: str | None, context: str) -> tuple[str | None, str, dict | None]:
            found = earlier.get(row["id"])
            match = found.match(page) if found is not None else None
            if match is not None:
                return None, context, reuse.reused_result(row["id"], match)
            body = self.generator.request_body(row["url"], job["instructions"], job["model"], row.get("fields"),
                                               page, language=checks.row_language(options, page),
                                               min_words=options.min_words, max_words=options.max_words,
                                               feedback=row.get("feedback"))
            request = {"custom_id": str(row["id"]), "method": "POST", "url": ENDPOINT, "body": body}
            return json.dumps(request, ensure_ascii=False, separators=(",", ":")), context, None

        pages = page_source(self.page_summary, self.settings.page_fetch_concurrency) if job["page_context"] else None
        try:  # no hurry in a batch: a page waits for its turn as long as it takes
            fetched = [pages.submit(row["url"], job["account_id"], math.inf) if pages else None for row in rows]
            built = [line(row, *(page.result() if page else (None, "off")))
                     for row, page in zip(rows, fetched, strict=True)]
        finally:
            if pages is not None:
                pages.shutdown()
        data = ("\n".join(text for text, _, _ in built if text is not None) + "\n").encode("utf-8")
        if len(data) > MAX_BYTES:
            raise BatchUnavailable(f"The batch file would be {len(data)} bytes, over the Batch API's {MAX_BYTES}")
        context = {str(row["id"]): status for row, (text, status, _) in zip(rows, built, strict=True)
                   if text is not None}
        return data, context, [result for _, _, result in built if result is not None]

    def _page(self, job: dict, row: dict) -> tuple[str | None, str]:
        """(summary, context_status) of one row's page, when the job uses it (an answer checked
        against its source: from the shared cache, where the batch file's fetch left it)."""
        if not job["page_context"] or self.page_summary is None:
            return None, "off"
        return self.page_summary(row["url"], job["account_id"])

    def _unsend(self, conn, batch_id: str, rows: list[dict], exc: BaseException) -> None:
        """The batch was not created: its rows go back to pending (the message is retried)."""
        log.warning("batch not sent; its rows go back to pending", extra={"error": error_text(describe_error(exc))})
        with conn.transaction():
            db.release_urls(conn, batch_id, [row["id"] for row in rows])
            db.finish_batch(conn, batch_id, expected=("submitting",),
                            error=error_text(f"not sent: {describe_error(exc)}"))

    def _refused(self, conn, job: dict, batch_id: str, rows: list[dict], exc: Exception) -> None:
        """The provider will not take the batch (no Batch API, a bad key): its rows fail with the reason."""
        error = error_text(f"The provider refused the batch: {describe_error(exc)}")
        log.error("batch refused by the provider", extra={"error": error})
        results = [{"id": row["id"], "status": "failed", "error": error, "retry_count": row["retry_count"] + 1}
                   for row in rows]
        with conn.transaction():
            saved = db.save_results(conn, str(job["id"]), batch_id, results)
            db.finish_batch(conn, batch_id, expected=("submitting",), error=error)
        self._after_save(conn, str(job["id"]), saved)

    # ------------------------------------------------------------ poll

    def poll(self, limit: int = POLL_LIMIT) -> dict:
        """One pass of the sweep over open batches: {"waiting", "ingested", "cancelled", "errors"}."""
        conn = self.get_conn()
        done = {"waiting": 0, "ingested": 0, "cancelled": 0, "errors": 0}
        for batch in db.open_batches(conn, limit):
            with log_context(job_id=str(batch["job_id"]), batch=str(batch["id"])):
                try:
                    done[self._poll_one(conn, batch)] += 1
                except Exception:  # one provider or database hiccup must not stop the others
                    log.exception("polling a batch failed; the next sweep tries again")
                    done["errors"] += 1
        return done

    def _poll_one(self, conn, batch: dict) -> str:
        remote = self.client.batches.retrieve(batch["provider_batch_id"])
        if remote.status not in ENDED:
            db.batch_polled(conn, batch["id"], remote.status)
            if batch["job_status"] not in ("processing", "ingesting") and batch["status"] == "submitted":
                self._cancel_remote(conn, batch)  # the job was canceled or stopped meanwhile
                return "cancelled"
            return "waiting"
        self.ingest(conn, batch, remote)
        return "ingested"

    def ingest(self, conn, batch: dict, remote) -> int:
        """Read a finished batch's output and error files into its rows; returns the rows saved.
        Exactly once: the batch moves to done in the same transaction as the save."""
        job = db.get_job(conn, batch["job_id"])
        rows = {str(r["id"]): r for r in db.batch_rows(conn, batch["id"])}
        results: dict[str, dict] = {}
        release: list = []
        for file_id in (remote.output_file_id, remote.error_file_id):
            for line in self._lines(file_id):
                self._read_line(line, rows, job, results, release)
        missing = [row for key, row in rows.items() if key not in results and row["id"] not in release]
        self._unanswered(remote, missing, results, release)
        again = self._send_again(rows, results)
        with conn.transaction():
            if not db.finish_batch(conn, batch["id"], expected=("submitted", "cancelling"),
                                   provider_status=remote.status):
                return 0  # another sweep read it first
            saved = db.save_results(conn, str(job["id"]), str(batch["id"]), list(results.values())) if results \
                else None
            db.release_urls(conn, str(batch["id"]), release)
            requeued = db.requeue_urls(conn, str(batch["id"]), again)
        log.info("batch read", extra={"provider_status": remote.status, "saved": saved["saved"] if saved else 0,
                                      "released": len(release), "sent_again": requeued})
        if requeued and self.queue is not None and job["status"] == "processing":
            self.queue.send_chunks(str(job["id"]), [batch["chunk"]])  # a new batch of those rows alone
        self._after_save(conn, str(job["id"]), saved)
        return saved["saved"] if saved else 0

    def _send_again(self, rows: dict[str, dict], results: dict[str, dict]) -> list:
        """Rows an expired batch did not run, with tries left: taken out of `results` (they would
        fail) to go back to pending for another batch. Returns their ids."""
        again = [row["id"] for key, row in rows.items()
                 if results.get(key, {}).get("error") == EXPIRED_ERROR
                 and row["retry_count"] + 1 < self.settings.max_retries]
        for row_id in again:
            del results[str(row_id)]
        return again

    def _after_save(self, conn, job_id: str, saved: dict | None) -> None:
        """What a save leads to, as in the live worker: the job completed (CSV, webhook), or stopped
        at its budget (the rest of its batches cancelled)."""
        if saved is None or saved["status"] != "processing":
            return
        calibrate = pricing.first_chunk_rows(saved, self.settings.chunk_size)
        if calibrate is not None:  # the job's estimate, from the real usage of its first chunk's worth
            db.calibrate_estimate(conn, job_id, calibrate)
        if saved["processed_rows"] + saved["failed_rows"] == saved["total_rows"]:
            job = db.complete_job_if_done(conn, job_id)
            if job is not None:
                log.info("job completed", extra={"processed_rows": job["processed_rows"],
                                                  "failed_rows": job["failed_rows"]})
                self.completed(job)
            return
        if saved["max_cost_usd"] is None:
            return
        over = pricing.over_budget(self.settings.prices, db.get_job(conn, job_id))  # with its live re-asks
        if over is None:
            return
        cost, error = over
        stopped = db.stop_for_budget(conn, job_id, error)
        if stopped is not None:
            log.warning("job stopped at its budget", extra={"cost_usd": cost})
            self.cancel_job(job_id)
            self.notify(stopped)

    # ------------------------------------------------------------ cancel

    def cancel_job(self, job_id: str) -> int:
        """Ask the provider to cancel the job's open batches (best effort: the sweep asks again for
        a batch still running under a job that is no longer processing). Returns the batches asked."""
        conn = self.get_conn()
        asked = 0
        for batch in db.job_batches(conn, job_id, ("submitted",)):
            try:
                self._cancel_remote(conn, batch)
                asked += 1
            except Exception:
                log.exception("could not cancel a batch at the provider; the sweep will ask again",
                              extra={"batch": str(batch["id"])})
        return asked

    def _cancel_remote(self, conn, batch: dict) -> None:
        try:
            self.client.batches.cancel(batch["provider_batch_id"])
        except openai.BadRequestError:
            return  # it ended meanwhile: the next poll reads it
        db.batch_cancelling(conn, batch["id"])
        log.info("batch cancel asked", extra={"provider_batch_id": batch["provider_batch_id"]})

