"""Uploads of any real size (issue 24, items 1 and 3): multipart presigned uploads against
LocalStack (parts retried and resumed, a bound the caller cannot exceed, nothing left behind on
refusal), the wide-file URL column choice, and the export of a job through S3."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from chalicelib import deps, jobs
from chalicelib.adapters import db
from tests.support.api import body, download, error_of, ingest_now, post_json, purge_queue, s3_keys
from tests.support.widefile import wide_csv

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def small_parts(conn, settings, env):
    """Multipart from 6 MiB on, in parts of 5 MiB (S3's smallest), so a ~11 MB file has 3 parts."""
    purge_queue(settings.chunk_queue_url)
    env(MULTIPART_THRESHOLD=str(6 * MiB), MULTIPART_PART_SIZE=str(5 * MiB))


@pytest.fixture(scope="module")
def big_file() -> bytes:
    data = wide_csv(11_000)
    assert 10 * MiB < len(data) < 15 * MiB
    return data


def put(url: str, data: bytes) -> tuple[int, str | None]:
    """PUT to a presigned URL as the CLI or a browser does: (status, ETag header)."""
    request = urllib.request.Request(url, data=data, method="PUT")
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status, answer.headers.get("ETag")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def begin(client, data: bytes, name: str = "wide.csv") -> dict:
    response = post_json(client, "/api/upload/url", {"file_name": name, "size": len(data)})
    assert response.status_code == 201, response.body
    return body(response)


def put_parts(created: dict, data: bytes, skip: tuple[int, ...] = ()) -> list[dict]:
    part_size = created["part_size"]
    done = []
    for part in created["parts"]:
        if part["number"] in skip:
            continue
        start = (part["number"] - 1) * part_size
        status, etag = put(part["url"], data[start:start + part["size"]])
        assert status == 200 and etag
        done.append({"number": part["number"], "etag": etag})
    return done


def open_uploads(prefix: str) -> list[dict]:
    return deps.storage().open_uploads(prefix)


def test_a_big_file_is_uploaded_by_parts_one_retried_resumed_and_completed(client, conn, big_file):
    created = begin(client, big_file)
    job_id = created["job"]["id"]
    assert "upload_url" not in created and created["part_count"] == 3 == len(created["parts"])
    assert [p["size"] for p in created["parts"]] == [5 * MiB, 5 * MiB, len(big_file) - 10 * MiB]
    assert all("content-length" in p["url"].lower() for p in created["parts"])  # signed for its exact length
    assert created["complete"] == {"method": "POST", "url": "/api/upload/complete", "body": {"job_id": job_id}}
    key = f"uploads/{client.account.id}/{job_id}/wide.csv"
    assert db.get_job(conn, job_id)["upload_id"]

    # part 2 fails the first time (a body cut short: S3 refuses it), and is retried
    second = created["parts"][1]
    assert put(second["url"], big_file[5 * MiB:6 * MiB])[0] == 403
    done = put_parts(created, big_file, skip=(3,))
    # the connection dropped before part 3: completing now names what is missing
    early = post_json(client, "/api/upload/complete", {"job_id": job_id, "parts": done + [{"number": 3,
                                                                                           "etag": '"x"'}]})
    assert error_of(early) == (400, "missing_parts") and "parts 3" in body(early)["error"]["message"]
    # resume: S3 says which parts it has, with fresh URLs for the rest
    status = body(client.http.get(f"/api/upload/{job_id}/parts"))
    assert [p["number"] for p in status["uploaded"]] == [1, 2] and [p["number"] for p in status["parts"]] == [3]
    done += put_parts({**created, "parts": status["parts"]}, big_file)

    response = post_json(client, "/api/upload/complete", {"job_id": job_id, "parts": done})
    assert response.status_code == 200, response.body
    answer = body(response)
    assert answer["completed"] and answer["size"] == len(big_file)
    assert answer["url_choice"]["column"] == "Website" and "company site" in answer["url_choice"]["why"]
    assert "Person Linkedin Url" in answer["url_choice"]["alternatives"]
    assert deps.storage().size(key) == len(big_file) and open_uploads(key) == []
    # a second complete is harmless and answers the same
    again = post_json(client, "/api/upload/complete", {"job_id": job_id, "parts": done})
    assert again.status_code == 200 and body(again)["completed"]

    started = post_json(client, "/api/upload/process", {"job_id": job_id})
    assert started.status_code == 202, started.body
    assert body(started)["job"]["status"] == "ingesting"  # above INGEST_INLINE_BYTES: read in the background
    ingest_now(conn, job_id)
    job = db.get_job(conn, job_id)
    assert job["url_column"] == "Website" and job["total_rows"] == 11_000 and job["upload_id"] is None


def test_a_completed_file_above_the_bound_is_refused_with_nothing_left_behind(client, conn, env, big_file):
    created = begin(client, big_file)
    job_id = created["job"]["id"]
    key = f"uploads/{client.account.id}/{job_id}/wide.csv"
    done = put_parts(created, big_file)
    assert len(open_uploads(key)) == 1
    env(MULTIPART_THRESHOLD=str(6 * MiB), MULTIPART_PART_SIZE=str(5 * MiB), MAX_FILE_SIZE=str(10 * MiB))
    response = post_json(client, "/api/upload/complete", {"job_id": job_id, "parts": done})
    assert error_of(response) == (413, "file_too_large")
    assert s3_keys(key) == [] and open_uploads(key) == []  # neither the object nor the parts
    job = db.get_job(conn, job_id)
    assert job["status"] == "failed" and "limit" in job["error"] and job["upload_id"] is None
    closed = post_json(client, "/api/upload/complete", {"job_id": job_id, "parts": done})
    assert error_of(closed) == (409, "upload_closed")


def test_a_declared_size_above_the_bound_is_413_at_once(client, conn, env):
    env(MULTIPART_THRESHOLD=str(6 * MiB), MAX_FILE_SIZE=str(20 * MiB))
    response = post_json(client, "/api/upload/url", {"file_name": "x.csv", "size": 20 * MiB + 1})
    assert error_of(response) == (413, "file_too_large")
    assert "Split it" in body(response)["error"]["message"] and "presigned" not in body(response)["error"]["message"]
    assert conn.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"] == 0
    assert open_uploads(f"uploads/{client.account.id}/") == []


def test_canceling_a_multipart_upload_aborts_it(client, conn, big_file):
    created = begin(client, big_file)
    job_id = created["job"]["id"]
    put_parts(created, big_file, skip=(2, 3))
    key = f"uploads/{client.account.id}/{job_id}/wide.csv"
    assert len(open_uploads(key)) == 1
    assert client.http.post(f"/api/upload/{job_id}/cancel").status_code == 200
    assert open_uploads(key) == [] and db.get_job(conn, job_id)["upload_id"] is None


@pytest.mark.parametrize("parts", [None, [], "x", [{"number": 1, "etag": '"a"'}] * 3,
                                   [{"number": 0, "etag": '"a"'}, {"number": 1, "etag": '"a"'},
                                    {"number": 2, "etag": '"a"'}],
                                   [{"number": n, "etag": "bad\x00"} for n in (1, 2, 3)],
                                   [{"number": True, "etag": '"a"'}, {"number": 2, "etag": '"a"'},
                                    {"number": 3, "etag": '"a"'}]])
def test_bad_parts_are_400(client, big_file, parts):
    created = begin(client, big_file)
    response = post_json(client, "/api/upload/complete", {"job_id": created["job"]["id"], "parts": parts})
    assert error_of(response) == (400, "bad_parts")


def test_a_small_presigned_upload_is_unchanged_and_complete_refuses_it(client):
    created = body(post_json(client, "/api/upload/url", {"file_name": "s.csv", "size": 100}))
    assert created["upload_url"] and "parts" not in created
    response = post_json(client, "/api/upload/complete", {"job_id": created["job"]["id"], "parts": []})
    assert error_of(response) == (409, "not_multipart")
    assert error_of(client.http.get(f"/api/upload/{created['job']['id']}/parts")) == (409, "not_multipart")


# ---------------------------------------------------------------- wide files

def test_a_wide_upload_answers_its_url_column_why_and_alternatives_and_can_be_rechosen(client, conn):
    data = wide_csv(30)
    response = client.http.post("/api/upload?filename=wide.csv", headers={"Content-Type": "text/csv"}, body=data)
    answer = body(response)
    assert answer["url_column"] == "Website"
    assert answer["url_choice"] == {
        "column": "Website", "why": "header Website names a company site",
        "alternatives": ["Company Linkedin Url", "Person Linkedin Url", "Facebook Url", "Twitter Url"]}
    job_id = answer["job"]["id"]
    unknown = post_json(client, "/api/upload/process", {"job_id": job_id, "url_column": "Nope"})
    assert error_of(unknown) == (400, "unknown_url_column")
    assert db.get_job(conn, job_id)["url_column"] == "Website"  # unchanged
    started = post_json(client, "/api/upload/process", {"job_id": job_id, "url_column": "Company Linkedin Url"})
    assert started.status_code == 202, started.body
    job = db.get_job(conn, job_id)
    assert job["url_column"] == "Company Linkedin Url"
    assert job["layout"]["url_reason"] == "url_column 'Company Linkedin Url' was asked for"
    url = conn.execute("SELECT url FROM urls WHERE job_id = %s AND row_number = 1", (job_id,)).fetchone()["url"]
    assert "linkedin.com/company/company0" in url


# ---------------------------------------------------------------- exports

def test_a_big_export_goes_to_s3_by_multipart_and_is_a_302_built_once(client, conn, big_file):
    created = body(post_json(client, "/api/upload/url", {"file_name": "wide.csv", "size": 100}))
    job_id = created["job"]["id"]
    deps.storage().put_bytes(f"uploads/{client.account.id}/{job_id}/wide.csv", big_file)  # as a drop would
    assert post_json(client, "/api/upload/process", {"job_id": job_id}).status_code == 202
    building = download(client, job_id)  # 11,000 rows: built in the background, not in the request
    assert building.status_code == 202 and building.headers["Retry-After"]
    assert jobs.build_export(deps.conn, deps.storage(), job_id, "all")  # the export message's work
    first = download(client, job_id)
    assert first.status_code == 302
    exports = s3_keys(f"exports/{client.account.id}/{job_id}/")
    assert len(exports) == 1
    etag = deps.storage().head(exports[0])[1]
    assert "-" in etag.strip('"')  # a multipart upload's ETag: "<md5 of md5s>-<parts>"
    second = download(client, job_id)  # nothing changed: the same export, not rebuilt
    assert second.status_code == 302 and s3_keys(f"exports/{client.account.id}/{job_id}/") == exports
    assert deps.storage().head(exports[0])[1] == etag
    with urllib.request.urlopen(second.headers["Location"]) as fetched:
        header = fetched.readline().decode()
        assert header.startswith("First Name,Last Name") and header.rstrip().endswith("opener_language")
        assert sum(1 for _ in fetched) == 11_000
