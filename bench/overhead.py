"""Overhead: what the pipeline costs on top of the LLM calls themselves.

Zero-latency fake server, no rate limit. Our pipeline (one chunk handler: claim rows, Redis
limiter, openai SDK, batched result writes with counters) runs N URLs at CHUNK_CONCURRENCY
threads; the baseline makes the same N calls with the bare openai SDK from a thread pool of the
same size. Figure: pipeline URLs/s ÷ bare SDK calls/s (goal ≥ 0.8). Median of 3 alternating runs.
"""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import openai

from bench.common import fake_openai, job_counts, make_job, use_fake

URLS = int(os.environ.get("BENCH_URLS", "2000"))
CONCURRENCY = 16
RUNS = 3


def run_pipeline(base_url: str) -> float:
    use_fake(base_url, OPENAI_RPM="0", OPENAI_TPM="0", CHUNK_SIZE=str(URLS), CHUNK_CONCURRENCY=str(CONCURRENCY))
    from chalicelib import deps

    job_id = make_job(URLS, f"overhead-{time.time_ns()}")
    worker = deps.chunk_worker()
    started = time.monotonic()
    worker.process_chunk(job_id, 0, lambda: float("inf"))
    elapsed = time.monotonic() - started
    counts = job_counts(job_id)
    assert counts["processed_rows"] == URLS, counts
    return URLS / elapsed


def run_bare_sdk(base_url: str) -> float:
    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=10)

    def call(i: int) -> None:
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=120, messages=[
            {"role": "user", "content": f"Write a one-sentence opener for https://bare-{i}.example.com/"}])

    started = time.monotonic()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(call, range(URLS)))
    return URLS / (time.monotonic() - started)


def main() -> dict:
    pipeline, bare = [], []
    with fake_openai("--latency-ms", "0") as base_url:
        for _ in range(RUNS):
            bare.append(run_bare_sdk(base_url))
            pipeline.append(run_pipeline(base_url))
    ours, base = statistics.median(pipeline), statistics.median(bare)
    print(f"\nOverhead: {URLS} URLs, {CONCURRENCY} in flight, zero-latency fake, no limit (median of {RUNS})")
    print(f"  pipeline URLs/s      {ours:8.1f}   runs: {', '.join(f'{x:.0f}' for x in pipeline)}")
    print(f"  bare SDK calls/s     {base:8.1f}   runs: {', '.join(f'{x:.0f}' for x in bare)}")
    print(f"  ratio                {ours / base:8.3f}   (goal ≥ 0.8)")
    return {"pipeline": ours, "bare": base, "ratio": ours / base, "urls": URLS}


if __name__ == "__main__":
    main()
