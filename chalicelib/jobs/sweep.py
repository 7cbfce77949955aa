"""The scheduled sweep: what crashes and lost messages left undone, done again, each step
isolated from the others' failures and the webhooks' share bounded in time."""

from __future__ import annotations

from collections.abc import Callable

from chalicelib.adapters import db
from chalicelib.adapters.queue import ChunkQueue
from chalicelib.adapters.storage import Storage
from chalicelib.jobs.downloads import results_on_completion
from chalicelib.jobs.drops import start_drop_job
from chalicelib.logs import get_logger
from chalicelib.outbound import webhooks
from chalicelib.settings import Settings

log = get_logger("jobs")



MAX_INGEST_RESENDS = 3  # the sweep's resends of a stuck ingest without progress before its job fails
EXPORT_AFTER_S = 60  # a completed job without its results CSV this long after finishing: export it
DROP_START_AFTER_S = 300  # a drop still pending this long after its notification: start it
HANDLER_TIMEOUT_S = 60.0  # requeue_stalled's lambda_timeout (.chalice/config.json): without a Lambda context
RESERVE_S = 5.0  # of the handler's time, kept for returning after the webhooks' share


def sweep(conn, get_conn, storage: Storage, queue: ChunkQueue, settings: Settings, fetcher=None,
          poll_batches: Callable[[], dict] | None = None, *,
          webhook_box: Callable[[], webhooks.SecretBox] | None = None,
          remaining_s: Callable[[], float] | None = None, notify: Callable[[dict], None] | None = None) -> dict:
    """The scheduled sweep: chunks of stalled jobs enqueued again, the ingest message of a job
    ingesting without progress sent again (a redelivery skips what is stored), results CSVs that a
    crash never wrote (a big one's build requested from the ingest function), drops whose start
    never happened, batch-mode batches read back when the provider has finished them, webhook
    secrets sealed with the current key, and webhook deliveries due (another attempt, or a big job's
`job.completed` whose hold for its results CSV ended or whose build failed). Returns what it did.

    Each step is isolated: one that raises is logged and recorded in ``errors`` and the others
    still run. Webhooks go last, within what is left of the handler's time (`remaining_s`, the
    Lambda context's clock) less RESERVE_S, capped at webhooks.SWEEP_BUDGET_S: a receiver that
    never answers cannot hold the steps that keep jobs moving, nor the handler past its timeout."""
    remaining = remaining_s or (lambda: HANDLER_TIMEOUT_S)
    done: dict = {"requeued": 0, "exported": 0, "drops_started": 0, "webhooks_delivered": 0, "errors": {}}

    def step(name: str, run: Callable[[], object]) -> None:
        try:
            run()
        except Exception as exc:
            log.exception("sweep step failed", extra={"step": name})
            done["errors"][name] = f"{type(exc).__name__}: {str(exc)[:300]}"

    def requeue() -> None:
        done["requeued"] = requeue_unfinished(conn, queue, idle_s=settings.stall_after_s)

    def exports() -> None:
        for job in db.completed_without_results(conn, EXPORT_AFTER_S):
            step("exports", lambda job=job: done.__setitem__("exported", done["exported"] + results_on_completion(
                get_conn, storage, queue, settings, job)))

    def drops() -> None:
        for job in db.stale_pending_drops(conn, DROP_START_AFTER_S):
            log.info("starting a dropped file left pending", extra={"job_id": str(job["id"])})
            step("drops", lambda job=job: done.__setitem__("drops_started", done["drops_started"] + (
                start_drop_job(conn, storage, queue, settings, job) is not None)))

    def ingests() -> None:
        done["ingests_resent"] = requeue_ingests(conn, queue, idle_s=settings.stall_after_s, notify=notify)

    step("requeue", requeue)
    step("ingests", ingests)
    step("exports", exports)
    step("drops", drops)
    if poll_batches is not None:
        step("batches", lambda: done.__setitem__("batches", poll_batches()))
    if fetcher is not None and webhook_box is not None:
        def deliver() -> None:
            box = webhook_box()  # a wrong key raises here, after the other steps ran
            done["secrets_resealed"] = webhooks.reseal_secrets(conn, box)
            budget = max(0.0, min(webhooks.SWEEP_BUDGET_S, remaining() - RESERVE_S))
            report = webhooks.deliver_due(get_conn, fetcher, box, budget_s=budget,
                                          attempt_timeout_s=min(webhooks.ATTEMPT_TIMEOUT_S, fetcher.timeout_s))
            done["webhooks"], done["webhooks_delivered"] = report, report["delivered"]
        step("webhooks", deliver)
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


def requeue_ingests(conn, queue: ChunkQueue, idle_s: float = 0.0,
                    notify: Callable[[dict], None] | None = None) -> int:
    """Send again the ingest message of jobs ingesting without a stored batch for `idle_s` (0: all
    of them, for a queue that lost its messages). A redelivery resumes after the stored rows and
    a duplicate stops at its first batch, so an extra message is harmless. A job sent again
    MAX_INGEST_RESENDS times without a batch stored in between fails instead, saying why (its
    reading crashes at the same place each time); `notify(job)` then. Returns the count sent."""
    sent = 0
    for job in db.stale_ingests(conn, idle_s, limit=1000):
        job_id = str(job["id"])
        attempt = db.count_ingest_resend(conn, job_id)
        if attempt is None:
            continue  # it moved on meanwhile
        if attempt["ingest_attempts"] > MAX_INGEST_RESENDS:
            _give_up_ingest(conn, job_id, attempt, notify)
            continue
        log.info("ingest message sent again", extra={"job_id": job_id, "ingested_rows": job["ingest_row"],
                                                     "attempt": attempt["ingest_attempts"]})
        queue.send_ingest(job_id)
        sent += 1
    return sent


def _give_up_ingest(conn, job_id: str, attempt: dict, notify: Callable[[dict], None] | None) -> None:
    resends = attempt["ingest_attempts"] - 1
    reason = f" (last: {attempt['error']})" if attempt["error"] else ""
    error = (f"The file could not be ingested: its reading stopped at file row {attempt['ingest_row'] + 1:,} and "
             f"did not get further after the ingest was sent again {resends} times{reason}. The "
             f"{attempt['total_rows']:,} URLs stored before it are kept (retry the job to process them); split or "
             "fix the file and upload it again for the rest.")
    failed = db.fail_job(conn, job_id, error[:2000], expected="ingesting")
    log.error("ingest given up: no progress after resends", extra={"job_id": job_id, "resends": resends})
    if failed is not None and notify is not None:
        notify(failed)
