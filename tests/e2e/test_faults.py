"""Fault tests: the whole system (see conftest.py) keeps its promises while things break mid-run.

After each fault: every URL is `completed` or `failed` with an error, the job's counters equal
the rows, no job stays `processing`, and LLM generations beyond one per URL stay under 1 % of
the URLs (from the fake server's per-URL counts of successful answers).
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.e2e.helpers import (
    assert_finished_cleanly,
    assert_openers_came_from_the_llm,
    figures,
    url_rows,
    wait_for,
)
from tests.e2e.helpers import make_csv as _make_csv

pytestmark = pytest.mark.slow


def make_csv(n: int):
    return _make_csv(f"flt{uuid.uuid4().hex[:6]}", n)


def report(capsys, line: str) -> None:
    with capsys.disabled():
        print("\n" + line)


def start_job(stack, n: int) -> tuple[str, int, float]:
    csv_file = make_csv(n)
    job_id = stack.api.upload(csv_file.name, csv_file.data)["job"]["id"]
    began = time.monotonic()
    stack.api.process(job_id)
    return job_id, csv_file.valid, began


def finish(stack, capsys, name: str, job_id: str, total: int, began: float, timeout: float = 120,
           allowed_extra: dict[str, int] | None = None, note=""):
    """Wait for the job, check the promises, print and return the figures (`note`: text, or a
    function giving it once the job is done)."""
    stack.api.wait_status(job_id, ("completed",), timeout=timeout)
    seconds = time.monotonic() - began
    note = note() if callable(note) else note
    rows = assert_finished_cleanly(stack.database_url, job_id, total)
    stats = stack.fake.wait_quiet(timeout=30)
    fig = figures(stats, rows, seconds, allowed_extra)
    report(capsys, fig.line(name) + (f"; {note}" if note else ""))
    assert_openers_came_from_the_llm(stats, rows)
    assert fig.duplicates <= 0.01 * fig.urls, fig
    return fig, rows, stats


def test_sigkill_a_runner_mid_chunk(fresh, capsys):
    """The runner process dies with SIGKILL while its workers hold leased rows; a new runner
    (after the killed messages become visible again) finishes every URL."""
    stack = fresh
    job_id, total, began = start_job(stack, 1500)
    stack.api.wait_done_fraction(job_id, 0.3)
    # Kill while rows are held (not in the moment between two chunks, when none is).
    wait_for(lambda: any(r["status"] == "processing" for r in url_rows(stack.database_url, job_id)), 30,
             every=0.01, what="rows held by the runner")
    stack.kill_runner()
    killed_at = time.monotonic()
    # What the kill destroyed: answers the dead process got but never saved. Those URLs are
    # generated again by design; any *other* second generation counts as a duplicate.
    at_kill_stats = stack.fake.wait_quiet()
    at_kill = url_rows(stack.database_url, job_id)
    held = sum(r["status"] == "processing" for r in at_kill)
    lost = {r["url"]: 1 for r in at_kill if r["status"] != "completed" and at_kill_stats["ok_by_url"].get(r["url"])}
    assert held > 0, "the kill did not land mid-chunk"
    assert sum(r["status"] == "completed" for r in at_kill) < total

    stack.start_runner()
    fig, rows, stats = finish(stack, capsys, "SIGKILL runner", job_id, total, began, timeout=150,
                              allowed_extra=lost,
                              note=lambda: f"{held} rows held by the killed runner, {len(lost)} answers lost "
                                           f"with it, job done {time.monotonic() - killed_at:.1f} s after the kill")
    raw = sum(max(0, stats["ok_by_url"].get(r["url"], 0) - 1) for r in rows)
    assert raw <= len(lost) + 0.01 * total
    assert fig.failed == 0


def test_redis_restarts_mid_run(fresh, capsys):
    stack = fresh
    job_id, total, began = start_job(stack, 1000)
    stack.api.wait_done_fraction(job_id, 0.3)
    stack.stop_redis()
    down_at = time.monotonic()
    health = stack.api.call("GET", "/health", timeout=20)
    assert health.status == 503 and health.json()["checks"]["redis"]["ok"] is False, health.body
    time.sleep(max(0.0, 2.0 - (time.monotonic() - down_at)))
    stack.start_redis()
    down_for = time.monotonic() - down_at
    wait_for(lambda: stack.api.call("GET", "/health").status == 200, 20, what="health back to 200")
    fig, _, _ = finish(stack, capsys, "Redis restart", job_id, total, began,
                       note=f"Redis down {down_for:.1f} s")
    assert fig.failed == 0


def test_postgres_connections_killed_mid_run(fresh, capsys):
    stack = fresh
    job_id, total, began = start_job(stack, 1000)
    killed = []
    for fraction in (0.25, 0.6):
        stack.api.wait_done_fraction(job_id, fraction)
        killed.append(stack.terminate_db_connections())
    assert all(n > 0 for n in killed), killed
    fig, _, _ = finish(stack, capsys, "pg_terminate_backend", job_id, total, began,
                       note=f"connections terminated: {killed}")
    assert fig.failed == 0


def test_llm_5xx_and_hangs(fresh, capsys):
    """20 % of calls answer 500/503 and 5 % never answer (client timeout 3 s); with 3 attempts
    some URLs may legitimately fail, each with its error."""
    stack = fresh
    stack.fake.configure(error_rate=0.2, hang_rate=0.05, hang_seconds=30)
    job_id, total, began = start_job(stack, 600)
    fig, rows, _ = finish(stack, capsys, "20 % 5xx + 5 % hangs", job_id, total, began)
    assert fig.errors > 0 and fig.hangs > 0
    assert fig.failed <= 0.06 * total, "far more failures than 3 attempts at 25 % faults explain"
    for row in rows:
        if row["status"] == "failed":
            assert "HTTP 5" in row["error"] or "Timed out" in row["error"], row


def test_429_storm(fresh, capsys):
    """The provider allows a tenth of what we believe our limit is: a storm of 429s. Every URL
    still ends, the shared cooldown keeps the storm down, and no URL is generated twice."""
    stack = fresh
    stack.use_runner(OPENAI_RPM="12000")  # we think 200/s...
    stack.fake.configure(rpm=1200)  # ...the provider allows 20/s
    job_id, total, began = start_job(stack, 300)
    fig, _, _ = finish(stack, capsys, "429 storm", job_id, total, began)
    assert fig.rate_limited > 0
    assert fig.completed >= 0.95 * total, fig


def test_a_generation_outliving_its_lease_is_not_started_twice(fresh, capsys):
    """LEASE_SECONDS shorter than one LLM call: the worker still holds its rows, so it must keep
    their leases alive (renewing well within LEASE_SECONDS) and never claim them a second time."""
    stack = fresh
    stack.use_runner(LEASE_SECONDS="2", OPENAI_TIMEOUT_S="15")
    stack.fake.configure(latency_ms=[300, 4000])
    job_id, total, began = start_job(stack, 16)
    finish(stack, capsys, "generation longer than the lease", job_id, total, began, timeout=60)
