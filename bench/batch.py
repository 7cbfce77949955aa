"""Batch mode on 10,000 URLs: our own time to turn finished batches into rows and a results CSV
(the provider's wait excluded), and what batch mode costs against live calls.

A fake OpenAI server (own process) with the Batch API, every batch taking BATCH_DELAY_S. A job of
URLS URLs started with mode="batch" (chunks of 500, page context off; its SQS messages purged:
the bench drives the handlers, one process, as one Lambda after another). Timed:

  a. submit: the job's chunk messages handled (`ChunkWorker.process_chunk` → `BatchRunner.
     submit_chunk`: claim the rows, build the JSONL, upload it, create the batch);
  b. ingest: after `POST /_fake/age_batches` ended every batch and a `GET /v1/batches` made the
     fake write their output files (the provider's work, outside our time), the sweep's
     `BatchRunner.poll()` reading every output file into the rows (guard, counters, tokens),
     export excluded;
  c. export: the results CSV written to S3 on completion (`jobs.export_job`, through the runner's
     `completed` callback, timed apart from b); also `jobs.render_csv` alone, once more after.

Checked: the job completed with URLS openers, the CSV is in S3. Baseline side by side: the same
number of URLs through live mode on the same fake with no latency and no rate limit (the
pipeline's own overhead, as bench/overhead.py): the same handler, chunk after chunk, in one
process, CHUNK_CONCURRENCY 16, export included. Ratio: batch ingest ÷ live processing.

Cost: the batch job's `cost_usd` (`jobs.job_json`) against the same token counts priced live
(`pricing.cost_usd(..., mode="live")`): expected exactly 0.5; and `jobs.start`'s estimate
(cost_usd vs batch_cost_usd). Median of RUNS alternating runs.

    make bench BENCH=batch
    BENCH_RUNS=1 BENCH_URLS=2000 make bench BENCH=batch
"""

from __future__ import annotations

import os
import statistics
import time

from bench.common import fake_call, fake_openai, start_job, use_fake

URLS = int(os.environ.get("BENCH_URLS", "10000"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
CHUNK_SIZE = 500
CONCURRENCY = 16
BATCH_DELAY_S = 3600


def _settings(base_url: str) -> None:
    use_fake(base_url, OPENAI_RPM="0", OPENAI_TPM="0", CHUNK_SIZE=str(CHUNK_SIZE), CHUNK_CONCURRENCY=str(CONCURRENCY),
             PAGE_CONTEXT_DEFAULT="false", OPENAI_TIMEOUT_S="30",
             RATELIMIT_PREFIX=f"{os.environ.get('RATELIMIT_PREFIX', 'bench')}:batch:{time.time_ns()}")


def _openers(job_id: str) -> int:
    from chalicelib import deps

    return deps.conn().execute(
        "SELECT count(*) AS n FROM urls WHERE job_id = %s AND status = 'completed' AND opener <> ''",
        (job_id,)).fetchone()["n"]


def _check_completed(job_id: str) -> dict:
    from chalicelib import deps
    from chalicelib.adapters import db

    job = db.get_job(deps.conn(), job_id)
    openers = _openers(job_id)
    exported = bool(job["result_path"]) and deps.storage().exists(job["result_path"])
    problems = []
    if job["status"] != "completed" or job["processed_rows"] != URLS or job["failed_rows"]:
        problems.append(f"job {job['status']}, {job['processed_rows']} processed, {job['failed_rows']} failed")
    if openers != URLS:
        problems.append(f"{openers} openers")
    if not exported:
        problems.append("no results CSV in S3")
    if problems:
        raise SystemExit(f"batch bench: job {job_id} not as expected: {'; '.join(problems)}")
    return job


def run_batch(base_url: str, number: int) -> dict:
    fake_call(base_url, "/_fake/reset", {"keep_config": True})
    fake_call(base_url, "/_fake/config", {"batch_delay_s": BATCH_DELAY_S})
    _settings(base_url)
    from chalicelib import deps, jobs
    from chalicelib.adapters import db
    from chalicelib.generation import pricing

    started = start_job(URLS, f"bat{number}", mode="batch", page_context=False)
    job_id, chunks = started["job"]["id"], started["chunks"]
    worker, runner = deps.chunk_worker(), deps.batch_runner()

    began = time.perf_counter()
    per_chunk = []
    for chunk in range(chunks):
        one = time.perf_counter()
        outcome = worker.process_chunk(job_id, chunk, lambda: float("inf"))
        per_chunk.append(time.perf_counter() - one)
        if outcome.reason != "batch_submitted" or not outcome.saved:
            raise SystemExit(f"batch bench: chunk {chunk} not submitted: {outcome}")
    submit_s = time.perf_counter() - began
    fake = fake_call(base_url, "/_fake/stats")

    one = time.perf_counter()
    waiting = runner.poll()  # a sweep while the provider works: every batch still waiting
    waiting_s = time.perf_counter() - one

    fake_call(base_url, "/_fake/age_batches", {"seconds": BATCH_DELAY_S})
    fake_call(base_url, "/v1/batches")  # the fake ends them and writes their output files now

    exports: list[float] = []
    completed = runner.completed

    def timed_completed(job: dict) -> None:
        one = time.perf_counter()
        completed(job)
        exports.append(time.perf_counter() - one)

    runner.completed = timed_completed
    polls = []
    try:
        began = time.perf_counter()
        while db.open_batches(deps.conn(), 1) and len(polls) < 5:
            polls.append(runner.poll())
        poll_s = time.perf_counter() - began
    finally:
        runner.completed = completed
    job = _check_completed(job_id)
    export_s = sum(exports)

    one = time.perf_counter()
    with jobs.render_csv(deps.conn(), deps.storage(), job, 8 * 1024 * 1024) as buffer:
        csv_bytes = len(buffer.read())
    render_s = time.perf_counter() - one

    view = jobs.job_json(job)
    prices = deps.settings().prices
    live_cost = pricing.cost_usd(prices, job["model"], job["prompt_tokens"], job["completion_tokens"], mode="live")
    batch_cost = pricing.cost_usd(prices, job["model"], job["prompt_tokens"], job["completion_tokens"], mode="batch")
    return {
        "submit_s": submit_s, "per_chunk_s": statistics.median(per_chunk), "chunks": chunks,
        "waiting_poll_s": waiting_s, "waiting": waiting,
        "poll_s": poll_s, "polls": polls, "export_s": export_s, "exports": len(exports),
        "ingest_s": poll_s - export_s, "render_s": render_s, "csv_bytes": csv_bytes,
        "fake_batches": fake["batches"], "fake_batch_requests": fake["batch_requests"],
        "fake_live_calls": fake["requests"],
        "job": {k: job[k] for k in ("status", "total_rows", "processed_rows", "failed_rows", "mode")},
        "prompt_tokens": job["prompt_tokens"], "completion_tokens": job["completion_tokens"], "model": job["model"],
        "cost_usd": view["cost_usd"], "live_cost_usd": live_cost, "batch_cost_usd": batch_cost,
        "estimate": started["estimate"],
    }


def run_live(base_url: str, number: int) -> dict:
    fake_call(base_url, "/_fake/reset", {"keep_config": True})
    _settings(base_url)
    from chalicelib import deps, jobs

    started = start_job(URLS, f"liv{number}", mode="live", page_context=False)
    job_id, chunks = started["job"]["id"], started["chunks"]
    worker = deps.chunk_worker()
    began = time.perf_counter()
    for chunk in range(chunks):
        worker.process_chunk(job_id, chunk, lambda: float("inf"))
    live_s = time.perf_counter() - began
    job = _check_completed(job_id)
    return {"live_s": live_s, "job": {k: job[k] for k in ("status", "total_rows", "processed_rows", "failed_rows")},
            "prompt_tokens": job["prompt_tokens"], "completion_tokens": job["completion_tokens"],
            "cost_usd": jobs.job_json(job)["cost_usd"], "fake_live_calls": fake_call(base_url, "/_fake/stats")["ok"]}


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def report(batch: list[dict], live: list[dict]) -> None:
    print(f"\nBatch mode: {URLS} URLs, chunks of {CHUNK_SIZE} ({batch[0]['chunks']} batches), page context off, "
          f"one process; median of {len(batch)} runs")
    print(f"{'':56}{'median s':>9}{'URLs/s':>8}   runs, s")
    lines = (("a. submit: every chunk message (JSONL, upload, create)", [r["submit_s"] for r in batch], True),
             ("   one chunk message", [r["per_chunk_s"] for r in batch], False),
             ("   one sweep while every batch waits", [r["waiting_poll_s"] for r in batch], False),
             ("b. ingest: sweep poll reading every output file", [r["ingest_s"] for r in batch], True),
             ("c. export: results CSV to S3 on completion", [r["export_s"] for r in batch], True),
             ("   jobs.render_csv alone", [r["render_s"] for r in batch], True),
             ("b + c", [r["ingest_s"] + r["export_s"] for r in batch], True),
             ("live baseline: every chunk, zero latency, no limit", [r["live_s"] for r in live], True))
    for label, values, rate in lines:
        value = statistics.median(values)
        per_second = f"{URLS / value:8.0f}" if rate else " " * 8
        print(f"{label:56}{value:9.2f}{per_second}   {_list(values)}")
    ingest = statistics.median(r["ingest_s"] for r in batch)
    both = statistics.median(r["ingest_s"] + r["export_s"] for r in batch)
    live_s = statistics.median(r["live_s"] for r in live)
    print(f"ratio batch ingest ÷ live processing {ingest / live_s:.3f}; (ingest + export) ÷ live {both / live_s:.3f}")

    last, other = batch[-1], live[-1]
    estimate = last["estimate"]
    print(f"\nCost ({last['model']}, the price table), last run: {last['prompt_tokens']:,} prompt + "
          f"{last['completion_tokens']:,} completion tokens")
    print(f"  batch job cost_usd {last['cost_usd']}; the same tokens priced live {last['live_cost_usd']:.6f}; "
          f"ratio {last['cost_usd'] / last['live_cost_usd']:.6f} (unrounded: "
          f"{last['batch_cost_usd'] / last['live_cost_usd']})")
    print(f"  estimate at start: cost_usd {estimate['cost_usd']}, batch_cost_usd {estimate['batch_cost_usd']}, "
          f"ratio {estimate['batch_cost_usd'] / estimate['cost_usd']:.4f}; prompt tokens "
          f"{estimate['prompt_tokens']:,} ({estimate['prompt_tokens_per_url']} per URL), completion "
          f"{estimate['completion_tokens']:,}")
    print(f"  live job of as many URLs: cost_usd {other['cost_usd']} ({other['prompt_tokens']:,} + "
          f"{other['completion_tokens']:,} tokens); batch job ÷ live job {last['cost_usd'] / other['cost_usd']:.4f}")
    print(f"  checks, last run: batch job {last['job']}; the fake saw {last['fake_batches']} batches of "
          f"{last['fake_batch_requests']} requests and {last['fake_live_calls']} live calls; polls {last['polls']}; "
          f"CSV {last['csv_bytes']:,} bytes; live job {other['job']}, {other['fake_live_calls']} calls")


def main() -> dict:
    batch, live = [], []
    with fake_openai("--latency-ms", "0") as base_url:
        for number in range(1, RUNS + 1):
            batch.append(run_batch(base_url, number))
            live.append(run_live(base_url, number))
            print(f"run {number}: batch submit {batch[-1]['submit_s']:.2f} s, ingest {batch[-1]['ingest_s']:.2f} s, "
                  f"export {batch[-1]['export_s']:.2f} s; live {live[-1]['live_s']:.2f} s", flush=True)
    report(batch, live)
    return {"batch": batch, "live": live}


if __name__ == "__main__":
    main()
