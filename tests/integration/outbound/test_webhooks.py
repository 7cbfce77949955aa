"""Signed webhooks (issue 12): signing and what a receiver checks, delivery through the
SSRF-safe fetcher to a local receiver (reached through OUTBOUND_ALLOW_NETWORKS), the attempts
recorded on the job, retries by the sweep, and the secret's rotation."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chalicelib import deps, jobs
from chalicelib.adapters import db
from chalicelib.outbound import webhooks
from tests.support.api import LEADS, body, error_of, post_json, purge_queue, upload_csv

SECRET = "whsec_test"
BODY = b'{"type":"job.completed","job":{"id":"x"}}'


# ---------------------------------------------------------------- signing (what receivers do)

def test_a_signature_verifies_and_a_tampered_body_or_wrong_secret_does_not():
    header = webhooks.signature(SECRET, int(time.time()), BODY)
    assert header.startswith("t=") and ",v1=" in header
    assert webhooks.verify(SECRET, header, BODY)
    assert not webhooks.verify(SECRET, header, BODY.replace(b"x", b"y"))
    assert not webhooks.verify("whsec_other", header, BODY)
    assert not webhooks.verify(SECRET, header.replace("v1=", "v1=0"), BODY)


def test_an_old_timestamp_is_a_replay_and_is_refused():
    sent = int(time.time()) - 301
    header = webhooks.signature(SECRET, sent, BODY)
    assert not webhooks.verify(SECRET, header, BODY)
    assert webhooks.verify(SECRET, header, BODY, now=sent + 299)
    assert not webhooks.verify(SECRET, "v1=abc", BODY) and not webhooks.verify(SECRET, "t=soon,v1=abc", BODY)


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body():
    import hashlib
    import hmac

    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert webhooks.signature(SECRET, 1700000000, BODY) == f"t=1700000000,v1={expected}"


# ---------------------------------------------------------------- delivery

class Receiver:
    """A local webhook receiver: answers `status`, records every request."""

    def __init__(self) -> None:
        self.status = 200
        self.requests: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, data))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/csv-opener"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(env):
    env(OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32", OPENAI_DUMMY_DELAY_MS="0")
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(autouse=True)
def clean(conn, settings):
    purge_queue(settings.chunk_queue_url)


def run_job(client, callback_url: str) -> str:
    job = body(upload_csv(client, LEADS))["job"]
    started = post_json(client, "/api/upload/process", {"job_id": job["id"], "callback_url": callback_url,
                                                         "page_context": False})
    assert started.status_code == 202, started.body
    purge_queue(deps.settings().chunk_queue_url)
    deps.chunk_worker().process_chunk(job["id"], 0, lambda: float("inf"))
    return job["id"]


def test_a_completed_job_posts_a_signed_event_to_its_callback(client, conn, receiver):
    created = post_json(client, "/api/account/webhook-secret", {})
    assert created.status_code == 201
    secret = body(created)["secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    job_id = run_job(client, receiver.url)
    assert db.get_job(conn, job_id)["status"] == "completed"
    [(headers, data)] = receiver.requests
    assert webhooks.verify(secret, headers["x-csv-opener-signature"], data)
    event = json.loads(data)
    assert event["type"] == "job.completed" and event["job"]["id"] == job_id
    assert event["job"]["status"] == "completed" and event["job"]["processed_rows"] == 2
    shown = body(client.http.get(f"/api/jobs/{job_id}"))["job"]["callback"]
    assert shown["url"] == receiver.url and shown["attempts"] == 1 and shown["last_status"] == 200
    assert shown["delivered_at"]


def test_a_failing_receiver_is_retried_with_backoff_by_the_sweep(client, conn, receiver, settings):
    post_json(client, "/api/account/webhook-secret", {})
    receiver.status = 500
    job_id = run_job(client, receiver.url)
    row = conn.execute("SELECT * FROM webhook_deliveries WHERE job_id = %s", (job_id,)).fetchone()
    assert (row["attempts"], row["last_status"], row["delivered_at"]) == (1, 500, None)
    assert row["next_attempt_at"] > row["created_at"]  # backoff: not before ~30 s
    assert jobs.sweep(conn, deps.conn, deps.storage(), deps.chunk_queue(), settings, deps.outbound_fetcher())[
        "webhooks_delivered"] == 0  # not due yet
    receiver.status = 204
    conn.execute("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE job_id = %s", (job_id,))
    assert jobs.sweep(conn, deps.conn, deps.storage(), deps.chunk_queue(), settings, deps.outbound_fetcher())[
        "webhooks_delivered"] == 1
    row = conn.execute("SELECT * FROM webhook_deliveries WHERE job_id = %s", (job_id,)).fetchone()
    assert (row["attempts"], row["last_status"]) == (2, 204) and row["delivered_at"] is not None
    assert len(receiver.requests) == 2 and receiver.requests[0][1] == receiver.requests[1][1]  # the same event


def test_a_canceled_job_posts_job_canceled(client, conn, receiver):
    secret = body(post_json(client, "/api/account/webhook-secret", {}))["secret"]  # nothing is sent unsigned
    job = body(upload_csv(client, LEADS))["job"]
    post_json(client, "/api/upload/process", {"job_id": job["id"], "callback_url": receiver.url})
    assert client.http.post(f"/api/upload/{job['id']}/cancel").status_code == 200
    [(headers, data)] = receiver.requests
    assert json.loads(data)["type"] == "job.canceled"
    assert webhooks.verify(secret, headers["x-csv-opener-signature"], data)


def test_callbacks_to_private_addresses_are_never_sent(client, conn, env):
    env(OPENAI_DUMMY_DELAY_MS="0")  # no allow-list: 127.0.0.1 and 10.0.0.1 are refused
    post_json(client, "/api/account/webhook-secret", {})
    job = body(upload_csv(client, LEADS))["job"]
    post_json(client, "/api/upload/process", {"job_id": job["id"], "callback_url": "http://10.0.0.1/hook"})
    client.http.post(f"/api/upload/{job['id']}/cancel")
    row = conn.execute("SELECT * FROM webhook_deliveries WHERE job_id = %s", (job["id"],)).fetchone()
    assert row["delivered_at"] is None and row["last_status"] is None and "10.0.0.1" in row["last_error"]


@pytest.mark.parametrize("url", ["ftp://x.example/", "not a url", "https://user:pw@x.example/", 5,
                                 "http://" + "a" * 3000])
def test_bad_callback_urls_are_400(client, conn, url):
    job = body(upload_csv(client, LEADS))["job"]
    response = post_json(client, "/api/upload/process", {"job_id": job["id"], "callback_url": url})
    assert error_of(response) == (400, "bad_callback_url")
    assert db.get_job(conn, job["id"])["status"] == "pending"


def test_rotating_the_secret_changes_it(client):
    first = body(post_json(client, "/api/account/webhook-secret", {}))["secret"]
    second = body(post_json(client, "/api/account/webhook-secret", {}))["secret"]
    assert first != second
