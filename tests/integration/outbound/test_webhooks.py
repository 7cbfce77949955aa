"""Signed webhooks (issue 12): signing and what a receiver checks, delivery through the
SSRF-safe fetcher to a local receiver (reached through OUTBOUND_ALLOW_NETWORKS), the attempts
recorded on the job, retries by the sweep on a literal backoff schedule, giving up after a day,
signing afresh on every attempt, the secret's rotation, and the secret sealed at rest (issue 19
item 16: Fernet under WEBHOOK_SECRET_KEYS, key rotation, a wrong key failing loudly)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.fernet import Fernet

from chalicelib import deps, jobs
from chalicelib.adapters import db
from chalicelib.outbound import sealing, webhooks
from tests.support.api import LEADS, body, error_of, post_json, purge_queue, run_with_callback, upload_csv
from tests.support.webhook_receiver import Receiver

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

@pytest.fixture
def receiver(env):
    env(OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32", OPENAI_DUMMY_DELAY_MS="0")
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(autouse=True)
def clean(conn, settings):
    purge_queue(settings.chunk_queue_url)


@pytest.fixture
def keys(env, conn):
    """Set WEBHOOK_SECRET_KEYS for a test: `keys(KEY_A)`, `keys(KEY_B, KEY_A)`. Afterwards every
    stored secret goes back under the local development key the other tests use."""
    made: list[str] = []

    def use(*values: str) -> sealing.SecretBox:
        made.extend(values)
        env(WEBHOOK_SECRET_KEYS=",".join(values))
        return sealing.SecretBox(values)

    yield use
    env(WEBHOOK_SECRET_KEYS="")
    webhooks.reseal_secrets(conn, sealing.SecretBox([sealing.LOCAL_DEV_KEY, *made]), limit=100_000)


KEY_A, KEY_B, KEY_C = (Fernet.generate_key().decode() for _ in range(3))
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def stored_secret(conn, account_id: str) -> str:
    return conn.execute("SELECT webhook_secret FROM accounts WHERE id = %s", (account_id,)).fetchone()[
        "webhook_secret"]


def sweep(conn, settings, **options):
    return jobs.sweep(conn, deps.conn, deps.storage(), deps.chunk_queue(), settings, deps.outbound_fetcher(),
                      webhook_box=deps.webhook_box, **options)


def delivery_row(conn, job_id: str) -> dict:
    return conn.execute("SELECT * FROM webhook_deliveries WHERE job_id = %s", (job_id,)).fetchone()


def as_of(conn, job_id: str, created_at: datetime) -> dict:
    """The job's delivery, moved to `created_at` (the event's time) with nothing attempted yet."""
    conn.execute("UPDATE webhook_deliveries SET created_at = %s, next_attempt_at = %s, attempts = 0, "
                 "delivered_at = NULL, gave_up_at = NULL WHERE job_id = %s", (created_at, created_at, job_id))
    return delivery_row(conn, job_id)


def run_job(client, callback_url: str) -> str:
    return run_with_callback(client, callback_url)


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


def test_a_failed_job_posts_job_failed(client, conn, receiver, env):
    """A job stopped by its budget (a price that makes every opener cost more than it) fails, and
    its callback hears job.failed, signed."""
    # one call at a time, 50 ms each: the first save (which finds the budget spent) comes before the last URL
    env(OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32", OPENAI_DUMMY_DELAY_MS="50", CHUNK_CONCURRENCY="1",
        MODEL_PRICES="gpt-4o-mini=900000/900000")
    secret = body(post_json(client, "/api/account/webhook-secret", {}))["secret"]
    data = b"url\n" + b"".join(f"site{i}-{uuid.uuid4().hex[:4]}.example.com\n".encode() for i in range(40))
    job = body(upload_csv(client, data))["job"]
    started = post_json(client, "/api/upload/process", {"job_id": job["id"], "callback_url": receiver.url,
                                                         "page_context": False, "max_cost_usd": 0.01})
    assert started.status_code == 202, started.body
    purge_queue(deps.settings().chunk_queue_url)
    deps.chunk_worker().process_chunk(job["id"], 0, lambda: float("inf"))
    assert db.get_job(conn, job["id"])["status"] == "failed"
    [(headers, data)] = receiver.requests
    assert webhooks.verify(secret, headers["x-csv-opener-signature"], data)
    event = json.loads(data)
    assert (event["type"], event["job"]["id"], event["job"]["status"]) == ("job.failed", job["id"], "failed")
    assert headers["x-csv-opener-event"] == "job.failed"


def test_a_failing_receiver_is_retried_by_the_sweep_when_due(client, conn, receiver, settings):
    post_json(client, "/api/account/webhook-secret", {})
    receiver.status = 500
    job_id = run_job(client, receiver.url)
    row = delivery_row(conn, job_id)
    assert (row["attempts"], row["last_status"], row["delivered_at"], row["last_error"]) == (1, 500, None, "HTTP 500")
    assert sweep(conn, settings)["webhooks_delivered"] == 0  # not due yet (30 s later)
    assert len(receiver.requests) == 1
    receiver.status = 204
    conn.execute("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE job_id = %s", (job_id,))
    done = sweep(conn, settings)
    assert done["webhooks_delivered"] == 1 and done["errors"] == {}
    row = delivery_row(conn, job_id)
    assert (row["attempts"], row["last_status"]) == (2, 204) and row["delivered_at"] is not None
    assert len(receiver.requests) == 2 and receiver.requests[0][1] == receiver.requests[1][1]  # the same event


def test_the_backoff_schedule_is_30_s_doubling_to_at_most_an_hour(client, conn, receiver):
    assert [webhooks.retry_delay_s(n) for n in range(1, 11)] == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    post_json(client, "/api/account/webhook-secret", {})
    receiver.status = 503
    job_id = run_job(client, receiver.url)
    delivery = as_of(conn, job_id, T0)
    fetcher, box = deps.outbound_fetcher(), deps.webhook_box()
    # each attempt made when the previous one set it due: 0 s, 30 s, 1 min 30 s, 3 min 30 s, ...
    expected = [T0 + timedelta(seconds=s) for s in (30, 90, 210, 450, 930, 1890, 3810, 7410, 11010)]
    at = T0
    for number, next_at in enumerate(expected, start=1):
        assert webhooks.attempt(conn, fetcher, box, delivery, now=lambda at=at: at) is False
        delivery = delivery_row(conn, job_id)
        assert (delivery["attempts"], delivery["next_attempt_at"], delivery["gave_up_at"]) == (number, next_at, None)
        at = next_at
    assert expected[-1] == datetime(2030, 1, 1, 3, 3, 30, tzinfo=UTC)


def test_a_delivery_is_given_up_after_a_day(client, conn, receiver):
    post_json(client, "/api/account/webhook-secret", {})
    receiver.status = 500
    job_id = run_job(client, receiver.url)
    fetcher, box = deps.outbound_fetcher(), deps.webhook_box()
    delivery = {**as_of(conn, job_id, T0), "attempts": 20}
    # 22 h 59 min after the event: the next attempt (an hour on) is still within the day
    webhooks.attempt(conn, fetcher, box, delivery, now=lambda: T0 + timedelta(hours=22, minutes=59))
    row = delivery_row(conn, job_id)
    assert (row["gave_up_at"], row["next_attempt_at"]) == (None, datetime(2030, 1, 1, 23, 59, tzinfo=UTC))
    # 23 h 30 min: the next one would be past the day, so this was the last
    webhooks.attempt(conn, fetcher, box, {**row}, now=lambda: T0 + timedelta(hours=23, minutes=30))
    row = delivery_row(conn, job_id)
    assert row["gave_up_at"] == datetime(2030, 1, 1, 23, 30, tzinfo=UTC) and row["attempts"] == 22
    conn.execute("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE job_id = %s", (job_id,))
    assert webhooks.due_deliveries(conn, 100, 100) == []  # given up: never due again
    assert body(client.http.get(f"/api/jobs/{job_id}"))["job"]["callback"]["gave_up_at"]


def test_every_attempt_is_signed_afresh_with_its_own_timestamp(client, conn, receiver):
    secret = body(post_json(client, "/api/account/webhook-secret", {}))["secret"]
    receiver.status = 500
    job_id = run_job(client, receiver.url)
    delivery = as_of(conn, job_id, T0)
    fetcher, box = deps.outbound_fetcher(), deps.webhook_box()
    webhooks.attempt(conn, fetcher, box, delivery, now=lambda: T0)
    webhooks.attempt(conn, fetcher, box, delivery_row(conn, job_id), now=lambda: T0 + timedelta(seconds=30))
    (first, data1), (second, data2) = [(h["x-csv-opener-signature"], d) for h, d in receiver.requests[-2:]]
    assert data1 == data2
    assert first.startswith(f"t={int(T0.timestamp())},") and second.startswith(f"t={int(T0.timestamp()) + 30},")
    assert first.split("v1=")[1] != second.split("v1=")[1]
    assert webhooks.verify(secret, first, data1, now=T0.timestamp())
    assert webhooks.verify(secret, second, data2, now=T0.timestamp() + 30)
    # a retry an hour later carrying the first timestamp would be refused by the receiver as a replay
    assert not webhooks.verify(secret, first, data1, now=T0.timestamp() + 3600)


def test_callbacks_to_private_addresses_are_never_sent_and_the_refusal_names_no_address(client, conn, env):
    """Issue 19 items 7 and 17: no allow-list, so `localhost` (127.0.0.1 by /etc/hosts) is refused;
    the receiver listening there gets nothing, and the error says why without the address."""
    env(OPENAI_DUMMY_DELAY_MS="0")
    r = Receiver()
    try:
        post_json(client, "/api/account/webhook-secret", {})
        job = body(upload_csv(client, LEADS))["job"]
        callback = r.url.replace("127.0.0.1", "localhost")
        post_json(client, "/api/upload/process", {"job_id": job["id"], "callback_url": callback})
        client.http.post(f"/api/upload/{job['id']}/cancel")
    finally:
        r.close()
    assert r.requests == []
    row = delivery_row(conn, job["id"])
    assert row["delivered_at"] is None and row["last_status"] is None
    assert row["last_error"] == "refused: localhost (loopback address)"
    shown = body(client.http.get(f"/api/jobs/{job['id']}"))["job"]["callback"]
    assert "127.0.0.1" not in json.dumps(shown) and "loopback" in shown["last_error"]


@pytest.mark.parametrize("url", ["ftp://x.example/", "not a url", "https://user:pw@x.example/", 5,
                                 "http://" + "a" * 3000])
def test_bad_callback_urls_are_400(client, conn, url):
    job = body(upload_csv(client, LEADS))["job"]
    response = post_json(client, "/api/upload/process", {"job_id": job["id"], "callback_url": url})
    assert error_of(response) == (400, "bad_callback_url")
    assert db.get_job(conn, job["id"])["status"] == "pending"


def test_a_canceled_job_posts_job_canceled(client, conn, receiver):
    secret = body(post_json(client, "/api/account/webhook-secret", {}))["secret"]
    job = body(upload_csv(client, LEADS))["job"]
    post_json(client, "/api/upload/process", {"job_id": job["id"], "callback_url": receiver.url})
    assert client.http.post(f"/api/upload/{job['id']}/cancel").status_code == 200
    [(headers, data)] = receiver.requests
    assert json.loads(data)["type"] == "job.canceled"
    assert webhooks.verify(secret, headers["x-csv-opener-signature"], data)


def test_after_a_rotation_the_old_secret_no_longer_verifies(client, conn, receiver):
    old = body(post_json(client, "/api/account/webhook-secret", {}))["secret"]
    new = body(post_json(client, "/api/account/webhook-secret", {}))["secret"]
    assert old != new
    run_job(client, receiver.url)
    [(headers, data)] = receiver.requests
    assert webhooks.verify(new, headers["x-csv-opener-signature"], data)
    assert not webhooks.verify(old, headers["x-csv-opener-signature"], data)


# ---------------------------------------------------------------- the secret at rest (item 16)

def test_the_stored_column_never_holds_the_secret(client, conn, receiver, account):
    secret = body(post_json(client, "/api/account/webhook-secret", {}))["secret"]
    stored = stored_secret(conn, account.id)
    assert stored.startswith(f"fernet:{sealing.key_id(sealing.LOCAL_DEV_KEY)}:")
    assert secret not in stored and secret.removeprefix("whsec_") not in stored
    run_job(client, receiver.url)
    [(headers, data)] = receiver.requests
    assert webhooks.verify(secret, headers["x-csv-opener-signature"], data)  # signatures still verify


def test_a_secret_stored_in_the_clear_before_encryption_is_sealed_by_the_sweep(client, conn, settings, account):
    conn.execute("UPDATE accounts SET webhook_secret = 'whsec_from_before' WHERE id = %s", (account.id,))
    done = sweep(conn, settings)
    assert done["errors"] == {} and done["secrets_resealed"] >= 1
    stored = stored_secret(conn, account.id)
    assert "whsec_from_before" not in stored and deps.webhook_box().open(stored) == "whsec_from_before"


def test_a_secret_in_the_clear_is_sealed_when_first_read(client, conn, receiver, account):
    conn.execute("UPDATE accounts SET webhook_secret = 'whsec_legacy_read' WHERE id = %s", (account.id,))
    run_job(client, receiver.url)
    [(headers, data)] = receiver.requests
    assert webhooks.verify("whsec_legacy_read", headers["x-csv-opener-signature"], data)
    assert sealing.is_sealed(stored_secret(conn, account.id))


def test_rotating_the_key_reseals_every_secret_and_then_the_old_key_can_go(client, conn, receiver, settings,
                                                                           account, keys):
    keys(KEY_A, sealing.LOCAL_DEV_KEY)
    sweep(conn, settings)  # everything under A
    secret = body(post_json(client, "/api/account/webhook-secret", {}))["secret"]
    assert stored_secret(conn, account.id).startswith(f"fernet:{sealing.key_id(KEY_A)}:")
    keys(KEY_B, KEY_A)  # the new key first, the old one kept to open what it sealed
    done = sweep(conn, settings)
    assert done["errors"] == {} and done["secrets_resealed"] >= 1
    assert stored_secret(conn, account.id).startswith(f"fernet:{sealing.key_id(KEY_B)}:")
    keys(KEY_B)  # nothing names A any more: it can go
    run_job(client, receiver.url)
    [(headers, data)] = receiver.requests
    assert webhooks.verify(secret, headers["x-csv-opener-signature"], data)


def test_a_wrong_key_fails_loudly_when_the_container_starts_using_webhooks(client, conn, settings, account, keys,
                                                                         receiver):
    keys(KEY_A, sealing.LOCAL_DEV_KEY)
    secret = body(post_json(client, "/api/account/webhook-secret", {}))["secret"]
    keys(KEY_C)  # not the key that sealed it
    with pytest.raises(sealing.SealingKeyError, match="does not hold"):
        deps.webhook_box()
    with pytest.raises(sealing.SealingKeyError, match="does not hold"):
        deps.webhook_box()  # every time, until fixed: a failed build is not kept
    job_id = run_job(client, receiver.url)  # the job completes; nothing is sent unsigned, nothing lost
    assert db.get_job(conn, job_id)["status"] == "completed" and receiver.requests == []
    row = delivery_row(conn, job_id)
    assert (row["attempts"], row["delivered_at"]) == (0, None)
    done = sweep(conn, settings)  # the sweep's other steps still run; the webhooks step says why
    assert "SealingKeyError" in done["errors"]["webhooks"] and "requeued" in done
    assert receiver.requests == []
    keys(KEY_A, sealing.LOCAL_DEV_KEY)  # the key put back: the queued delivery goes out, signed
    assert sweep(conn, settings)["webhooks_delivered"] == 1
    [(headers, data)] = receiver.requests
    assert webhooks.verify(secret, headers["x-csv-opener-signature"], data)
    with pytest.raises(sealing.SealingKeyError, match="not a Fernet key"):
        sealing.SecretBox(["not-a-key"])
    with pytest.raises(sealing.SealingKeyError, match="empty"):
        sealing.SecretBox([])


def test_the_prod_stage_refuses_to_start_without_webhook_keys():
    from chalicelib.settings import Settings

    base = {"STAGE": "prod", "CORS_ALLOW_ORIGIN": "https://app.example.com"}
    with pytest.raises(RuntimeError, match="WEBHOOK_SECRET_KEYS"):
        Settings.from_env(base).check_stage()
    Settings.from_env({**base, "WEBHOOK_SECRET_KEYS": "ssm:/csv-opener/WEBHOOK_SECRET_KEYS"}).check_stage()
