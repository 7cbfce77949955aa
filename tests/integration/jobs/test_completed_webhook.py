"""A big job's `job.completed` webhook waits for its results CSV (issue 24): above
EXPORT_INLINE_ROWS the CSV is built by the ingest function after completion, and the webhook goes
once it exists (a client downloading on it gets a 302, not a 202), exactly once, signed; a build
that fails, or never happens, still gets it sent by the sweep within a bounded time; small jobs,
`job.failed` and `job.canceled` go at once as before."""

from __future__ import annotations

import csv
import io
import json
import threading
import urllib.request
from datetime import timedelta

import pytest

from app import ingest_file as ingest_function
from chalicelib import deps, jobs
from chalicelib.adapters import db
from chalicelib.jobs.downloads import RESULTS_HOLD_S
from chalicelib.outbound import webhooks
from infra.runner import LambdaContext, sqs_event
from tests.support.api import (
    LEADS,
    body,
    download,
    drain_queue,
    post_json,
    purge_queue,
    run_with_callback,
    upload_csv,
)
from tests.support.webhook_receiver import Receiver

INGEST_ARN = "arn:aws:sqs:us-east-1:000000000000:csv-opener-ingest"


@pytest.fixture(autouse=True)
def big(conn, settings, env):
    """Every file is 'big' (LEADS has 3 rows): its results CSV is built in the background."""
    purge_queue(settings.chunk_queue_url)
    purge_queue(settings.ingest_queue_url)
    env(EXPORT_INLINE_ROWS="2", OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32", OPENAI_DUMMY_DELAY_MS="0")
    yield


@pytest.fixture
def secret(client) -> str:
    created = post_json(client, "/api/account/webhook-secret", {})
    assert created.status_code == 201, created.body
    return body(created)["secret"]


@pytest.fixture
def receiver(client):
    """A receiver that, at the moment each webhook arrives, looks at the job's results CSV and
    asks for the download as the client would (in its own thread: its own connection)."""
    def look(headers: dict, data: bytes) -> dict:
        job_id = json.loads(data)["job"]["id"]
        job = db.get_job(deps.conn(), job_id)
        answer = jobs.download(deps.conn(), deps.storage(), deps.chunk_queue(), deps.settings(),
                               client.account.id, job_id)[0]
        return {"result_path": job["result_path"],
                "csv_exists": bool(job["result_path"]) and deps.storage().exists(job["result_path"]),
                "download": answer}

    r = Receiver(on_request=look)
    yield r
    r.close()


def complete_job(client, callback_url: str) -> str:
    """A job with a callback run to completion by the chunk worker."""
    job_id = run_with_callback(client, callback_url)
    assert db.get_job(deps.conn(), job_id)["status"] == "completed"
    return job_id


def export_message(job_id: str) -> dict:
    """The one export message the completion sent (taken off the ingest queue)."""
    messages = drain_queue(deps.settings().ingest_queue_url)
    assert [json.loads(m["Body"]) for m in messages] == [{"job_id": job_id, "export": "all"}]
    return messages[0]


def run_ingest_function(message: dict) -> None:
    """The ingest function (app.ingest_file) handed the message, as SQS would."""
    ingest_function(sqs_event(message, INGEST_ARN, "us-east-1"), LambdaContext("ingest_file", 900, threading.Event()))


def sweep(conn, settings) -> dict:
    return jobs.sweep(conn, deps.conn, deps.storage(), deps.chunk_queue(), settings, deps.outbound_fetcher(),
                      webhook_box=deps.webhook_box)


def delivery(conn, job_id: str) -> dict:
    [row] = conn.execute("SELECT * FROM webhook_deliveries WHERE job_id = %s", (job_id,)).fetchall()
    return row


def event_of(data: bytes) -> dict:
    return json.loads(data)


def test_a_big_jobs_webhook_arrives_once_its_csv_exists_and_the_download_on_it_is_a_302(
        client, conn, settings, secret, receiver):
    job_id = complete_job(client, receiver.url)
    assert receiver.requests == []  # completed, but its results CSV is not built yet
    held = delivery(conn, job_id)
    assert held["awaits_results"] and held["attempts"] == 0 and held["delivered_at"] is None
    assert held["next_attempt_at"] - held["created_at"] == timedelta(seconds=RESULTS_HOLD_S)  # the latest it goes
    shown = body(client.http.get(f"/api/jobs/{job_id}"))["job"]["callback"]
    assert shown["awaits_results"] is True and shown["attempts"] == 0
    assert sweep(conn, settings)["webhooks_delivered"] == 0  # held: not due
    assert download(client, job_id).status_code == 202  # what a client told at completion would have got
    message = export_message(job_id)

    run_ingest_function(message)  # builds the results CSV, then sends the held webhook

    [(headers, data)] = receiver.requests
    assert receiver.seen == [{"result_path": f"results/{client.account.id}/{job_id}.csv", "csv_exists": True,
                              "download": "redirect"}]  # at the moment it arrived
    assert webhooks.verify(secret, headers["x-csv-opener-signature"], data)
    assert headers["x-csv-opener-event"] == "job.completed"
    event = event_of(data)
    assert (event["type"], event["job"]["id"], event["job"]["status"]) == ("job.completed", job_id, "completed")
    assert event["job"]["result_path"] == f"results/{client.account.id}/{job_id}.csv"  # the job as it is now
    response = download(client, job_id)
    assert response.status_code == 302, response.body
    with urllib.request.urlopen(response.headers["Location"]) as fetched:
        rows = list(csv.reader(io.StringIO(fetched.read().decode())))
    assert rows[0][:2] == ["name", "website"] and len(rows) == 4

    row = delivery(conn, job_id)
    assert (row["awaits_results"], row["attempts"], row["last_status"]) == (False, 1, 200)
    assert row["delivered_at"] is not None
    # exactly once: the message delivered again, and the sweep once everything is due, send nothing more
    run_ingest_function(message)
    conn.execute("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE job_id = %s", (job_id,))
    assert sweep(conn, settings)["webhooks_delivered"] == 0
    assert len(receiver.requests) == 1
    shown = body(client.http.get(f"/api/jobs/{job_id}"))["job"]["callback"]
    assert shown["awaits_results"] is False and shown["delivered_at"]


def test_a_released_webhook_that_fails_is_retried_by_the_sweep_not_released_again(
        client, conn, settings, secret, receiver):
    receiver.status = 500
    job_id = complete_job(client, receiver.url)
    message = export_message(job_id)
    run_ingest_function(message)
    row = delivery(conn, job_id)
    assert (row["awaits_results"], row["attempts"], row["last_error"]) == (False, 1, "HTTP 500")
    receiver.status = 204
    run_ingest_function(message)
    assert len(receiver.requests) == 1  # the build's redelivery does not send it again: the sweep retries
    conn.execute("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE job_id = %s", (job_id,))
    assert sweep(conn, settings)["webhooks_delivered"] == 1
    assert len(receiver.requests) == 2 and receiver.requests[0][1] == receiver.requests[1][1]
    assert (delivery(conn, job_id)["attempts"], delivery(conn, job_id)["last_status"]) == (2, 204)


def test_a_failed_build_still_delivers_the_webhook_through_the_sweep(client, conn, settings, secret, receiver,
                                                                      monkeypatch):
    job_id = complete_job(client, receiver.url)
    message = export_message(job_id)
    monkeypatch.setattr(deps.storage(), "put_file", lambda *a, **k: (_ for _ in ()).throw(OSError("S3 down")))
    with pytest.raises(OSError):
        run_ingest_function(message)  # raised: SQS would deliver the message again
    assert receiver.requests == []
    row = delivery(conn, job_id)
    assert row["awaits_results"] and row["next_attempt_at"] <= conn.execute("SELECT now() AS t").fetchone()["t"]

    done = sweep(conn, settings)  # due: sent without waiting for a build that may fail again
    assert done["webhooks_delivered"] == 1 and done["errors"] == {}
    [(headers, data)] = receiver.requests
    assert webhooks.verify(secret, headers["x-csv-opener-signature"], data)
    event = event_of(data)
    assert (event["type"], event["job"]["status"], event["job"]["result_path"]) == ("job.completed", "completed",
                                                                                      None)
    assert receiver.seen[0]["download"] == "building"  # honest: the CSV does not exist; the download builds it
    row = delivery(conn, job_id)
    assert (row["awaits_results"], row["attempts"], row["last_status"]) == (False, 1, 200)

    monkeypatch.undo()
    run_ingest_function(message)  # a later build that succeeds sends nothing more
    assert db.get_job(conn, job_id)["result_path"] and len(receiver.requests) == 1


def test_a_build_that_never_happens_has_the_webhook_sent_by_the_sweep_when_its_hold_ends(
        client, conn, settings, secret, receiver):
    job_id = complete_job(client, receiver.url)
    drain_queue(settings.ingest_queue_url)  # the export message is lost
    assert sweep(conn, settings)["webhooks_delivered"] == 0
    assert receiver.requests == []
    # RESULTS_HOLD_S later (the hold's end, moved here rather than waited for)
    conn.execute("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE job_id = %s AND awaits_results",
                 (job_id,))
    assert sweep(conn, settings)["webhooks_delivered"] == 1
    [(_, data)] = receiver.requests
    assert event_of(data)["type"] == "job.completed"
    assert delivery(conn, job_id)["awaits_results"] is False


def test_the_release_and_the_sweep_at_once_send_it_once(client, conn, settings, secret, receiver, monkeypatch):
    job_id = complete_job(client, receiver.url)
    message = export_message(job_id)
    conn.execute("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE job_id = %s", (job_id,))  # due too
    barrier = threading.Barrier(2)
    real_release = webhooks.release

    def release_at_the_barrier(*args, **kwargs):
        barrier.wait(10)
        return real_release(*args, **kwargs)

    monkeypatch.setattr(webhooks, "release", release_at_the_barrier)
    outcome: dict = {}

    def sweep_at_the_barrier() -> None:  # the sweep's webhook step
        box = deps.webhook_box()
        barrier.wait(10)
        outcome["sweep"] = webhooks.deliver_due(deps.conn, deps.outbound_fetcher(), box)

    thread = threading.Thread(target=sweep_at_the_barrier)
    thread.start()
    run_ingest_function(message)
    thread.join(60)
    assert outcome["sweep"]["errors"] == 0 and outcome["sweep"]["delivered"] in (0, 1)
    assert len(receiver.requests) == 1
    assert delivery(conn, job_id)["attempts"] == 1


def test_a_big_job_completed_by_a_dead_lettered_chunk_holds_its_webhook_too(client, conn, secret, receiver):
    job = body(upload_csv(client, LEADS))["job"]
    post_json(client, "/api/upload/process", {"job_id": job["id"], "callback_url": receiver.url, "page_context": False})
    purge_queue(deps.settings().chunk_queue_url)
    # its last delivery failed: what the chunk handler does then (app.process_chunk)
    jobs.give_up_chunk(deps.conn, deps.storage(), deps.chunk_queue(), job["id"], 0, 5, RuntimeError("poisoned"),
                       completed=deps.job_completed)
    assert db.get_job(conn, job["id"])["status"] == "completed" and receiver.requests == []
    run_ingest_function(export_message(job["id"]))  # built in the background, not in the chunk handler
    [(_, data)] = receiver.requests
    assert receiver.seen[0]["download"] == "redirect" and event_of(data)["job"]["failed_rows"] == 2


def test_a_small_jobs_webhook_is_still_sent_at_completion(client, conn, secret, receiver, env):
    env(EXPORT_INLINE_ROWS="5000")
    job_id = complete_job(client, receiver.url)
    [(_, data)] = receiver.requests  # at completion, its CSV written just before
    assert receiver.seen == [{"result_path": f"results/{client.account.id}/{job_id}.csv", "csv_exists": True,
                              "download": "redirect"}]
    assert event_of(data)["type"] == "job.completed"
    assert drain_queue(deps.settings().ingest_queue_url) == []  # no background build
    row = delivery(conn, job_id)
    assert (row["awaits_results"], row["attempts"], row["last_status"]) == (False, 1, 200)


def test_a_big_jobs_cancel_is_sent_at_once(client, conn, secret, receiver):
    job = body(upload_csv(client, LEADS))["job"]
    post_json(client, "/api/upload/process", {"job_id": job["id"], "callback_url": receiver.url, "page_context": False})
    canceled = client.http.post(f"/api/upload/{job['id']}/cancel")
    assert canceled.status_code == 200, canceled.body
    [(headers, data)] = receiver.requests
    assert headers["x-csv-opener-event"] == "job.canceled" and event_of(data)["job"]["status"] == "canceled"
    assert delivery(conn, job["id"])["awaits_results"] is False
