"""Queries of reuse across jobs (chalicelib/generation/reuse.py): earlier openers by fingerprint,
one indexed query for a batch of rows (urls_fingerprint_idx, sql/0016_reuse.sql)."""

from __future__ import annotations

# Completed rows the model wrote (a reused row has no fingerprint) of one fingerprint `f.fp`,
# within the window; a row a person edited is not the model's opener any more. Driven by the
# fingerprints: one probe of urls_fingerprint_idx per fingerprint (LATERAL on urls alone, in a
# MATERIALIZED CTE so it runs once), never a walk of the account's jobs' rows, whatever the
# planner's statistics say (a fresh table has none, and a join to jobs inside made it walk every
# completed row of the account: the lookup grew with the account's history). The account is
# checked on what is found (_ACCOUNT): its id is hashed into the fingerprint, so only a SHA-256
# collision could bring another account's row, and the check drops it.
_EARLIER = """FROM urls u
                WHERE u.fingerprint = f.fp AND u.finished_at > now() - make_interval(days => %(days)s)
                  AND u.status = 'completed' AND NOT ('edited' = ANY(u.quality))
                  AND u.opener_source IS DISTINCT FROM 'person'"""
_ACCOUNT = "JOIN jobs j ON j.id = e.job_id AND j.account_id = %(account)s"


def reusable_openers(conn, account_id: str, fingerprints: list[bytes], days: int) -> list[dict]:
    """The newest earlier opener of each (fingerprint, page_hash) among `fingerprints`."""
    if not fingerprints:
        return []
    return conn.execute(
        f"""WITH e AS MATERIALIZED (
                SELECT f.fp AS fingerprint, x.* FROM unnest(%(fps)s::bytea[]) AS f(fp) CROSS JOIN LATERAL (
                    SELECT DISTINCT ON (u.page_hash) u.job_id, u.page_hash, u.opener, u.evidence, u.grounding,
                           u.quality, u.words, u.language, u.context_status, u.variants
                    {_EARLIER}
                    ORDER BY u.page_hash, u.finished_at DESC) x)
            SELECT e.fingerprint, e.page_hash, e.opener, e.evidence, e.grounding, e.quality, e.words, e.language,
                   e.context_status, e.variants
            FROM e {_ACCOUNT}""",
        {"fps": list(set(fingerprints)), "days": days, "account": account_id},
    ).fetchall()


def reusable_fingerprints(conn, account_id: str, fingerprints: list[bytes], days: int,
                          any_page: bool = True) -> set[bytes]:
    """Which of `fingerprints` have an earlier opener: written from any page, or (not
    `any_page`) from none."""
    if not fingerprints:
        return set()
    no_page = "" if any_page else " AND u.page_hash IS NULL"
    rows = conn.execute(
        f"""WITH e AS MATERIALIZED (
                SELECT f.fp AS fingerprint, x.job_id FROM unnest(%(fps)s::bytea[]) AS f(fp) CROSS JOIN LATERAL (
                    SELECT u.job_id {_EARLIER}{no_page} ORDER BY u.finished_at DESC LIMIT 1) x)
            SELECT e.fingerprint FROM e {_ACCOUNT}""",
        {"fps": list(set(fingerprints)), "days": days, "account": account_id}).fetchall()
    return {bytes(r["fingerprint"]) for r in rows}


def stored_rows(conn, job_id: str, after_row: int, limit: int) -> list[dict]:
    """A keyset page of the job's unfinished rows (what a fingerprint needs)."""
    return conn.execute(
        """SELECT row_number, url, fields, no_reuse FROM urls
           WHERE job_id = %s AND row_number > %s AND status = 'pending' AND NOT no_reuse
           ORDER BY row_number LIMIT %s""",
        (job_id, after_row, limit),
    ).fetchall()
