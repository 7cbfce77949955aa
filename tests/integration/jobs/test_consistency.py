"""Work is never lost, stuck or corrupted at the seams (issue 10, items 3-7): status changes state
the status they expect, one lock order (URLs, then the job, then the account), every completed
job gets its results CSV, a drop never stays pending, and a job reads the bytes it validated."""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid

import psycopg
import pytest

from chalicelib import deps, jobs
from chalicelib.adapters import db
from chalicelib.errors import Conflict
from tests.support.accounts import service_account
from tests.support.api import LEADS, body, download, drain_queue, error_of, post_json, purge_queue, s3_keys
from tests.support.util import wait_for


@pytest.fixture(autouse=True)
def clean(conn, settings):
    purge_queue(settings.chunk_queue_url)


def new_job(conn, settings, n: int = 3, start: bool = True) -> tuple[str, str]:
    account_id = service_account(conn)
    data = b"url\n" + b"".join(f"c{i}-{uuid.uuid4().hex[:6]}.example.com\n".encode() for i in range(n))
    job_id = jobs.create_from_upload(conn, deps.storage(), account_id=account_id, file_name="c.csv", data=data,
                                     url_column=None)["job"]["id"]
    if start:
        jobs.start(conn, deps.storage(), deps.chunk_queue(), settings, account_id, job_id)
        drain_queue(settings.chunk_queue_url)
    return account_id, job_id


def complete_all(conn, job_id, failed_rows=()) -> None:
    """Finish every URL as workers would (counters in the same statement), job -> completed."""
    conn.execute("""UPDATE urls SET status = CASE WHEN row_number = ANY(%s) THEN 'failed' ELSE 'completed' END,
                       opener = CASE WHEN row_number = ANY(%s) THEN NULL ELSE 'Hello ' || url END,
                       error = CASE WHEN row_number = ANY(%s) THEN 'HTTP 500' END, finished_at = now()
                    WHERE job_id = %s""", (list(failed_rows),) * 3 + (job_id,))
    conn.execute("""UPDATE jobs SET processed_rows = total_rows - %s, failed_rows = %s, progress = 100,
                    status = 'completed', finished_at = now() WHERE id = %s""",
                 (len(failed_rows), len(failed_rows), job_id))


# ---------------------------------------------------------------- item 7: conditional status writes

def test_undoing_a_start_never_brings_a_canceled_job_back(conn, settings):
    account_id, job_id = new_job(conn, settings)
    jobs.cancel(conn, account_id, job_id)
    with conn.transaction():
        db.unstart_job(conn, job_id)
    assert db.get_job(conn, job_id)["status"] == "canceled"


def test_a_retry_that_cannot_be_queued_never_overwrites_a_job_completed_meanwhile(conn, settings, monkeypatch):
    account_id, job_id = new_job(conn, settings)
    complete_all(conn, job_id, failed_rows=[2])
    queue = deps.chunk_queue()

    def finished_meanwhile_then_sqs_fails(*_args, **_kwargs):
        complete_all(deps.conn(), job_id)  # a worker's redelivered message finished the retried URL
        raise RuntimeError("SQS is down")

    monkeypatch.setattr(queue, "send_chunks", finished_meanwhile_then_sqs_fails)
    with pytest.raises(RuntimeError):
        jobs.retry(conn, queue, settings, account_id, job_id)
    job = db.get_job(conn, job_id)
    assert job["status"] == "completed" and job["error"] is None


def test_a_bad_file_fails_only_a_pending_job(conn, settings):
    _, job_id = new_job(conn, settings)
    assert db.fail_job(conn, job_id, "bad file", expected="pending") is None
    assert db.get_job(conn, job_id)["status"] == "processing"


# ---------------------------------------------------------------- item 6: one lock order

def test_retry_and_a_saving_worker_never_deadlock(conn, settings):
    """A worker's save locks the job's URL rows, then the job row (one statement). Retry takes
    them in the same order, so it waits for the save instead of deadlocking (40P01) with it."""
    account_id, job_id = new_job(conn, settings, n=4)
    complete_all(conn, job_id, failed_rows=[1, 2])
    worker = db.connect(settings.database_url)
    outcome: dict = {}
    try:
        with worker.transaction():
            # the first half of save_results: the worker holds the URL rows it is writing
            worker.execute("SELECT id FROM urls WHERE job_id = %s ORDER BY id FOR UPDATE", (job_id,))

            def retry() -> None:
                own = db.connect(settings.database_url)
                try:
                    outcome["result"] = jobs.retry(own, deps.chunk_queue(), settings, account_id, job_id)
                except Exception as exc:  # noqa: BLE001 - recorded for the assertion
                    outcome["error"] = exc
                finally:
                    own.close()

            thread = threading.Thread(target=retry)
            thread.start()
            # retry is now waiting for a lock the worker holds (the URL rows; with the old order it
            # would hold the job row first): seen by the server, not guessed from a sleep
            wait_for(lambda: conn.execute(
                """SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()
                   AND wait_event_type = 'Lock' AND pid <> %s""", (worker.info.backend_pid,)).fetchone()["n"] == 1,
                30, every=0.02, what="retry waiting for the worker's row locks")
            # the second half of save_results: the job's counters
            worker.execute("UPDATE jobs SET updated_at = now() WHERE id = %s", (job_id,))
        thread.join(30)
    finally:
        worker.close()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"]["retried"] == 2 and outcome["result"]["job"]["status"] == "processing"


# ---------------------------------------------------------------- item 4: every completed job has its CSV

def test_a_job_completed_by_giving_up_its_last_chunk_gets_its_results_csv(conn, settings):
    account_id, job_id = new_job(conn, settings, n=2)
    jobs.give_up_chunk(deps.conn, deps.storage(), deps.chunk_queue(), job_id, 0, 5,
                       RuntimeError("boom at sqs.internal:4566 with key AKIA123"))
    job = db.get_job(conn, job_id)
    assert job["status"] == "completed" and job["failed_rows"] == 2
    errors = {r["error"] for r in conn.execute("SELECT error FROM urls WHERE job_id = %s", (job_id,)).fetchall()}
    assert errors == {"chunk 0 failed 5 deliveries (RuntimeError); its message is in the dead-letter queue. "
                      "Retry the job to try again."}  # the kind of failure, never the library's text
    assert job["result_path"] == f"results/{account_id}/{job_id}.csv"
    text = deps.storage().s3.get_object(Bucket=deps.storage().bucket, Key=job["result_path"])["Body"].read().decode()
    assert text.count(",failed,") == 2


def test_the_sweep_exports_completed_jobs_that_have_no_results_csv(conn, settings):
    account_id, job_id = new_job(conn, settings, n=2)
    complete_all(conn, job_id)
    with conn.transaction():  # a crash right after completion: finished a while ago, never exported
        conn.execute("UPDATE jobs SET finished_at = now() - interval '5 minutes' WHERE id = %s", (job_id,))
    done = jobs.sweep(conn, deps.conn, deps.storage(), deps.chunk_queue(), settings)
    assert done["exported"] >= 1
    assert db.get_job(conn, job_id)["result_path"] == f"results/{account_id}/{job_id}.csv"
    assert s3_keys(f"results/{account_id}/{job_id}.csv") == [f"results/{account_id}/{job_id}.csv"]


# ---------------------------------------------------------------- item 5: a drop never stays pending

def test_a_drop_whose_start_failed_is_resumed_by_the_repeated_notification(conn, settings, monkeypatch):
    account_id = service_account(conn)
    key = f"incoming/{account_id}/resume-{uuid.uuid4().hex[:6]}.csv"
    deps.storage().put_bytes(key, LEADS)
    queue = deps.chunk_queue()
    original = queue.send_chunks

    def down(*_a, **_k):
        raise RuntimeError("SQS is down")

    monkeypatch.setattr(queue, "send_chunks", down)
    with pytest.raises(RuntimeError):
        jobs.start_from_drop(conn, deps.storage(), queue, settings, key=key, version="seq1")
    [job] = conn.execute("SELECT id, status FROM jobs WHERE file_path = %s", (key,)).fetchall()
    assert job["status"] == "pending"
    monkeypatch.setattr(queue, "send_chunks", original)
    started = jobs.start_from_drop(conn, deps.storage(), queue, settings, key=key, version="seq1")
    assert started["job"]["id"] == str(job["id"]) and started["job"]["status"] == "processing"
    assert len(drain_queue(settings.chunk_queue_url)) == 1
    # and once started, the same notification again is a no-op
    assert jobs.start_from_drop(conn, deps.storage(), queue, settings, key=key, version="seq1") is None


def test_the_sweep_starts_drops_left_pending(conn, settings):
    account_id = service_account(conn)
    key = f"incoming/{account_id}/stuck-{uuid.uuid4().hex[:6]}.csv"
    deps.storage().put_bytes(key, LEADS)
    job = db.insert_job(conn, job_id=str(uuid.uuid4()), account_id=account_id, file_name="stuck.csv", file_path=key,
                        source="s3", source_key=f"b/{key}@x")
    with conn.transaction():
        conn.execute("UPDATE jobs SET created_at = now() - interval '10 minutes' WHERE id = %s", (job["id"],))
    done = jobs.sweep(conn, deps.conn, deps.storage(), deps.chunk_queue(), settings)
    assert done["drops_started"] == 1
    assert db.get_job(conn, job["id"])["status"] == "processing"


# ---------------------------------------------------------------- item 3: the bytes that were validated

def put_presigned(url: str, data: bytes) -> int:
    request = urllib.request.Request(url, data=data, method="PUT", headers={"Content-Type": "text/csv"})
    with urllib.request.urlopen(request) as response:
        return response.status


def test_a_presigned_file_replaced_after_validation_is_never_read_with_the_stored_layout(client, conn, settings):
    original = b"website,notes\nacme.com,a\nglobex.com,b\n"
    created = body(post_json(client, "/api/upload/url", {"file_name": "swap.csv", "size": len(original)}))
    assert put_presigned(created["upload_url"], original) == 200
    job_id = created["job"]["id"]
    assert post_json(client, "/api/upload/process", {"job_id": job_id}).status_code == 202
    # the URL is still valid for a while: the file is swapped for another with other rows
    # (of the same length: the URL is signed for that many bytes)
    swapped = b"notes,website\nx,evil.example.com\n"
    swapped = swapped.replace(b"x,", b"x" * (len(original) - len(swapped) + 1) + b",")
    assert put_presigned(created["upload_url"], swapped) == 200
    response = download(client, job_id)
    assert error_of(response) == (409, "source_changed")


def test_a_presigned_upload_over_max_file_size_is_413_and_fails_the_job(client, conn, env):
    data = b"url\n" + b"acme.com\n" * 50
    created = body(post_json(client, "/api/upload/url", {"file_name": "big.csv", "size": len(data)}))
    assert put_presigned(created["upload_url"], data) == 200
    env(MAX_FILE_SIZE="100")  # lowered after the URL was signed for more
    assert error_of(post_json(client, "/api/upload/process", {"job_id": created["job"]["id"]})) == (
        413, "file_too_large")
    assert db.get_job(conn, created["job"]["id"])["status"] == "failed"


def test_a_drop_replaced_after_it_started_is_never_read_with_the_stored_layout(client, conn, settings):
    storage = deps.storage()
    key = f"incoming/{client.account.id}/swap-{uuid.uuid4().hex[:6]}.csv"
    storage.put_bytes(key, LEADS)
    started = jobs.start_from_drop(conn, storage, deps.chunk_queue(), settings, key=key, version="v1")
    storage.put_bytes(key, b"other,columns\n1,2\n")
    response = download(client, started["job"]["id"])
    # the job read exactly the version it validated (its ETag): the new one is never read as it
    assert error_of(response) == (409, "source_changed"), response.body


def test_lock_timeouts_answer_409_busy_not_500(client, conn, settings):
    account_id, job_id = new_job(conn, settings)
    complete_all(conn, job_id, failed_rows=[1])
    holder = db.connect(settings.database_url)
    try:
        with holder.transaction():
            holder.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
            with pytest.raises(Conflict) as info:
                jobs.retry(conn, deps.chunk_queue(), settings, account_id, job_id)
    finally:
        holder.close()
    assert info.value.code == "busy"
    assert isinstance(info.value.__context__, psycopg.errors.LockNotAvailable)


# ---------------------------------------------------------------- item 8: nothing paid for twice

def _worker(settings, delay_s: float, concurrency: int):
    from chalicelib.generation.client import build_client
    from chalicelib.generation.openers import OpenerGenerator
    from chalicelib.generation.ratelimit import RateLimiter
    from chalicelib.generation.worker import ChunkWorker
    from chalicelib.settings import Settings
    from tests.support.worker import CountingGenerator

    s = Settings(**{**settings.__dict__, "openai_dummy_mode": True, "openai_dummy_delay_ms": (0, 0),
                    "openai_rpm": 0, "openai_tpm": 0, "chunk_size": 50, "chunk_concurrency": concurrency})
    inner = OpenerGenerator(build_client(s), RateLimiter(deps.redis_client(), 0, 0, prefix=f"t:{uuid.uuid4().hex}"),
                            s.openai_model)
    generator = CountingGenerator(inner, delay_s=delay_s)
    worker = ChunkWorker(get_conn=deps.conn, generator=generator, queue=deps.chunk_queue(), settings=s,
                         export=lambda job: jobs.export_job(deps.conn, deps.storage(), job), deadline_margin_s=0)
    return s, worker, generator


def test_calls_in_flight_at_the_deadline_are_waited_for_and_saved_not_generated_again(conn, settings):
    s, worker, generator = _worker(settings, delay_s=1.0, concurrency=4)
    account_id, job_id = new_job(conn, s, n=10)

    def time_left() -> float:
        """The deadline has come once all four calls were in flight together (an event, not a
        guess at how long claiming and starting them takes on a loaded machine)."""
        return -1.0 if generator.peak >= 4 else float("inf")  # past the deadline

    outcome = worker.process_chunk(job_id, 0, time_left)
    assert outcome.reason == "deadline" and outcome.continued
    assert outcome.saved == 4 and outcome.released == 0  # the four calls in flight were kept
    assert db.get_job(conn, job_id)["processed_rows"] == 4
    assert worker.process_chunk(job_id, 0, lambda: float("inf")).reason == "done"
    assert db.get_job(conn, job_id)["status"] == "completed"
    assert len(generator.calls) == 10 and set(generator.calls.values()) == {1}


def test_an_opener_that_arrives_after_a_cancel_is_counted_as_discarded(client, conn, settings):
    s, worker, generator = _worker(settings, delay_s=3.5, concurrency=2)
    account_id, job_id = new_job(conn, s, n=2)
    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault("o", worker.process_chunk(
        job_id, 0, lambda: float("inf"))))
    thread.start()
    deadline = time.monotonic() + 30
    while len(generator.active) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    jobs.cancel(conn, account_id, job_id)
    thread.join(30)
    assert box["o"].reason == "canceled" and box["o"].released == 2  # gave up after the grace period
    while generator.active and time.monotonic() < deadline:  # the two calls still finish (and are paid)
        time.sleep(0.05)
    while db.get_job(conn, job_id)["discarded_results"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert db.get_job(conn, job_id)["discarded_results"] == 2
    assert db.discarded_results(conn, account_id) >= 2
