"""Queries on URL rows: COPY in, pages of results, retry resets, and the chunk handler's claim,
save, release and lease renewal."""

from __future__ import annotations

import json

from chalicelib.adapters.db.jobs import JOB_COLUMNS, PROGRESS, RUNNABLE_JOB
from chalicelib.adapters.db.quality import quality_moved, quality_sums
from chalicelib.adapters.db.review import RESULT_COLUMNS, review_clauses

# ---------------------------------------------------------------- urls

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_BLOCK = 1 << 17  # characters of COPY text sent at a time
_NULL = "\\N"


def _copy_text(value: str) -> str:
    """A value in COPY's text format (the four characters it gives a meaning escaped)."""
    return value.translate(_COPY_ESCAPES) if "\\" in value or "\t" in value or "\n" in value or "\r" in value \
        else value


def copy_urls(conn, job_id: str, rows) -> int:
    """Bulk insert (row_number, chunk, url, fields) tuples with COPY; returns the count. The COPY
    text is built here, a block at a time (one call per row into the driver cost as much as the
    rest of the ingest's writing)."""
    count, size, lines = 0, 0, []
    with conn.cursor() as cur, cur.copy("COPY urls (job_id, row_number, chunk, url, fields) FROM STDIN") as copy:
        for row_number, chunk, url, fields in rows:
            line = (f"{job_id}\t{row_number:d}\t{chunk:d}\t{_copy_text(url)}\t"
                    f"{_NULL if fields is None else _copy_text(json.dumps(fields))}\n")
            lines.append(line)
            count, size = count + 1, size + len(line)
            if size >= _COPY_BLOCK:
                copy.write("".join(lines))
                size, lines = 0, []
        if lines:
            copy.write("".join(lines))
    return count


def results_page(conn, job_id: str, *, status: str | None, limit: int, after_row: int,
                 quality: str | None = None, review: str | None = None) -> list[dict]:
    """A page of the job's URL rows in file order after `after_row`; with `quality`, only rows
    carrying that flag; with `review` (approved, rejected, none), only rows so marked."""
    # `quality <> '{}'` in the quality filter adds nothing to the meaning but is the partial
    # index's own predicate: the planner may use urls_quality_idx only when the query states it.
    clauses, params = review_clauses({"status": status, "quality": quality, "review": review})
    return conn.execute(
        f"""SELECT {RESULT_COLUMNS} FROM urls
            WHERE {" AND ".join(["job_id = %s", "row_number > %s", *clauses])}
            ORDER BY row_number LIMIT %s""",
        (job_id, after_row, *params, limit),
    ).fetchall()


def iter_results(conn, job_id: str, batch: int = 5000, review: str | None = None):
    """Every URL row of the job in file order, in keyset batches (bounded memory, no long cursor);
    with `review`, only the rows so marked."""
    after = 0
    marked = "AND review = %(review)s" if review else ""
    while True:
        rows = conn.execute(
            f"""SELECT row_number, status, opener, error, context_status, evidence, quality, language, variants,
                      variant FROM urls
               WHERE job_id = %(job)s AND row_number > %(after)s {marked} ORDER BY row_number LIMIT %(batch)s""",
            {"job": job_id, "after": after, "batch": batch, "review": review},
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


def restart_job(conn, job_id: str, failed_reset: int, undispatched: list[int], *, expected: str) -> dict | None:
    """The job (`expected`: completed, failed or canceled) back to processing; None if it is not."""
    return conn.execute(
        f"""UPDATE jobs j SET status = 'processing', failed_rows = failed_rows - %(f)s, finished_at = NULL,
                   result_path = NULL, error = NULL, undispatched = %(waiting)s,
                   progress = {PROGRESS.format(done="processed_rows + failed_rows - %(f)s")}
            WHERE j.id = %(job)s AND j.status = %(expected)s AND j.status IN ('completed', 'failed', 'canceled')
            RETURNING {JOB_COLUMNS}""",
        {"f": failed_reset, "job": job_id, "waiting": undispatched, "expected": expected},
    ).fetchone()


# ---------------------------------------------------------------- chunk worker

def claim_urls(conn, job_id: str, chunk: int, owner: str, limit: int, lease_s: int) -> list[dict]:
    """Take up to `limit` unfinished URLs of the chunk: pending ones, or ones whose holder's lease
    ran out (never our own: we still hold those). Rows another live invocation holds are
    skipped; nothing is taken unless the job is processing (a cancel stops new claims at once)
    and its account is enabled (a disabled account spends nothing more; enabled again, the
    sweep hands its chunks out again)."""
    return conn.execute(
        f"""UPDATE urls u SET status = 'processing', claimed_by = %(owner)s,
                  lease_until = now() + make_interval(secs => %(lease)s)
           FROM (
               SELECT id FROM urls
               WHERE job_id = %(job)s AND chunk = %(chunk)s
                 AND (status = 'pending'
                      OR (status = 'processing' AND lease_until < now() AND claimed_by <> %(owner)s))
                 AND EXISTS ({RUNNABLE_JOB.format(job="%(job)s")})
               ORDER BY row_number LIMIT %(limit)s
               FOR UPDATE SKIP LOCKED
           ) c
           WHERE u.id = c.id
           RETURNING u.id, u.url, u.row_number, u.retry_count, u.fields, u.feedback, u.no_reuse""",
        {"owner": owner, "lease": lease_s, "job": job_id, "chunk": chunk, "limit": limit},
    ).fetchall()


def save_results(conn, job_id: str, owner: str, results: list[dict]) -> dict:
    """Write finished URLs and move the job's counters in one statement (atomic, so the
    invariant processed + failed + unfinished = total always holds). Rows this owner no longer
    holds (lease taken over, job retried) are not written and not counted.
    Each result: id, status ('completed' | 'failed'), opener, error, retry_count, prompt_tokens,
    completion_tokens, and what the quality checks found (optional): evidence, grounding, quality
    (a list of flags), words, language, reused, regenerations; for reuse (issue 22, optional):
    fingerprint, page_hash (bytes; set on completed rows the model wrote) and cached_tokens; with
    variants (sql/0019_variants.sql), ``variants`` (a list of dicts; the first is picked); for a
    batch job's row, the part of its tokens paid live (its re-asks, optional): live_prompt_tokens,
    live_completion_tokens, live_cached_tokens, added to the job's as well (sql/0021). Saving a
    row clears its no_reuse mark (the regeneration it stood for is done). The job's ``quality`` counters move
    in the same statement: {"verified", "generic", "unsupported", "regenerated", "reused": n,
    "flagged": {flag: n}, "words": {"<words>": n}}. Returns the job's status and counters after
    the write."""
    columns = ("id", "status", "opener", "error", "retry_count", "prompt_tokens", "completion_tokens",
               "context_status", "evidence", "grounding", "words", "language", "reused", "regenerations",
               "fingerprint", "page_hash", "cached_tokens", "live_prompt_tokens", "live_completion_tokens",
               "live_cached_tokens")
    arrays = {c: [r.get(c) for r in results] for c in columns}
    # Flags travel as one ';'-joined string per row: unnest() would flatten a text[][] into one list.
    arrays["quality"] = [";".join(r.get("quality") or ()) for r in results]
    arrays["variants"] = [None if r.get("variants") is None else json.dumps(r["variants"]) for r in results]
    return conn.execute(
        f"""WITH r AS (
               SELECT * FROM unnest(%(id)s::uuid[], %(status)s::text[], %(opener)s::text[], %(error)s::text[],
                                    %(retry_count)s::int[], %(prompt_tokens)s::int[], %(completion_tokens)s::int[],
                                    %(context_status)s::text[], %(evidence)s::text[], %(grounding)s::text[],
                                    %(quality)s::text[], %(words)s::int[], %(language)s::text[],
                                    %(reused)s::boolean[], %(regenerations)s::int[], %(fingerprint)s::bytea[],
                                    %(page_hash)s::bytea[], %(cached_tokens)s::int[], %(variants)s::text[],
                                    %(live_prompt_tokens)s::int[], %(live_completion_tokens)s::int[],
                                    %(live_cached_tokens)s::int[])
                    AS r(id, status, opener, error, retry_count, prompt_tokens, completion_tokens, context_status,
                         evidence, grounding, quality, words, language, reused, regenerations, fingerprint,
                         page_hash, cached_tokens, variants, live_prompt_tokens, live_completion_tokens,
                         live_cached_tokens)
           ), saved AS (
               UPDATE urls u SET status = r.status, opener = r.opener, error = r.error,
                      retry_count = r.retry_count, prompt_tokens = r.prompt_tokens,
                      completion_tokens = r.completion_tokens, finished_at = now(),
                      context_status = coalesce(r.context_status, u.context_status),
                      evidence = r.evidence, grounding = r.grounding,
                      quality = string_to_array(coalesce(r.quality, ''), ';'), words = r.words,
                      language = r.language, reused = coalesce(r.reused, false),
                      regenerations = coalesce(r.regenerations, 0),
                      fingerprint = r.fingerprint, page_hash = r.page_hash, cached_tokens = r.cached_tokens,
                      variants = r.variants::jsonb, variant = CASE WHEN r.variants IS NULL THEN NULL ELSE 1 END,
                      live_prompt_tokens = r.live_prompt_tokens, live_completion_tokens = r.live_completion_tokens,
                      live_cached_tokens = r.live_cached_tokens,
                      claimed_by = NULL, lease_until = NULL,
                      -- a regeneration's marks (issue 21) are spent once its opener is written; a
                      -- failed row keeps them for its retry
                      feedback = CASE WHEN r.status = 'completed' THEN NULL ELSE u.feedback END,
                      no_reuse = CASE WHEN r.status = 'completed' THEN false ELSE u.no_reuse END
               FROM r WHERE u.id = r.id AND u.status = 'processing' AND u.claimed_by = %(owner)s
               RETURNING r.status, r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.live_prompt_tokens,
                         r.live_completion_tokens, r.live_cached_tokens, u.grounding, u.quality, u.words, u.reused,
                         u.regenerations
           ), s AS (
               SELECT count(*) FILTER (WHERE status = 'completed') AS done,
                      count(*) FILTER (WHERE status = 'failed') AS failed,
                      coalesce(sum(prompt_tokens), 0) AS pt, coalesce(sum(completion_tokens), 0) AS ct,
                      coalesce(sum(cached_tokens), 0) AS cached, coalesce(sum(live_prompt_tokens), 0) AS live_pt,
                      coalesce(sum(live_completion_tokens), 0) AS live_ct,
                      coalesce(sum(live_cached_tokens), 0) AS live_cached,
                      {quality_sums('saved')}
               FROM saved
           )
           UPDATE jobs j SET processed_rows = j.processed_rows + s.done, failed_rows = j.failed_rows + s.failed,
                  prompt_tokens = j.prompt_tokens + s.pt, completion_tokens = j.completion_tokens + s.ct,
                  cached_tokens = j.cached_tokens + s.cached, live_prompt_tokens = j.live_prompt_tokens + s.live_pt,
                  live_completion_tokens = j.live_completion_tokens + s.live_ct,
                  live_cached_tokens = j.live_cached_tokens + s.live_cached,
                  progress = {PROGRESS.format(done="j.processed_rows + s.done + j.failed_rows + s.failed")},
                  quality = {quality_moved('+')}
           FROM s WHERE j.id = %(job)s
           RETURNING j.status, j.total_rows, j.processed_rows, j.failed_rows, s.done + s.failed AS saved,
                     j.model, j.mode, j.prompt_tokens, j.completion_tokens, j.cached_tokens,
                     j.live_prompt_tokens, j.live_completion_tokens, j.live_cached_tokens, j.max_cost_usd""",
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
    wait with no lease); None when the chunk is finished or the job is not processing (or its
    account is disabled)."""
    row = conn.execute(
        f"""SELECT count(*) AS n,
                  coalesce(max(extract(epoch FROM lease_until - now())) FILTER (WHERE status = 'processing'), 0)
                      AS left_s
           FROM urls
           WHERE job_id = %s AND chunk = %s AND status IN ('pending', 'processing')
             AND EXISTS ({RUNNABLE_JOB.format(job="%s")})""",
        (job_id, chunk, job_id),
    ).fetchone()
    return max(0.0, float(row["left_s"])) if row["n"] else None


def unfinished_chunks(conn, idle_s: float | None = None) -> dict[str, list[int]]:
    """Chunks with work nobody holds (pending, or leased by someone whose lease ran out), per
    processing job of an enabled account; with `idle_s`, only jobs whose counters have not moved
    for that long (a job left waiting while its account was disabled is one, once enabled)."""
    idle_clause = "AND j.updated_at < now() - make_interval(secs => %(idle)s)" if idle_s is not None else ""
    rows = conn.execute(
        f"""SELECT u.job_id, array_agg(DISTINCT u.chunk ORDER BY u.chunk) AS chunks
            FROM jobs j JOIN accounts a ON a.id = j.account_id AND a.disabled_at IS NULL
                 JOIN urls u ON u.job_id = j.id
                 AND (u.status = 'pending' OR (u.status = 'processing' AND u.lease_until < now()))
            WHERE j.status IN ('processing', 'ingesting') {idle_clause}
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
