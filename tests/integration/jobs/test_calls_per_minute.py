"""Calls per minute now: counted in Redis where the shared limiter admits a call (per model, and
per job when the call names its job), shown per model in `GET /api/metrics` (operator keys, with
the rate in force and how it was set) and per job in `GET /api/jobs/{id}` while it processes; and
the whole path: the chunk handler's calls count for their job."""

from __future__ import annotations

import threading
import uuid

import pytest

from chalicelib import deps
from infra.runner import LambdaContext, sqs_event
from tests.support.api import body, drain_queue, purge_queue, upload_and_process

CHUNK_ARN = "arn:aws:sqs:us-east-1:000000000000:csv-opener-chunks"


@pytest.fixture(autouse=True)
def clean(conn, settings, env):
    env(OPENAI_RPM="0", OPENAI_TPM="0", OPENAI_DUMMY_DELAY_MS="0",
        RATELIMIT_PREFIX=f"{settings.ratelimit_prefix}:cpm:{uuid.uuid4().hex}")  # counters of its own
    purge_queue(settings.chunk_queue_url)
    yield


def job_of(client, job_id: str) -> dict:
    return body(client.http.get(f"/api/jobs/{job_id}"))["job"]


def test_a_processing_jobs_calls_per_minute_counts_only_its_own_calls(client, make_account):
    job_id, _ = upload_and_process(client)
    job = job_of(client, job_id)
    assert job["status"] == "processing" and job["calls_per_minute"] == 0
    limiter = deps.rate_limiter()
    for _ in range(3):
        limiter.acquire(1, model=job["model"], job=job_id)
    limiter.acquire(1, model=job["model"], job="another-job")  # another job's call
    limiter.acquire(1, model=job["model"])  # a call for no job (a preview, a check)
    assert job_of(client, job_id)["calls_per_minute"] == 3
    assert limiter.calls_per_minute(models=[job["model"]])["models"] == {job["model"]: 5}


def test_operator_metrics_show_per_model_the_rate_in_force_how_it_was_set_and_calls_per_minute(
        client, make_account):
    operator = client.as_account(make_account(operator=True, models=["gpt-4o-mini", "gpt-4o"]))
    limiter = deps.rate_limiter()
    limiter.observe("gpt-4o", {"x-ratelimit-limit-requests": "5000", "x-ratelimit-limit-tokens": "800000"})
    # a gateway that states no limit: its remaining/reset gauge the rate (15 in all, 11.5 used, 0.8 s to refill)
    limiter.observe("gpt-4o-mini", {"x-ratelimit-remaining-requests": "14", "x-ratelimit-reset-requests": "67ms"})
    limiter._gauged.clear()
    limiter.observe("gpt-4o-mini", {"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "800ms"})
    for _ in range(2):
        limiter.acquire(1, model="gpt-4o")
    limits = body(operator.http.get("/api/metrics"))["provider_limits"]
    assert limits["gpt-4o"]["how"]["rpm"] == "stated" and limits["gpt-4o"]["in_force"]["rpm"] == 5000
    assert limits["gpt-4o"]["calls_per_minute"] == 2
    mini = limits["gpt-4o-mini"]
    assert mini["how"]["rpm"] == "remaining-reset" and mini["calls_per_minute"] == 0
    assert mini["found"]["estimate"] == pytest.approx(862.5)
    assert mini["in_force"]["rpm"] == int(862.5 * 0.97)


def test_the_chunk_handlers_calls_count_for_their_job(client, settings):
    import app

    job_id, _ = upload_and_process(client)
    while messages := drain_queue(settings.chunk_queue_url):
        for message in messages:
            app.process_chunk(sqs_event(message, CHUNK_ARN, "us-east-1"),
                              LambdaContext("process_chunk", 900, threading.Event()))
    job = job_of(client, job_id)
    assert job["status"] == "completed" and job["calls_per_minute"] == 0  # shown while it processes only
    counted = deps.rate_limiter().calls_per_minute(jobs=[job_id])["jobs"][job_id]
    assert counted == job["processed_rows"] + job["failed_rows"] == 2  # one call per URL, each counted once
