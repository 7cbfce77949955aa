"""Helpers the benchmarks share: the fake OpenAI server as a subprocess, jobs to work on,
and chunk handlers in their own processes (as separate Lambda invocations would be)."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def fake_openai(*args: str) -> Iterator[str]:
    """Run tests/support/fake_openai.py in its own process; yields its base URL (…/v1)."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.fake_openai", "--port", "0", *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        base_url = proc.stdout.readline().strip()
        if not base_url.startswith("http"):
            raise RuntimeError(f"fake server did not start: {base_url!r}")
        yield base_url
    finally:
        proc.terminate()
        proc.wait(10)


def fake_call(base_url: str, path: str, payload: dict | None = None) -> dict:
    root = base_url.rsplit("/v1", 1)[0]
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(root + path, data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def use_fake(base_url: str, **settings: str) -> None:
    """Point this process's settings at the fake server (real SDK path, not dummy mode)."""
    os.environ.update(OPENAI_BASE_URL=base_url, OPENAI_API_KEY="bench", OPENAI_DUMMY_MODE="false", **settings)
    from chalicelib import deps

    deps.reset()  # every client and service, with the new settings


def bench_account(conn, name: str = "bench") -> str:
    """The id of an account for benchmarks (no daily quota or job limit)."""
    from chalicelib import accounts

    return str(accounts.ensure_account(conn, name, urls_per_day=0, max_jobs=0)["id"])


def make_job(n_urls: int, tag: str) -> str:
    """A started job of n_urls URLs (its SQS messages are purged: the benchmark drives the handlers)."""
    from chalicelib import deps, jobs

    data = ("website\n" + "".join(f"{tag}-company-{i}.example.com\n" for i in range(n_urls))).encode()
    conn = deps.conn()
    account_id = bench_account(conn)
    created = jobs.create_from_upload(conn, deps.storage(), account_id=account_id, file_name=f"{tag}.csv", data=data,
                                      url_column=None)
    job_id = created["job"]["id"]
    jobs.start(conn, deps.storage(), deps.chunk_queue(), deps.settings(), account_id, job_id)
    deps.chunk_queue().sqs.purge_queue(QueueUrl=deps.settings().chunk_queue_url)
    return job_id


def _handle_chunk(args: tuple[str, int, dict]) -> float:
    job_id, chunk, env = args
    os.environ.update(env)
    from chalicelib import deps

    started = time.monotonic()
    deps.chunk_worker().process_chunk(job_id, chunk, lambda: float("inf"))
    return time.monotonic() - started


def run_chunks_in_processes(job_id: str, chunks: int, env: dict[str, str]) -> float:
    """Each chunk in its own process, all at once; returns the wall time until the last ends."""
    context = multiprocessing.get_context("spawn")
    started = time.monotonic()
    with context.Pool(chunks) as pool:
        pool.map(_handle_chunk, [(job_id, k, env) for k in range(chunks)])
    return time.monotonic() - started


def job_counts(job_id: str) -> dict:
    from chalicelib import deps
    from chalicelib.adapters import db

    job = db.get_job(deps.conn(), job_id)
    return {k: job[k] for k in ("status", "total_rows", "processed_rows", "failed_rows")}


def start_job(n_urls: int, tag: str, **options: object) -> dict:
    """As `make_job`, passing `options` to `jobs.start` (mode="batch", model=…, page_context=…);
    returns what `jobs.start` answers: {"job", "chunks", "estimate"}."""
    from chalicelib import deps, jobs

    data = ("website\n" + "".join(f"{tag}-company-{i}.example.com\n" for i in range(n_urls))).encode()
    conn = deps.conn()
    account_id = bench_account(conn)
    created = jobs.create_from_upload(conn, deps.storage(), account_id=account_id, file_name=f"{tag}.csv", data=data,
                                      url_column=None)
    started = jobs.start(conn, deps.storage(), deps.chunk_queue(), deps.settings(), account_id,
                         created["job"]["id"], **options)
    deps.chunk_queue().sqs.purge_queue(QueueUrl=deps.settings().chunk_queue_url)
    return started


def _handle_chunk_until(args: tuple[str, int, dict, str]) -> float:
    job_id, chunk, env, stop_file = args
    os.environ.update(env)
    from chalicelib import deps

    def remaining_s() -> float:  # as a Lambda's deadline: past it once the file exists
        return 0.0 if os.path.exists(stop_file) else float("inf")

    started = time.monotonic()
    deps.chunk_worker().process_chunk(job_id, chunk, remaining_s)
    return time.monotonic() - started


def run_chunks_until(job_id: str, chunks: int, env: dict[str, str], stop_file: str) -> float:
    """As `run_chunks_in_processes`, but every handler stops as at its Lambda deadline once
    `stop_file` exists (no new claims; calls in flight finish, waiting ones go back to pending).
    Returns the wall time until the last handler ends."""
    context = multiprocessing.get_context("spawn")
    started = time.monotonic()
    with context.Pool(chunks) as pool:
        pool.map(_handle_chunk_until, [(job_id, k, env, stop_file) for k in range(chunks)])
    return time.monotonic() - started
