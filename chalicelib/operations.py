"""What the on-call runbook (docs/operations.md) does through `python -m chalicelib.admin`:
dead-lettered chunks sent back after a fix, jobs that stopped moving and why, usage per day.

Why this exists: each alarm of infra/resources.yaml ends in one of these. They run against the
database DATABASE_URL names and the queues of the settings, with the same rules as the service:
a status change states the status it expects, and a step that is done twice does nothing twice.
"""

from __future__ import annotations

from typing import Any

from chalicelib.accounts.store import TOKEN_COUNTERS, token_sums
from chalicelib.adapters.queue import ChunkQueue, parse_chunk_message
from chalicelib.generation import pricing
from chalicelib.logs import get_logger

log = get_logger("operations")

RECEIVE_BATCH = 10  # ReceiveMessage maximum
# The error give_up_chunk (chalicelib/jobs/control.py) writes on a dead-lettered chunk's rows.
DEAD_LETTER_ERROR = "chunk {chunk} failed % deliveries %dead-letter queue%"
REOPENABLE = ("processing", "completed")  # a canceled job stays canceled; a failed one (budget) stays failed


# ------------------------------------------------------------------ redrive-dlq

def reopen_dead_lettered_chunk(conn, job_id: str, chunk: int) -> dict | None:
    """The chunk's rows that failed because its message was dead-lettered go back to pending and
    its job (processing or completed) to processing; None when the job is not there or not
    reopenable. Idempotent: a second call finds no such row and changes nothing."""
    return conn.execute(
        """WITH job AS (
               SELECT id FROM jobs WHERE id = %(job)s AND status = ANY(%(reopenable)s) FOR UPDATE
           ), reopened AS (
               UPDATE urls u SET status = 'pending', error = NULL, finished_at = NULL, claimed_by = NULL,
                                 lease_until = NULL
               FROM job WHERE u.job_id = job.id AND u.chunk = %(chunk)s AND u.status = 'failed'
                 AND u.error LIKE %(pattern)s
               RETURNING 1
           ), s AS (SELECT count(*) AS n FROM reopened)
           UPDATE jobs j SET failed_rows = j.failed_rows - s.n,
                  status = CASE WHEN s.n > 0 THEN 'processing' ELSE j.status END,
                  finished_at = CASE WHEN s.n > 0 THEN NULL ELSE j.finished_at END,
                  progress = CASE WHEN j.total_rows = 0 THEN 0
                                  ELSE round(100.0 * (j.processed_rows + j.failed_rows - s.n) / j.total_rows) END
           FROM s, job WHERE j.id = job.id AND j.status = ANY(%(reopenable)s)
           RETURNING j.id, j.status, s.n AS reopened""",
        {"job": job_id, "chunk": chunk, "pattern": DEAD_LETTER_ERROR.format(chunk=chunk),
         "reopenable": list(REOPENABLE)},
    ).fetchone()


def redrive_dlq(conn, queue: ChunkQueue, limit: int | None = None) -> list[dict]:
    """Move the chunk messages of the dead-letter queue back to the chunk queue (after the cause
    is fixed): each chunk's dead-lettered rows are reopened first, then the message is sent, then
    deleted from the dead-letter queue. A message that is not a chunk message, or whose job is
    gone or canceled, is left where it is and reported. Returns one entry per message seen."""
    if not queue.dlq_url:
        raise ValueError("no dead-letter queue configured (CHUNK_DLQ_URL)")
    moved: list[dict] = []
    seen: set[str] = set()
    while limit is None or len(moved) < limit:
        messages = queue.sqs.receive_message(QueueUrl=queue.dlq_url, MaxNumberOfMessages=RECEIVE_BATCH,
                                             WaitTimeSeconds=0, VisibilityTimeout=60,
                                             AttributeNames=["All"]).get("Messages", [])
        fresh = [m for m in messages if m["MessageId"] not in seen]
        if not fresh:
            break
        for message in fresh:
            seen.add(message["MessageId"])
            moved.append(_redrive_one(conn, queue, message))
    return moved


def _redrive_one(conn, queue: ChunkQueue, message: dict) -> dict:
    entry: dict[str, Any] = {"message_id": message["MessageId"], "job_id": None, "chunk": None,
                             "reopened_rows": 0, "action": "redriven"}
    try:
        job_id, chunk = parse_chunk_message(message["Body"])
    except ValueError:
        entry["action"] = "skipped: not a chunk message (left in the dead-letter queue)"
        return entry
    entry.update(job_id=job_id, chunk=chunk)
    with conn.transaction():
        job = reopen_dead_lettered_chunk(conn, job_id, chunk)
    if job is None:
        entry["action"] = "skipped: the job is gone, canceled or failed (left in the dead-letter queue)"
        return entry
    entry["reopened_rows"] = job["reopened"]
    queue.sqs.send_message(QueueUrl=queue.queue_url, MessageBody=message["Body"])
    queue.sqs.delete_message(QueueUrl=queue.dlq_url, ReceiptHandle=message["ReceiptHandle"])
    log.info("dead-lettered chunk redriven", extra={"job_id": job_id, "chunk": chunk,
                                                    "reopened_rows": job["reopened"]})
    return entry


# ------------------------------------------------------------------ stuck-jobs

def jobs_without_progress(conn, minutes: int) -> list[dict]:
    """Processing (or ingesting) jobs not moved for `minutes`, with what their rows and chunks are doing."""
    return conn.execute(
        """SELECT j.id, j.account_id, a.name AS account_name, a.disabled_at, j.updated_at, j.total_rows,
                  j.processed_rows, j.failed_rows, cardinality(j.undispatched) AS undispatched_chunks,
                  count(u.id) FILTER (WHERE u.status = 'pending') AS pending_rows,
                  count(u.id) FILTER (WHERE u.status = 'processing' AND u.lease_until >= now()) AS leased_rows,
                  count(u.id) FILTER (WHERE u.status = 'processing' AND u.lease_until < now()) AS expired_leases,
                  max(u.lease_until) FILTER (WHERE u.status = 'processing') AS lease_until
           FROM jobs j JOIN accounts a ON a.id = j.account_id
                LEFT JOIN urls u ON u.job_id = j.id AND u.status IN ('pending', 'processing')
           WHERE j.status IN ('processing', 'ingesting') AND j.updated_at < now() - make_interval(mins => %s)
           GROUP BY j.id, a.name, a.disabled_at ORDER BY j.updated_at""",
        (minutes,),
    ).fetchall()


def dead_lettered_chunks(queue: ChunkQueue) -> dict[str, list[int]]:
    """Job id -> chunks whose messages wait in the dead-letter queue (read without removing)."""
    found: dict[str, list[int]] = {}
    if not queue.dlq_url:
        return found
    seen: set[str] = set()
    while True:
        # VisibilityTimeout 0: the messages stay visible for the next reader (redrive-dlq); the
        # dead-letter queue has no redrive policy of its own, so receiving them costs nothing.
        messages = queue.sqs.receive_message(QueueUrl=queue.dlq_url, MaxNumberOfMessages=RECEIVE_BATCH,
                                             WaitTimeSeconds=0, VisibilityTimeout=0).get("Messages", [])
        fresh = [m for m in messages if m["MessageId"] not in seen]
        if not fresh:
            return found
        for message in fresh:
            seen.add(message["MessageId"])
            try:
                job_id, chunk = parse_chunk_message(message["Body"])
            except ValueError:
                continue
            found.setdefault(job_id, []).append(chunk)


def diagnose(job: dict, dead_lettered: list[int]) -> tuple[str, str]:
    """(why the job is not moving, what to do), the first cause that applies."""
    if dead_lettered:
        return (f"chunk(s) {sorted(set(dead_lettered))} in the dead-letter queue",
                "find the error in the process_chunk logs (job id), fix it, then run `redrive-dlq`")
    if job["disabled_at"] is not None:
        return "its account is disabled", f"`enable-account {job['account_id']}` if it should go on"
    if job["leased_rows"]:
        return (f"{job['leased_rows']} row(s) leased by a running handler until {job['lease_until']:%H:%M:%SZ}",
                "wait for the lease; if it keeps being renewed, read that handler's logs (job id) for a hung call")
    if job["expired_leases"] or job["pending_rows"]:
        return (f"{job['pending_rows']} pending row(s) and {job['expired_leases']} expired lease(s) with no "
                "message being handled",
                "the requeue_stalled schedule re-enqueues them every 5 minutes; if it does not, check its "
                "errors and the chunk queue's age alarm")
    if job["undispatched_chunks"]:
        return (f"{job['undispatched_chunks']} chunk(s) never dispatched",
                "the requeue_stalled schedule dispatches them; check it runs and its errors")
    return ("every row is finished but the job was not marked completed",
            "the requeue_stalled schedule completes it; check its errors")


def stuck_jobs(conn, queue: ChunkQueue, minutes: int) -> list[dict]:
    rows = jobs_without_progress(conn, minutes)
    dead = dead_lettered_chunks(queue) if rows else {}
    report = []
    for job in rows:
        why, fix = diagnose(job, dead.get(str(job["id"]), []))
        report.append({**{k: v for k, v in job.items() if k != "disabled_at"},
                       "account_disabled": job["disabled_at"] is not None,
                       "dead_lettered_chunks": sorted(set(dead.get(str(job["id"]), []))), "why": why, "fix": fix})
    return report


# ------------------------------------------------------------------ usage

def usage_rows(conn, account_id: str | None, days: int) -> list[dict]:
    """Per UTC day, account, model and mode: URLs finished (completed, failed) and their token
    counters (TOKEN_COUNTERS: what ``pricing.usage_cost`` prices), over the last `days` days
    (today included); with the URLs accepted that day (the quota's count)."""
    return conn.execute(
        f"""WITH since AS (SELECT (now() AT TIME ZONE 'UTC')::date - (%(days)s - 1) AS day),
           finished AS (
               SELECT (u.finished_at AT TIME ZONE 'UTC')::date AS day, j.account_id, j.model, j.mode,
                      count(*) FILTER (WHERE u.status = 'completed') AS completed,
                      count(*) FILTER (WHERE u.status = 'failed') AS failed,
                      {token_sums('u')}
               FROM since, urls u JOIN jobs j ON j.id = u.job_id
               WHERE u.finished_at >= since.day AND (%(account)s::uuid IS NULL OR j.account_id = %(account)s::uuid)
               GROUP BY 1, 2, 3, 4
           )
           SELECT coalesce(f.day, a.day) AS day, coalesce(f.account_id, a.account_id) AS account_id,
                  f.model, f.mode, coalesce(a.urls, 0) AS accepted, coalesce(f.completed, 0) AS completed,
                  coalesce(f.failed, 0) AS failed, {", ".join(f"coalesce(f.{n}, 0) AS {n}" for n in TOKEN_COUNTERS)}
           FROM finished f FULL JOIN (
               SELECT au.* FROM since, account_usage au
               WHERE au.day >= since.day AND (%(account)s::uuid IS NULL OR au.account_id = %(account)s::uuid)
           ) a ON a.day = f.day AND a.account_id = f.account_id
           ORDER BY 1, 2, 3 NULLS FIRST, 4""",
        {"account": account_id, "days": days},
    ).fetchall()


def usage(conn, prices: dict, default_model: str, account_id: str | None = None, days: int = 7) -> list[dict]:
    """One line per UTC day and account: URLs accepted, completed and failed, tokens (cached ones
    among the prompt tokens), cost in USD as the jobs' (``pricing.usage_cost``: cached tokens at
    the cached price, batch rows at the batch price, a batch job's re-asks at the live price;
    None when a model of that day has no price)."""
    lines: dict[tuple, dict] = {}
    for row in usage_rows(conn, account_id, days):
        key = (row["day"], str(row["account_id"]))
        line = lines.setdefault(key, {"day": row["day"], "account_id": key[1], "accepted": 0, "completed": 0,
                                      "failed": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0,
                                      "cost_usd": 0.0})
        line["accepted"] = max(line["accepted"], int(row["accepted"]))  # per day, repeated on each model's row
        for name in ("completed", "failed", "prompt_tokens", "completion_tokens", "cached_tokens"):
            line[name] += int(row[name])
        if row["model"] is None and row["mode"] is None:
            continue  # a day with URLs accepted and none finished
        cost = pricing.usage_cost(prices, row["model"] or default_model, row["mode"] or "live", row)
        line["cost_usd"] = None if cost is None or line["cost_usd"] is None else line["cost_usd"] + cost
    return [{**line, "cost_usd": None if line["cost_usd"] is None else round(line["cost_usd"], 6)}
            for line in lines.values()]

