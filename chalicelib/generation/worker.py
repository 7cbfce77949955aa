"""Chunk worker: generate the openers of one chunk of a job, as fast as the shared limit allows.

One call per SQS message. Rows are claimed a few at a time with a lease (`claim_urls`), handed
to a thread pool of CHUNK_CONCURRENCY generators, and their results written by this thread
alone in batches (every ≤ 1 s, 50 results or 500 reused ones) together with the job's counters. With page
context, each claimed row's page is submitted at once (``page_summary.submit``: fetched on the
process's event loop, up to PAGE_FETCH_CONCURRENCY in flight, no thread each) and up to that many
rows are claimed ahead, so a slow page waits on the loop while the generators keep calling the
model: the two stages wait on different things (a site, the shared rate). A page callable without
``submit`` runs on a pool of PAGE_FETCH_CONCURRENCY threads instead. A redelivered or
duplicate message skips finished rows and rows another live invocation holds; rows of a crashed
invocation are taken over when their lease runs out. Cancel and the Lambda deadline stop the
claiming, save what was generated and give the rest back.

Every answer goes through ``checks.generate_checked`` before it is saved: grounding, flags and
the job-wide duplicate index (``duplicates``, shared by every handler of the job through Redis),
asking the model again where the checks say so; a job's index is forgotten when it completes.

Reuse across jobs (``reuse``): each claimed batch of rows is looked up in one query by its
fingerprints before anything else; a row whose earlier opener needs no page is saved at once
with no call, a row with page context is compared once its page is in. While rows come back
reusable, the claims grow (up to a chunk), so a re-run of an unchanged file is paced by the
database, not by the generators.
"""

from __future__ import annotations

import contextvars
import functools
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import psycopg
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from chalicelib import metrics
from chalicelib.adapters import db
from chalicelib.generation import checks, pricing, reuse
from chalicelib.generation.answers import GenerationFailed, spent_tokens
from chalicelib.generation.dispatch import dispatch_next
from chalicelib.generation.pages import page_source
from chalicelib.generation.ratelimit import LimiterStopped
from chalicelib.logs import get_logger, log_context, public_error

log = get_logger("worker")

FLUSH_EVERY_S = 1.0
FLUSH_BATCH = 50
REUSED_FLUSH_BATCH = 500  # reused rows cost nothing to redo: saved in bigger batches (fewer, cheaper per row)
STATUS_EVERY_S = 1.0
RENEW_EVERY_S = 30.0  # or a third of the lease, if shorter
CANCEL_GRACE_S = 2.0
AHEAD_PAGES = 4  # rows with an earlier opener held beyond the generators, per page in flight
PAGE_WAIT_GRACE_S = 1.0  # beyond PAGE_FETCH_TIMEOUT_S: a page fetch ends by itself just after its deadline
MAX_ERROR_CHARS = 500

# Lost PostgreSQL connections (restart, pg_terminate_backend) are retried on a fresh connection.
_db_retry = retry(
    retry=retry_if_exception_type(psycopg.OperationalError),
    stop=stop_after_delay(60),
    wait=wait_exponential_jitter(multiplier=0.2, max=5),
    reraise=True,
)


@dataclass
class Outcome:
    """What one call did: `reason` is done, canceled, account_disabled, deadline, not_processing,
    unknown_job or batch_submitted (`saved`: the requests sent in the batch)."""
    reason: str = "done"
    saved: int = 0
    released: int = 0
    continued: bool = False
    completed_job: bool = False


@dataclass
class _Run:
    job_id: str
    chunk: int
    owner: str = field(default_factory=lambda: str(uuid.uuid4()))
    buffer: list[dict] = field(default_factory=list)
    to_release: list = field(default_factory=list)
    status: str = "processing"
    ahead: int = 0  # rows held beyond the generators: twice the last claim's rows with an earlier opener
    reused: int = 0  # of the buffer's results, reused ones

    def full(self) -> bool:
        """Time to save: FLUSH_BATCH results generated (paid for), or REUSED_FLUSH_BATCH in all."""
        return len(self.buffer) - self.reused >= FLUSH_BATCH or len(self.buffer) >= REUSED_FLUSH_BATCH


class ChunkWorker:
    def __init__(self, *, get_conn: Callable, generator, queue, settings,
                 export: Callable, clock: Callable[[], float] = time.monotonic,
                 deadline_margin_s: float | None = None,
                 page_summary: Callable[[str, str], tuple[str | None, str]] | None = None,
                 notify: Callable[[dict], None] | None = None, batches=None, duplicates=None) -> None:
        self.duplicates = duplicates  # quality.DuplicateIndex (job-wide); None: duplicates not checked
        self.batches = batches  # batch mode (chalicelib/batches.py): a batch job's chunk is sent as one batch
        self.notify = notify  # a job that this worker moved to failed (budget): its webhook
        self.page_summary = page_summary  # (url, account_id) -> (summary, context_status); None: no page context
        self.get_conn, self.generator, self.queue, self.settings = get_conn, generator, queue, settings
        self.export, self.clock = export, clock
        self.concurrency = max(1, settings.chunk_concurrency)
        self.page_concurrency = max(1, settings.page_fetch_concurrency)
        # A row waits this long for its page (from its claim), then is generated without it.
        self.page_wait_s = settings.page_fetch_timeout_s + PAGE_WAIT_GRACE_S
        # Calls already in flight may wait for their page and then the LLM to finish and be saved.
        self.margin = deadline_margin_s if deadline_margin_s is not None else (
            settings.page_fetch_timeout_s + settings.openai_timeout_s + 10)
        # Leases are renewed well before they run out, so a slow call is never retaken.
        self.renew_every = min(RENEW_EVERY_S, settings.lease_seconds / 3)

    # ------------------------------------------------------------ entry point

    def process_chunk(self, job_id: str, chunk: int, remaining_s: Callable[[], float]) -> Outcome:
        with log_context(job_id=job_id, chunk=chunk):
            job = self._db(db.get_job, job_id)
            if job is None:
                log.warning("chunk message for an unknown job; dropping it")
                return Outcome("unknown_job")
            if job["status"] not in ("processing", "ingesting"):  # an ingesting job's stored chunks are worked on
                log.info("job is %s; nothing to do", job["status"])
                return Outcome("not_processing")
            metrics.tag_job(job, price=functools.partial(  # its URLs' dollars, for the CostUsd metric
                pricing.usage_cost, self.settings.prices, job["model"] or self.settings.openai_model, job["mode"]))
            if job["mode"] == "batch" and self.batches is not None:
                return Outcome("batch_submitted", saved=self.batches.submit_chunk(job, chunk))
            run = _Run(job_id, chunk)
            outcome = self._run(run, job, remaining_s)
            log.info("chunk call finished", extra={"reason": outcome.reason, "saved": outcome.saved,
                                                   "released": outcome.released})
            return outcome

    def _run(self, run: _Run, job: dict, remaining_s: Callable[[], float]) -> Outcome:
        outcome = Outcome()
        in_flight: dict[Future, dict] = {}
        stopping = False
        now = self.clock()
        last_flush = last_status = last_renew = now
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="opener")
        pages = page_source(self.page_summary, self.page_concurrency) if job["page_context"] else None
        capacity = self.concurrency + (self.page_concurrency if pages is not None else 0)  # rows held at once
        stop_requested = _Flag()
        try:
            while True:
                if not stopping and remaining_s() < self.margin:
                    outcome.reason, stopping = "deadline", True
                    stop_requested.set()
                if not stopping and run.status != "processing":  # canceled, completed by the last save,
                    # or its account disabled (claims take nothing then; the sweep resumes it once enabled)
                    outcome.reason = {"completed": "done", "account_disabled": "account_disabled"}.get(
                        run.status, "canceled")
                    stop_requested.set()
                    log.info("job is %s: stopping", run.status)
                    self._wait_briefly(in_flight, run)
                    break
                free = capacity + run.ahead - len(in_flight)
                reused_now = 0
                if not stopping and (not in_flight or free >= max(1, self.concurrency // 4)):
                    rows = self._db(db.claim_urls, run.job_id, run.chunk, run.owner, free,
                                    self.settings.lease_seconds)
                    earlier = self._db(reuse.lookup, job, rows, self.settings.reuse_days) if rows else {}
                    for row in rows:
                        found = earlier.get(row["id"])
                        result = found.match(None) if found is not None and pages is None else None
                        if result is not None:  # no page to wait for: saved with the next flush
                            self._collect(run, row, reuse.reused_result(row["id"], result))
                            reused_now += 1
                        else:
                            in_flight[self._submit(pool, pages, row, job, stop_requested, found)] = row
                    # rows with an earlier opener cost no call (at most a page from the cache): while
                    # they come, claim more at once, so the claims and lookups stay few
                    # (with page context at most AHEAD_PAGES pages in flight's worth: each row still waits
                    # for its page, and one queued too long behind the others would go without it)
                    most = self.settings.chunk_size if pages is None else AHEAD_PAGES * self.page_concurrency
                    run.ahead = min(most, 2 * len(earlier)) if rows else run.ahead
                    if not rows:  # chunk drained, or the job stopped being processed
                        run.status = self._db(db.get_job_status, run.job_id) or "gone"
                        last_status = self.clock()
                if not in_flight and reused_now:  # every claimed row was reused: claim again
                    if run.full():
                        self._flush(run, outcome)
                        last_flush = last_status = self.clock()
                    continue
                if not in_flight:
                    if stopping or run.status == "processing":
                        break
                    continue  # the status changed: handled at the top
                timeout = max(0.0, FLUSH_EVERY_S - (self.clock() - last_flush))
                done, _ = wait(list(in_flight), timeout=timeout, return_when=FIRST_COMPLETED)
                for future in done:
                    self._collect(run, in_flight.pop(future), future.result())
                now = self.clock()
                if run.full() or (run.buffer and now - last_flush >= FLUSH_EVERY_S):
                    self._flush(run, outcome)
                    last_flush = last_status = now
                elif now - last_status >= STATUS_EVERY_S:
                    run.status = self._db(db.get_job_status, run.job_id) or "gone"
                    last_status = now
                if in_flight and now - last_renew >= self.renew_every:
                    self._db(db.renew_leases, run.owner, self.settings.lease_seconds)
                    last_renew = now
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            if pages is not None:
                pages.shutdown()
            self._flush(run, outcome)
            run.to_release.extend(row["id"] for row in in_flight.values())
            outcome.released = self._db(db.release_urls, run.owner, run.to_release)
        self._finish(run, outcome)
        return outcome

    @staticmethod
    def _collect(run: _Run, row: dict, result: dict | None) -> None:
        """A finished generation: its result to save, or (stopped before calling) its row to give back."""
        if result is None:
            run.to_release.append(row["id"])
        else:
            run.buffer.append(result)
            run.reused += bool(result.get("reused"))
            metrics.url_result(result)

    # ------------------------------------------------------------ pieces

    def _submit(self, pool: ThreadPoolExecutor, pages, row: dict, job: dict,
                stop: _Flag, earlier: reuse.Candidates | None = None) -> Future:
        """The row's generation (its page submitted at once to `pages`, if given); its future. A
        page not started by the row's wait bound (a turn, a thread) is not fetched: ``timeout``."""
        page, page_until = None, time.monotonic() + self.page_wait_s
        if pages is not None:
            page = pages.submit(row["url"], job["account_id"], page_until)
        if page is not None and earlier is not None:  # matched where the page lands; generated only if not
            run = contextvars.copy_context().run
            return reuse.when_page(page, earlier, row["id"], lambda fetched: pool.submit(
                run, self._generate, row, job, stop, fetched, page_until))
        return pool.submit(contextvars.copy_context().run, self._generate, row, job, stop, page, page_until, earlier)

    def _generate(self, row: dict, job: dict, stop: _Flag, page_fetch: Future | None = None,
                  page_until: float = float("inf"), earlier: reuse.Candidates | None = None) -> dict | None:
        """One URL -> a result dict, or None to give the row back (stop requested). A page not
        there by ``page_until`` (its fetch had its time, or waited for a turn) is left out:
        the row is generated without it, ``context_status`` timeout. `earlier`: openers of the
        row's fingerprint from earlier jobs; one written from the same page is reused."""
        page, context = None, "off"
        if page_fetch is not None:
            if stop.is_set():
                page_fetch.cancel()
                return None
            try:  # never raises otherwise: a page that fails is a status
                page, context = page_fetch.result(timeout=max(0.0, page_until - time.monotonic()))
            except FutureTimeout:
                page_fetch.cancel()  # ends the fetch, waiting for its turn or under way (then not cached)
                page, context = None, "timeout"
        reused = earlier.match(page) if earlier is not None else None
        if reused is not None:
            return reuse.reused_result(row["id"], reused)
        base = {"id": row["id"], "opener": None, "error": None, "prompt_tokens": None, "completion_tokens": None,
                "context_status": context}
        try:
            opener = checks.generate_checked(
                self.generator, job_id=str(job["id"]), url=row["url"], instructions=job["instructions"],
                model=job["model"], options=checks.Options.of(job), fields=row.get("fields"), page=page,
                duplicates=self.duplicates, max_calls=self.settings.max_retries,
                should_stop=stop.is_set, account=str(job["account_id"]), feedback=row.get("feedback"))
        except LimiterStopped:
            return None
        except GenerationFailed as exc:
            failed = {**base, "status": "failed", "error": exc.message[:MAX_ERROR_CHARS],
                      "retry_count": row["retry_count"] + exc.attempts, **spent_tokens(exc)}
            if isinstance(exc, checks.Ungrounded):
                failed["grounding"] = "unsupported"
            return failed
        except Exception as exc:  # a bug must not loop a URL forever: record it as this URL's failure
            log.exception("unexpected error generating an opener", extra={"url": row["url"]})
            error = public_error("internal error while generating this opener", exc)  # its text: the log
            return {**base, "status": "failed", "error": error[:MAX_ERROR_CHARS], "retry_count": row["retry_count"] + 1}
        return {**base, "status": "completed", "opener": opener.text,
                "retry_count": row["retry_count"] + opener.attempts - 1 - opener.regenerations,
                "prompt_tokens": opener.prompt_tokens, "completion_tokens": opener.completion_tokens,
                "cached_tokens": opener.cached_tokens, "fingerprint": reuse.job_fingerprint(job, row),
                "page_hash": reuse.page_hash(page),
                "evidence": opener.evidence, "grounding": opener.grounding, "quality": opener.quality,
                "words": opener.words, "language": opener.language, "regenerations": opener.regenerations,
                "variants": opener.variants}

    def _flush(self, run: _Run, outcome: Outcome) -> None:
        if not run.buffer:
            return
        job = self._db(db.save_results, run.job_id, run.owner, run.buffer)
        outcome.saved += job["saved"]
        run.buffer, run.reused = [], 0
        run.status = "processing" if job["status"] == "ingesting" else job["status"]  # as get_job_status says
        calibrate = pricing.first_chunk_rows(job, self.settings.chunk_size)
        if calibrate is not None and run.status == "processing":  # the estimate, from real usage
            self._db(db.calibrate_estimate, run.job_id, calibrate)
        if job["status"] == "processing" and job["processed_rows"] + job["failed_rows"] == job["total_rows"]:
            outcome.completed_job = self._complete(run.job_id)
        elif run.status == "processing" and job["max_cost_usd"] is not None:
            self._check_budget(run, job)  # at each save (≤ 1 s apart): a job may overshoot by one save

    def _check_budget(self, run: _Run, job: dict) -> None:
        """Stop the job cleanly (failed, budget_exceeded, everything generated kept) once its cost
        reaches max_cost_usd; the other handlers see the status and stop too."""
        over = pricing.over_budget(self.settings.prices, job)
        if over is None:
            return
        cost, error = over
        stopped = self._db(db.stop_for_budget, run.job_id, error)
        if stopped is not None:
            log.warning("job stopped at its budget", extra={"cost_usd": cost})
            if self.notify is not None:
                self.notify(stopped)
        run.status = "failed"

    def _wait_briefly(self, in_flight: dict[Future, dict], run: _Run) -> None:
        """On cancel, keep what finishes within a moment; the rest is released, and an opener that
        still arrives for it is thrown away: counted (log, job, /api/metrics), since it was paid."""
        done, _ = wait(list(in_flight), timeout=CANCEL_GRACE_S)
        for future in done:
            self._collect(run, in_flight.pop(future), future.result())
        for future, row in in_flight.items():
            future.add_done_callback(lambda f, row=row: self._discarded(run.job_id, row, f))

    def _discarded(self, job_id: str, row: dict, future: Future) -> None:
        result = None if future.cancelled() or future.exception() else future.result()
        if not result or result["status"] != "completed":
            return  # stopped before calling, or failed: nothing was generated
        log.warning("generated opener discarded: its job was canceled", extra={"job_id": job_id, "url": row["url"]})
        try:
            self._db(db.count_discarded, job_id, 1)
        except Exception:  # best effort: the log line above already says it
            log.exception("could not count a discarded opener")

    def _complete(self, job_id: str) -> bool:
        job = self._db(db.complete_job_if_done, job_id)
        if job is None:
            return False  # someone else completed it
        log.info("job completed", extra={"processed_rows": job["processed_rows"], "failed_rows": job["failed_rows"]})
        self.forget_duplicates(job_id)
        self.export(job)
        return True

    def _finish(self, run: _Run, outcome: Outcome) -> None:
        """Hand on what is left: after a deadline, at once; rows still leased by an invocation
        that may have died, once their lease can have run out."""
        if run.status != "processing" or outcome.reason == "canceled":
            return
        if outcome.reason == "deadline":
            self.queue.send_continuation(run.job_id, run.chunk)
            outcome.continued = True
            return
        held = self._db(db.chunk_lease_left, run.job_id, run.chunk)
        if held is None:  # chunk finished: the job's next chunk goes out; complete the job if that was
            # its last work (idempotent)
            self._db(dispatch_next, self.queue, run.job_id)
            outcome.completed_job = outcome.completed_job or self._complete(run.job_id)
        else:
            delay = min(900, int(held) + 1)
            log.info("rows still leased elsewhere; checking again later", extra={"delay_s": delay})
            self.queue.send_continuation(run.job_id, run.chunk, delay_s=delay)
            outcome.continued = True

    def forget_duplicates(self, job_id: str) -> None:
        """The job is complete: its index of accepted openers is no longer needed (best effort:
        its keys expire anyway)."""
        if self.duplicates is None:
            return
        try:
            self.duplicates.forget(str(job_id))
        except Exception:
            log.exception("could not forget the job's duplicate index")

    def _db(self, query: Callable, *args):
        """Run a query on this thread's connection; a lost connection is retried on a new one."""
        try:
            return query(self.get_conn(), *args)
        except psycopg.OperationalError as exc:
            log.warning("database connection lost; retrying", extra={"error": str(exc)[:200]})
        return _db_retry(lambda: query(self.get_conn(), *args))()


class _Flag:
    """A stop flag the generator threads poll (threading.Event without the waiting)."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set
