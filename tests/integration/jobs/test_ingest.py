"""Background ingest (issue 24): `process` and drops answer after a sample, the ingest function
reads the file in batches, chunks go out as they are stored, a crash resumes without a row twice
or lost, a bad row deep in the file fails the job with its number, cancel stops it; at the end
the estimate and the quota are on the exact count; an ingest the sweep sent again
MAX_INGEST_RESENDS times without progress fails its job with the reason."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid

import pytest

from chalicelib import deps, jobs
from chalicelib.adapters import db
from chalicelib.adapters.queue import parse_background_message, parse_chunk_message
from chalicelib.generation.client import build_client
from chalicelib.generation.openers import OpenerGenerator
from chalicelib.generation.ratelimit import RateLimiter
from chalicelib.generation.worker import ChunkWorker
from chalicelib.jobs import ingest as ingest_module
from chalicelib.jobs.sweep import MAX_INGEST_RESENDS
from infra.runner import Runner
from tests.support.accounts import service_account
from tests.support.api import body, drain_queue, post_json, purge_queue
from tests.support.util import wait_for

CHUNK = 50


@pytest.fixture(autouse=True)
def clean(conn, settings):
    purge_queue(settings.chunk_queue_url)
    purge_queue(settings.ingest_queue_url)
    yield


@pytest.fixture
def small(settings):
    """Background ingest for every file, 50-row chunks, 2 chunk messages out per job."""
    return dataclasses.replace(settings, ingest_inline_bytes=0, chunk_size=CHUNK, chunks_per_job=2)


def lead_file(rows: int, invalid_every: int = 0, bad_row: int | None = None) -> bytes:
    """A wide-ish lead export: `rows` data rows, every `invalid_every`-th URL invalid, a NUL byte
    in row `bad_row` (unreadable there)."""
    lines = ["Company,Website,Person Linkedin Url,Keywords,Description"]
    for n in range(1, rows + 1):
        site = "not a url" if invalid_every and n % invalid_every == 0 else f"https://site{n}.example.com/"
        note = "bro\x00ken" if n == bad_row else f"row {n} makes widgets; ops, reporting"
        lines.append(f'Company {n},{site},https://www.linkedin.com/in/p{n},"b2b, saas",{note}')
    return ("\n".join(lines) + "\n").encode()


def drop(conn, settings, data: bytes) -> tuple[str, dict]:
    """Drop `data` in a service account's folder and start it: (job id, the start's answer)."""
    account_id = service_account(conn)
    key = f"incoming/{account_id}/ingest-{uuid.uuid4().hex[:8]}.csv"
    deps.storage().put_bytes(key, data)
    started = jobs.start_from_drop(conn, deps.storage(), deps.chunk_queue(), settings, key=key, version=key)
    return started["job"]["id"], started


def ingest_messages(settings) -> list[str]:
    messages = (parse_background_message(m["Body"]) for m in drain_queue(settings.ingest_queue_url))
    return [job_id for kind, job_id, _ in messages if kind == "ingest"]


def sent_chunks(settings, job_id: str) -> list[int]:
    return sorted(c for j, c in (parse_chunk_message(m["Body"]) for m in drain_queue(settings.chunk_queue_url))
                  if j == job_id)


def rows_of(conn, job_id: str) -> dict:
    return conn.execute("""SELECT count(*) AS n, count(DISTINCT row_number) AS distinct_rows,
                                  coalesce(max(chunk), -1) AS last_chunk, count(DISTINCT chunk) AS chunks
                           FROM urls WHERE job_id = %s""", (job_id,)).fetchone()


def assert_invariant(conn, job_id: str) -> dict:
    job = db.get_job(conn, job_id)
    unfinished = conn.execute("SELECT count(*) AS n FROM urls WHERE job_id = %s "
                              "AND status IN ('pending', 'processing')", (job_id,)).fetchone()["n"]
    assert job["processed_rows"] + job["failed_rows"] + unfinished == job["total_rows"], job
    assert rows_of(conn, job_id)["n"] == job["total_rows"]
    return job


def worker(settings):
    """A chunk worker with the dummy model answering at once, on a limiter of its own."""
    fast = dataclasses.replace(settings, openai_dummy_mode=True, openai_dummy_delay_ms=(0, 0), openai_rpm=0,
                               openai_tpm=0, chunk_concurrency=8)
    limiter = RateLimiter(deps.redis_client(), 0, 0, prefix=f"{fast.ratelimit_prefix}:ingest:{uuid.uuid4().hex}")
    generator = OpenerGenerator(build_client(fast), limiter, fast.openai_model, max_retries=fast.max_retries)
    return ChunkWorker(get_conn=deps.conn, generator=generator, queue=deps.chunk_queue(), settings=fast,
                       export=lambda job: jobs.export_job(deps.conn, deps.storage(), job), deadline_margin_s=0)


class Crash(Exception):
    pass


def crash_after(monkeypatch, batches: int, per_commit: int = 1) -> None:
    """The ingest dies inside its (batches + 1)-th transaction, after its COPY; `per_commit`
    batches to a transaction after the first (1: each batch its own)."""
    monkeypatch.setattr(ingest_module, "BATCHES_PER_COMMIT", per_commit)
    real, calls = db.store_batch, []

    def store_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) > batches:
            raise Crash("the function died mid-batch")
        return real(*args, **kwargs)

    monkeypatch.setattr(db, "store_batch", store_batch)


# ---------------------------------------------------------------- the quick answer, the background read

def test_a_drop_answers_ingesting_and_the_ingest_function_stores_every_row(conn, small):
    job_id, started = drop(conn, small, lead_file(1000, invalid_every=10))
    job = started["job"]
    assert job["status"] == "ingesting" and job["total_rows"] == 0 and job["ingested_rows"] == 0
    assert job["estimated_rows"] == 900  # the whole file fits the sample: the count is exact
    assert ingest_messages(small) == [job_id]
    assert sent_chunks(small, job_id) == []  # nothing stored yet

    done = jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), small, job_id)
    assert done["status"] == "processing"
    assert (done["total_rows"], done["invalid_rows"], done["ingest_row"], done["chunks"]) == (900, 100, 1000, 18)
    assert len(done["errors"]) == 20 and done["errors"][0] == {
        "row": 10, "value": "not a url", "message": done["errors"][0]["message"]}
    assert rows_of(conn, job_id) == {"n": 900, "distinct_rows": 900, "last_chunk": 17, "chunks": 18}
    assert sent_chunks(small, job_id) == [0, 1]  # the window; the rest wait, in order
    assert db.undispatched(conn, job_id) == list(range(2, 18))
    assert_invariant(conn, job_id)


def test_process_of_a_presigned_file_answers_from_a_sample_and_the_quota_follows_the_exact_count(
        client, conn, env, account):
    env(INGEST_INLINE_BYTES="0", CHUNK_SIZE=str(CHUNK))
    data = lead_file(12000, invalid_every=7)  # ~1.3 MB: more than the 1 MiB sample
    answer = body(post_json(client, "/api/upload/url", {"file_name": "big.csv", "size": len(data)}))
    job_id = answer["job"]["id"]
    deps.storage().put_bytes(f"uploads/{account.id}/{job_id}/big.csv", data)
    response = post_json(client, "/api/upload/process", {"job_id": job_id})
    job = body(response)["job"]
    assert response.status_code == 202 and job["status"] == "ingesting"
    exact = 12000 - 12000 // 7
    assert abs(job["estimated_rows"] - exact) < exact * 0.1, job["estimated_rows"]  # from the sample
    used = conn.execute("SELECT urls FROM account_usage WHERE account_id = %s", (account.id,)).fetchone()["urls"]
    assert used == job["estimated_rows"]
    done = jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), deps.settings(), job_id)
    assert (done["status"], done["total_rows"], done["estimated_rows"]) == ("processing", exact, exact)
    used = conn.execute("SELECT urls FROM account_usage WHERE account_id = %s", (account.id,)).fetchone()["urls"]
    assert used == exact  # corrected with the exact count
    assert body(client.http.get(f"/api/jobs/{job_id}"))["job"]["ingested_rows"] == 12000


# ---------------------------------------------------------------- crash, resume

def test_a_crash_mid_ingest_resumes_where_it_stopped_with_no_row_twice_and_none_lost(conn, small, monkeypatch):
    job_id, _ = drop(conn, small, lead_file(1000, invalid_every=10))
    ingest_messages(small)
    crash_after(monkeypatch, 7)
    with pytest.raises(Crash):
        jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), small, job_id)
    job = assert_invariant(conn, job_id)
    assert (job["status"], job["total_rows"], job["chunks"]) == ("ingesting", 7 * CHUNK, 7)
    assert job["ingest_row"] == 388  # the 350th valid row: 388 - 38 invalid
    assert sent_chunks(small, job_id) == [0, 1]
    monkeypatch.undo()

    done = jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), small, job_id)  # the message again
    assert (done["status"], done["total_rows"], done["invalid_rows"], done["chunks"]) == ("processing", 900, 100, 18)
    assert rows_of(conn, job_id) == {"n": 900, "distinct_rows": 900, "last_chunk": 17, "chunks": 18}
    assert sent_chunks(small, job_id) == [0, 1]  # the resume sends the out chunks again (harmless duplicates)
    assert len(done["errors"]) == 20 and len({e["row"] for e in done["errors"]}) == 20
    assert_invariant(conn, job_id)
    again = jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), small, job_id)  # a late duplicate message
    assert again["total_rows"] == 900 and rows_of(conn, job_id)["n"] == 900


def test_a_crash_in_a_transaction_of_several_batches_loses_them_all_and_the_resume_stores_them(conn, small,
                                                                                                monkeypatch):
    job_id, _ = drop(conn, small, lead_file(1000, invalid_every=10))
    ingest_messages(small)
    crash_after(monkeypatch, 2, per_commit=3)  # transactions of 1, 3, 3, ... batches: the third dies
    with pytest.raises(Crash):
        jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), small, job_id)
    job = assert_invariant(conn, job_id)
    assert (job["status"], job["total_rows"], job["chunks"]) == ("ingesting", 4 * CHUNK, 4)
    assert sent_chunks(small, job_id) == [0, 1]  # the window of 2; chunks 2 and 3 wait
    assert job["ingest_row"] == 4 * CHUNK + 4 * CHUNK // 9  # the 200th valid row (every 10th invalid)
    monkeypatch.undo()
    done = jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), small, job_id)
    assert (done["status"], done["total_rows"], done["invalid_rows"], done["chunks"]) == ("processing", 900, 100, 18)
    assert rows_of(conn, job_id) == {"n": 900, "distinct_rows": 900, "last_chunk": 17, "chunks": 18}
    assert_invariant(conn, job_id)


def test_a_row_that_cannot_be_read_deep_in_the_file_fails_the_job_with_its_number(conn, small):
    job_id, started = drop(conn, small, lead_file(12000, bad_row=11234))  # past the 1 MiB sample
    assert started["job"]["status"] == "ingesting"
    done = jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), small, job_id)
    assert done["status"] == "failed"
    assert "file row 11,234" in done["error"] and "binary data" in done["error"], done["error"]
    assert done["total_rows"] == 11200 and done["ingest_row"] == 11200  # the whole batches before it are kept
    assert_invariant(conn, job_id)


def test_the_copy_keeps_every_character_of_the_urls_and_the_named_columns(conn, small):
    """The ingest's COPY text is built by db.copy_urls: what COPY gives a meaning (backslash, tab,
    line ends, \\N, \\.) and any other character come back from the table as they went in."""
    job_id, _ = drop(conn, small, lead_file(3))
    values = ["back\\slash", "tab\there", "line\nend", "cr\rlf\r\n", "\\N", "\\.", 'quo"te\'s', "é ü 日本 😀",
              '{"json": [1, "x"]}', "", "\u2028\x85\x7f\x01", "trailing\\"]
    rows = [(1000 + n, 99, f"https://acme.com/{value}", {"Company": value, "Keywords": value[::-1]})
            for n, value in enumerate(values)] + [(2000, 99, "https://acme.com/x\\y", None)]
    with conn.transaction():
        assert db.copy_urls(conn, job_id, iter(rows)) == len(rows)
    stored = conn.execute("SELECT row_number, chunk, url, fields FROM urls WHERE job_id = %s AND chunk = 99 "
                          "ORDER BY row_number", (job_id,)).fetchall()
    assert [(r["row_number"], r["chunk"], r["url"], r["fields"]) for r in stored] == rows


# ---------------------------------------------------------------- chunks while ingesting, cancel

def test_chunks_are_processed_while_the_file_is_read_and_the_job_completes_only_after(conn, small, monkeypatch):
    job_id, _ = drop(conn, small, lead_file(200))
    crash_after(monkeypatch, 2)
    with pytest.raises(Crash):
        jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), small, job_id)
    monkeypatch.undo()
    for chunk in sent_chunks(small, job_id):
        worker(small).process_chunk(job_id, chunk, lambda: 900.0)
    job = assert_invariant(conn, job_id)
    assert (job["status"], job["processed_rows"], job["total_rows"]) == ("ingesting", 100, 100)  # not completed

    done = jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), small, job_id)
    assert done["status"] == "processing" and done["total_rows"] == 200
    while chunks := sent_chunks(small, job_id):
        for chunk in chunks:
            worker(small).process_chunk(job_id, chunk, lambda: 900.0)
    job = assert_invariant(conn, job_id)
    assert (job["status"], job["processed_rows"]) == ("completed", 200)


def test_all_chunks_processed_before_the_last_batch_complete_the_job_at_the_end_of_ingest(conn, small, monkeypatch):
    job_id, _ = drop(conn, small, lead_file(100))
    crash_after(monkeypatch, 2)  # both chunks stored; the last (empty) batch never committed
    with pytest.raises(Crash):
        jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), small, job_id)
    monkeypatch.undo()
    for chunk in sent_chunks(small, job_id):
        worker(small).process_chunk(job_id, chunk, lambda: 900.0)
    assert db.get_job(conn, job_id)["status"] == "ingesting"
    completed = []
    done = jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), small, job_id, completed=completed.append)
    assert done["status"] == "completed" and [str(j["id"]) for j in completed] == [job_id]


def test_cancel_during_ingest_stops_it(conn, small, monkeypatch):
    job_id, _ = drop(conn, small, lead_file(500))
    crash_after(monkeypatch, 3)
    with pytest.raises(Crash):
        jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), small, job_id)
    monkeypatch.undo()
    account_id = str(db.get_job(conn, job_id)["account_id"])
    assert jobs.cancel(conn, account_id, job_id)["job"]["status"] == "canceled"
    done = jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), small, job_id)
    assert done["status"] == "canceled" and done["total_rows"] == 150
    assert_invariant(conn, job_id)


def test_the_sweep_sends_again_the_message_of_an_ingest_without_progress(conn, small):
    job_id, _ = drop(conn, small, lead_file(100))
    assert ingest_messages(small) == [job_id]  # lost
    with conn.transaction():  # backdate past the trigger that keeps updated_at current
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("UPDATE jobs SET updated_at = now() - interval '1 hour' WHERE id = %s", (job_id,))
    done = jobs.sweep(conn, deps.conn, deps.storage(), deps.chunk_queue(), small)
    assert done["ingests_resent"] == 1 and ingest_messages(small) == [job_id]


# ---------------------------------------------------------------- the end: exact estimate, stuck ingests

READ_SOURCE = ingest_module.read_source


def uneven_file(rows: int) -> bytes:
    """Short rows first, long ones after the first MiB: the sample overestimates the count."""
    lines = ["Company,Website,Notes"]
    for n in range(1, rows + 1):
        notes = "short" if n <= rows // 2 else "a much longer description of what this company does " * 3
        lines.append(f"Company {n},https://site{n}.example.com/,{notes}")
    return ("\n".join(lines) + "\n").encode()


def test_the_estimate_and_the_quota_are_put_on_the_exact_count_when_the_ingest_ends(conn, small):
    background = dataclasses.replace(small, chunk_size=500)
    data = uneven_file(40_000)
    assert len(data) > 2 * 1024 * 1024  # the sample (1 MiB) sees short rows only
    account_id = service_account(conn)
    before = db.urls_today(conn, account_id)
    job_id, started = drop(conn, background, data)
    assert started["job"]["status"] == "ingesting"
    sampled = db.get_job(conn, job_id)
    assert sampled["estimated_rows"] > 40_000 and sampled["estimate"]["urls"] == sampled["estimated_rows"]
    assert db.urls_today(conn, account_id) - before == sampled["estimated_rows"]  # taken on the estimate

    done = jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), background, job_id)
    assert (done["status"], done["total_rows"]) == ("processing", 40_000)
    estimate = db.get_job(conn, job_id)["estimate"]
    assert estimate["urls"] == 40_000 and estimate["sampled_urls"] == sampled["estimated_rows"]
    assert estimate["prompt_tokens"] == estimate["prompt_tokens_per_url"] * 40_000
    assert estimate["completion_tokens"] == estimate["completion_tokens_per_url"] * 40_000
    scale = 40_000 / sampled["estimated_rows"]
    assert estimate["cost_usd"] == pytest.approx(sampled["estimate"]["cost_usd"] * scale, rel=0.01)
    assert db.urls_today(conn, account_id) - before == 40_000  # the quota: what the estimate did not use given back
    assert jobs.job_json(db.get_job(conn, job_id))["estimate"]["urls"] == 40_000


def broken_source(limit: int):
    """read_source whose stream breaks after `limit` bytes (a crash mid-file)."""
    def read(storage, job):
        sent = 0
        for chunk in READ_SOURCE(storage, job):
            if sent + len(chunk) > limit:
                raise ConnectionResetError("the connection to S3 was reset")
            sent += len(chunk)
            yield chunk
    return read


def test_a_stuck_ingest_is_sent_again_a_few_times_then_its_job_fails_saying_why(conn, small, monkeypatch):
    background = dataclasses.replace(small, chunk_size=500)
    job_id, _ = drop(conn, background, uneven_file(20_000))
    monkeypatch.setattr(ingest_module, "read_source", broken_source(256 * 1024))
    with pytest.raises(ConnectionResetError):
        jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), background, job_id)
    crashed = db.get_job(conn, job_id)
    assert crashed["status"] == "ingesting" and crashed["ingest_row"] > 0
    assert "ConnectionResetError" in crashed["error"] and f"file row {crashed['ingest_row'] + 1:,}" in crashed["error"]

    notified = []
    for attempt in range(1, MAX_INGEST_RESENDS + 1):  # each resend crashes at the same place
        assert jobs.requeue_ingests(conn, deps.chunk_queue(), idle_s=0, notify=notified.append) == 1, attempt
        with pytest.raises(ConnectionResetError):
            jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), background, job_id)
    assert jobs.requeue_ingests(conn, deps.chunk_queue(), idle_s=0, notify=notified.append) == 0
    failed = db.get_job(conn, job_id)
    assert failed["status"] == "failed" and [j["id"] for j in notified] == [failed["id"]]
    assert f"stopped at file row {crashed['ingest_row'] + 1:,}" in failed["error"]
    assert f"sent again {MAX_INGEST_RESENDS} times" in failed["error"]
    assert "ConnectionResetError" in failed["error"] and f"{crashed['total_rows']:,} URLs stored" in failed["error"]
    assert jobs.requeue_ingests(conn, deps.chunk_queue(), idle_s=0) == 0  # never sent again


def test_progress_between_resends_starts_the_count_again(conn, small, monkeypatch):
    background = dataclasses.replace(small, chunk_size=500)
    job_id, _ = drop(conn, background, uneven_file(20_000))
    for limit in (128 * 1024, 256 * 1024, 384 * 1024, 512 * 1024, 640 * 1024):  # each attempt gets further
        monkeypatch.setattr(ingest_module, "read_source", broken_source(limit))
        with pytest.raises(ConnectionResetError):
            jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), background, job_id)
        assert jobs.requeue_ingests(conn, deps.chunk_queue(), idle_s=0) == 1, limit
    monkeypatch.undo()
    done = jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), background, job_id)
    assert (done["status"], done["total_rows"]) == ("processing", 20_000)


# ---------------------------------------------------------------- the real function, through the runner

def test_the_runner_ingests_in_the_background_and_the_job_completes(conn, env, settings):
    env(OPENAI_DUMMY_DELAY_MS="0", OPENAI_RPM="0", OPENAI_TPM="0", INGEST_INLINE_BYTES="0", CHUNK_SIZE=str(CHUNK))
    s = deps.settings()
    runner = Runner(s.chunk_queue_url, None, workers=2, region=s.aws_region, ingest_queue_url=s.ingest_queue_url)
    job_id, started = drop(conn, s, lead_file(300, invalid_every=30))
    assert started["job"]["status"] == "ingesting"
    runner.start()
    try:
        job = wait_for(lambda: (j := db.get_job(conn, job_id))["status"] == "completed" and j, timeout=120,
                       what="the job completed")
    finally:
        runner.stop()
    assert (job["total_rows"], job["processed_rows"], job["invalid_rows"]) == (290, 290, 10)
    assert_invariant(conn, job_id)


@pytest.mark.slow
def test_a_drop_of_200000_rows_is_ingested_whole(conn, settings):
    big = dataclasses.replace(settings, ingest_inline_bytes=0, max_file_size=64 * 1024 * 1024)
    job_id, started = drop(conn, big, lead_file(200_000, invalid_every=1000))
    assert started["job"]["status"] == "ingesting"
    done = jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), big, job_id)
    assert (done["status"], done["total_rows"], done["invalid_rows"]) == ("processing", 199_800, 200)
    assert rows_of(conn, job_id)["distinct_rows"] == 199_800
    assert done["chunks"] == -(-199_800 // big.chunk_size)
    assert_invariant(conn, job_id)
    assert json.loads(json.dumps(jobs.job_json(done)))["ingested_rows"] == 200_000
    assert os.environ.get("INGEST_QUEUE_URL")  # the test stack knows the queue
