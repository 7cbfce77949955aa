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


# ---------------------------------------------------------------- a retry or a regeneration before the build

def dead_lettered_job(client, callback_url: str) -> str:
    """A big job completed with both its rows failed (its chunk dead-lettered): held webhook, retryable."""
    job = body(upload_csv(client, LEADS))["job"]
    post_json(client, "/api/upload/process", {"job_id": job["id"], "callback_url": callback_url, "page_context": False})
    purge_queue(deps.settings().chunk_queue_url)
    jobs.give_up_chunk(deps.conn, deps.storage(), deps.chunk_queue(), job["id"], 0, 5, RuntimeError("poisoned"),
                       completed=deps.job_completed)
    return job["id"]


def run_chunks_again(job_id: str) -> None:
    """The chunk worker runs the chunk a retry or a regeneration enqueued: the job completes again."""
    purge_queue(deps.settings().chunk_queue_url)
    deps.chunk_worker().process_chunk(job_id, 0, lambda: float("inf"))
    assert db.get_job(deps.conn(), job_id)["status"] == "completed"


def deliveries(conn, job_id: str) -> list[dict]:
    return conn.execute("SELECT * FROM webhook_deliveries WHERE job_id = %s ORDER BY created_at", (job_id,)).fetchall()


def sent_once_each(conn, settings, receiver, job_id: str) -> None:
    """Everything due, the sweep sends nothing more."""
    conn.execute("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE job_id = %s", (job_id,))
    assert sweep(conn, settings)["webhooks_delivered"] == 0
    assert [(r["attempts"], r["last_status"]) for r in deliveries(conn, job_id)] == [(1, 200), (1, 200)]
    assert len(receiver.requests) == 2


@pytest.mark.parametrize("when", ["before the result path", "after the result path", "completed again"])
def test_a_retry_during_the_build_sends_each_completions_event_once_with_its_own_body(
        client, conn, settings, secret, receiver, monkeypatch, when):
    job_id = dead_lettered_job(client, receiver.url)
    first_message = export_message(job_id)
    set_result_path = db.set_result_path_if_unchanged

    def retry_around_the_result_path(*args):  # the user retries while the first completion's CSV is built
        if when == "before the result path":
            assert client.http.post(f"/api/jobs/{job_id}/retry").status_code == 202
        written = set_result_path(*args)
        if when != "before the result path":
            assert client.http.post(f"/api/jobs/{job_id}/retry").status_code == 202
            if when == "completed again":  # and the retried rows are done before the build ends
                run_chunks_again(job_id)
        return written

    monkeypatch.setattr(db, "set_result_path_if_unchanged", retry_around_the_result_path)
    run_ingest_function(first_message)
    monkeypatch.undo()
    # the first completion's event went at once, as it was: not 16 minutes later, not as the job is now
    [(headers, data)] = receiver.requests
    assert webhooks.verify(secret, headers["x-csv-opener-signature"], data)
    first = event_of(data)
    assert (first["type"], first["job"]["status"], first["job"]["failed_rows"]) == ("job.completed", "completed", 2)
    assert (deliveries(conn, job_id)[0]["attempts"], deliveries(conn, job_id)[0]["last_status"]) == (1, 200)

    if when == "completed again":  # its build was asked for while the first one ran: the sweep asks again
        assert drain_queue(settings.ingest_queue_url) == []
        jobs.results_on_completion(deps.conn, deps.storage(), deps.chunk_queue(), deps.settings(),
                                  db.get_job(conn, job_id))
    else:
        assert db.get_job(conn, job_id)["status"] == "processing"
        run_chunks_again(job_id)
    assert len(receiver.requests) == 1  # the second completion's waits for its own results CSV
    run_ingest_function(export_message(job_id))
    second = event_of(receiver.requests[1][1])
    assert (second["type"], second["job"]["failed_rows"], second["job"]["processed_rows"]) == ("job.completed", 0, 2)
    assert second["job"]["result_path"] and second["job"]["finished_at"] != first["job"]["finished_at"]
    assert receiver.seen[1]["download"] == "redirect"
    sent_once_each(conn, settings, receiver, job_id)


def test_a_regeneration_before_the_build_sends_the_first_completions_event_at_once(
        client, conn, settings, secret, receiver):
    job_id = complete_job(client, receiver.url)
    first_message = export_message(job_id)  # its build has not run yet
    started = post_json(client, f"/api/jobs/{job_id}/regenerate", {"filter": {}, "feedback": "Shorter."})
    assert started.status_code == 202, started.body
    [(_, data)] = receiver.requests
    first = event_of(data)
    assert (first["job"]["status"], first["job"]["regenerated"], first["job"]["result_path"]) == ("completed", 0, None)
    run_ingest_function(first_message)  # the first build, of the job processing again: releases nothing
    assert len(receiver.requests) == 1

    run_chunks_again(job_id)
    assert len(receiver.requests) == 1  # the regeneration's completion waits for its own CSV
    run_ingest_function(export_message(job_id))
    second = event_of(receiver.requests[1][1])
    assert (second["type"], second["job"]["regenerated"]) == ("job.completed", 2) and second["job"]["result_path"]
    sent_once_each(conn, settings, receiver, job_id)


def test_a_release_sends_only_its_own_completions_held_event(client, conn, settings, secret, receiver):
    job_id = complete_job(client, receiver.url)
    drain_queue(settings.ingest_queue_url)
    job = db.get_job(conn, job_id)
    # a held event of an earlier completion (one a retry found no longer held would have sent)
    conn.execute("""INSERT INTO webhook_deliveries (job_id, event, url, body, next_attempt_at, awaits_results,
                                                    created_at)
                    VALUES (%s, 'job.completed', %s, 'earlier', now() + interval '16 minutes', true,
                            %s - interval '1 minute')""", (job_id, receiver.url, job["finished_at"]))
    assert webhooks.release(conn, deps.outbound_fetcher(), deps.webhook_box, job, jobs.job_json(job)) == 1
    [(_, data)] = receiver.requests
    assert event_of(data)["job"]["finished_at"] == jobs.job_json(job)["finished_at"]
    earlier, own = deliveries(conn, job_id)
    assert (earlier["body"], earlier["awaits_results"], earlier["attempts"]) == ("earlier", True, 0)
    assert (own["awaits_results"], own["attempts"], own["last_status"]) == (False, 1, 200)


def test_a_release_for_a_job_no_longer_at_that_completion_sends_nothing(client, conn, settings, secret, receiver):
    job_id = complete_job(client, receiver.url)
    drain_queue(settings.ingest_queue_url)
    completed = db.get_job(conn, job_id)
    conn.execute("UPDATE jobs SET status = 'processing', finished_at = NULL WHERE id = %s", (job_id,))
    for job in (completed, db.get_job(conn, job_id)):  # read before the change, or after it
        assert webhooks.release(conn, deps.outbound_fetcher(), deps.webhook_box, job, jobs.job_json(job)) == 0
    assert receiver.requests == [] and delivery(conn, job_id)["awaits_results"] is True


def test_a_completion_queued_after_a_retry_is_not_held(client, conn, settings, secret, receiver):
    job_id = dead_lettered_job(client, receiver.url)
    drain_queue(settings.ingest_queue_url)
    completed = db.get_job(conn, job_id)
    conn.execute("DELETE FROM webhook_deliveries WHERE job_id = %s", (job_id,))
    assert client.http.post(f"/api/jobs/{job_id}/retry").status_code == 202
    deps.notify_job(completed, hold_s=RESULTS_HOLD_S)  # the retry came between the completion and its notify
    [(_, data)] = receiver.requests  # at once: no build of that completion will release it
    assert (event_of(data)["job"]["status"], event_of(data)["job"]["failed_rows"]) == ("completed", 2)
    assert delivery(conn, job_id)["awaits_results"] is False
