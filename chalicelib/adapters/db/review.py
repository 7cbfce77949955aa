"""Queries of the review loop (sql/0015_review.sql): one result with its history, a person's
edit or review mark, marks in bulk, and a regeneration's reset of rows back to pending.

A row's opener history is kept by its update trigger; the job's counters (processed_rows,
failed_rows, the quality counters of save_results) move in the statement that changes the rows.
"""

from __future__ import annotations

from psycopg.types.json import Jsonb

from chalicelib.adapters.db.jobs import JOB_COLUMNS, PROGRESS
from chalicelib.adapters.db.quality import quality_moved, quality_sums

# What a result row shows (GET results and the single result); `edited`: a person wrote the
# current opener (rows written before sql/0015_review.sql: from their flags); a person's pick of
# a variant (sql/0019_variants.sql) is no edit: such a row is edited only when flagged so.
RESULT_COLUMNS = """id, row_number AS row, url, status, opener, error, retry_count, context_status, evidence,
    grounding, quality, words, language, reused, cached_tokens, review, version, updated_at, feedback,
    variants, variant,
    CASE WHEN variants IS NULL THEN coalesce(opener_source = 'person', 'edited' = ANY (quality))
         ELSE 'edited' = ANY (quality) END AS edited"""

REVIEWS = ("approved", "rejected")


def review_clauses(filters: dict) -> tuple[list[str], list]:
    """SQL conditions (and parameters) for a filter of {"quality", "status", "review"}: review
    "none" is a row nobody marked."""
    clauses, params = [], []
    if filters.get("status"):
        clauses.append("status = %s")
        params.append(filters["status"])
    if filters.get("quality"):
        clauses.append("quality @> ARRAY[%s]::text[] AND quality <> '{}'")
        params.append(filters["quality"])
    review = filters.get("review")
    if review == "none":
        clauses.append("review IS NULL")
    elif review:
        clauses.append("review = %s")
        params.append(review)
    return clauses, params


def get_result(conn, job_id: str, result_id: str, *, lock: bool = False) -> dict | None:
    """The job's URL row `result_id` (None if it is not one of the job's), locked if asked;
    with the row's chunk and no_reuse mark for the service's checks."""
    suffix = " FOR UPDATE" if lock else ""
    return conn.execute(
        f"SELECT {RESULT_COLUMNS}, chunk, no_reuse, opener_at, finished_at, opener_source FROM urls "
        f"WHERE id = %s AND job_id = %s{suffix}",
        (result_id, job_id)).fetchone()


def history(conn, result_id: str) -> list[dict]:
    """The row's earlier openers, oldest first."""
    return conn.execute("SELECT opener, source, at FROM opener_history WHERE url_id = %s ORDER BY id",
                        (result_id,)).fetchall()


def update_result(conn, result_id: str, version: int, **fields) -> dict | None:
    """Set the given columns (names are ours) of the row if it is still at `version`; None when
    it moved meanwhile. The trigger bumps the version and keeps the history."""
    assignments = ", ".join(f"{name} = %s" for name in fields)
    return conn.execute(
        f"UPDATE urls SET {assignments} WHERE id = %s AND version = %s RETURNING {RESULT_COLUMNS}",
        (*fields.values(), result_id, version)).fetchone()


def pick_variant(conn, result_id: str, version: int, **fields) -> dict | None:
    """``update_result`` for a person's pick of a variant: the history trigger records the new
    opener as a person's (sql/0019_variants.sql), though a pick leaves no ``edited`` flag."""
    conn.execute("SELECT set_config('csv_opener.opener_source', 'person', true)")  # this transaction only
    updated = update_result(conn, result_id, version, **fields)
    conn.execute("SELECT set_config('csv_opener.opener_source', '', true)")  # a later statement writes its own
    return updated


def lock_job_quality(conn, job_id: str) -> dict:
    return conn.execute("SELECT quality FROM jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone()["quality"] or {}


def set_job_quality(conn, job_id: str, quality: dict, *, drop_results: bool) -> None:
    """The job's quality counters after an edit; with `drop_results`, its results CSV is written
    again (the sweep writes completed jobs' missing ones), since it holds the old opener."""
    conn.execute(
        "UPDATE jobs SET quality = %s, result_path = CASE WHEN %s THEN NULL ELSE result_path END WHERE id = %s",
        (Jsonb(quality), drop_results, job_id))


def touch_job(conn, job_id: str) -> None:
    """A review mark changed: the job's updated_at moves, so a download renders the new state."""
    conn.execute("UPDATE jobs SET updated_at = now() WHERE id = %s", (job_id,))


def count_job_rows(conn, job_id: str, ids: list[str]) -> int:
    return conn.execute("SELECT count(*) AS n FROM urls WHERE job_id = %s AND id = ANY(%s::uuid[])",
                        (job_id, ids)).fetchone()["n"]


def mark_reviews(conn, job_id: str, review: str | None, *, ids: list[str] | None, filters: dict) -> int:
    """Set the review of the job's completed rows named by `ids`, or matching `filters`
    (rows being regenerated are left alone); the rows whose mark changed."""
    clauses, params = review_clauses(filters)
    if ids is not None:
        clauses.append("id = ANY(%s::uuid[])")
        params.append(ids)
    where = " AND ".join(["job_id = %s", "status = 'completed'", "review IS DISTINCT FROM %s", *clauses])
    return conn.execute(f"UPDATE urls SET review = %s WHERE {where}",
                        (review, job_id, review, *params)).rowcount


def reset_for_regenerate(conn, job_id: str, *, ids: list[str] | None, filters: dict,
                         feedback: str | None) -> dict | None:
    """The job's finished rows named by `ids` (edited ones included), or matching `filters`
    (rows a person edited or picked a variant of left alone), back to pending with the
    regeneration's marks (feedback, no_reuse), their review and quality cleared; in the same
    statement the job goes back to processing with its counters moved (processed_rows/failed_rows
    down by the rows reset, the quality counters down by their old grounding, flags, words,
    re-asks and reuse) and
    `regenerated` = the rows reset. Only a finished job with no unfinished row is changed.
    Returns the job's row with `n` (rows reset) and `chunks`, or None when the job was not in
    such a state (nothing changed then). Call in a transaction (quota and the window follow)."""
    clauses, params = review_clauses(filters)
    if ids is not None:
        clauses.append("id = ANY(%s::uuid[])")
        params.append(ids)
    else:
        # a person's edit, or a person's pick of a variant (no `edited` flag, but their opener)
        clauses.append("NOT ('edited' = ANY (quality)) AND opener_source IS DISTINCT FROM 'person'")
    where = " AND ".join(["job_id = %s", "status IN ('completed', 'failed')", *clauses])
    return conn.execute(
        f"""WITH target AS (
               SELECT id, status AS old_status, chunk, grounding, quality, words, reused, regenerations FROM urls
               WHERE {where} ORDER BY row_number FOR UPDATE
           ), reset AS (
               UPDATE urls u SET status = 'pending', error = NULL, claimed_by = NULL, lease_until = NULL,
                      finished_at = NULL, feedback = %s, no_reuse = true, review = NULL, quality = '{{}}',
                      grounding = NULL, evidence = NULL, words = NULL, reused = false, regenerations = 0,
                      variants = NULL, variant = NULL
               FROM target t WHERE u.id = t.id
               RETURNING t.*
           ), s AS (
               SELECT count(*) AS n, count(*) FILTER (WHERE old_status = 'completed') AS done,
                      count(*) FILTER (WHERE old_status = 'failed') AS failed,
                      coalesce(array_agg(DISTINCT chunk ORDER BY chunk), '{{}}') AS chunks,
                      {quality_sums('reset')}
               FROM reset
           )
           UPDATE jobs j SET status = 'processing', finished_at = NULL, result_path = NULL, error = NULL,
                  processed_rows = j.processed_rows - s.done, failed_rows = j.failed_rows - s.failed,
                  progress = {PROGRESS.format(done="j.processed_rows - s.done + j.failed_rows - s.failed")},
                  regenerated = s.n,
                  quality = {quality_moved('-')}
           FROM s WHERE j.id = %s AND j.status IN ('completed', 'failed', 'canceled')
             AND j.processed_rows + j.failed_rows = j.total_rows
           RETURNING {", ".join(f"j.{c.strip()}" for c in JOB_COLUMNS.split(","))}, s.n, s.chunks""",
        (job_id, *params, feedback, job_id),
    ).fetchone()


def set_undispatched(conn, job_id: str, waiting: list[int]) -> dict:
    return conn.execute(f"UPDATE jobs SET undispatched = %s WHERE id = %s RETURNING {JOB_COLUMNS}",
                        (waiting, job_id)).fetchone()
