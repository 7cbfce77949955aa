"""Background ingest: a started job's whole file read into URL rows, batch by batch, its chunks
sent as soon as they are stored.

`process` (jobs/start.py) reads only the header and a sample (`check_sample`), decides the quota
and the estimate on the sample's count, moves the job to `ingesting` and sends one ingest
message; `ingest_file` (the `ingest_file` SQS function, 15 minutes) then streams the stored file
from S3 (its validated version, never whole in memory) and stores it CHUNK_SIZE valid rows at a
time. Each batch is stored with, in its transaction, the job's counters (total_rows grows,
invalid_rows and the first errors too), its chunk count and the progress mark `ingest_row` (the
last file row stored); the first batch is a transaction alone, later ones BATCHES_PER_COMMIT to
a transaction. So the invariant processed + failed + unfinished = total_rows holds at
every moment, and a redelivered or continued message re-reads the file and skips exactly the
rows stored: none twice, none lost. The batches are stored by a thread of their own while the
next ones are parsed (`_Writer`: at most one group waiting, memory flat), and the file is read
from S3 by another, a few chunks ahead (`_read_ahead`). A chunk's message
goes out right after its commit, within
the job's chunk window (beyond it, the chunk waits on `undispatched`, as a start's did), so the
first openers are written while the rest of the file is read. Chunk handlers work on an
ingesting job; only the last batch moves it to `processing`, so no handler completes it early.

A file that cannot be read at some row fails the job with the row number and the reason; the
rows stored before it are kept (pending: a retry processes them). The quota was taken for the
estimate: a batch beyond it takes the difference (and fails the job the same way when the day's
quota is spent), the last batch gives back what the exact count did not use and puts the
estimate on the exact count (`pricing.for_exact_count`). An unexpected crash is noted on the job
(`error`) and raised, so SQS delivers the message again."""

from __future__ import annotations

import contextvars
import math
import sys
import threading
from collections.abc import Callable, Iterator
from queue import Full, Queue

from chalicelib.adapters import db
from chalicelib.adapters.queue import ChunkQueue
from chalicelib.adapters.storage import ObjectMissing, Storage
from chalicelib.errors import BadRequest, DomainError, RateLimited
from chalicelib.generation import pricing, prompt
from chalicelib.intake import csvfile
from chalicelib.intake.uploads import check_size
from chalicelib.jobs.create import csv_error, delete_refused, layout_of, read_source, summary_fields
from chalicelib.jobs.options import template_columns
from chalicelib.jobs.start import take_account_capacity
from chalicelib.logs import get_logger
from chalicelib.settings import Settings

log = get_logger("jobs")

SAMPLE_BYTES = 1024 * 1024  # what `process` reads of a file it has not seen whole
DEADLINE_RESERVE_S = 60.0  # of the function's time: past it, the ingest hands on to a new message
BATCHES_PER_COMMIT = 16  # after the first batch (alone, so its chunk goes out at once): few round trips
READ_AHEAD_CHUNKS = 8  # of the file (256 KiB each) read ahead of the parsing
# The interpreter's thread switch interval while a file is ingested (its default is 5 ms): the
# reader and writer threads wake from the network and wait for the parsing thread to let go of
# the GIL, up to the interval each time (bench/RESULTS.md, "The ingest's round trips").
SWITCH_INTERVAL_S = 0.0001


def check_sample(conn, storage: Storage, settings: Settings, job: dict) -> tuple[dict, int]:
    """A pending job's stored file: its size, and for a file not read whole at upload (presigned,
    dropped) its layout, first errors and estimated URL count from its first SAMPLE_BYTES.
    -> (job, size). A bad file fails the job, is deleted and raises the reason (4xx)."""
    try:
        size, etag = storage.head(job["file_path"])
    except ObjectMissing:
        raise BadRequest("The file has not been uploaded yet; PUT it to upload_url first",
                         code="file_not_uploaded") from None
    if job["layout"] is not None:  # read whole at upload (exact counts), or sampled by a preview
        return job, size
    try:
        check_size(size, settings.max_file_size)  # before reading (a URL signed before MAX_FILE_SIZE dropped)
        sampled = csvfile.summarize_sample(_head(storage, {**job, "source_etag": etag}, SAMPLE_BYTES), size,
                                           job["url_column"])
    except csvfile.CsvError as exc:
        error = csv_error(exc)
    except DomainError as exc:
        error = exc
    else:  # from now on the job reads exactly this version of the file
        return db.update_job(conn, job["id"], source_etag=etag, **summary_fields(sampled.summary)), size
    if db.fail_job(conn, job["id"], error.message, expected="pending") is not None:
        delete_refused(storage, job["file_path"])
    raise error


def _head(storage: Storage, job: dict, limit: int) -> bytes:
    """The first `limit` bytes (about) of the job's file; the rest is never fetched."""
    parts, size = [], 0
    chunks = read_source(storage, job)
    try:
        for chunk in chunks:
            parts.append(bytes(chunk))
            size += len(chunk)
            if size >= limit:
                break
    finally:
        chunks.close()  # closes the S3 body: the rest of the object is not downloaded
    return b"".join(parts)


class _Stopped(Exception):
    """The job left `ingesting` (canceled, failed, another ingest moved it): stop quietly."""


def ingest_file(conn, storage: Storage, queue: ChunkQueue, settings: Settings, job_id: str, *,
                remaining_s: Callable[[], float] = lambda: math.inf,
                completed: Callable[[dict], None] | None = None,
                notify: Callable[[dict], None] | None = None) -> dict | None:
    """Read the ingesting job's file from where its stored rows end; -> the job afterwards (None:
    unknown). Past the function's deadline it sends an ingest message for the rest and returns.
    `completed(job)` runs when the last batch finds every row already processed (the results
    CSV and webhook, as a worker's completion does); `notify(job)` when the file fails it."""
    job = db.get_job(conn, job_id)
    if job is None or job["status"] != "ingesting":
        log.info("nothing to ingest", extra={"job_id": job_id, "status": job and job["status"]})
        return job
    if job["chunks"]:  # a redelivery or continuation: the stored chunks' messages may have been lost
        resend = db.dispatched_unfinished_chunks(conn, job_id)
        queue.send_chunks(job_id, resend)
        log.info("ingest resumed", extra={"job_id": job_id, "ingested_rows": job["ingest_row"],
                                          "chunks_sent_again": len(resend)})
    fields = template_columns(job["instructions"], job)
    done_rows = job["ingest_row"]
    batch: list[tuple[int, str, dict | None]] = []
    invalid, errors, last_row, submitted = 0, [], done_rows, job["total_rows"]
    room = csvfile.MAX_ERRORS - len(job["errors"] or [])
    writer = _Writer(conn, queue, settings, job)
    try:
        try:
            for row, record in csvfile.iter_rows(_read_ahead(read_source(storage, job)), layout_of(job)):
                if row.row <= done_rows:
                    continue
                last_row = row.row
                if row.url is None:
                    invalid += 1
                    if len(errors) < room:
                        errors.append({"row": row.row, "value": csvfile._clip(row.value), "message": row.error})
                    continue
                values = ({name: (record[i] if i < len(record) else "")[:prompt.MAX_FIELD_CHARS]
                           for name, i in fields.items()} if fields else None)
                batch.append((row.row, row.url, values))
                if len(batch) == settings.chunk_size:
                    writer.put(batch, invalid, errors, last_row, done=False)
                    submitted, room = submitted + len(batch), room - len(errors)
                    batch, invalid, errors = [], 0, []
                    if remaining_s() < DEADLINE_RESERVE_S:
                        job = writer.finish()
                        queue.send_ingest(job_id)
                        log.info("ingest handed on", extra={"job_id": job_id, "ingested_rows": writer.stored_row})
                        return job
            if submitted + len(batch) == 0:
                raise csvfile.CsvError("no_valid_urls", f"the file has no valid URL in column '{job['url_column']}'")
            writer.put(batch, invalid, errors, last_row, done=True)
            job = writer.finish()
        finally:
            writer.close()  # the batches read whole are stored (or fail) before anything else happens
    except _Stopped:
        log.info("ingest stopped: the job is no longer ingesting", extra={"job_id": job_id})
        return db.get_job(conn, job_id)
    except (csvfile.CsvError, DomainError) as exc:
        at = None if getattr(exc, "code", "") == "no_valid_urls" else (
            writer.stored_row + 1 if isinstance(exc, RateLimited) else last_row + 1)
        return _fail(conn, job_id, at, exc, notify)
    except Exception as exc:  # a crash: SQS delivers the message again; the job says why meanwhile
        try:
            db.note_ingest_error(conn, job_id, f"the ingest stopped at file row {writer.stored_row + 1:,}: "
                                               f"{type(exc).__name__}: {str(exc)[:300]}")
        except Exception:
            log.exception("could not record why the ingest stopped", extra={"job_id": job_id})
        raise
    log.info("file ingested", extra={"job_id": job_id, "total_rows": job["total_rows"],
                                     "invalid_rows": job["invalid_rows"], "chunks": job["chunks"]})
    finished = db.complete_job_if_done(conn, job_id)  # every chunk may have been processed meanwhile
    if finished is not None and completed is not None:
        completed(finished)
    return finished or job


_END = object()


def _read_ahead(chunks: Iterator[bytes], depth: int = READ_AHEAD_CHUNKS) -> Iterator[bytes]:
    """The file's chunks read on a thread of their own, at most `depth` ahead (memory flat), so
    the network read overlaps the parsing; the reader's errors are raised here, in order. Leaving
    early stops the reader and closes the stream."""
    box: Queue = Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def read() -> None:
        try:
            for chunk in chunks:
                if not offer(chunk):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the parsing thread
            offer(exc)
            return
        offer(_END)

    reader = threading.Thread(target=contextvars.copy_context().run, args=(read,), name="ingest-reader", daemon=True)
    reader.start()
    try:
        while (item := box.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()
        getattr(chunks, "close", lambda: None)()  # the S3 body: the rest is not downloaded


class _QuickSwitches:
    """The switch interval at SWITCH_INTERVAL_S while at least one ingest of the process runs;
    the interval from before the first is put back after the last."""

    def __init__(self) -> None:
        self._lock, self._users, self._before = threading.Lock(), 0, sys.getswitchinterval()

    def enter(self) -> None:
        with self._lock:
            if not self._users:
                self._before = sys.getswitchinterval()
                sys.setswitchinterval(min(SWITCH_INTERVAL_S, self._before))
            self._users += 1

    def leave(self) -> None:
        with self._lock:
            self._users -= 1
            if not self._users:
                sys.setswitchinterval(self._before)


_SWITCHES = _QuickSwitches()


class _Writer:
    """Stores the batches on a thread of its own while the caller parses the next ones: the
    first batch alone (its chunk goes out at once), then BATCHES_PER_COMMIT batches per
    transaction (fewer commits and round trips; each chunk's message right after its commit).
    At most one group waits, so memory stays flat. Its first error stops it (what comes after
    is dropped) and is raised to the caller at its next `put` or at `finish`. The caller does
    not use the connection until `close` (or `finish`) returned."""

    def __init__(self, conn, queue: ChunkQueue, settings: Settings, job: dict) -> None:
        self.conn, self.queue, self.settings = conn, queue, settings
        self.job, self.stored_row, self.error = job, job["ingest_row"], None
        self._group: list[tuple] = []
        self._per_commit = 1
        self._inbox: Queue = Queue(maxsize=1)
        # in the caller's context: its log fields (the correlation id the chunk messages carry)
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,),
                                        name="ingest-writer", daemon=True)
        _SWITCHES.enter()  # until `close`: the threads of this ingest take turns quickly
        self._thread.start()

    def _run(self) -> None:
        while (group := self._inbox.get()) is not None:
            if self.error is not None:
                continue
            try:
                self.job = _store(self.conn, self.queue, self.settings, self.job, group)
                self.stored_row = group[-1][3]
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                self.error = exc

    def put(self, batch: list, invalid: int, errors: list, last_row: int, *, done: bool) -> None:
        if self.error is not None:
            raise self.error
        self._group.append((batch, invalid, errors, last_row, done))
        if done or len(self._group) >= self._per_commit:
            self._flush()

    def _flush(self) -> None:
        if self._group:
            self._inbox.put(self._group)  # waits while one group is waiting
            self._group, self._per_commit = [], BATCHES_PER_COMMIT

    def close(self) -> None:
        """Store the whole batches put (unless an error stopped the writer: the reading may have
        failed after them, and what was read whole is kept), then stop the thread."""
        if self._thread.is_alive():
            if self.error is None:
                self._flush()
            self._inbox.put(None)
            self._thread.join()
            _SWITCHES.leave()

    def finish(self) -> dict:
        """Every batch put stored: -> the job after the last one (or the first error raised)."""
        self.close()
        if self.error is not None:
            raise self.error
        return self.job


def _store(conn, queue: ChunkQueue, settings: Settings, seen: dict, group: list[tuple]) -> dict:
    """A group of batches in one transaction: the job row locked once, every row in one COPY
    (each batch its own chunk), the counters moved once; then the messages of the chunks that go
    out now (`_send_now`, chunk by chunk in order: once one waits, the next ones wait too)."""
    stored_now = sum(len(batch) for batch, *_ in group)
    done = group[-1][4]
    with conn.transaction():
        job = db.lock_ingesting_job(conn, seen["id"])
        if job["status"] != "ingesting" or job["ingest_row"] != seen["ingest_row"]:
            raise _Stopped()
        chunks = [(job["chunks"] + n, batch) for n, batch in enumerate(b for b, *_ in group if b)]
        if chunks:
            db.copy_urls(conn, job["id"], ((row, chunk, url, values) for chunk, batch in chunks
                                           for row, url, values in batch))
        sends, waiting = _dispatch(settings, job, chunks)
        stored = job["total_rows"] + stored_now
        extra = max(0, stored - job["reserved_rows"])
        if extra:  # more URLs than estimated: the difference from the day's quota, or stop here
            take_account_capacity(conn, settings, str(job["account_id"]), extra, new_job=False)
        elif done and job["reserved_rows"] > stored:  # the estimate was high: give back the rest
            db.give_back_urls_today(conn, str(job["account_id"]), job["reserved_rows"] - stored)
            extra = stored - job["reserved_rows"]
        job = db.store_batch(conn, job["id"], stored=stored_now, invalid=sum(item[1] for item in group),
                             errors=[e for item in group for e in item[2]], last_row=group[-1][3],
                             new_chunks=len(chunks), waiting=waiting, reserved=extra, done=done)
        if done and job is not None and job["estimate"]:  # decided on the sample: now on the exact count
            db.set_estimate(conn, job["id"], pricing.for_exact_count(settings.prices, job["estimate"], stored),
                            expected="processing")
    if sends:
        queue.send_chunks(str(job["id"]), sends)
    return job


def _dispatch(settings: Settings, job: dict, chunks: list[tuple[int, list]]) -> tuple[list[int], list[int]]:
    """The new chunks split into those sent now and those that wait, in order."""
    sends: list[int] = []
    waiting: list[int] = []
    total = job["total_rows"]
    already_waiting = bool(chunks) and job["mode"] != "batch" and bool(job["undispatched"])
    for chunk, batch in chunks:
        if not waiting and not already_waiting and _send_now(settings, job, chunk, total):
            sends.append(chunk)
        else:
            waiting.append(chunk)
        total += len(batch)
    return sends, waiting


def _send_now(settings: Settings, job: dict, chunk: int, total_rows: int) -> bool:
    """Whether a new chunk goes out now (no chunk waiting before it): a batch job's at once; a
    live job's while fewer than its window of chunks are out. No chunk waits (else it joins
    them, in order): every stored row (`total_rows` before this chunk) is then out, so the out
    chunks are its unfinished rows' (each finished chunk sends the next waiting one, under this
    same job row lock)."""
    if job["mode"] == "batch":
        return True
    unfinished = total_rows - job["processed_rows"] - job["failed_rows"]
    window = settings.chunk_window
    return chunk < window or unfinished + settings.chunk_size <= window * settings.chunk_size


def _fail(conn, job_id: str, row: int | None, exc: Exception, notify: Callable[[dict], None] | None) -> dict | None:
    """The file stops the job: failed, with the file row and the reason; stored rows are kept."""
    job = db.get_job(conn, job_id)
    message = getattr(exc, "message", str(exc))
    where = f" at file row {row:,}" if row is not None else ""
    error = (f"The file could not be ingested{where}: {message.rstrip('.')}. The {job['total_rows']:,} URLs "
             "stored before it are kept (retry the job to process them); fix the file and upload it again for "
             "the rest.")
    failed = db.fail_job(conn, job_id, error[:2000], expected="ingesting")
    log.warning("ingest failed", extra={"job_id": job_id, "error": message})
    if failed is not None and notify is not None:
        notify(failed)
    return failed or db.get_job(conn, job_id)
