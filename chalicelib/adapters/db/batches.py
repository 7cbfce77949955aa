"""Queries on batch-mode batches: one row per Batch API batch, its status and its rows."""

from __future__ import annotations

# ---------------------------------------------------------------- batch mode

BATCH_COLUMNS = """id, job_id, chunk, status, requests, model, input_file_id, provider_batch_id, provider_status,
    error, created_at, submitted_at, polled_at, finished_at"""


def insert_batch(conn, batch_id: str, job_id: str, chunk: int, requests: int, model: str) -> None:
    conn.execute("""INSERT INTO batches (id, job_id, chunk, status, requests, model)
                    VALUES (%s, %s, %s, 'submitting', %s, %s)""", (batch_id, job_id, chunk, requests, model))


def batch_context(conn, batch_id: str, context: dict[str, str]) -> None:
    """What each row's page fetch gave (`context`: row id -> context_status), kept on the rows the
    batch holds before the provider has them, so a batch found again after a crash keeps it."""
    conn.execute(
        """UPDATE urls u SET context_status = c.status
           FROM unnest(%s::uuid[], %s::text[]) AS c(id, status)
           WHERE u.id = c.id AND u.claimed_by = %s AND u.status = 'processing'""",
        (list(context), list(context.values()), batch_id))


def batch_submitted(conn, batch_id: str, input_file_id: str, provider_batch_id: str, lease_s: int) -> int:
    """The provider has the batch: its rows stay held for the provider's window (`lease_s`).
    Returns the rows (0 when the batch was no longer submitting: someone else recorded it)."""
    if conn.execute(
        """UPDATE batches SET status = 'submitted', input_file_id = %s, provider_batch_id = %s,
                  provider_status = 'validating', submitted_at = now()
           WHERE id = %s AND status = 'submitting'""",
        (input_file_id, provider_batch_id, batch_id)).rowcount != 1:
        return 0
    return conn.execute(
        """UPDATE urls SET lease_until = now() + make_interval(secs => %s)
           WHERE claimed_by = %s AND status = 'processing'""",
        (lease_s, batch_id)).rowcount


def stale_submitting(conn, job_id: str, chunk: int, older_s: int) -> list[dict]:
    """The chunk's batches still 'submitting' `older_s` seconds after they were begun: their
    submitter died (or lost its database) between claiming the rows and recording the provider's
    batch, which may or may not exist."""
    return conn.execute(
        f"""SELECT {BATCH_COLUMNS} FROM batches
            WHERE job_id = %s AND chunk = %s AND status = 'submitting'
              AND created_at < now() - make_interval(secs => %s)""",
        (job_id, chunk, older_s)).fetchall()


def requeue_urls(conn, owner: str, ids: list) -> int:
    """Rows a batch held without an answer (it expired) back to pending, one more try counted,
    for the next batch of their chunk."""
    if not ids:
        return 0
    return conn.execute(
        """UPDATE urls SET status = 'pending', claimed_by = NULL, lease_until = NULL, retry_count = retry_count + 1
           WHERE id = ANY(%s) AND claimed_by = %s AND status = 'processing'""",
        (ids, owner)).rowcount


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
        """SELECT id, url, row_number, retry_count, fields, feedback FROM urls
           WHERE claimed_by = %s AND status = 'processing' ORDER BY row_number""",
        (batch_id,)).fetchall()
