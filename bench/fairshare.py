"""Fair share: a small job of one account while a big job of another runs.

The whole pipeline as it runs locally: the event runner (MAX_CONCURRENT_JOBS chunk handlers
reading the SQS queue on LocalStack) and a fake OpenAI server enforcing R requests per minute
with 200 ms latency; our Redis limiter is set to the same R. Jobs are started through the job
service, as POST /api/upload/process does.

1. B alone: account B's 50-URL job with nothing else running.
2. A + B: account A's big job starts; once its handlers run at full rate, B's 50-URL job starts.

Figure: B's completion time with A running ÷ B's time at the fair rate, R ÷ active accounts
(50 URLs at R/2). Goal ≤ 1.5. A's throughput while both run is shown beside it: together they
should still use the whole rate.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, fake_call, fake_openai

RPM = int(os.environ.get("BENCH_RPM", "1200"))
A_URLS = int(os.environ.get("BENCH_A_URLS", "4000"))
B_URLS = 50
LATENCY_MS = "200"
SETTINGS = {"OPENAI_RPM": str(RPM), "OPENAI_TPM": "0", "CHUNK_SIZE": "100", "CHUNK_CONCURRENCY": "16",
            "MAX_CONCURRENT_JOBS": "4", "OPENAI_TIMEOUT_S": "10", "OPENAI_API_KEY": "bench",
            "OPENAI_DUMMY_MODE": "false", "LOG_LEVEL": "WARNING"}


def start_job(account: str, n_urls: int, tag: str) -> str:
    from chalicelib import accounts, deps, jobs

    conn = deps.conn()
    account_id = str(accounts.ensure_account(conn, account, urls_per_day=0, max_jobs=0)["id"])
    data = ("website\n" + "".join(f"{tag}-{i}.example.com\n" for i in range(n_urls))).encode()
    job_id = jobs.create_from_upload(conn, deps.storage(), account_id=account_id, file_name=f"{tag}.csv", data=data,
                                     url_column=None)["job"]["id"]
    jobs.start(conn, deps.storage(), deps.chunk_queue(), deps.settings(), account_id, job_id)
    return job_id


def job(job_id: str) -> dict:
    from chalicelib import deps
    from chalicelib.adapters import db

    return db.get_job(deps.conn(), job_id)


def wait_completed(job_id: str, timeout: float = 600) -> float:
    """Seconds from now until the job is completed (polled every 50 ms)."""
    started = time.monotonic()
    while job(job_id)["status"] != "completed":
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"job {job_id} not completed within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


def done(job_id: str) -> int:
    j = job(job_id)
    return j["processed_rows"] + j["failed_rows"]


def run() -> dict:
    from chalicelib import deps, jobs
    from chalicelib.settings import get_secret_settings, get_settings

    tag = f"fair-{time.time_ns()}"
    with fake_openai("--latency-ms", LATENCY_MS, "--rpm", str(RPM)) as base_url, \
            tempfile.TemporaryDirectory() as tmp:
        os.environ.update(SETTINGS, OPENAI_BASE_URL=base_url,
                          RATELIMIT_PREFIX=f"{os.environ.get('RATELIMIT_PREFIX', 'bench')}:{tag}")
        get_settings.cache_clear()
        get_secret_settings.cache_clear()
        deps.chunk_queue().sqs.purge_queue(QueueUrl=deps.settings().chunk_queue_url)
        log = Path(tmp) / "runner.log"
        with open(log, "wb") as out:
            runner = subprocess.Popen([sys.executable, str(ROOT / "infra" / "runner.py")], cwd=ROOT,
                                      env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT)
        try:
            time.sleep(3)  # the runner's handlers start polling
            b_alone = wait_completed(start_job("bench-b", B_URLS, f"{tag}-b0"))
            a_job = start_job("bench-a", A_URLS, f"{tag}-a")
            while done(a_job) < 10 * RPM / 60:  # A at full speed for a while (≥ 10 s of work done)
                time.sleep(0.1)
            a_before = done(a_job)
            b_started = time.monotonic()
            b_shared = wait_completed(start_job("bench-b", B_URLS, f"{tag}-b1"))
            a_during = done(a_job) - a_before
            stats = fake_call(base_url, "/_fake/stats")
            jobs.cancel(deps.conn(), job(a_job)["account_id"], a_job)
            elapsed = time.monotonic() - b_started
        finally:
            runner.terminate()
            runner.wait(60)
    fair_s = B_URLS / (RPM / 60 / 2)
    return {"b_alone_s": b_alone, "b_shared_s": b_shared, "fair_s": fair_s, "ratio": b_shared / fair_s,
            "alone_ratio": b_alone / (B_URLS / (RPM / 60)),
            "a_rate_share": a_during / (elapsed * RPM / 60), "b_rate_share": B_URLS / (elapsed * RPM / 60),
            "rate_limited": stats["rate_limited"], "requests": stats["requests"]}


def main() -> None:
    f = run()
    print(f"\nFair share: fake provider at R = {RPM} RPM, {LATENCY_MS} ms latency; A {A_URLS} URLs, B {B_URLS} URLs")
    print(f"  B alone:               {f['b_alone_s']:.1f} s  ({f['alone_ratio']:.2f}x its time at R)")
    print(f"  B while A runs:        {f['b_shared_s']:.1f} s  (fair: {B_URLS} URLs at R/2 = {f['fair_s']:.1f} s)")
    print(f"  ratio B / fair:        {f['ratio']:.2f}  (goal <= 1.5)")
    print(f"  rate share while both ran: A {f['a_rate_share']:.2f}, B {f['b_rate_share']:.2f}, "
          f"together {f['a_rate_share'] + f['b_rate_share']:.2f} of R")
    print(f"  provider 429s: {f['rate_limited']} of {f['requests']} calls")


if __name__ == "__main__":
    main()
