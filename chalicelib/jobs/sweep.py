"""The scheduled sweep: what crashes and lost messages left undone, done again."""

from __future__ import annotations

from collections.abc import Callable

from chalicelib.adapters import db
from chalicelib.adapters.queue import ChunkQueue
from chalicelib.adapters.storage import Storage
from chalicelib.jobs.drops import start_drop_job
from chalicelib.jobs.export import export_job
from chalicelib.logs import get_logger
from chalicelib.outbound import webhooks
from chalicelib.settings import Settings

log = get_logger("jobs")



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
