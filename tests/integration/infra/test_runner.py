"""The local event runner drives the real handlers from LocalStack's queues, as Lambda would."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from chalicelib import deps
from chalicelib.adapters import db
from infra import runner as runner_module
from infra.runner import Runner, function_timeout, s3_events, sqs_event
from tests.support.accounts import service_account
from tests.support.api import drain_queue, purge_queue
from tests.support.util import wait_for


@pytest.fixture
def fast(env):
    env(OPENAI_DUMMY_DELAY_MS="0", OPENAI_RPM="0", OPENAI_TPM="0")


@pytest.fixture
def running(fast, conn, settings):
    purge_queue(settings.chunk_queue_url)
    purge_queue(os.environ["DROPS_QUEUE_URL"])
    s = deps.settings()
    started = Runner(s.chunk_queue_url, os.environ["DROPS_QUEUE_URL"], workers=3, region=s.aws_region).start()
    yield started
    started.stop()


def test_events_have_the_shape_lambda_delivers():
    message = {"MessageId": "m1", "ReceiptHandle": "r1", "Body": '{"job_id": "j", "chunk": 0}',
               "Attributes": {"ApproximateReceiveCount": "2"}}
    record = sqs_event(message, "arn:aws:sqs:us-east-1:000000000000:q", "us-east-1")["Records"][0]
    assert (record["messageId"], record["receiptHandle"], record["eventSource"]) == ("m1", "r1", "aws:sqs")
    assert record["attributes"]["ApproximateReceiveCount"] == "2" and record["eventSourceARN"].endswith(":q")
    assert s3_events(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})) == []
    notification = {"Records": [{"s3": {"bucket": {"name": "b"}, "object": {"key": "incoming/a.csv"}}}]}
    assert s3_events(json.dumps(notification)) == [notification]
    assert function_timeout("process_chunk") == 900


@pytest.fixture
def drop_calls(monkeypatch):
    """The runner calls `app.start_dropped_csv` (the handler Chalice registered) for each S3 event:
    record the events it got, per object key, and let the real handler run."""
    import app

    calls: dict[str, list[dict]] = {}
    real = app.start_dropped_csv

    def recording(event, context):
        calls.setdefault(event["Records"][0]["s3"]["object"]["key"], []).append(event)
        return real(event, context)

    monkeypatch.setattr(app, "start_dropped_csv", recording)
    return calls


def drops_left() -> int:
    """Messages still on the drops queue, visible or being handled (0 once each was acknowledged)."""
    depth = deps.chunk_queue().depth(os.environ["DROPS_QUEUE_URL"])
    return depth["visible"] + depth["in_flight"]


def test_a_csv_dropped_under_incoming_becomes_a_completed_job_with_both_result_files(running, conn, drop_calls):
    name = f"drop-{uuid.uuid4().hex[:6]}"
    account_id = service_account(conn)
    data = b"company,website\nAcme,acme.com\nGlobex,globex.example.org\nBad,ftp://x.org\n"
    storage = deps.storage()
    storage.put_bytes(f"incoming/{account_id}/{name}.csv", data)
    job = wait_for(lambda: conn.execute("SELECT * FROM jobs WHERE file_name = %s AND status = 'completed'",
                                        (f"{name}.csv",)).fetchone())
    assert (job["source"], job["total_rows"], job["processed_rows"], job["invalid_rows"]) == ("s3", 2, 2, 1)
    assert str(job["account_id"]) == account_id
    keys = {f"results/{account_id}/{job['id']}.csv", f"results/{account_id}/{name}-openers.csv"}
    wait_for(lambda: keys <= {o["Key"] for o in storage.s3.list_objects_v2(
        Bucket=storage.bucket, Prefix=f"results/{account_id}/").get("Contents", [])})
    text = storage.s3.get_object(Bucket=storage.bucket,
                                 Key=f"results/{account_id}/{name}-openers.csv")["Body"].read().decode()
    assert text.splitlines()[0] == ("company,website,opener,opener_status,opener_error,context_status,"
                                    "opener_evidence,opener_quality,opener_language")
    assert text.count(",completed,") == 2 and ",invalid," in text
    wait_for(lambda: drops_left() == 0, timeout=15)  # acknowledged: one notification, one call
    assert len(drop_calls[f"incoming/{account_id}/{name}.csv"]) == 1


def test_a_repeated_notification_starts_nothing_and_a_new_version_starts_a_job(conn, settings):
    """S3 may deliver a notification twice: the handler, given the same event again (same
    sequencer), starts nothing; an event for a new version of the object (another sequencer, or
    only another eTag) starts a new job. The events are the ones LocalStack queued, fed to the
    registered handler as the runner (and Lambda) would."""
    import threading

    import app
    from infra.runner import LambdaContext

    drops = os.environ["DROPS_QUEUE_URL"]
    purge_queue(drops)
    purge_queue(settings.chunk_queue_url)
    account_id = service_account(conn)
    key = f"incoming/{account_id}/again-{uuid.uuid4().hex[:6]}.csv"
    deps.storage().put_bytes(key, b"url\nacme.com\n")
    sqs = deps.chunk_queue().sqs

    def notification():
        for message in sqs.receive_message(QueueUrl=drops, MaxNumberOfMessages=10, WaitTimeSeconds=1
                                           ).get("Messages", []):
            sqs.delete_message(QueueUrl=drops, ReceiptHandle=message["ReceiptHandle"])
            events = [e for e in s3_events(message["Body"]) if e["Records"][0]["s3"]["object"]["key"] == key]
            if events:
                return events[0]
        return None

    event = wait_for(notification, timeout=30)
    record = event["Records"][0]["s3"]["object"]
    assert record["sequencer"] and record["eTag"]  # what the handler keys a version on

    def deliver(event) -> int:
        app.start_dropped_csv(event, LambdaContext("start_dropped_csv", 900, threading.Event()))
        return conn.execute("SELECT count(*) AS n FROM jobs WHERE file_path = %s", (key,)).fetchone()["n"]

    def with_object(**changes) -> dict:
        """The event for another version of the object: `changes` to its record (None removes)."""
        copy = json.loads(json.dumps(event))
        obj = copy["Records"][0]["s3"]["object"]
        for name, value in changes.items():
            if value is None:
                del obj[name]
            else:
                obj[name] = value
        return copy

    assert deliver(event) == 1
    assert deliver(event) == 1  # delivered again: nothing new
    assert deliver(with_object(sequencer="0062E99A88DC407460")) == 2  # a new version of the object
    assert deliver(with_object(sequencer=None, eTag="0123456789abcdef0123456789abcdef")) == 3  # eTag only
    assert deliver(with_object(sequencer=None, eTag="0123456789abcdef0123456789abcdef")) == 3
    versions = {r["source_key"].rsplit("@", 1)[1] for r in conn.execute(
        "SELECT source_key FROM jobs WHERE file_path = %s", (key,)).fetchall()}
    assert versions == {record["sequencer"], "0062E99A88DC407460", "0123456789abcdef0123456789abcdef"}


def test_a_bad_dropped_file_becomes_a_failed_job_with_the_reason(running, conn, drop_calls):
    name = f"bad-{uuid.uuid4().hex[:6]}.csv"
    key = f"incoming/{service_account(conn)}/{name}"
    deps.storage().put_bytes(key, b"name\nno urls here\n")
    job = wait_for(lambda: conn.execute("SELECT * FROM jobs WHERE file_name = %s AND status = 'failed'",
                                        (name,)).fetchone())
    assert "no column of urls" in job["error"].lower()
    # acknowledged, not retried: the runner deleted the message after one call of the handler (a
    # handler that raised would leave it on the queue, to be delivered and handled again)
    wait_for(lambda: drops_left() == 0, timeout=15)
    assert len(drop_calls[key]) == 1
    assert conn.execute("SELECT count(*) AS n FROM jobs WHERE file_name = %s", (name,)).fetchone()["n"] == 1


def test_a_chunk_that_fails_every_delivery_ends_in_the_dead_letter_queue_and_the_job_says_why(
        fast, conn, settings, monkeypatch):
    from chalicelib import jobs

    purge_queue(settings.chunk_queue_url)
    purge_queue(settings.dlq_url)
    monkeypatch.setattr(runner_module, "RETRY_PAUSE_S", 0)
    account_id = service_account(conn)
    created = jobs.create_from_upload(conn, deps.storage(), account_id=account_id, file_name="p.csv",
                                      data=b"url\nacme.com\nglobex.com\n", url_column=None)
    job_id = created["job"]["id"]

    def explode(*_args, **_kwargs):
        raise RuntimeError("database on fire")

    monkeypatch.setattr(deps.chunk_worker(), "process_chunk", explode)
    jobs.start(conn, deps.storage(), deps.chunk_queue(), deps.settings(), account_id, job_id)
    s = deps.settings()
    started = Runner(s.chunk_queue_url, None, workers=1, region=s.aws_region).start()
    try:
        depth = wait_for(lambda: deps.chunk_queue().depth(s.dlq_url)["visible"], timeout=90)
    finally:
        started.stop()
    assert depth == 1
    job = db.get_job(conn, job_id)
    assert job["status"] == "completed" and job["failed_rows"] == 2
    assert "dead-letter queue" in job["error"] and "(RuntimeError)" in job["error"]
    assert "database on fire" not in job["error"]  # the kind of failure, never the library's text
    errors = {r["error"] for r in conn.execute("SELECT error FROM urls WHERE job_id = %s", (job_id,)).fetchall()}
    assert len(errors) == 1 and "5 deliveries" in errors.pop()


def test_the_handler_follows_the_lambda_context_deadline(fast, conn, settings):
    """The chunk handler reads its deadline from the Lambda context Chalice hands over: with no
    time left it claims nothing and hands the chunk on in a continuation message."""
    import threading

    import app
    from chalicelib import jobs
    from infra.runner import LambdaContext

    purge_queue(settings.chunk_queue_url)
    account_id = service_account(conn)
    job_id = jobs.create_from_upload(conn, deps.storage(), account_id=account_id, file_name="d.csv",
                                     data=b"url\nacme.com\n", url_column=None)["job"]["id"]
    jobs.start(conn, deps.storage(), deps.chunk_queue(), deps.settings(), account_id, job_id)
    [message] = drain_queue(settings.chunk_queue_url)
    out_of_time = threading.Event()
    out_of_time.set()
    app.process_chunk(sqs_event(message, "arn:aws:sqs:us-east-1:000000000000:csv-opener-chunks", "us-east-1"),
                      LambdaContext("process_chunk", 900, out_of_time))
    assert db.get_job(conn, job_id)["processed_rows"] == 0
    assert conn.execute("SELECT status FROM urls WHERE job_id = %s", (job_id,)).fetchone()["status"] == "pending"
    [continuation] = [json.loads(m["Body"]) for m in drain_queue(settings.chunk_queue_url)]
    assert (continuation["job_id"], continuation["chunk"]) == (job_id, 0)  # plus the correlation id it carries


def test_a_failed_delete_after_a_handled_message_is_logged_and_the_worker_goes_on(settings, caplog):
    """SQS unreachable just after a handler succeeded: the delete fails, the message will come
    back (its handler skips finished work), and the worker thread must not die with it."""
    runner = Runner(settings.chunk_queue_url, None, workers=1, region=settings.aws_region)

    class Unreachable:
        def __getattr__(self, name):
            def call(**kwargs):
                raise ConnectionError("SQS unreachable")
            return call

    runner.sqs = Unreachable()
    handled = []
    message = {"MessageId": "m1", "ReceiptHandle": "r1", "Body": "{}"}
    runner._invoke(settings.chunk_queue_url, message, lambda: handled.append(1))  # must not raise
    assert handled == [1]
    assert any(r.getMessage() == "could not delete a handled message" for r in caplog.records)
