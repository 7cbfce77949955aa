"""Queries of reuse across jobs (chalicelib/generation/reuse.py): earlier openers by fingerprint,
one indexed query for a batch of rows (urls_fingerprint_idx, sql/0016_reuse.sql)."""

from __future__ import annotations

# Completed rows the model wrote (a reused row has no fingerprint) for one of the fingerprints,
# of the account, within the window; a row a person edited is not the model's opener any more.
_EARLIER = """FROM urls u JOIN jobs j ON j.id = u.job_id
            WHERE u.fingerprint = ANY(%(fps)s) AND u.finished_at > now() - make_interval(days => %(days)s)
              AND u.status = 'completed' AND j.account_id = %(account)s AND NOT ('edited' = ANY(u.quality))
              AND u.opener_source IS DISTINCT FROM 'person'"""


def reusable_openers(conn, account_id: str, fingerprints: list[bytes], days: int) -> list[dict]:
    """The newest earlier opener of each (fingerprint, page_hash) among `fingerprints`."""
    if not fingerprints:
        return []
    return conn.execute(
        f"""SELECT DISTINCT ON (u.fingerprint, u.page_hash) u.fingerprint, u.page_hash, u.opener, u.evidence,
                   u.grounding, u.quality, u.words, u.language, u.context_status, u.variants
            {_EARLIER}
            ORDER BY u.fingerprint, u.page_hash, u.finished_at DESC""",
        {"fps": fingerprints, "days": days, "account": account_id},
    ).fetchall()


def reusable_fingerprints(conn, account_id: str, fingerprints: list[bytes], days: int,
                          any_page: bool = True) -> set[bytes]:
    """Which of `fingerprints` have an earlier opener: written from any page, or (not
    `any_page`) from none."""
    if not fingerprints:
        return set()
    no_page = "" if any_page else " AND u.page_hash IS NULL"
    rows = conn.execute(f"SELECT DISTINCT u.fingerprint {_EARLIER}{no_page}",
                        {"fps": fingerprints, "days": days, "account": account_id}).fetchall()
    return {bytes(r["fingerprint"]) for r in rows}


def stored_rows(conn, job_id: str, after_row: int, limit: int) -> list[dict]:
    """A keyset page of the job's unfinished rows (what a fingerprint needs)."""
    return conn.execute(
        """SELECT row_number, url, fields, no_reuse FROM urls
           WHERE job_id = %s AND row_number > %s AND status = 'pending' AND NOT no_reuse
           ORDER BY row_number LIMIT %s""",
        (job_id, after_row, limit),
    ).fetchall()
