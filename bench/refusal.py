"""Refusal: what a start refused over the account's daily quota costs, by file size (issue 19 item 1).

    make bench BENCH=refusal

A refused start must cost about the same for a 250,000-row file as for a 10-row one: quota and
job limit are checked against the valid-URL count validation stored on the job row, before the
file is read from S3 and COPYed. Measured in this process (clients and connection built before
the clock starts, as in a warm Lambda container), `jobs.start(...)` as POST /api/upload/process
runs it, for an account whose quota (5 URLs a day) both files exceed:

- refused 10 rows, refused 250,000 rows: median of RUNS refusals of the same pending job (a
  refusal leaves it pending); the figure is their ratio (goal: about 1);
- baseline, the refusal before this change: it read and COPYed every row, then refused and rolled
  back, so it cost what an accepted start of the same file costs (read, parse, COPY; plus the
  first chunk messages). Measured as accepted starts of the 250,000-row file by an account
  without a quota (a fresh upload each run, outside the clock), over the refused 10-row start.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid

BIG = int(os.environ.get("BENCH_REFUSAL_ROWS", "250000"))
SMALL = 10
RUNS = 21
ACCEPTED_RUNS = 2


def csv_of(rows: int) -> bytes:
    tag = uuid.uuid4().hex[:6]
    return ("website\n" + "".join(f"refusal-{tag}-{i}.example.com\n" for i in range(rows))).encode()


def upload(conn, account_id: str, rows: int) -> str:
    from chalicelib import deps, jobs

    return jobs.create_from_upload(conn, deps.storage(), account_id=account_id, file_name=f"r{rows}.csv",
                                   data=csv_of(rows), url_column=None)["job"]["id"]


def timed_start(conn, account_id: str, job_id: str, expect: str | None) -> float:
    """Seconds `jobs.start` took; `expect`: the refusal's code (None: it must be accepted)."""
    from chalicelib import deps, jobs
    from chalicelib.errors import DomainError

    started = time.perf_counter()
    try:
        jobs.start(conn, deps.storage(), deps.chunk_queue(), deps.settings(), account_id, job_id)
        outcome = None
    except DomainError as exc:
        outcome = exc.code
    elapsed = time.perf_counter() - started
    assert outcome == expect, (outcome, expect)
    return elapsed


def main() -> dict:
    from chalicelib import accounts, deps

    conn = deps.conn()
    deps.storage(), deps.chunk_queue()  # clients built before any clock starts
    limited = str(accounts.create_account(conn, f"bench-refusal-{uuid.uuid4().hex[:6]}")["id"])
    accounts.set_limits(conn, limited, urls_per_day=5, max_jobs=0)
    unlimited = str(accounts.ensure_account(conn, "bench", urls_per_day=0, max_jobs=0)["id"])
    small, big = upload(conn, limited, SMALL), upload(conn, limited, BIG)
    timed_start(conn, limited, small, "quota_exceeded")  # warm-up: first queries, code paths
    refused_small, refused_big = [], []
    for run in range(RUNS):  # interleaved, each first in turn, so both see the same machine
        pair = [(refused_small, small), (refused_big, big)]
        for times, job_id in pair if run % 2 == 0 else pair[::-1]:
            times.append(timed_start(conn, limited, job_id, "quota_exceeded"))
    urls_left = conn.execute("SELECT count(*) AS n FROM urls WHERE job_id = ANY(%s)", ([small, big],)).fetchone()
    assert urls_left["n"] == 0, urls_left
    accepted = []
    for _ in range(ACCEPTED_RUNS):
        job_id = upload(conn, unlimited, BIG)
        accepted.append(timed_start(conn, unlimited, job_id, None))
        conn.execute("DELETE FROM jobs WHERE id = %s", (job_id,))
        deps.chunk_queue().sqs.purge_queue(QueueUrl=deps.settings().chunk_queue_url)
    s, b, a = statistics.median(refused_small), statistics.median(refused_big), statistics.median(accepted)
    print(f"\nRefusal over quota: {BIG:,} rows vs {SMALL} rows (median of {RUNS}; accepted: {ACCEPTED_RUNS})")
    def row(label: str, median: float, runs: list[float]) -> None:
        print(f"  {label:<26}{median * 1000:9.1f} ms   runs: {', '.join(f'{x * 1000:.1f}' for x in runs)}")

    row(f"refused {SMALL} rows", s, refused_small)
    row(f"refused {BIG:,} rows", b, refused_big)
    row(f"accepted {BIG:,} rows", a, accepted)
    print(f"  ratio refused big ÷ refused small        {b / s:9.2f}   (goal: about 1)")
    # sub-millisecond medians move with whatever else the machine runs; the fastest run of each
    # is the work itself
    best = min(refused_big) / min(refused_small)
    print(f"  ratio of the fastest runs                {best:9.2f}")
    print(f"  baseline: accepted big ÷ refused small   {a / s:9.1f}   (what a refusal cost before the change)")
    return {"refused_small": s, "refused_big": b, "accepted_big": a, "ratio": b / s, "best_ratio": best,
            "baseline_ratio": a / s}


if __name__ == "__main__":
    main()
