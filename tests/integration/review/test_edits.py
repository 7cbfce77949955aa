"""Review before sending (issue 21) through the API: a result with its history, a person's edit
with its preconditions and 409s, review marks one by one and in bulk, the approved-only
download, and isolation (another account's or job's result id is an unknown one)."""

from __future__ import annotations

import csv
import io
import json
import uuid

import pytest

from chalicelib.adapters import db
from tests.support.api import (
    body,
    download,
    error_of,
    mark_urls_done,
    patch_json,
    post_json,
    purge_queue,
    upload_and_process,
)

DATA = b"name,website\nAcme,acme.com\nGlobex,globex.com\nInitech,initech.com\nBad,javascript:x\nUmbrella,umbrella.com\n"


@pytest.fixture(autouse=True)
def clean(conn, settings):
    purge_queue(settings.chunk_queue_url)


def finished_job(client, conn, failed_rows=()) -> tuple[str, list[dict]]:
    """A job whose rows a worker finished (row 3 failed when asked), and its results in order."""
    job_id, started = upload_and_process(client, DATA, page_context=False)
    assert started.status_code == 202, started.body
    mark_urls_done(conn, job_id, failed_rows=failed_rows)
    return job_id, body(client.http.get(f"/api/jobs/{job_id}/results"))["results"]


def path(job_id: str, result_id: str = "") -> str:
    return f"/api/jobs/{job_id}/results" + (f"/{result_id}" if result_id else "")


def test_a_result_shows_its_review_fields_and_its_history(client, conn):
    job_id, results = finished_job(client, conn)
    first = results[0]
    assert (first["review"], first["edited"], first["feedback"]) == (None, False, None)
    assert isinstance(first["version"], int) and first["updated_at"].endswith("Z")
    shown = body(client.http.get(path(job_id, first["id"])))["result"]
    assert shown["opener"] == "=Hello https://acme.com/"
    assert [(h["opener"], h["source"]) for h in shown["history"]] == [("=Hello https://acme.com/", "model")]

    edited = patch_json(client, path(job_id, first["id"]), {"opener": "  Loved your anvils page, Acme team.  ",
                                                             "version": first["version"]})
    assert edited.status_code == 200, edited.body
    row = body(edited)["result"]
    assert row["opener"] == "Loved your anvils page, Acme team." and row["edited"] is True
    assert "edited" in row["quality"] and row["version"] > first["version"]
    history = body(client.http.get(path(job_id, first["id"])))["result"]["history"]
    assert [(h["opener"], h["source"]) for h in history] == [
        ("=Hello https://acme.com/", "model"), ("Loved your anvils page, Acme team.", "person")]
    assert history[0]["at"] <= history[1]["at"]
    # the results page, the job's counters and the download show the latest
    assert body(client.http.get(path(job_id)))["results"][0]["opener"] == "Loved your anvils page, Acme team."
    assert body(client.http.get(f"/api/jobs/{job_id}"))["job"]["quality"]["flagged"].get("edited") == 1
    rows = list(csv.reader(io.StringIO(download(client, job_id).body.decode())))
    assert rows[1][2] == "Loved your anvils page, Acme team." and "edited" in rows[1][7]


def test_an_edit_with_a_stale_version_or_date_is_refused(client, conn):
    job_id, results = finished_job(client, conn)
    row = results[1]
    url = path(job_id, row["id"])
    first = body(patch_json(client, url, {"review": "approved", "version": row["version"]}))["result"]
    assert first["review"] == "approved" and first["version"] == row["version"] + 1
    # a second writer who read the row before the first edit
    assert error_of(patch_json(client, url, {"opener": "Mine, written meanwhile and long enough to pass.",
                                             "version": row["version"]})) == (409, "stale_version")
    assert error_of(patch_json(client, url, {"review": "rejected"},
                               headers={"If-Unmodified-Since": "Wed, 01 Jan 2020 00:00:00 GMT"})) == (
        409, "stale_version")
    later = patch_json(client, url, {"review": "rejected"},
                       headers={"If-Unmodified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"})
    assert later.status_code == 200 and body(later)["result"]["review"] == "rejected"
    assert error_of(patch_json(client, url, {"review": None},
                               headers={"If-Unmodified-Since": "yesterday"})) == (400, "bad_precondition")
    cleared = body(patch_json(client, url, {"review": None}))["result"]
    assert cleared["review"] is None


@pytest.mark.parametrize("payload, code", [
    ({}, "nothing_to_change"),
    ({"version": 1}, "nothing_to_change"),
    ({"opener": ""}, "bad_opener"),
    ({"opener": 7}, "bad_opener"),
    ({"opener": "x" * 601}, "bad_opener"),
    ({"opener": "Hello\x00there"}, "bad_opener"),
    ({"review": "maybe"}, "bad_review"),
    ({"review": "approved", "version": True}, "bad_version"),
    ({"review": "approved", "version": "3"}, "bad_version"),
    ({"variant": 2}, "bad_variant"),  # a job of one opener per row has no variants
    ({"variant": 0}, "bad_variant"),
    ({"variant": 1, "opener": "Both at once, which is not allowed."}, "opener_and_variant"),
])
def test_a_bad_edit_is_a_400_and_changes_nothing(client, conn, payload, code):
    job_id, results = finished_job(client, conn)
    assert error_of(patch_json(client, path(job_id, results[0]["id"]), payload)) == (400, code)
    assert body(client.http.get(path(job_id, results[0]["id"])))["result"]["version"] == results[0]["version"]


def test_only_a_completed_rows_opener_can_be_edited_and_a_regenerating_row_not_at_all(client, conn):
    job_id, results = finished_job(client, conn, failed_rows=[3])
    failed = next(r for r in results if r["status"] == "failed")
    assert error_of(patch_json(client, path(job_id, failed["id"]), {"opener": "A person's opener for it."})) == (
        409, "not_editable")
    started = post_json(client, f"/api/jobs/{job_id}/regenerate", {"result_ids": [results[0]["id"]]})
    assert started.status_code == 202, started.body
    assert error_of(patch_json(client, path(job_id, results[0]["id"]), {"review": "approved"})) == (
        409, "regenerating")
    assert error_of(patch_json(client, path(job_id, results[0]["id"]), {"opener": "New words for it."})) == (
        409, "regenerating")


def test_another_accounts_or_jobs_result_is_unknown(client, conn, make_account):
    job_id, results = finished_job(client, conn)
    other_job, other_results = finished_job(client, conn)
    stranger = client.as_account(make_account())
    for caller, job, result in ((stranger, job_id, results[0]["id"]), (client, job_id, other_results[0]["id"]),
                                (client, job_id, str(uuid.uuid4())), (client, job_id, "not-a-uuid"),
                                (client, job_id, "\u0663" * 32)):
        code = (404, "job_not_found") if caller is stranger else (404, "not_found")
        assert error_of(caller.http.get(path(job, result))) == code
        assert error_of(patch_json(caller, path(job, result), {"review": "approved"})) == code
    assert error_of(post_json(client, f"/api/jobs/{job_id}/review",
                              {"result_ids": [other_results[0]["id"]], "review": "approved"})) == (404, "not_found")
    assert body(client.http.get(path(other_job, other_results[0]["id"])))["result"]["review"] is None


def test_review_marks_in_bulk_filter_the_results_and_the_approved_download(client, conn):
    job_id, results = finished_job(client, conn, failed_rows=[3])
    conn.execute("UPDATE urls SET quality = '{spammy}' WHERE job_id = %s AND row_number = 2", (job_id,))
    done = post_json(client, f"/api/jobs/{job_id}/review", {"filter": {"status": "completed"}, "review": "approved"})
    assert done.status_code == 200 and body(done) == {"reviewed": 3}
    again = post_json(client, f"/api/jobs/{job_id}/review", {"filter": {}, "review": "approved"})
    assert body(again) == {"reviewed": 0}  # the failed row has nothing to approve; the rest already are
    rejected = post_json(client, f"/api/jobs/{job_id}/review", {"filter": {"quality": "spammy"}, "review": "rejected"})
    assert body(rejected) == {"reviewed": 1}

    def urls(review):
        return [r["url"] for r in body(client.http.get(f"{path(job_id)}?review={review}"))["results"]]

    assert urls("approved") == ["https://acme.com/", "https://umbrella.com/"]
    assert urls("rejected") == ["https://globex.com/"]
    assert urls("none") == ["https://initech.com/"]
    assert error_of(client.http.get(f"{path(job_id)}?review=maybe")) == (400, "bad_review")

    approved = download(client, job_id, "?review=approved")
    assert approved.status_code == 200, approved.body
    rows = list(csv.reader(io.StringIO(approved.body.decode())))
    assert [r[:2] for r in rows] == [["name", "website"], ["Acme", "acme.com"], ["Umbrella", "umbrella.com"]]
    assert len(list(csv.reader(io.StringIO(download(client, job_id).body.decode())))) == 6  # all, as before
    assert error_of(download(client, job_id, "?review=rejected")) == (400, "bad_review")

    by_id = post_json(client, f"/api/jobs/{job_id}/review", {"result_ids": [results[0]["id"]], "review": None})
    assert body(by_id) == {"reviewed": 1}
    assert urls("approved") == ["https://umbrella.com/"]


@pytest.mark.parametrize("payload, code", [
    ({"review": "approved"}, "bad_selection"),
    ({"filter": {}, "result_ids": [], "review": "approved"}, "bad_selection"),
    ({"filter": {}}, "bad_review"),
    ({"filter": [], "review": "approved"}, "bad_filter"),
    ({"filter": {"colour": "red"}, "review": "approved"}, "bad_filter"),
    ({"filter": {"quality": "shiny"}, "review": "approved"}, "bad_quality"),
    ({"filter": {"status": 3}, "review": "approved"}, "bad_filter"),
    ({"filter": {"review": "maybe"}, "review": "approved"}, "bad_review"),
    ({"result_ids": [], "review": "approved"}, "bad_result_ids"),
    ({"result_ids": ["nope"], "review": "approved"}, "bad_result_ids"),
    ({"result_ids": [1], "review": "approved"}, "bad_result_ids"),
    ({"result_ids": [str(uuid.uuid4())] * 1001, "review": "approved"}, "bad_result_ids"),
    ({"filter": {}, "review": "approved", "extra": 1}, "unknown_field"),
])
def test_a_bad_bulk_review_is_a_400(client, conn, payload, code):
    job_id, _ = finished_job(client, conn)
    assert error_of(post_json(client, f"/api/jobs/{job_id}/review", payload)) == (400, code)
    assert error_of(post_json(client, f"/api/jobs/{job_id}/review", None, raw="[1]")) == (400, "bad_json")


def test_the_history_is_kept_by_the_database_for_every_writer(conn, client):
    """A worker's save, a regeneration's and an edit all leave the earlier opener in the history
    (the row's trigger), with the row's version moving on each change."""
    job_id, results = finished_job(client, conn)
    row_id = results[0]["id"]
    before = db.get_job(conn, job_id)
    conn.execute("UPDATE urls SET opener = 'second model opener' WHERE id = %s", (row_id,))
    conn.execute("UPDATE urls SET quality = '{edited}', opener = 'a person wrote this' WHERE id = %s", (row_id,))
    conn.execute("UPDATE urls SET quality = '{}', opener = 'third model opener' WHERE id = %s", (row_id,))
    shown = body(client.http.get(path(job_id, row_id)))["result"]
    assert [(h["opener"], h["source"]) for h in shown["history"]] == [
        ("=Hello https://acme.com/", "model"), ("second model opener", "model"), ("a person wrote this", "person"),
        ("third model opener", "model")]
    assert shown["version"] == results[0]["version"] + 3
    assert json.dumps(shown)  # plain JSON
    assert db.get_job(conn, job_id)["processed_rows"] == before["processed_rows"]
