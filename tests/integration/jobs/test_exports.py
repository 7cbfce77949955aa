"""Exports built in the background (issue 24): a download too big to build in its request
answers 202 with Retry-After and starts one build (not one per download), the ingest function
builds it, the next download is a 302 to it; an edit makes it stale (built again); the approved
view is its own export; small files are still built in the request."""

from __future__ import annotations

import csv
import io
import json
import threading
import urllib.request

import pytest

from app import ingest_file as ingest_function
from chalicelib import deps, jobs
from chalicelib.adapters import db
from chalicelib.adapters.queue import parse_background_message
from infra.runner import LambdaContext, Runner, sqs_event
from tests.support import api
from tests.support.api import body, download, drain_queue, mark_urls_done, patch_json, post_json, purge_queue
from tests.support.util import wait_for

DATA = b"name,website\nAcme,acme.com\nGlobex,globex.com\nInitech,initech.com\nBad,javascript:x\nUmbrella,umbrella.com\n"


@pytest.fixture(autouse=True)
def background(conn, settings, env):
    """Every file is 'big': its download is built in the background."""
    purge_queue(settings.chunk_queue_url)
    purge_queue(settings.ingest_queue_url)
    env(EXPORT_INLINE_ROWS="2")
    yield


def export_messages(job_id: str) -> list[str]:
    """The export messages sent for the job (taken off the ingest queue): their views."""
    messages = (parse_background_message(m["Body"]) for m in drain_queue(deps.settings().ingest_queue_url))
    return [view for kind, job, view in messages if kind == "export" and job == str(job_id)]


def build(job_id: str, views: list[str]) -> None:
    """What the ingest function does with each export message."""
    for view in views:
        jobs.build_export(deps.conn, deps.storage(), str(job_id), view)


def fetch(response) -> list[list[str]]:
    assert response.status_code == 302, (response.status_code, response.body)
    with urllib.request.urlopen(response.headers["Location"]) as fetched:
        return list(csv.reader(io.StringIO(fetched.read().decode())))


def assert_building(response) -> None:
    assert response.status_code == 202, response.body
    answer = body(response)
    assert answer["export"] == "building" and 2 <= answer["retry_after"] <= 15
    assert response.headers["Retry-After"] == str(answer["retry_after"])


def finished_job(client, conn) -> str:
    job_id, started = api.upload_and_process(client, DATA, page_context=False)
    assert started.status_code == 202, started.body
    mark_urls_done(conn, job_id)
    return job_id


def test_a_download_of_an_unbuilt_export_is_a_202_then_a_302_once_the_runner_built_it(client, conn):
    job_id = finished_job(client, conn)
    first = download(client, job_id)
    assert_building(first)
    again = download(client, job_id)  # asked again before the build ran: still building, no second build
    assert_building(again)
    s = deps.settings()
    runner = Runner(s.chunk_queue_url, None, workers=1, region=s.aws_region, ingest_queue_url=s.ingest_queue_url)
    runner.start()
    try:
        done = wait_for(lambda: (r := download(client, job_id)).status_code == 302 and r, timeout=60,
                        what="the export built by the runner")
    finally:
        runner.stop()
    rows = fetch(done)
    assert rows[0][:4] == ["name", "website", "opener", "opener_status"] and len(rows) == 6
    assert rows[1][2] == "'=Hello https://acme.com/"  # a formula neutralized, as before
    job = db.get_job(conn, job_id)
    assert job["result_path"] == f"results/{client.account.id}/{job_id}.csv"  # the completed job's results CSV
    assert f"/{job['result_path']}?" in done.headers["Location"]
    assert export_messages(job_id) == []  # one build: every message was taken by the runner
    assert db.get_export(conn, job_id, "all")["building_since"] is None


def test_concurrent_downloads_start_one_build(client, conn):
    job_id = finished_job(client, conn)
    answers, barrier = [], threading.Barrier(6)

    def ask() -> None:
        barrier.wait()
        answers.append(jobs.download(deps.conn(), deps.storage(), deps.chunk_queue(), deps.settings(),
                                     client.account.id, job_id)[0])

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == ["building"] * 6
    views = export_messages(job_id)
    assert views == ["all"]  # one message for six downloads
    build(job_id, views)
    assert download(client, job_id).status_code == 302
    assert export_messages(job_id) == []


def test_the_completion_of_a_big_job_requests_its_results_csv(client, conn):
    job_id, _ = api.upload_and_process(client, DATA, page_context=False)
    mark_urls_done(conn, job_id)
    deps.job_completed(db.get_job(conn, job_id))  # what the worker's exactly-once completion calls
    views = export_messages(job_id)
    assert views == ["all"] and db.get_job(conn, job_id)["result_path"] is None
    assert_building(download(client, job_id))  # the build requested is the one running: no second
    assert export_messages(job_id) == []
    build(job_id, views)
    assert fetch(download(client, job_id))[1][2] == "'=Hello https://acme.com/"


def test_an_edit_makes_the_export_stale_and_it_is_built_again(client, conn):
    job_id = finished_job(client, conn)
    assert_building(download(client, job_id))
    build(job_id, export_messages(job_id))
    assert fetch(download(client, job_id))[1][2] == "'=Hello https://acme.com/"

    results = body(client.http.get(f"/api/jobs/{job_id}/results"))["results"]
    edited = patch_json(client, f"/api/jobs/{job_id}/results/{results[0]['id']}",
                        {"opener": "Loved your anvils page.", "version": results[0]["version"]})
    assert edited.status_code == 200, edited.body
    assert_building(download(client, job_id))  # the results CSV holds the old opener: not served
    build(job_id, export_messages(job_id))
    rows = fetch(download(client, job_id))
    assert rows[1][2] == "Loved your anvils page." and "edited" in rows[1][7]


def test_the_approved_view_is_its_own_export(client, conn):
    job_id = finished_job(client, conn)
    results = body(client.http.get(f"/api/jobs/{job_id}/results"))["results"]
    marked = post_json(client, f"/api/jobs/{job_id}/review", {"result_ids": [results[0]["id"]], "review": "approved"})
    assert marked.status_code == 200, marked.body
    assert_building(download(client, job_id, "?review=approved"))
    assert_building(download(client, job_id))  # the full one is another build
    views = sorted(export_messages(job_id))
    assert views == ["all", "approved"]
    build(job_id, views)
    approved = fetch(download(client, job_id, "?review=approved"))
    assert [r[:2] for r in approved] == [["name", "website"], ["Acme", "acme.com"]]
    assert len(fetch(download(client, job_id))) == 6

    post_json(client, f"/api/jobs/{job_id}/review", {"result_ids": [results[1]["id"]], "review": "approved"})
    assert_building(download(client, job_id, "?review=approved"))  # a new mark: stale
    build(job_id, export_messages(job_id))
    assert [r[0] for r in fetch(download(client, job_id, "?review=approved"))] == ["name", "Acme", "Globex"]


def test_a_running_jobs_export_is_served_while_recent(client, conn):
    job_id, _ = api.upload_and_process(client, DATA, page_context=False)
    assert_building(download(client, job_id))
    build(job_id, export_messages(job_id))
    conn.execute("UPDATE jobs SET processed_rows = 1 WHERE id = %s", (job_id,))  # progress since the build
    rows = fetch(download(client, job_id))  # the last build, read moments ago: served
    assert {r[3] for r in rows[1:]} == {"pending", "invalid"}
    conn.execute("UPDATE job_exports SET snapshot_at = now() - interval '10 minutes' WHERE job_id = %s", (job_id,))
    assert_building(download(client, job_id))  # too old for a job that moves: built again


def test_a_build_that_fails_gives_its_claim_back(client, conn, monkeypatch):
    job_id = finished_job(client, conn)
    assert_building(download(client, job_id))
    [view] = export_messages(job_id)
    monkeypatch.setattr(deps.storage(), "put_file", lambda *a, **k: (_ for _ in ()).throw(OSError("S3 down")))
    with pytest.raises(OSError):
        build(job_id, [view])  # raised: SQS delivers the message again
    monkeypatch.undo()
    state = db.get_export(conn, job_id, "all")
    assert state["building_since"] is None and "S3 down" in state["error"]
    assert_building(download(client, job_id))  # the next download starts a build again
    assert export_messages(job_id) == ["all"]


def test_small_files_are_still_built_in_the_request(client, conn, env):
    env(EXPORT_INLINE_ROWS="5000")
    job_id = finished_job(client, conn)
    response = download(client, job_id)
    assert response.status_code == 200 and response.body.startswith(b"name,website,opener")
    assert export_messages(job_id) == []


def test_the_ingest_function_builds_an_export_message_and_drops_a_bad_one(client, conn):
    job_id = finished_job(client, conn)
    assert_building(download(client, job_id))
    [message] = drain_queue(deps.settings().ingest_queue_url)
    arn = "arn:aws:sqs:us-east-1:000000000000:csv-opener-ingest"
    context = LambdaContext("ingest_file", 900, threading.Event())
    bad = {**message, "Body": json.dumps({"job_id": str(job_id), "export": "everything"})}
    ingest_function(sqs_event(bad, arn, "us-east-1"), context)  # logged and dropped
    assert db.get_job(conn, job_id)["result_path"] is None
    ingest_function(sqs_event(message, arn, "us-east-1"), context)
    assert fetch(download(client, job_id))[1][2] == "'=Hello https://acme.com/"
