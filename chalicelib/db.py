"""PostgreSQL adapter: one connection per container and thread, and one function per query.

Lambda runs one request per container at a time, so a single reused connection is right there;
`chalice local` and the event runner use threads, so connections are kept per thread. Every
function takes the connection as its first argument; transactions are the caller's
(`with conn.transaction():`). Parameters are always passed separately, bulk rows go by COPY.
"""

from __future__ import annotations

import threading

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

_local = threading.local()


def connect(database_url: str) -> psycopg.Connection:
    return psycopg.connect(database_url, autocommit=True, row_factory=dict_row, connect_timeout=5)


def get_conn(database_url: str) -> psycopg.Connection:
    """This thread's connection, reopened when the server closed it (restart, idle kill)."""
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken or getattr(_local, "url", None) != database_url:
        if conn is not None and not conn.closed:
            conn.close()
        conn = connect(database_url)
        _local.conn, _local.url = conn, database_url
    return conn


def ping(conn: psycopg.Connection) -> None:
    conn.execute("SELECT 1").fetchone()


# ---------------------------------------------------------------- jobs

def _json(value):
    return None if value is None else Jsonb(value)


# progress = round(100 * (processed + failed) / total), for a `done` expression
PROGRESS = "CASE WHEN j.total_rows = 0 THEN 0 ELSE round(100.0 * ({done}) / j.total_rows) END"

JOB_COLUMNS = """id, account_id, file_name, file_path, status, total_rows, processed_rows, failed_rows, progress,
    invalid_rows, url_column, columns, layout, errors, chunks, instructions, model, source, source_etag, error,
    result_path, prompt_tokens, completion_tokens, discarded_results, page_context, max_cost_usd, callback_url,
    mode, started_at, finished_at, created_at, updated_at"""


def insert_job(conn, *, job_id: str, account_id: str, file_name: str, file_path: str, source: str,
               source_key: str | None = None, source_etag: str | None = None, layout: dict | None = None,
               columns: list[str] | None = None,
               url_column: str | None = None, total_rows: int = 0, invalid_rows: int = 0,
               errors: list[dict] | None = None, status: str = "pending", error: str | None = None) -> dict | None:
    """Insert a job; None when `source_key` already started one (a duplicate S3 notification)."""
    return conn.execute(
        f"""INSERT INTO jobs (id, account_id, file_name, file_path, source, source_key, source_etag, layout, columns,
                              url_column, total_rows, invalid_rows, errors, status, error)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (source_key) DO NOTHING
            RETURNING {JOB_COLUMNS}""",
        (job_id, account_id, file_name, file_path, source, source_key, source_etag, _json(layout), _json(columns),
         url_column, total_rows, invalid_rows, Jsonb(errors or []), status, error),
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
    row = conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
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


def start_job(conn, job_id: str, *, total_rows: int, invalid_rows: int, chunks: int,
              instructions: str | None, model: str | None, undispatched: list[int], page_context: bool = True,
              max_cost_usd: float | None = None, callback_url: str | None = None, mode: str = "live") -> dict:
    return conn.execute(
        f"""UPDATE jobs SET status = 'processing', total_rows = %s, invalid_rows = %s, chunks = %s,
                   instructions = %s, model = %s, started_at = now(), error = NULL, undispatched = %s,
                   page_context = %s, max_cost_usd = %s, callback_url = %s, mode = %s
            WHERE id = %s AND status = 'pending' RETURNING {JOB_COLUMNS}""",
        (total_rows, invalid_rows, chunks, instructions, model, undispatched, page_context, max_cost_usd,
         callback_url, mode, job_id),
    ).fetchone()


def stop_for_budget(conn, job_id: str, error: str) -> dict | None:
    """The job reached its max_cost_usd: failed, everything generated kept, the rest pending."""
    return conn.execute(
        f"""UPDATE jobs SET status = 'failed', error = %s, finished_at = now()
            WHERE id = %s AND status = 'processing' RETURNING {JOB_COLUMNS}""",
        (error, job_id),
    ).fetchone()


def peek_undispatched(conn, job_id: str) -> int | None:
    """The next chunk of a processing job still waiting to be sent, if any."""
    row = conn.execute("SELECT undispatched[1] AS chunk FROM jobs WHERE id = %s AND status = 'processing'",
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
        f"""SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'completed' AND result_path IS NULL
              AND finished_at < now() - make_interval(secs => %s) ORDER BY finished_at LIMIT %s""",
        (older_than_s, limit),
    ).fetchall()


def stale_pending_drops(conn, older_than_s: float, limit: int = 20) -> list[dict]:
    """S3 drops whose start never happened (SQS, S3 or a timeout failed after the job row)."""
    return conn.execute(
        f"""SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'pending' AND source = 's3'
              AND created_at < now() - make_interval(secs => %s) ORDER BY created_at LIMIT %s""",
        (older_than_s, limit),
    ).fetchall()


def unstart_job(conn, job_id: str) -> None:
    """Undo `start_job` when its chunk messages could not be sent."""
    conn.execute("DELETE FROM urls WHERE job_id = %s", (job_id,))
    conn.execute(
        """UPDATE jobs SET status = 'pending', chunks = 0, processed_rows = 0, failed_rows = 0, progress = 0,
                  started_at = NULL, undispatched = '{}' WHERE id = %s AND status = 'processing'""",
        (job_id,),
    )


def cancel_job(conn, job_id: str) -> dict | None:
    return conn.execute(
        f"""UPDATE jobs SET status = 'canceled', finished_at = now()
            WHERE id = %s AND status IN ('pending', 'processing') RETURNING {JOB_COLUMNS}""",
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


# ---------------------------------------------------------------- accounts (limits at start)

ACCOUNT_LIMIT_COLUMNS = "id, name, disabled_at, rpm, urls_per_day, max_jobs, models"


def lock_account(conn, account_id: str) -> dict | None:
    """The account row, locked for the caller's transaction: starts and retries of one account
    take their quota and job slots one at a time (always after the job's own locks)."""
    return conn.execute(f"SELECT {ACCOUNT_LIMIT_COLUMNS} FROM accounts WHERE id = %s FOR UPDATE",
                        (account_id,)).fetchone()


def get_account(conn, account_id: str) -> dict | None:
    return conn.execute(f"SELECT {ACCOUNT_LIMIT_COLUMNS} FROM accounts WHERE id = %s", (account_id,)).fetchone()


def processing_jobs(conn, account_id: str) -> int:
    return conn.execute("SELECT count(*) AS n FROM jobs WHERE account_id = %s AND status = 'processing'",
                        (account_id,)).fetchone()["n"]


UTC_TODAY = "(now() AT TIME ZONE 'UTC')::date"


def urls_today(conn, account_id: str) -> int:
    row = conn.execute(f"SELECT urls FROM account_usage WHERE account_id = %s AND day = {UTC_TODAY}",
                       (account_id,)).fetchone()
    return int(row["urls"]) if row else 0


def add_urls_today(conn, account_id: str, count: int) -> None:
    conn.execute(
        f"""INSERT INTO account_usage (account_id, day, urls) VALUES (%s, {UTC_TODAY}, %s)
            ON CONFLICT (account_id, day) DO UPDATE SET urls = account_usage.urls + EXCLUDED.urls""",
        (account_id, count),
    )


# ---------------------------------------------------------------- urls

def copy_urls(conn, job_id: str, rows) -> int:
    """Bulk insert (row_number, chunk, url, fields) tuples with COPY; returns the count."""
    count = 0
    with conn.cursor() as cur, cur.copy("COPY urls (job_id, row_number, chunk, url, fields) FROM STDIN") as copy:
        for row_number, chunk, url, fields in rows:
            copy.write_row((job_id, row_number, chunk, url, None if fields is None else Jsonb(fields)))
            count += 1
    return count


def results_page(conn, job_id: str, *, status: str | None, limit: int, after_row: int) -> list[dict]:
    status_clause = "AND status = %s" if status else ""
    params = (job_id, after_row, *([status] if status else []), limit)
    return conn.execute(
        f"""SELECT id, row_number AS row, url, status, opener, error, retry_count, context_status FROM urls
            WHERE job_id = %s AND row_number > %s {status_clause}
            ORDER BY row_number LIMIT %s""",
        params,
    ).fetchall()


def iter_results(conn, job_id: str, batch: int = 5000):
    """Every URL row of the job in file order, in keyset batches (bounded memory, no long cursor)."""
    after = 0
    while True:
        rows = conn.execute(
            """SELECT row_number, status, opener, error, context_status FROM urls
               WHERE job_id = %s AND row_number > %s ORDER BY row_number LIMIT %s""",
            (job_id, after, batch),
        ).fetchall()
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1]["row_number"]


def reset_for_retry(conn, job_id: str, include_unfinished: bool) -> tuple[int, int, list[int]]:
    """Failed URLs (and, for a canceled job, unfinished ones) back to pending.
    Returns (URLs reset, how many of them had failed, chunks to enqueue). Call in a transaction
    together with `restart_job`, which moves the counters."""
    statuses = ["failed", "pending", "processing"] if include_unfinished else ["failed"]
    row = conn.execute(
        """WITH target AS (
               SELECT id, status AS old_status, chunk FROM urls
               WHERE job_id = %s AND status = ANY(%s) FOR UPDATE
           ), reset AS (
               UPDATE urls u SET status = 'pending', error = NULL, claimed_by = NULL, lease_until = NULL,
                                 finished_at = NULL
               FROM target t WHERE u.id = t.id
               RETURNING t.old_status, t.chunk
           )
           SELECT count(*) AS n, count(*) FILTER (WHERE old_status = 'failed') AS failed,
                  coalesce(array_agg(DISTINCT chunk ORDER BY chunk), '{}') AS chunks
           FROM reset""",
        (job_id, statuses),
    ).fetchone()
    return row["n"], row["failed"], list(row["chunks"])


def restart_job(conn, job_id: str, failed_reset: int, undispatched: list[int]) -> dict:
    return conn.execute(
        f"""UPDATE jobs j SET status = 'processing', failed_rows = failed_rows - %(f)s, finished_at = NULL,
                   result_path = NULL, error = NULL, undispatched = %(waiting)s,
                   progress = {PROGRESS.format(done="processed_rows + failed_rows - %(f)s")}
            WHERE j.id = %(job)s AND j.status IN ('completed', 'failed', 'canceled') RETURNING {JOB_COLUMNS}""",
        {"f": failed_reset, "job": job_id, "waiting": undispatched},
    ).fetchone()


# ---------------------------------------------------------------- chunk worker

def claim_urls(conn, job_id: str, chunk: int, owner: str, limit: int, lease_s: int) -> list[dict]:
    """Take up to `limit` unfinished URLs of the chunk: pending ones, or ones whose holder's lease
    ran out (never our own: we still hold those). Rows another live invocation holds are
    skipped; nothing is taken unless the job is processing (a cancel stops new claims at once)."""
    return conn.execute(
        """UPDATE urls u SET status = 'processing', claimed_by = %(owner)s,
                  lease_until = now() + make_interval(secs => %(lease)s)
           FROM (
               SELECT id FROM urls
               WHERE job_id = %(job)s AND chunk = %(chunk)s
                 AND (status = 'pending'
                      OR (status = 'processing' AND lease_until < now() AND claimed_by <> %(owner)s))
                 AND EXISTS (SELECT 1 FROM jobs WHERE id = %(job)s AND status = 'processing')
               ORDER BY row_number LIMIT %(limit)s
               FOR UPDATE SKIP LOCKED
           ) c
           WHERE u.id = c.id
           RETURNING u.id, u.url, u.row_number, u.retry_count, u.fields""",
        {"owner": owner, "lease": lease_s, "job": job_id, "chunk": chunk, "limit": limit},
    ).fetchall()


def save_results(conn, job_id: str, owner: str, results: list[dict]) -> dict:
    """Write finished URLs and move the job's counters in one statement (atomic, so the
    invariant processed + failed + unfinished = total always holds). Rows this owner no longer
    holds (lease taken over, job retried) are not written and not counted.
    Each result: id, status ('completed' | 'failed'), opener, error, retry_count, prompt_tokens,
    completion_tokens. Returns the job's status and counters after the write."""
    columns = ("id", "status", "opener", "error", "retry_count", "prompt_tokens", "completion_tokens",
               "context_status")
    arrays = {c: [r.get(c) for r in results] for c in columns}
    return conn.execute(
        f"""WITH r AS (
               SELECT * FROM unnest(%(id)s::uuid[], %(status)s::text[], %(opener)s::text[], %(error)s::text[],
                                    %(retry_count)s::int[], %(prompt_tokens)s::int[], %(completion_tokens)s::int[],
                                    %(context_status)s::text[])
                    AS r(id, status, opener, error, retry_count, prompt_tokens, completion_tokens, context_status)
           ), saved AS (
               UPDATE urls u SET status = r.status, opener = r.opener, error = r.error,
                      retry_count = r.retry_count, prompt_tokens = r.prompt_tokens,
                      completion_tokens = r.completion_tokens, finished_at = now(),
                      context_status = coalesce(r.context_status, u.context_status),
                      claimed_by = NULL, lease_until = NULL
               FROM r WHERE u.id = r.id AND u.status = 'processing' AND u.claimed_by = %(owner)s
               RETURNING r.status, r.prompt_tokens, r.completion_tokens
           ), s AS (
               SELECT count(*) FILTER (WHERE status = 'completed') AS done,
                      count(*) FILTER (WHERE status = 'failed') AS failed,
                      coalesce(sum(prompt_tokens), 0) AS pt, coalesce(sum(completion_tokens), 0) AS ct
               FROM saved
           )
           UPDATE jobs j SET processed_rows = j.processed_rows + s.done, failed_rows = j.failed_rows + s.failed,
                  prompt_tokens = j.prompt_tokens + s.pt, completion_tokens = j.completion_tokens + s.ct,
                  progress = {PROGRESS.format(done="j.processed_rows + s.done + j.failed_rows + s.failed")}
           FROM s WHERE j.id = %(job)s
           RETURNING j.status, j.total_rows, j.processed_rows, j.failed_rows, s.done + s.failed AS saved,
                     j.model, j.mode, j.prompt_tokens, j.completion_tokens, j.max_cost_usd""",
        {**arrays, "owner": owner, "job": job_id},
    ).fetchone()


def release_urls(conn, owner: str, ids: list) -> int:
    """Give claimed, unfinished URLs back (cancel, deadline) so any invocation can take them."""
    if not ids:
        return 0
    return conn.execute(
        """UPDATE urls SET status = 'pending', claimed_by = NULL, lease_until = NULL
           WHERE id = ANY(%s) AND claimed_by = %s AND status = 'processing'""",
        (ids, owner),
    ).rowcount


def renew_leases(conn, owner: str, lease_s: int) -> int:
    return conn.execute(
        """UPDATE urls SET lease_until = now() + make_interval(secs => %s)
           WHERE claimed_by = %s AND status = 'processing'""",
        (lease_s, owner),
    ).rowcount


def chunk_lease_left(conn, job_id: str, chunk: int) -> float | None:
    """Seconds until the last lease on the chunk's unfinished rows runs out (0 if pending rows
    wait with no lease); None when the chunk is finished or the job is not processing."""
    row = conn.execute(
        """SELECT count(*) AS n,
                  coalesce(max(extract(epoch FROM lease_until - now())) FILTER (WHERE status = 'processing'), 0)
                      AS left_s
           FROM urls
           WHERE job_id = %s AND chunk = %s AND status IN ('pending', 'processing')
             AND EXISTS (SELECT 1 FROM jobs WHERE id = %s AND status = 'processing')""",
        (job_id, chunk, job_id),
    ).fetchone()
    return max(0.0, float(row["left_s"])) if row["n"] else None


def unfinished_chunks(conn, idle_s: float | None = None) -> dict[str, list[int]]:
    """Chunks with work nobody holds (pending, or leased by someone whose lease ran out), per
    processing job; with `idle_s`, only jobs whose counters have not moved for that long."""
    idle_clause = "AND j.updated_at < now() - make_interval(secs => %(idle)s)" if idle_s is not None else ""
    rows = conn.execute(
        f"""SELECT u.job_id, array_agg(DISTINCT u.chunk ORDER BY u.chunk) AS chunks
            FROM jobs j JOIN urls u ON u.job_id = j.id
                 AND (u.status = 'pending' OR (u.status = 'processing' AND u.lease_until < now()))
            WHERE j.status = 'processing' {idle_clause}
            GROUP BY u.job_id""",
        {"idle": idle_s},
    ).fetchall()
    return {str(r["job_id"]): list(r["chunks"]) for r in rows}


def fail_chunk(conn, job_id: str, chunk: int, error: str) -> dict:
    """Give up on a chunk's unfinished URLs (its message is going to the dead-letter queue)."""
    return conn.execute(
        f"""WITH failed AS (
               UPDATE urls SET status = 'failed', error = %(error)s, claimed_by = NULL, lease_until = NULL,
                               finished_at = now()
               WHERE job_id = %(job)s AND chunk = %(chunk)s AND status IN ('pending', 'processing')
               RETURNING 1
           ), s AS (SELECT count(*) AS n FROM failed)
           UPDATE jobs j SET failed_rows = j.failed_rows + s.n, error = %(error)s,
                  progress = {PROGRESS.format(done="j.processed_rows + j.failed_rows + s.n")}
           FROM s WHERE j.id = %(job)s
           RETURNING j.status, s.n AS failed""",
        {"job": job_id, "chunk": chunk, "error": error},
    ).fetchone()


# ---------------------------------------------------------------- batch mode

BATCH_COLUMNS = """id, job_id, chunk, status, requests, model, input_file_id, provider_batch_id, provider_status,
    error, created_at, submitted_at, polled_at, finished_at"""


def insert_batch(conn, batch_id: str, job_id: str, chunk: int, requests: int, model: str) -> None:
    conn.execute("""INSERT INTO batches (id, job_id, chunk, status, requests, model)
                    VALUES (%s, %s, %s, 'submitting', %s, %s)""", (batch_id, job_id, chunk, requests, model))


def batch_submitted(conn, batch_id: str, input_file_id: str, provider_batch_id: str, lease_s: int,
                    context: dict[str, str]) -> int:
    """The provider has the batch: its rows stay held for the provider's window (`lease_s`) and
    keep what their page fetch gave (`context`: row id -> context_status). Returns the rows."""
    conn.execute(
        """UPDATE batches SET status = 'submitted', input_file_id = %s, provider_batch_id = %s,
                  provider_status = 'validating', submitted_at = now()
           WHERE id = %s AND status = 'submitting'""",
        (input_file_id, provider_batch_id, batch_id))
    return conn.execute(
        """UPDATE urls u SET lease_until = now() + make_interval(secs => %s), context_status = c.status
           FROM unnest(%s::uuid[], %s::text[]) AS c(id, status)
           WHERE u.id = c.id AND u.claimed_by = %s AND u.status = 'processing'""",
        (lease_s, list(context), list(context.values()), batch_id)).rowcount


def finish_batch(conn, batch_id: str, *, expected: tuple[str, ...], provider_status: str | None = None,
                 error: str | None = None) -> bool:
    """The batch's results are saved (or it never reached the provider): done, if it was in one of
    the `expected` states (False: someone else finished it)."""
    return conn.execute(
        """UPDATE batches SET status = 'done', finished_at = now(), provider_status = coalesce(%s, provider_status),
                  error = %s
           WHERE id = %s AND status = ANY(%s)""",
        (provider_status, error, batch_id, list(expected))).rowcount == 1


def batch_polled(conn, batch_id: str, provider_status: str) -> None:
    conn.execute("UPDATE batches SET provider_status = %s, polled_at = now() WHERE id = %s",
                 (provider_status, batch_id))


def batch_cancelling(conn, batch_id: str) -> bool:
    return conn.execute("UPDATE batches SET status = 'cancelling' WHERE id = %s AND status = 'submitted'",
                        (batch_id,)).rowcount == 1


def open_batches(conn, limit: int) -> list[dict]:
    """Batches still with the provider, least recently polled first, with their job's status."""
    return conn.execute(
        """SELECT b.*, j.status AS job_status FROM batches b JOIN jobs j ON j.id = b.job_id
            WHERE b.status IN ('submitted', 'cancelling')
            ORDER BY b.polled_at NULLS FIRST LIMIT %s""",
        (limit,)).fetchall()


def job_batches(conn, job_id: str, statuses: tuple[str, ...]) -> list[dict]:
    return conn.execute(f"SELECT {BATCH_COLUMNS} FROM batches WHERE job_id = %s AND status = ANY(%s)",
                        (job_id, list(statuses))).fetchall()


def batch_rows(conn, batch_id: str) -> list[dict]:
    """The URL rows a batch still holds."""
    return conn.execute(
        """SELECT id, url, row_number, retry_count FROM urls
           WHERE claimed_by = %s AND status = 'processing' ORDER BY row_number""",
        (batch_id,)).fetchall()
