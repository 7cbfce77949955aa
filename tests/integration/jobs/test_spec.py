"""What SPEC.md promises that no other test checked: the job object and its timestamps, the
results page size, `?url_column=` on a raw upload, the download's formula escaping, /health
with PostgreSQL down, the CHUNK_CONCURRENCY and MAX_CONCURRENT_JOBS caps, and the
unparseable_csv / no_url_column answers. Each expected value is written here, from SPEC, not
taken from the code under test."""

from __future__ import annotations

import csv
import io
import json
import re
import threading
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from chalicelib import deps
from infra.runner import LambdaContext, sqs_event
from tests.support.api import (
    body,
    download,
    drain_queue,
    error_of,
    multipart,
    post_json,
    purge_queue,
    s3_keys,
    upload_and_process,
    upload_csv,
)
from tests.support.util import free_port, wait_for

CHUNK_ARN = "arn:aws:sqs:us-east-1:000000000000:csv-opener-chunks"


@pytest.fixture(autouse=True)
def clean(conn, settings):
    purge_queue(settings.chunk_queue_url)


@pytest.fixture
def fast(env):
    env(OPENAI_DUMMY_DELAY_MS="0", OPENAI_RPM="0", OPENAI_TPM="0")


def run_chunk_handlers(settings) -> int:
    """Every queued chunk message through the registered handler, as Lambda would call it."""
    import app

    handled = 0
    while messages := drain_queue(settings.chunk_queue_url):
        for message in messages:
            app.process_chunk(sqs_event(message, CHUNK_ARN, "us-east-1"),
                              LambdaContext("process_chunk", 900, threading.Event()))
            handled += 1
    return handled


def urls_csv(n: int) -> bytes:
    return b"url\n" + b"".join(f"site{i}-{uuid.uuid4().hex[:6]}.example.com\n".encode() for i in range(n))


# ---------------------------------------------------------------- the job object

# SPEC: 'A job object is {"id", "file_name", "status", "total_rows", "processed_rows", "failed_rows",
# "progress", "created_at", "updated_at", ...} (timestamps ISO 8601 UTC)'. The "..." is this service's
# own; tests/integration/test_openapi.py holds those to the published schema.
SPEC_JOB_FIELDS = ("id", "file_name", "status", "total_rows", "processed_rows", "failed_rows", "progress",
                   "created_at", "updated_at")
UTC_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def utc(value: str) -> datetime:
    assert UTC_ISO.fullmatch(value), f"not ISO 8601 UTC with a Z: {value!r}"
    return datetime.fromisoformat(value)


def spec_view(job: dict) -> dict:
    """The job's SPEC fields (all of them must be there) after checking every timestamp it has."""
    assert set(SPEC_JOB_FIELDS) <= set(job), job
    for name, value in job.items():
        if name.endswith("_at") and value is not None:
            utc(value)
    return {name: job[name] for name in SPEC_JOB_FIELDS if not name.endswith("_at")}


def test_the_job_object_has_the_spec_fields_and_iso_8601_utc_timestamps(client, settings, fast):
    began = datetime.now(UTC) - timedelta(seconds=5)
    job = body(upload_csv(client, b"url\nacme.com\nglobex.com\nnot a url\n", filename="j.csv"))["job"]
    job_id = job["id"]
    assert uuid.UUID(job_id)
    assert spec_view(job) == {"id": job_id, "file_name": "j.csv", "status": "pending", "total_rows": 2,
                              "processed_rows": 0, "failed_rows": 0, "progress": 0}
    created = utc(job["created_at"])
    assert began <= created <= utc(job["updated_at"]) <= datetime.now(UTC) + timedelta(seconds=5)
    assert (job["started_at"], job["finished_at"]) == (None, None)

    job = body(post_json(client, "/api/upload/process", {"job_id": job_id}))["job"]
    assert spec_view(job)["status"] == "processing"
    assert created <= utc(job["started_at"]) and job["finished_at"] is None

    assert run_chunk_handlers(settings) == 1
    listed = body(client.http.get("/api/jobs"))["jobs"][0]
    job = body(client.http.get(f"/api/jobs/{job_id}"))["job"]
    # the one job's view adds the calls per minute now (0 once it is done); the list leaves it out
    assert job.pop("calls_per_minute") == 0 and "calls_per_minute" not in listed
    assert listed == job
    assert spec_view(job) == {"id": job_id, "file_name": "j.csv", "status": "completed", "total_rows": 2,
                              "processed_rows": 2, "failed_rows": 0, "progress": 100}
    assert created == utc(job["created_at"]) <= utc(job["started_at"]) <= utc(job["finished_at"])
    assert utc(job["updated_at"]) <= datetime.now(UTC) + timedelta(seconds=5)


def test_timestamps_are_utc_whatever_the_database_session_time_zone(client, env, settings):
    """RDS defaults to UTC, a local PostgreSQL often to the machine's zone; SPEC wants UTC."""
    env(DATABASE_URL=settings.database_url + "?options=-c%20TimeZone%3DAmerica/New_York")
    job = body(upload_csv(client, b"url\nacme.com\n"))["job"]
    utc(job["created_at"])


# ---------------------------------------------------------------- reading and uploading

def test_results_default_to_pages_of_100(client):
    job_id, _ = upload_and_process(client, urls_csv(150))
    first = body(client.http.get(f"/api/jobs/{job_id}/results"))
    assert [r["row"] for r in first["results"]] == list(range(1, 101))
    rest = body(client.http.get(f"/api/jobs/{job_id}/results?cursor={first['next_cursor']}"))
    assert [r["row"] for r in rest["results"]] == list(range(101, 151)) and rest["next_cursor"] is None


def test_raw_upload_takes_url_column_from_the_query(client, conn):
    data = b"homepage,partner\nacme.com,globex.com\ninitech.com,umbrella.com\n"
    job = body(upload_csv(client, data))  # "homepage" is what it finds by itself...
    assert job["url_column"] == "homepage"
    response = upload_csv(client, data, url_column="partner")  # ...unless told
    assert response.status_code == 201 and body(response)["url_column"] == "partner"
    job_id = body(response)["job"]["id"]
    assert post_json(client, "/api/upload/process", {"job_id": job_id}).status_code == 202
    rows = body(client.http.get(f"/api/jobs/{job_id}/results"))["results"]
    assert [r["url"] for r in rows] == ["https://globex.com/", "https://umbrella.com/"]


def test_download_prefixes_every_formula_like_cell_with_a_quote(client, conn):
    # SPEC: "a cell starting with =, +, -, @, tab or CR is prefixed with ' so spreadsheets do not
    # run it as a formula" -- in the original columns and in the ones the service adds.
    data = (b"name,website,notes\r\n"
            b"Plus,acme.com,+1 555 0100\r\n"
            b"At,globex.com,@SUM(A1)\r\n"
            b'Tab,initech.com,"\tTAB"\r\n'
            b'CR,umbrella.com,"\rCR"\r\n'
            b"Minus,hooli.com,-2\r\n"
            b"Equals,stark.com,=1+1\r\n"
            b"Plain,wonka.com,1+1 @ noon\r\n")
    job_id, _ = upload_and_process(client, data)
    openers = ["+1 for Acme", "@Globex hi", "\tInitech", "\rUmbrella", "-Hooli", "=Stark", "Wonka: =)"]
    for row, opener in enumerate(openers, start=1):
        conn.execute("UPDATE urls SET status = 'completed', opener = %s WHERE job_id = %s AND row_number = %s",
                     (opener, job_id, row))
    conn.execute("UPDATE urls SET status = 'failed', opener = NULL, error = '@timeout' WHERE job_id = %s "
                 "AND row_number = 7", (job_id,))
    rows = list(csv.reader(io.StringIO(download(client, job_id).body.decode("utf-8"), newline="")))
    assert rows == [
        ["name", "website", "notes", "opener", "opener_status", "opener_error", "context_status", "opener_evidence",
         "opener_quality", "opener_language"],
        ["Plus", "acme.com", "'+1 555 0100", "'+1 for Acme", "completed", "", "", "", "", ""],
        ["At", "globex.com", "'@SUM(A1)", "'@Globex hi", "completed", "", "", "", "", ""],
        ["Tab", "initech.com", "'\tTAB", "'\tInitech", "completed", "", "", "", "", ""],
        ["CR", "umbrella.com", "'\rCR", "'\rUmbrella", "completed", "", "", "", "", ""],
        ["Minus", "hooli.com", "'-2", "'-Hooli", "completed", "", "", "", "", ""],
        ["Equals", "stark.com", "'=1+1", "'=Stark", "completed", "", "", "", "", ""],
        ["Plain", "wonka.com", "1+1 @ noon", "", "failed", "'@timeout", "", "", "", ""],
    ]


@pytest.mark.parametrize("data, code, message", [
    # a cell over the 1 MiB a field may hold
    (b'url,notes\nacme.com,ok\nbeta.io,"' + b"x" * (1024 * 1024 + 10) + b'"\n', "unparseable_csv",
     "The CSV could not be read at data row 2 (field larger than field limit (1048576)); "
     "a quote that is opened but never closed is the usual cause"),
    # no header SPEC names, no column whose values look like URLs
    (b"name,city\nAcme,Paris\nBeta,Lyon\n", "no_url_column",
     'No column of URLs found; name it "url" or pass url_column'),
])
@pytest.mark.parametrize("how", ["raw", "multipart"])
def test_unreadable_files_and_files_without_urls_are_400_and_store_nothing(client, conn, data, code, message, how):
    before = s3_keys("uploads/")
    if how == "raw":
        response = upload_csv(client, data)
    else:
        headers, payload = multipart({}, ("leads.csv", data, "text/csv"))
        response = client.http.post("/api/upload", headers=headers, body=payload)
    assert error_of(response) == (400, code)
    assert body(response)["error"]["message"] == message
    assert conn.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"] == 0
    assert s3_keys("uploads/") == before


# ---------------------------------------------------------------- health

def test_health_is_503_when_postgres_is_down(client, env):
    env(DATABASE_URL=f"postgresql://test@127.0.0.1:{free_port()}/nothing_listens_here")
    response = client.anonymous.get("/health")
    assert response.status_code == 503
    assert json.loads(response.body) == {"status": "error", "checks": {
        "postgres": {"ok": False}, "redis": {"ok": True}, "s3": {"ok": True}, "sqs": {"ok": True}}}


# ---------------------------------------------------------------- concurrency caps

class Gate:
    """Counts the calls in flight through it (`most`: the most at once). Each call is held until
    more than `cap` are in flight (a breach shows at once) or `hold_s` passes, so whatever can
    run at the same time does."""

    def __init__(self, cap: int, hold_s: float = 0.5) -> None:
        self.cap, self.hold_s = cap, hold_s
        self.cond = threading.Condition()
        self.now = self.most = self.calls = 0

    def run(self, call, *args, **kwargs):
        with self.cond:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.now > self.cap, timeout=self.hold_s)
        try:
            return call(*args, **kwargs)
        finally:
            with self.cond:
                self.now -= 1


def test_a_chunk_handler_has_at_most_chunk_concurrency_generations_in_flight(client, env, settings):
    env(CHUNK_CONCURRENCY="3", OPENAI_DUMMY_DELAY_MS="0", OPENAI_RPM="0", OPENAI_TPM="0")
    job_id, _ = upload_and_process(client, urls_csv(12))
    gate = Gate(cap=3)
    worker = deps.chunk_worker()  # what the handler uses (cached per container)
    real = worker.generator
    worker.generator = SimpleNamespace(generate=lambda *a, **k: gate.run(real.generate, *a, **k))
    assert run_chunk_handlers(settings) == 1
    assert body(client.http.get(f"/api/jobs/{job_id}"))["job"]["processed_rows"] == 12
    assert gate.calls == 12
    assert gate.most == 3  # reached, never passed


def test_the_runner_runs_at_most_max_concurrent_jobs_chunk_handlers_at_once(env, settings, monkeypatch):
    """infra/runner.py as `make dev` runs it (main(), stopped by SIGTERM), with
    MAX_CONCURRENT_JOBS=3 and six chunk messages waiting."""
    import os
    import signal

    import app
    from infra import runner as runner_module

    env(MAX_CONCURRENT_JOBS="3")
    purge_queue(os.environ["DROPS_QUEUE_URL"])
    gate = Gate(cap=3)
    monkeypatch.setattr(app, "process_chunk", lambda event, context: gate.run(lambda: None))
    handlers = {}
    monkeypatch.setattr(runner_module, "signal", SimpleNamespace(
        SIGINT=signal.SIGINT, SIGTERM=signal.SIGTERM, signal=lambda sig, handler: handlers.setdefault(sig, handler)))
    sqs = deps.chunk_queue().sqs
    for chunk in range(6):
        sqs.send_message(QueueUrl=settings.chunk_queue_url,
                         MessageBody=json.dumps({"job_id": str(uuid.uuid4()), "chunk": chunk}))
    main = threading.Thread(target=runner_module.main, daemon=True)
    main.start()
    try:
        wait_for(lambda: gate.calls == 6, timeout=60)
    finally:
        wait_for(lambda: signal.SIGTERM in handlers, timeout=10)
        handlers[signal.SIGTERM](signal.SIGTERM, None)
        main.join(60)
    assert not main.is_alive()
    assert gate.most == 3  # reached, never passed
