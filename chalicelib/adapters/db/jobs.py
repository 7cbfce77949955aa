"""Queries on jobs: create, read, list, the status changes (each naming the status it expects),
counters, and what the sweep looks for."""

from __future__ import annotations

from psycopg.types.json import Jsonb

# ---------------------------------------------------------------- jobs

def _json(value):
    return None if value is None else Jsonb(value)


# progress = round(100 * (processed + failed) / total), for a `done` expression
PROGRESS = "CASE WHEN j.total_rows = 0 THEN 0 ELSE round(100.0 * ({done}) / j.total_rows) END"

# The job {job} (an SQL expression) is processing (or still ingesting: its stored chunks are
# worked on while the rest of the file is read) and its account is enabled: a chunk handler
# may spend on it. A disabled account's jobs stay processing, their rows pending, until it is
# enabled again.
RUNNABLE_JOB = """SELECT 1 FROM jobs rj JOIN accounts ra ON ra.id = rj.account_id
                  WHERE rj.id = {job} AND rj.status IN ('processing', 'ingesting') AND ra.disabled_at IS NULL"""

# Jobs of enabled accounts only: what the sweep does for an account (exports, drop starts) waits
# while it is disabled.
ENABLED_ACCOUNT = "account_id IN (SELECT id FROM accounts WHERE disabled_at IS NULL)"

JOB_COLUMNS = """id, account_id, file_name, file_path, status, total_rows, processed_rows, failed_rows, progress,
    invalid_rows, url_column, columns, layout, errors, chunks, instructions, model, source, source_etag, error,
    result_path, prompt_tokens, completion_tokens, discarded_results, page_context, max_cost_usd, callback_url,
    mode, grounding, min_words, max_words, language, variants, quality, regenerated, reuse, cached_tokens, started_at,
    finished_at, created_at, updated_at, estimate, live_prompt_tokens, live_completion_tokens, live_cached_tokens,
    upload_id, upload_size, upload_part_size, ingest_row, estimated_rows, reserved_rows"""


def insert_job(conn, *, job_id: str, account_id: str, file_name: str, file_path: str, source: str,
               source_key: str | None = None, source_etag: str | None = None, layout: dict | None = None,
               columns: list[str] | None = None,
               url_column: str | None = None, total_rows: int = 0, invalid_rows: int = 0,
               errors: list[dict] | None = None, status: str = "pending", error: str | None = None,
               upload_id: str | None = None, upload_size: int | None = None,
               upload_part_size: int | None = None) -> dict | None:
    """Insert a job; None when `source_key` already started one (a duplicate S3 notification)."""
    return conn.execute(
        f"""INSERT INTO jobs (id, account_id, file_name, file_path, source, source_key, source_etag, layout, columns,
                              url_column, total_rows, invalid_rows, errors, status, error,
                              upload_id, upload_size, upload_part_size)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (source_key) DO NOTHING
            RETURNING {JOB_COLUMNS}""",
        (job_id, account_id, file_name, file_path, source, source_key, source_etag, _json(layout), _json(columns),
         url_column, total_rows, invalid_rows, Jsonb(errors or []), status, error,
         upload_id, upload_size, upload_part_size),
    ).fetchone()


def get_job(conn, job_id: str, *, lock: bool = False, nowait: bool = True) -> dict | None:
    """The job (any account's: for workers and sweeps); with `lock`, row-locked for the caller's
    transaction (NOWAIT unless `nowait` is False)."""
    suffix = (" FOR UPDATE NOWAIT" if nowait else " FOR UPDATE") if lock else ""
    return conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s{suffix}", (job_id,)).fetchone()


def get_account_job(conn, account_id: str, job_id: str) -> dict | None:
    """The job if it belongs to the account: one query, the same for another account's id as for
    an unknown one, so neither answer nor timing tells them apart."""
    return conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s AND account_id = %s",
                        (job_id, account_id)).fetchone()


def get_job_status(conn, job_id: str) -> str | None:
    """The job's status as its chunk handlers act on it: "account_disabled" for a processing
    job of a disabled account (they stop, as on a cancel, and hand nothing on); an ingesting
    job is "processing" to them (its stored chunks are worked on while the rest is read)."""
    row = conn.execute(
        """SELECT CASE WHEN j.status IN ('processing', 'ingesting') AND a.disabled_at IS NOT NULL
                            THEN 'account_disabled'
                       WHEN j.status = 'ingesting' THEN 'processing'
                       ELSE j.status END AS status
           FROM jobs j JOIN accounts a ON a.id = j.account_id WHERE j.id = %s""", (job_id,)).fetchone()
    return row["status"] if row else None


def list_jobs(conn, account_id: str, *, status: str | None, limit: int, after: tuple | None) -> list[dict]:
    """The account's jobs, newest first; `after` = (created_at, id) of the previous page's last."""
    where, params = ["account_id = %s"], [account_id]
    if status:
        where.append("status = %s")
        params.append(status)
    if after:
        where.append("(created_at, id) < (%s, %s)")
        params.extend(after)
    return conn.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC LIMIT %s",
        (*params, limit),
    ).fetchall()


def update_job(conn, job_id: str, **fields) -> dict | None:
    """Set the given columns (names are ours, never user input)."""
    assignments = ", ".join(f"{name} = %s" for name in fields)
    values = [_json(v) if isinstance(v, dict | list) else v for v in fields.values()]
    return conn.execute(
        f"UPDATE jobs SET {assignments} WHERE id = %s RETURNING {JOB_COLUMNS}", (*values, job_id)
    ).fetchone()


def update_pending_job(conn, job_id: str, **fields) -> dict | None:
    """`update_job` for a job still pending (None otherwise: it started meanwhile)."""
    assignments = ", ".join(f"{name} = %s" for name in fields)
    values = [_json(v) if isinstance(v, dict | list) else v for v in fields.values()]
    return conn.execute(
        f"UPDATE jobs SET {assignments} WHERE id = %s AND status = 'pending' RETURNING {JOB_COLUMNS}",
        (*values, job_id),
    ).fetchone()


def start_job(conn, job_id: str, *, total_rows: int, invalid_rows: int, chunks: int,
              instructions: str | None, model: str | None, undispatched: list[int], page_context: bool = True,
              max_cost_usd: float | None = None, callback_url: str | None = None, mode: str = "live",
              grounding: str = "strict", min_words: int = 8, max_words: int = 40, language: str = "auto",
              reuse: bool = True) -> dict:
    return conn.execute(
        f"""UPDATE jobs SET status = 'processing', total_rows = %s, invalid_rows = %s, chunks = %s,
                   instructions = %s, model = %s, started_at = now(), error = NULL, undispatched = %s,
                   page_context = %s, max_cost_usd = %s, callback_url = %s, mode = %s,
                   grounding = %s, min_words = %s, max_words = %s, language = %s, reuse = %s
            WHERE id = %s AND status = 'pending' RETURNING {JOB_COLUMNS}""",
        (total_rows, invalid_rows, chunks, instructions, model, undispatched, page_context, max_cost_usd,
         callback_url, mode, grounding, min_words, max_words, language, reuse, job_id),
    ).fetchone()


def set_estimate(conn, job_id: str, estimate: dict, *, expected: str) -> bool:
    """Merge `estimate`'s keys into the job's estimate (sql/0017), if the job is `expected`."""
    return conn.execute(
        "UPDATE jobs SET estimate = coalesce(estimate, '{}'::jsonb) || %s WHERE id = %s AND status = %s",
        (Jsonb(estimate), job_id, expected)).rowcount == 1


def calibrate_estimate(conn, job_id: str, rows: int) -> dict | None:
    """Once `rows` rows of a processing job are finished (the first chunk's worth), its estimate
    gains "first_chunk": the whole job projected from their real tokens (a batch job's live
    re-asks and cached tokens apart, as they are priced apart). Once per job; returns
    the estimate when this call wrote it."""
    row = conn.execute(
        """UPDATE jobs SET estimate = estimate || jsonb_build_object('first_chunk', jsonb_build_object(
                   'rows', processed_rows + failed_rows,
                   'prompt_tokens', ceil(prompt_tokens::numeric * total_rows / (processed_rows + failed_rows)),
                   'completion_tokens',
                       ceil(completion_tokens::numeric * total_rows / (processed_rows + failed_rows)),
                   'live_prompt_tokens',
                       ceil(live_prompt_tokens::numeric * total_rows / (processed_rows + failed_rows)),
                   'live_completion_tokens',
                       ceil(live_completion_tokens::numeric * total_rows / (processed_rows + failed_rows)),
                   'cached_tokens', ceil(cached_tokens::numeric * total_rows / (processed_rows + failed_rows)),
                   'live_cached_tokens',
                       ceil(live_cached_tokens::numeric * total_rows / (processed_rows + failed_rows))))
           WHERE id = %s AND status = 'processing' AND estimate IS NOT NULL AND NOT estimate ? 'first_chunk'
             AND processed_rows + failed_rows >= greatest(1, %s)
           RETURNING estimate""",
        (job_id, rows)).fetchone()
    return row["estimate"] if row else None


def stop_for_budget(conn, job_id: str, error: str) -> dict | None:
    """The job reached its max_cost_usd: failed, everything generated kept, the rest pending."""
    return conn.execute(
        f"""UPDATE jobs SET status = 'failed', error = %s, finished_at = now()
            WHERE id = %s AND status IN ('processing', 'ingesting') RETURNING {JOB_COLUMNS}""",
        (error, job_id),
    ).fetchone()


def peek_undispatched(conn, job_id: str) -> int | None:
    """The next chunk of a processing (or ingesting) job still waiting to be sent, if any."""
    row = conn.execute("SELECT undispatched[1] AS chunk FROM jobs WHERE id = %s "
                       "AND status IN ('processing', 'ingesting')",
                       (job_id,)).fetchone()
    return row["chunk"] if row else None


def pop_undispatched(conn, job_id: str, chunk: int) -> bool:
    """Take `chunk` off the job's waiting list if it is still first (another finisher may have
    sent it meanwhile: then False, and the caller sends the next one)."""
    return conn.execute("UPDATE jobs SET undispatched = undispatched[2:] WHERE id = %s AND undispatched[1] = %s",
                        (job_id, chunk)).rowcount == 1


def fail_job(conn, job_id: str, error: str, *, expected: str) -> dict | None:
    """The job failed as a whole (a bad file, a retry that could not be queued): status, reason
    and finish time, if it is still `expected` (None otherwise: someone else moved it)."""
    return conn.execute(
        f"""UPDATE jobs SET status = 'failed', error = %s, finished_at = now() WHERE id = %s AND status = %s
            RETURNING {JOB_COLUMNS}""",
        (error, job_id, expected),
    ).fetchone()


def get_job_by_source_key(conn, source_key: str) -> dict | None:
    return conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE source_key = %s", (source_key,)).fetchone()


def completed_without_results(conn, older_than_s: float, limit: int = 20) -> list[dict]:
    """Completed jobs whose results CSV was never written (a crash between completion and export)."""
    return conn.execute(
        f"""SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'completed' AND result_path IS NULL AND {ENABLED_ACCOUNT}
              AND finished_at < now() - make_interval(secs => %s) ORDER BY finished_at LIMIT %s""",
        (older_than_s, limit),
    ).fetchall()


def stale_pending_drops(conn, older_than_s: float, limit: int = 20) -> list[dict]:
    """S3 drops whose start never happened (SQS, S3 or a timeout failed after the job row)."""
    return conn.execute(
        f"""SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'pending' AND source = 's3' AND {ENABLED_ACCOUNT}
              AND created_at < now() - make_interval(secs => %s) ORDER BY created_at LIMIT %s""",
        (older_than_s, limit),
    ).fetchall()


def unstart_job(conn, job_id: str) -> None:
    """Undo `begin_ingest` when its ingest message could not be sent."""
    conn.execute("DELETE FROM urls WHERE job_id = %s", (job_id,))
    conn.execute(
        """UPDATE jobs SET status = 'pending', chunks = 0, processed_rows = 0, failed_rows = 0, progress = 0,
                  total_rows = coalesce(estimated_rows, total_rows), ingest_row = 0, estimated_rows = NULL,
                  reserved_rows = 0, started_at = NULL, undispatched = '{}'
           WHERE id = %s AND status IN ('processing', 'ingesting')""",
        (job_id,),
    )


def cancel_job(conn, job_id: str) -> dict | None:
    return conn.execute(
        f"""UPDATE jobs SET status = 'canceled', finished_at = now()
            WHERE id = %s AND status IN ('pending', 'ingesting', 'processing') RETURNING {JOB_COLUMNS}""",
        (job_id,),
    ).fetchone()


def complete_job_if_done(conn, job_id: str) -> dict | None:
    """Move the job to completed exactly once: only the caller whose update matched gets the row."""
    return conn.execute(
        f"""UPDATE jobs SET status = 'completed', finished_at = now()
            WHERE id = %s AND status = 'processing' AND processed_rows + failed_rows = total_rows
            RETURNING {JOB_COLUMNS}""",
        (job_id,),
    ).fetchone()


def count_discarded(conn, job_id: str, count: int) -> None:
    conn.execute("UPDATE jobs SET discarded_results = discarded_results + %s WHERE id = %s", (count, job_id))


def discarded_results(conn, account_id: str) -> int:
    return conn.execute("SELECT coalesce(sum(discarded_results), 0) AS n FROM jobs WHERE account_id = %s",
                        (account_id,)).fetchone()["n"]


def jobs_by_status(conn, account_id: str) -> dict[str, int]:
    rows = conn.execute("SELECT status, count(*) AS n FROM jobs WHERE account_id = %s GROUP BY status",
                        (account_id,)).fetchall()
    return {r["status"]: r["n"] for r in rows}


def url_totals(conn, account_id: str) -> dict[str, int]:
    """The account's URLs by status from the job counters plus the (small, indexed) set being
    processed and finished in the last minute."""
    row = conn.execute(
        """SELECT coalesce(sum(processed_rows), 0) AS completed, coalesce(sum(failed_rows), 0) AS failed,
                  coalesce(sum(total_rows - processed_rows - failed_rows), 0) AS unfinished,
                  (SELECT count(*) FROM urls u JOIN jobs j ON j.id = u.job_id
                   WHERE u.status = 'processing' AND j.account_id = %(account)s) AS processing,
                  (SELECT count(*) FROM urls u JOIN jobs j ON j.id = u.job_id
                   WHERE u.finished_at > now() - interval '1 minute' AND j.account_id = %(account)s) AS last_minute
           FROM jobs WHERE account_id = %(account)s""",
        {"account": account_id},
    ).fetchone()
    return {
        "pending": int(row["unfinished"]) - row["processing"],
        "processing": row["processing"],
        "completed": int(row["completed"]),
        "failed": int(row["failed"]),
        "finished_last_minute": row["last_minute"],
    }


def clear_upload_id(conn, job_id: str, upload_id: str) -> dict | None:
    """The job's S3 multipart upload is over (completed or aborted): forget its id, if it is still
    the one given (None otherwise: another call ended it first)."""
    return conn.execute(
        f"UPDATE jobs SET upload_id = NULL WHERE id = %s AND upload_id = %s RETURNING {JOB_COLUMNS}",
        (job_id, upload_id),
    ).fetchone()
