"""Regenerating rows (issue 21) through the API and the chunk worker: by ids or filter, with
feedback in the row's prompt; edited rows left alone by a filter and by retry; the counters and
quality counters moved with the rows; the job completes again exactly once with its webhook
(`regenerated`); the quota refuses with nothing enqueued; cancel stops a regeneration."""

from __future__ import annotations

import json

import pytest

from chalicelib import deps
from chalicelib.adapters import db
from chalicelib.adapters.queue import parse_chunk_message
from chalicelib.generation.worker import ChunkWorker
from tests.support.api import (
    LEADS,
    body,
    drain_queue,
    error_of,
    patch_json,
    post_json,
    purge_queue,
    upload_and_process,
    upload_csv,
)
from tests.support.webhook_receiver import Receiver

DATA = b"website\n" + b"".join(f"company{i}.example.com\n".encode() for i in range(6))


@pytest.fixture(autouse=True)
def clean(conn, settings, env):
    env(OPENAI_DUMMY_DELAY_MS="0", OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32")
    purge_queue(deps.settings().chunk_queue_url)


class Recording:
    """The deployment's generator, noting each URL's feedback (None: none given)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.feedback: dict[str, str | None] = {}

    def generate(self, url, *args, **kwargs):
        self.feedback[url] = kwargs.get("feedback")
        return self.inner.generate(url, *args, **kwargs)


def worker() -> tuple[ChunkWorker, Recording]:
    recording = Recording(deps.opener_generator())
    return ChunkWorker(get_conn=deps.conn, generator=recording, queue=deps.chunk_queue(), settings=deps.settings(),
                       export=deps.job_completed, notify=deps.notify_job), recording


def run_queue() -> Recording:
    """Work every chunk message in the queue (and those they send) until it is empty."""
    w, recording = worker()
    while messages := drain_queue(deps.settings().chunk_queue_url):
        for m in messages:
            job_id, chunk = parse_chunk_message(m["Body"])
            w.process_chunk(job_id, chunk, lambda: float("inf"))
    return recording


def processed(client, data=DATA, **options) -> str:
    job_id, started = upload_and_process(client, data, page_context=False, **options)
    assert started.status_code == 202, started.body
    run_queue()
    assert db.get_job(deps.conn(), job_id)["status"] == "completed"
    return job_id


def results(client, job_id, query=""):
    return body(client.http.get(f"/api/jobs/{job_id}/results{query}"))["results"]


def regenerate(client, job_id, payload):
    return post_json(client, f"/api/jobs/{job_id}/regenerate", payload)


def test_regenerate_by_filter_with_feedback_completes_again_once_and_fires_the_webhook(client, conn):
    post_json(client, "/api/account/webhook-secret", {})
    with Receiver() as receiver:
        job_id = processed(client, callback_url=receiver.url)
        assert len(receiver.requests) == 1
        rows = results(client, job_id)
        flagged = [rows[1]["id"], rows[4]["id"]]
        conn.execute("UPDATE urls SET quality = '{duplicate}' WHERE id = ANY(%s::uuid[])", (flagged,))
        conn.execute("""UPDATE jobs SET quality = jsonb_set(quality, '{flagged}', '{"duplicate": 2}')
                        WHERE id = %s""", (job_id,))
        person = patch_json(client, f"/api/jobs/{job_id}/results/{rows[4]['id']}",
                            {"opener": "I enjoyed your piece on warehouse robots, truly a fine read."})
        assert person.status_code == 200, person.body
        before = db.get_job(conn, job_id)

        started = regenerate(client, job_id, {"filter": {"quality": "duplicate"}, "feedback": "Shorter, please."})
        assert started.status_code == 202, started.body
        answer = body(started)
        # the edited row (no longer flagged duplicate, and edited) is left alone
        assert answer["regenerating"] == 1 and answer["job"]["status"] == "processing"
        assert answer["job"]["processed_rows"] == before["processed_rows"] - 1
        assert answer["job"]["progress"] < 100 and answer["job"]["regenerated"] == 1
        assert "duplicate" not in answer["job"]["quality"]["flagged"]
        pending = results(client, job_id, "?status=pending")
        assert [(r["id"], r["feedback"]) for r in pending] == [(rows[1]["id"], "Shorter, please.")]
        assert error_of(regenerate(client, job_id, {"filter": {}})) == (409, "not_regenerable")  # processing

        recording = run_queue()
        assert recording.feedback == {rows[1]["url"]: "Shorter, please."}
        job = db.get_job(conn, job_id)
        assert (job["status"], job["processed_rows"], job["failed_rows"]) == ("completed", 6, 0)
        assert db.complete_job_if_done(conn, job_id) is None  # completed exactly once
        again = conn.execute("SELECT feedback, no_reuse, status FROM urls WHERE id = %s", (rows[1]["id"],)).fetchone()
        assert again == {"feedback": None, "no_reuse": False, "status": "completed"}
        assert len(receiver.requests) == 2
        event = json.loads(receiver.requests[1][1])
        assert event["type"] == "job.completed" and event["job"]["regenerated"] == 1
        history = body(client.http.get(f"/api/jobs/{job_id}/results/{rows[1]['id']}"))["result"]["history"]
        # the old opener is kept (the dummy model may write the same one again: then it is the current one)
        assert history[0]["opener"] == rows[1]["opener"] and {h["source"] for h in history} == {"model"}
        # the person's opener survived
        kept = body(client.http.get(f"/api/jobs/{job_id}/results/{rows[4]['id']}"))["result"]
        assert kept["opener"] == "I enjoyed your piece on warehouse robots, truly a fine read." and kept["edited"]


def test_an_edited_row_is_regenerated_when_named_by_id(client, conn):
    job_id = processed(client)
    row = results(client, job_id)[0]
    patch_json(client, f"/api/jobs/{job_id}/results/{row['id']}", {"opener": "A person's own opener, here."})
    assert error_of(regenerate(client, job_id, {"filter": {"status": "completed", "review": "none",
                                                           "quality": "edited"}})) == (409, "nothing_to_regenerate")
    started = regenerate(client, job_id, {"result_ids": [row["id"]]})
    assert body(started)["regenerating"] == 1
    flagged = body(client.http.get(f"/api/jobs/{job_id}"))["job"]["quality"]["flagged"]
    assert "edited" not in flagged
    run_queue()
    shown = body(client.http.get(f"/api/jobs/{job_id}/results/{row['id']}"))["result"]
    assert not shown["edited"] and [h["source"] for h in shown["history"]] == ["model", "person", "model"]


def test_retry_leaves_an_edited_row_alone(client, conn):
    job_id = processed(client)
    rows = results(client, job_id)
    patch_json(client, f"/api/jobs/{job_id}/results/{rows[0]['id']}", {"opener": "Written by a person, kept."})
    conn.execute("UPDATE urls SET status = 'failed', opener = NULL, error = 'HTTP 500' WHERE id = %s",
                 (rows[1]["id"],))
    conn.execute("UPDATE jobs SET processed_rows = processed_rows - 1, failed_rows = 1 WHERE id = %s", (job_id,))
    retried = client.http.post(f"/api/jobs/{job_id}/retry")
    assert body(retried)["retried"] == 1
    run_queue()
    assert results(client, job_id)[0]["opener"] == "Written by a person, kept."
    assert db.get_job(conn, job_id)["status"] == "completed"


def test_a_regeneration_past_the_daily_quota_is_refused_with_nothing_enqueued(client, conn, make_account):
    owner = client.as_account(make_account(urls_per_day=7))
    job_id = processed(owner)  # 6 URLs of 7
    rows = results(owner, job_id)
    refused = regenerate(owner, job_id, {"result_ids": [rows[0]["id"], rows[1]["id"]]})
    assert error_of(refused) == (429, "quota_exceeded") and refused.headers.get("Retry-After")
    assert drain_queue(deps.settings().chunk_queue_url) == []
    job = db.get_job(conn, job_id)
    assert (job["status"], job["processed_rows"], job["regenerated"]) == ("completed", 6, 0)
    assert [r["status"] for r in results(owner, job_id)] == ["completed"] * 6
    assert body(regenerate(owner, job_id, {"result_ids": [rows[0]["id"]]}))["regenerating"] == 1  # the 7th


def test_cancel_stops_a_regeneration(client, conn):
    job_id = processed(client)
    assert body(regenerate(client, job_id, {"filter": {}, "feedback": "More formal."}))["regenerating"] == 6
    canceled = client.http.post(f"/api/upload/{job_id}/cancel")
    assert body(canceled)["job"]["status"] == "canceled"
    recording = run_queue()
    assert recording.feedback == {}
    assert error_of(regenerate(client, job_id, {"filter": {}})) == (409, "not_regenerable")  # retry it first
    assert body(client.http.post(f"/api/jobs/{job_id}/retry"))["retried"] == 6
    assert set(run_queue().feedback.values()) == {"More formal."}
    assert db.get_job(conn, job_id)["status"] == "completed"


def test_regenerate_refusals(client, conn):
    job = body(upload_csv(client, LEADS))["job"]
    assert error_of(regenerate(client, job["id"], {"filter": {}})) == (409, "not_regenerable")  # pending
    job_id = processed(client)
    for payload, expected in [
        ({}, (400, "bad_selection")),
        ({"filter": {}, "feedback": "x" * 501}, (400, "bad_feedback")),
        ({"filter": {}, "feedback": "bad\x00"}, (400, "bad_feedback")),
        ({"filter": {}, "feedback": 5}, (400, "bad_feedback")),
        ({"filter": {}, "instructions": "Mention {{nope}}."}, (400, "unknown_column")),
        ({"filter": {}, "variants": 2}, (400, "unknown_field")),
        ({"filter": {"status": "failed"}}, (409, "nothing_to_regenerate")),
        ({"result_ids": ["00000000-0000-0000-0000-000000000000"]}, (404, "not_found")),
    ]:
        assert error_of(regenerate(client, job_id, payload)) == expected, payload
    assert db.get_job(conn, job_id)["status"] == "completed"
    assert drain_queue(deps.settings().chunk_queue_url) == []
    started = regenerate(client, job_id, {"filter": {"status": "completed"}, "instructions": "Be brief."})
    assert body(started)["job"]["instructions"] == "Be brief." and body(started)["regenerating"] == 6
