"""Review (issue 21): what the URL row's new update trigger costs the workers' write path.

sql/0015_review.sql replaced the row trigger that only set updated_at (touch_updated_at) with
one that also keeps the version, the opener's time and author, and the history (touch_url). The
figure: rows per second through the workers' own statements (claim 50, save 50 with the job's
counters, as `ChunkWorker` does) with the new trigger ÷ with the old one, alternated runs, median
of RUNS each (goal ≥ 0.95). Also: the same save when every row already had an opener (a
regeneration: the trigger writes one history row per row), and the regeneration's reset of rows
back to pending.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid

from bench.common import make_job

URLS = int(os.environ.get("BENCH_URLS", "5000"))
BATCH = 50
RUNS = 3
OLD, NEW = "touch_updated_at", "touch_url"


def use_trigger(conn, function: str) -> None:
    conn.execute("DROP TRIGGER urls_touch ON urls")
    conn.execute(f"CREATE TRIGGER urls_touch BEFORE UPDATE ON urls FOR EACH ROW EXECUTE FUNCTION {function}()")


def write_all(conn, job_id: str) -> float:
    """Claim and save every pending row of the job's chunk 0 in batches; rows per second."""
    from chalicelib.adapters import db

    owner = str(uuid.uuid4())
    started, done = time.monotonic(), 0
    while rows := db.claim_urls(conn, job_id, 0, owner, BATCH, 60):
        db.save_results(conn, job_id, owner, [
            {"id": r["id"], "status": "completed", "opener": f"Opener {done + i} for {r['url']}", "error": None,
             "retry_count": 0, "prompt_tokens": 100, "completion_tokens": 20, "quality": ["generic"], "words": 9,
             "grounding": "generic", "language": "en"} for i, r in enumerate(rows)])
        done += len(rows)
    assert done == URLS, done
    return done / (time.monotonic() - started)


def one_run(conn, trigger: str) -> tuple[float, float, float]:
    """(first save rows/s, reset rows/s, second save rows/s) of a fresh job under `trigger`."""
    from chalicelib.adapters.db import review

    use_trigger(conn, trigger)
    job_id = make_job(URLS, f"review{time.time_ns()}")
    conn.execute("UPDATE jobs SET chunks = 1 WHERE id = %s", (job_id,))
    conn.execute("UPDATE urls SET chunk = 0 WHERE job_id = %s", (job_id,))
    first = write_all(conn, job_id)
    conn.execute("UPDATE jobs SET status = 'completed' WHERE id = %s", (job_id,))
    began = time.monotonic()
    with conn.transaction():
        reset = review.reset_for_regenerate(conn, job_id, ids=None, filters={}, feedback="Shorter.")
    reset_rate = reset["n"] / (time.monotonic() - began)
    second = write_all(conn, job_id)
    return first, reset_rate, second


def main() -> dict:
    from chalicelib import deps

    conn = deps.conn()
    runs: dict[str, list[tuple[float, float, float]]] = {OLD: [], NEW: []}
    try:
        for _ in range(RUNS):
            for trigger in (OLD, NEW):
                runs[trigger].append(one_run(conn, trigger))
    finally:
        use_trigger(conn, NEW)
    median = {t: [statistics.median(r[k] for r in runs[t]) for k in range(3)] for t in runs}
    print(f"\nReview: the URL row trigger on the workers' write path, {URLS} rows in batches of {BATCH} "
          f"(median of {RUNS} alternated runs)")
    for trigger in (OLD, NEW):
        print(f"  {trigger:17} first save {median[trigger][0]:7.0f} rows/s   reset {median[trigger][1]:7.0f} rows/s"
              f"   save after a regeneration {median[trigger][2]:7.0f} rows/s   runs: "
              + "; ".join(f"{a:.0f}/{b:.0f}/{c:.0f}" for a, b, c in runs[trigger]))
    ratio = median[NEW][0] / median[OLD][0]
    again = median[NEW][2] / median[OLD][2]
    print(f"  first save, new ÷ old trigger: {ratio:.2f} (goal ≥ 0.95); save after a regeneration (history "
          f"rows written): {again:.2f}")
    return {"ratio": ratio, "regenerated_ratio": again}


if __name__ == "__main__":
    main()
