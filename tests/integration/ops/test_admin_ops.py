"""The runbook's admin commands against the real database and LocalStack's queues: a poisoned
chunk message dead-lettered by SQS itself, redriven, then processed exactly once; stuck jobs
with their cause; usage per day."""

from __future__ import annotations

import json
import uuid

import pytest

from chalicelib import admin, deps, jobs
from chalicelib.adapters import db
from chalicelib.generation.client import build_client
from chalicelib.generation.openers import OpenerGenerator
from chalicelib.generation.ratelimit import RateLimiter
from chalicelib.generation.worker import ChunkWorker
from chalicelib.settings import Settings
from tests.support.accounts import service_account
from tests.support.api import purge_queue
from tests.support.util import wait_for
from tests.support.worker import CountingGenerator


@pytest.fixture
def s(settings) -> Settings:
    return Settings(**{**settings.__dict__, "openai_dummy_mode": True, "openai_dummy_delay_ms": (0, 0),
                       "openai_rpm": 0, "openai_tpm": 0, "chunk_size": 10, "chunk_concurrency": 4})


@pytest.fixture(autouse=True)
def empty_queues(conn, settings):
    purge_queue(settings.chunk_queue_url)
    purge_queue(settings.dlq_url)


def start_job(conn, s: Settings, n: int) -> str:
    data = ("website\n" + "".join(f"shop{i}-{uuid.uuid4().hex[:6]}.example.com\n" for i in range(n))).encode()
    account_id = service_account(conn)
    job_id = jobs.create_from_upload(conn, deps.storage(), account_id=account_id, file_name="p.csv", data=data,
                                     url_column=None)["job"]["id"]
    jobs.start(conn, deps.storage(), deps.chunk_queue(), s, account_id, job_id, instructions="We sell shelves.")
    return job_id


def poison(settings) -> None:
    """Receive the chunk message as often as the redrive policy allows without deleting it (each
    delivery "failed"): SQS then moves it to the dead-letter queue."""
    sqs = deps.chunk_queue().sqs
    for _ in range(settings.max_receive_count):
        got = wait_for(lambda: sqs.receive_message(QueueUrl=settings.chunk_queue_url, VisibilityTimeout=0,
                                                   WaitTimeSeconds=1).get("Messages"), timeout=10)
        assert len(got) == 1
    wait_for(lambda: not sqs.receive_message(QueueUrl=settings.chunk_queue_url, WaitTimeSeconds=0,
                                             VisibilityTimeout=0).get("Messages")
             and depth(settings.dlq_url) == 1, timeout=15)


def depth(queue_url: str) -> int:
    return sum(deps.chunk_queue().depth(queue_url).values())


def run_admin(capsys, *argv: str) -> tuple[int, dict | list]:
    capsys.readouterr()
    status = admin.main(list(argv))
    # this process's JSON log lines (the app configured logging) are not the command's output
    out = "\n".join(line for line in capsys.readouterr().out.splitlines() if not line.startswith('{"ts": '))
    return status, json.loads(out) if status == 0 else out


def process_queued(s: Settings, settings) -> CountingGenerator:
    generator = CountingGenerator(OpenerGenerator(
        build_client(s), RateLimiter(deps.redis_client(), 0, 0, prefix=f"{s.ratelimit_prefix}:ops:{uuid.uuid4().hex}"),
        s.openai_model, max_retries=s.max_retries))
    worker = ChunkWorker(get_conn=deps.conn, generator=generator, queue=deps.chunk_queue(), settings=s,
                         export=lambda job: jobs.export_job(deps.conn, deps.storage(), job), deadline_margin_s=0)
    sqs = deps.chunk_queue().sqs
    while got := sqs.receive_message(QueueUrl=settings.chunk_queue_url, MaxNumberOfMessages=10,
                                     WaitTimeSeconds=1).get("Messages"):
        for message in got:
            worker.process_chunk(*db_chunk(message["Body"]), lambda: float("inf"))
            sqs.delete_message(QueueUrl=settings.chunk_queue_url, ReceiptHandle=message["ReceiptHandle"])
    return generator


def db_chunk(body: str) -> tuple[str, int]:
    from chalicelib.adapters.queue import parse_chunk_message

    return parse_chunk_message(body)


def test_a_poisoned_chunk_is_redriven_once_then_processed_once_and_shows_in_usage(conn, s, settings, capsys):
    job_id = start_job(conn, s, 6)
    poison(settings)
    # its last delivery failed: what the chunk handler does then (app.process_chunk)
    jobs.give_up_chunk(deps.conn, deps.storage(), deps.chunk_queue(), job_id, 0, settings.max_receive_count,
                       RuntimeError("poisoned"))
    job = db.get_job(conn, job_id)
    assert (job["status"], job["failed_rows"], job["processed_rows"]) == ("completed", 6, 0)

    status, report = run_admin(capsys, "redrive-dlq", "--json")
    assert status == 0 and report["moved"] == 1
    assert [(m["job_id"], m["chunk"], m["reopened_rows"], m["action"]) for m in report["messages"]] == [
        (job_id, 0, 6, "redriven")]
    job = db.get_job(conn, job_id)
    assert (job["status"], job["failed_rows"], job["progress"], job["finished_at"]) == ("processing", 0, 0, None)
    assert depth(settings.dlq_url) == 0

    status, again = run_admin(capsys, "redrive-dlq", "--json")  # idempotent: nothing left to move
    assert status == 0 and again == {"moved": 0, "messages": []}

    generator = process_queued(s, settings)
    job = db.get_job(conn, job_id)
    assert (job["status"], job["processed_rows"], job["failed_rows"]) == ("completed", 6, 0)
    assert len(generator.calls) == 6 and set(generator.calls.values()) == {1}

    status, usage = run_admin(capsys, "usage", str(job["account_id"]), "--days", "1", "--json")
    assert status == 0 and len(usage) == 1
    [today] = usage
    assert today["completed"] >= 6 and today["prompt_tokens"] >= job["prompt_tokens"] > 0
    assert today["cost_usd"] > 0


def test_stuck_jobs_names_the_dead_lettered_chunk_and_the_fix(conn, s, settings, capsys, pg):
    job_id = start_job(conn, s, 4)
    poison(settings)  # the handler died on every delivery (a timeout): its rows are still pending
    status, fresh = run_admin(capsys, "stuck-jobs", "--minutes", "10", "--json")
    assert status == 0 and job_id not in [j["id"] for j in fresh]  # it moved a moment ago
    pg.execute("ALTER TABLE jobs DISABLE TRIGGER jobs_touch")
    try:
        pg.execute("UPDATE jobs SET updated_at = now() - interval '30 minutes' WHERE id = %s", (job_id,))
    finally:
        pg.execute("ALTER TABLE jobs ENABLE TRIGGER jobs_touch")
    status, stuck = run_admin(capsys, "stuck-jobs", "--minutes", "10", "--json")
    [job] = [j for j in stuck if j["id"] == job_id]
    assert job["dead_lettered_chunks"] == [0] and job["pending_rows"] == 4
    assert "dead-letter queue" in job["why"] and "redrive-dlq" in job["fix"]
    assert depth(settings.dlq_url) == 1  # looking did not move it

    status, report = run_admin(capsys, "redrive-dlq", "--json")
    assert report["moved"] == 1 and report["messages"][0]["reopened_rows"] == 0  # pending rows: nothing to reopen
    generator = process_queued(s, settings)
    assert db.get_job(conn, job_id)["status"] == "completed" and set(generator.calls.values()) == {1}


def test_bad_arguments_exit_2(capsys):
    assert admin.main(["usage", "not-a-uuid"]) == 2
    assert admin.main(["stuck-jobs", "--minutes", "0"]) == 2
    assert admin.main(["redrive-dlq", "--limit", "x"]) == 2
