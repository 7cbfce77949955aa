"""Queries of the exports built in the background (job_exports, sql/0020_exports.sql): the claim
of one build per job and view, what the last finished build wrote, and the result path a
completed job's build records only if the job did not change while it was built."""

from __future__ import annotations

from datetime import datetime

EXPORT_COLUMNS = "job_id, view, building_since, built_key, built_version, snapshot_at, build_seconds, error"


def claim_export(conn, job_id: str, view: str, *, taken_over_after_s: float) -> bool:
    """Whether this caller now holds the build of the job's view: no build was running, or the
    one running is older than `taken_over_after_s` (its function died). One statement, so of
    concurrent callers exactly one gets True."""
    return conn.execute(
        """INSERT INTO job_exports (job_id, view, building_since) VALUES (%s, %s, now())
           ON CONFLICT (job_id, view) DO UPDATE SET building_since = now()
           WHERE job_exports.building_since IS NULL
              OR job_exports.building_since < now() - make_interval(secs => %s)
           RETURNING job_id""",
        (job_id, view, taken_over_after_s)).fetchone() is not None


def start_export(conn, job_id: str, view: str) -> None:
    """A build begins (its message delivered, maybe again): the claim is renewed from now."""
    conn.execute(
        """INSERT INTO job_exports (job_id, view, building_since) VALUES (%s, %s, now())
           ON CONFLICT (job_id, view) DO UPDATE SET building_since = now()""", (job_id, view))


def get_export(conn, job_id: str, view: str) -> dict | None:
    return conn.execute(f"SELECT {EXPORT_COLUMNS}, now() AS now FROM job_exports WHERE job_id = %s AND view = %s",
                        (job_id, view)).fetchone()


def finish_export(conn, job_id: str, view: str, *, key: str, version: str, snapshot_at: datetime,
                  seconds: float) -> None:
    """The build wrote `key`, rendering the job as it was at `snapshot_at` (`version`)."""
    conn.execute(
        """UPDATE job_exports SET building_since = NULL, built_key = %s, built_version = %s, snapshot_at = %s,
                  build_seconds = %s, error = NULL
           WHERE job_id = %s AND view = %s""",
        (key, version, snapshot_at, seconds, job_id, view))


def fail_export(conn, job_id: str, view: str, error: str) -> None:
    """The build failed (or its message could not be sent): no build is running; the next
    download starts one."""
    conn.execute("UPDATE job_exports SET building_since = NULL, error = %s WHERE job_id = %s AND view = %s",
                 (error[:2000], job_id, view))


def set_result_path_if_unchanged(conn, job_id: str, key: str, updated_at: datetime) -> bool:
    """A completed job's results CSV is `key`, unless the job changed (an edit, a regenerate)
    since the build read it: then its result_path stays empty and the next download builds
    again."""
    return conn.execute(
        "UPDATE jobs SET result_path = %s WHERE id = %s AND status = 'completed' AND updated_at = %s RETURNING id",
        (key, job_id, updated_at)).fetchone() is not None
