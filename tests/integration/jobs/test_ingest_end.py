"""The end of a background ingest (issue 24): the estimate and the quota, decided on the sampled
count, are put on the exact count; a crash is noted on the job; an ingest the sweep sent again
MAX_INGEST_RESENDS times without progress fails its job with the reason, instead of forever."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from chalicelib import deps, jobs
from chalicelib.adapters import db
from chalicelib.jobs import ingest as ingest_module
from chalicelib.jobs.sweep import MAX_INGEST_RESENDS
from tests.support.accounts import service_account
from tests.support.api import purge_queue

READ_SOURCE = ingest_module.read_source


@pytest.fixture(autouse=True)
def clean(conn, settings):
    purge_queue(settings.chunk_queue_url)
    purge_queue(settings.ingest_queue_url)
    yield


@pytest.fixture
def background(settings):
    return dataclasses.replace(settings, ingest_inline_bytes=0, chunk_size=500)


def uneven_file(rows: int) -> bytes:
    """Short rows first, long ones after the first MiB: the sample overestimates the count."""
    lines = ["Company,Website,Notes"]
    for n in range(1, rows + 1):
        notes = "short" if n <= rows // 2 else "a much longer description of what this company does " * 3
        lines.append(f"Company {n},https://site{n}.example.com/,{notes}")
    return ("\n".join(lines) + "\n").encode()


def drop(conn, settings, data: bytes) -> tuple[str, str]:
    account_id = service_account(conn)
    key = f"incoming/{account_id}/end-{uuid.uuid4().hex[:8]}.csv"
    deps.storage().put_bytes(key, data)
    started = jobs.start_from_drop(conn, deps.storage(), deps.chunk_queue(), settings, key=key, version=key)
    assert started["job"]["status"] == "ingesting", started
    return started["job"]["id"], account_id


def urls_today(conn, account_id: str) -> int:
    return db.urls_today(conn, account_id)


def test_the_estimate_and_the_quota_are_put_on_the_exact_count_when_the_ingest_ends(conn, background):
    data = uneven_file(40_000)
    assert len(data) > 2 * 1024 * 1024  # the sample (1 MiB) sees short rows only
    before = urls_today(conn, service_account(conn))
    job_id, account_id = drop(conn, background, data)
    sampled = db.get_job(conn, job_id)
    assert sampled["estimated_rows"] > 40_000 and sampled["estimate"]["urls"] == sampled["estimated_rows"]
    assert urls_today(conn, account_id) - before == sampled["estimated_rows"]  # taken on the estimate

    done = jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), background, job_id)
    assert (done["status"], done["total_rows"]) == ("processing", 40_000)
    estimate = db.get_job(conn, job_id)["estimate"]
    assert estimate["urls"] == 40_000 and estimate["sampled_urls"] == sampled["estimated_rows"]
    assert estimate["prompt_tokens"] == estimate["prompt_tokens_per_url"] * 40_000
    assert estimate["completion_tokens"] == estimate["completion_tokens_per_url"] * 40_000
    scale = 40_000 / sampled["estimated_rows"]
    assert estimate["cost_usd"] == pytest.approx(sampled["estimate"]["cost_usd"] * scale, rel=0.01)
    assert urls_today(conn, account_id) - before == 40_000  # the quota: what the estimate did not use given back
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


def test_a_stuck_ingest_is_sent_again_a_few_times_then_its_job_fails_saying_why(conn, background, monkeypatch):
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


def test_progress_between_resends_starts_the_count_again(conn, background, monkeypatch):
    job_id, _ = drop(conn, background, uneven_file(20_000))
    for limit in (128 * 1024, 256 * 1024, 384 * 1024, 512 * 1024, 640 * 1024):  # each attempt gets further
        monkeypatch.setattr(ingest_module, "read_source", broken_source(limit))
        with pytest.raises(ConnectionResetError):
            jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), background, job_id)
        assert jobs.requeue_ingests(conn, deps.chunk_queue(), idle_s=0) == 1, limit
    monkeypatch.undo()
    done = jobs.ingest_file(conn, deps.storage(), deps.chunk_queue(), background, job_id)
    assert (done["status"], done["total_rows"]) == ("processing", 20_000)
