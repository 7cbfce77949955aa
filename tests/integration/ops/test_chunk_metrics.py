"""Metrics and logs of a real chunk run: an upload started with a correlation id, its chunk
message taken from LocalStack's queue and handed to the registered handler as Lambda would, and
what the handler printed read back as EMF (validated against the specification) and JSON logs."""

from __future__ import annotations

import json
import threading

import pytest

from chalicelib import deps
from infra.runner import LambdaContext, sqs_event
from tests.support.api import body, purge_queue, upload_csv
from tests.support.emf import emf_documents, total

CHUNK_ARN = "arn:aws:sqs:us-east-1:000000000000:csv-opener-chunks"


@pytest.fixture(autouse=True)
def fast(env, conn, settings):
    env(OPENAI_DUMMY_DELAY_MS="0", OPENAI_RPM="0", OPENAI_TPM="0")
    purge_queue(settings.chunk_queue_url)


def receive_all(queue_url: str) -> list[dict]:
    sqs = deps.chunk_queue().sqs
    got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=60,
                              AttributeNames=["All"]).get("Messages", [])
    for message in got:
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return got


def test_a_chunk_run_prints_valid_emf_and_logs_with_its_job_account_and_the_requests_correlation_id(
        client, settings, capsys):
    import app

    created = body(upload_csv(client, b"website\nacme.example.com\nglobex.example.com\ninitech.example.com\n"))
    job_id = created["job"]["id"]
    started = client.http.post("/api/upload/process", body=json.dumps({"job_id": job_id}),
                               headers={"Content-Type": "application/json", "X-Correlation-Id": "upload-7f3a"})
    assert started.status_code == 202 and started.headers["X-Correlation-Id"] == "upload-7f3a"
    api_documents = [d for d in emf_documents(capsys.readouterr().out) if d["function"] == "api_handler"]
    upload_document, process_document = api_documents  # the upload sent no correlation id: its request id
    assert upload_document["correlation_id"] == upload_document["request_id"]
    assert process_document["correlation_id"] == "upload-7f3a"
    assert process_document["account_id"] == client.account.id and process_document["job_id"] == job_id

    [message] = receive_all(settings.chunk_queue_url)
    assert json.loads(message["Body"])["correlation_id"] == "upload-7f3a"
    context = LambdaContext("process_chunk", 900, threading.Event())
    app.process_chunk(sqs_event(message, CHUNK_ARN, "us-east-1"), context)

    out = capsys.readouterr().out
    [document] = [d for d in emf_documents(out) if d["function"] == "process_chunk"]
    assert (document["job_id"], document["account_id"], document["correlation_id"], document["request_id"]) == (
        job_id, client.account.id, "upload-7f3a", context.aws_request_id)
    assert total(document, "UrlsCompleted") == 3 and "UrlsFailed" not in document
    assert total(document, "LlmCalls") == total(document, "LlmCallsOk") == 3 and len(document["LlmLatency"]) == 3
    assert total(document, "PromptTokens") > 0 and total(document, "CostUsd") > 0
    assert isinstance(document["ChunkQueueLag"], float) and document["ChunkQueueLag"] >= 0  # one message
    assert document["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]

    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"message"' in line]
    finished = next(line for line in lines if line["message"] == "chunk call finished")
    assert (finished["correlation_id"], finished["request_id"], finished["function"], finished["account_id"],
            finished["job_id"]) == ("upload-7f3a", context.aws_request_id, "process_chunk",
                                    client.account.id, job_id)


def test_the_webhook_of_a_job_completed_by_its_chunk_carries_the_requests_correlation_id(client, settings, env):
    import app
    from tests.support.webhook_receiver import Receiver

    env(OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32", OPENAI_DUMMY_DELAY_MS="0", OPENAI_RPM="0", OPENAI_TPM="0")
    receiver = Receiver()
    try:
        assert client.http.post("/api/account/webhook-secret", body="{}",
                                headers={"Content-Type": "application/json"}).status_code == 201
        job_id = body(upload_csv(client, b"website\nhooli.example.com\n"))["job"]["id"]
        started = client.http.post("/api/upload/process", headers={"Content-Type": "application/json",
                                                                   "X-Correlation-Id": "hook-5c2e"},
                                   body=json.dumps({"job_id": job_id, "callback_url": receiver.url}))
        assert started.status_code == 202, started.body
        [message] = receive_all(settings.chunk_queue_url)
        app.process_chunk(sqs_event(message, CHUNK_ARN, "us-east-1"),
                          LambdaContext("process_chunk", 900, threading.Event()))
        [(headers, data)] = receiver.requests
        assert json.loads(data)["type"] == "job.completed"
        assert headers["x-correlation-id"] == "hook-5c2e"
    finally:
        receiver.close()


def test_an_api_request_refused_counts_in_api4xx_with_its_account_and_job(client, capsys):
    unknown = "0b5e8a1e-7c44-4d8e-9a51-3f1f0e6c2d11"
    capsys.readouterr()
    assert client.http.get(f"/api/jobs/{unknown}").status_code == 404
    [document] = [d for d in emf_documents(capsys.readouterr().out) if d["function"] == "api_handler"]
    assert total(document, "Api4xx") == 1 and total(document, "Invocations") == 1 and "Api5xx" not in document
    assert (document["account_id"], document["job_id"]) == (client.account.id, unknown)
