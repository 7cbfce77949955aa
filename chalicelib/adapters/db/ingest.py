"""Queries of the background ingest: a job moved to ingesting, each stored batch's counters and
progress mark (in the COPY's transaction), and the ingests the sweep sends again."""

from __future__ import annotations

from psycopg.types.json import Jsonb

from chalicelib.adapters.db.accounts import UTC_TODAY
from chalicelib.adapters.db.jobs import ENABLED_ACCOUNT, JOB_COLUMNS


def begin_ingest(conn, job_id: str, *, estimated_rows: int, instructions: str | None, model: str | None,
                 page_context: bool, max_cost_usd: float | None, callback_url: str | None, mode: str,
                 grounding: str, min_words: int, max_words: int, language: str, reuse: bool = True,
                 variants: int = 1) -> dict | None:
    """pending -> ingesting with the job's options; counters from zero (they grow as batches are
    stored), `estimated_rows` the URL count the quota and the estimate were decided on (and
    taken from the quota: `reserved_rows`)."""
    return conn.execute(
        f"""UPDATE jobs SET status = 'ingesting', total_rows = 0, invalid_rows = 0, errors = '[]', chunks = 0,
                   processed_rows = 0, failed_rows = 0, progress = 0, ingest_row = 0, estimated_rows = %s,
                   reserved_rows = %s, instructions = %s, model = %s, started_at = now(), error = NULL,
                   undispatched = '{{}}', page_context = %s, max_cost_usd = %s, callback_url = %s, mode = %s,
                   grounding = %s, min_words = %s, max_words = %s, language = %s, reuse = %s, variants = %s
            WHERE id = %s AND status = 'pending' RETURNING {JOB_COLUMNS}""",
        (estimated_rows, estimated_rows, instructions, model, page_context, max_cost_usd, callback_url, mode, grounding,
         min_words, max_words, language, reuse, variants, job_id),
    ).fetchone()


def lock_ingesting_job(conn, job_id: str) -> dict | None:
    """The job row locked for a batch's transaction (waiting for a chunk handler's lock), with
    the chunks waiting on it (`undispatched`): one round trip."""
    return conn.execute(f"SELECT {JOB_COLUMNS}, undispatched FROM jobs WHERE id = %s FOR UPDATE",
                        (job_id,)).fetchone()


def undispatched(conn, job_id: str) -> list[int]:
    return list(conn.execute("SELECT undispatched FROM jobs WHERE id = %s", (job_id,)).fetchone()["undispatched"])


def store_batch(conn, job_id: str, *, stored: int, invalid: int, errors: list[dict], last_row: int,
                new_chunks: int, waiting: list[int], reserved: int, done: bool) -> dict | None:
    """After the COPY of one or more batches, in their transaction: the job's counters, first
    errors, progress mark (`ingest_row`), chunk count (+`new_chunks`; the `waiting` ones join
    the waiting list, in order) and quota taken. `done`: every row is stored, so the job is
    processing and its estimate is the exact count. None unless the job is still ingesting."""
    return conn.execute(
        f"""UPDATE jobs SET total_rows = total_rows + %(stored)s, invalid_rows = invalid_rows + %(invalid)s,
                   errors = errors || %(errors)s, ingest_row = %(last_row)s, ingest_attempts = 0,
                   chunks = chunks + %(new_chunks)s,
                   undispatched = undispatched || %(waiting)s::int[],
                   reserved_rows = reserved_rows + %(reserved)s,
                   progress = CASE WHEN total_rows + %(stored)s = 0 THEN 0
                                   ELSE round(100.0 * (processed_rows + failed_rows) / (total_rows + %(stored)s)) END,
                   status = CASE WHEN %(done)s THEN 'processing' ELSE status END,
                   estimated_rows = CASE WHEN %(done)s THEN total_rows + %(stored)s ELSE estimated_rows END
            WHERE id = %(job)s AND status = 'ingesting' RETURNING {JOB_COLUMNS}""",
        {"stored": stored, "invalid": invalid, "errors": Jsonb(errors), "last_row": last_row,
         "new_chunks": new_chunks, "waiting": waiting, "reserved": reserved, "done": done, "job": job_id},
    ).fetchone()


def dispatched_unfinished_chunks(conn, job_id: str) -> list[int]:
    """The job's chunks with pending rows that are not waiting on its list (sent, or meant to be)."""
    rows = conn.execute(
        """SELECT DISTINCT u.chunk FROM urls u JOIN jobs j ON j.id = u.job_id
           WHERE u.job_id = %s AND u.status = 'pending' AND u.chunk <> ALL(j.undispatched) ORDER BY u.chunk""",
        (job_id,)).fetchall()
    return [r["chunk"] for r in rows]


def give_back_urls_today(conn, account_id: str, count: int) -> None:
    """URLs taken from today's quota that a job does not use (its estimate was high, or its start
    was undone); a day already over keeps its count."""
    conn.execute(f"UPDATE account_usage SET urls = greatest(0, urls - %s) WHERE account_id = %s AND day = {UTC_TODAY}",
                 (count, account_id))


def stale_ingests(conn, older_than_s: float, limit: int = 20) -> list[dict]:
    """Jobs ingesting without a stored batch for that long: their ingest message was lost."""
    return conn.execute(
        f"""SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'ingesting' AND {ENABLED_ACCOUNT}
              AND updated_at < now() - make_interval(secs => %s) ORDER BY updated_at LIMIT %s""",
        (older_than_s, limit),
    ).fetchall()


def count_ingest_resend(conn, job_id: str) -> dict | None:
    """The sweep sends the ingest message of a job stuck ingesting again: one more attempt
    without progress. -> {"ingest_attempts", "ingest_row", "total_rows", "error"} (None: no
    longer ingesting)."""
    return conn.execute(
        """UPDATE jobs SET ingest_attempts = ingest_attempts + 1 WHERE id = %s AND status = 'ingesting'
           RETURNING ingest_attempts, ingest_row, total_rows, error""", (job_id,)).fetchone()


def note_ingest_error(conn, job_id: str, error: str) -> None:
    """Why the ingest of a job stopped unexpectedly (it stays ingesting: SQS delivers its message
    again), so the job and, if the sweep gives up, its failure say it."""
    conn.execute("UPDATE jobs SET error = %s WHERE id = %s AND status = 'ingesting'", (error[:500], job_id))
