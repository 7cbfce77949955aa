"""Defects an outside review found at the edges (issue 10): each bad input answers a 4xx in the
error shape and writes nothing; the model's text, the stored names and the downloads are safe."""

from __future__ import annotations

import base64
import uuid

import pytest

from chalicelib import deps, jobs
from chalicelib.adapters import db
from tests.support.api import (
    LEADS,
    body,
    download,
    error_of,
    post_json,
    purge_queue,
    s3_keys,
    upload_and_process,
    upload_csv,
)


@pytest.fixture(autouse=True)
def clean(conn, settings):
    purge_queue(settings.chunk_queue_url)


def job_count(conn) -> int:
    return conn.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"]


# ---------------------------------------------------------------- query parameters

@pytest.mark.parametrize("limit", ["²", "٣", "1" * 5000, "-1", "1e3", " 5", "0x10", "５"])
def test_limits_that_are_not_plain_ascii_digits_are_400(client, limit):
    job_id, _ = upload_and_process(client)
    assert error_of(client.http.get(f"/api/jobs?limit={limit}")) == (400, "bad_limit")
    assert error_of(client.http.get(f"/api/jobs/{job_id}/results?limit={limit}")) == (400, "bad_limit")


@pytest.mark.parametrize("row", ["²", "1" * 5000, "١٢"])
def test_a_results_cursor_decoding_to_odd_digits_is_400(client, row):
    job_id, _ = upload_and_process(client)
    cursor = base64.urlsafe_b64encode(row.encode()).decode().rstrip("=")
    assert error_of(client.http.get(f"/api/jobs/{job_id}/results?cursor={cursor}")) == (400, "bad_cursor")


def test_a_jobs_cursor_with_odd_parts_is_400(client):
    for raw in ["2026-01-01T00:00:00|" + "1" * 5000, "²|" + str(uuid.uuid4()), "\x00|x"]:
        cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
        assert error_of(client.http.get(f"/api/jobs?cursor={cursor}")) == (400, "bad_cursor")


# ---------------------------------------------------------------- JSON bodies

@pytest.mark.parametrize("field", ["instructions", "model"])
def test_a_nul_or_control_character_in_process_text_is_400_and_nothing_starts(client, conn, field):
    job = body(upload_csv(client, LEADS))["job"]
    response = post_json(client, "/api/upload/process", {"job_id": job["id"], field: "We sell\u0000 robots"})
    assert error_of(response) == (400, f"bad_{field}")
    assert db.get_job(conn, job["id"])["status"] == "pending"


def test_newlines_and_tabs_in_instructions_are_fine(client):
    job = body(upload_csv(client, LEADS))["job"]
    response = post_json(client, "/api/upload/process", {"job_id": job["id"], "instructions": "We sell\n\trobots."})
    assert response.status_code == 202, response.body


@pytest.mark.parametrize("payload, code", [
    ({"file_name": "a\u0000b.csv"}, "bad_file_name"),
    ({"file_name": "x" * 1001 + ".csv"}, "bad_file_name"),
    ({"file_name": ["x.csv"]}, "missing_file_name"),
    ({"file_name": "x.csv", "url_column": {}}, "bad_url_column"),
    ({"file_name": "x.csv", "url_column": []}, "bad_url_column"),
    ({"file_name": "x.csv", "url_column": 5}, "bad_url_column"),
    ({"file_name": "x.csv", "url_column": "a\u0000b"}, "bad_url_column"),
    ({"file_name": "x.csv", "url_column": "c" * 1001}, "bad_url_column"),
])
def test_bad_presigned_upload_fields_are_400_and_create_nothing(client, conn, payload, code):
    assert error_of(post_json(client, "/api/upload/url", payload)) == (400, code)
    assert job_count(conn) == 0


def test_url_column_with_a_nul_in_a_form_or_query_is_400(client, conn):
    response = client.http.post("/api/upload?filename=a.csv&url_column=web%00site",
                                headers={"Content-Type": "text/csv"}, body=LEADS)
    assert error_of(response) == (400, "bad_url_column")
    assert job_count(conn) == 0


def test_json_nested_too_deep_is_400(client):
    deep = "[" * 100_000 + "]" * 100_000
    assert error_of(post_json(client, "/api/upload/process", None, raw='{"job_id": ' + deep + "}")) == (
        400, "bad_json")


@pytest.mark.parametrize("raw", ['{"job_id": "\\ud800"}', b'{"job_id": "\xff"}'])
def test_json_with_broken_unicode_is_400(client, raw):
    response = client.http.post("/api/upload/process", headers={"Content-Type": "application/json"}, body=raw)
    assert response.status_code == 400 or response.status_code == 404, response.body
    assert body(response)["error"]["code"] in ("bad_json", "job_not_found")


# ---------------------------------------------------------------- files

def test_a_nul_byte_after_the_first_64_kib_is_400_and_stores_nothing(client, conn):
    data = b"url,notes\n" + b"".join(f"site{i}.example.com,note {i}\n".encode() for i in range(5000))
    assert len(data) > 70_000
    data += b"site-x.example.com,bad\x00note\n"
    response = upload_csv(client, data)
    assert error_of(response) == (415, "not_csv")
    assert job_count(conn) == 0 and s3_keys(f"uploads/{client.account.id}/") == []


def test_a_presigned_file_with_a_late_nul_fails_the_job_cleanly(client, conn):
    created = body(post_json(client, "/api/upload/url", {"file_name": "late.csv", "size": 100}))
    data = b"url\n" + b"".join(f"site{i}.example.com\n".encode() for i in range(6000)) + b"nul\x00.example.com\n"
    deps.storage().put_bytes(f"uploads/{client.account.id}/{created['job']['id']}/late.csv", data)
    response = post_json(client, "/api/upload/process", {"job_id": created["job"]["id"]})
    assert error_of(response) == (415, "not_csv")
    assert db.get_job(conn, created["job"]["id"])["status"] == "failed"
    assert conn.execute("SELECT count(*) AS n FROM urls").fetchone()["n"] == 0


# ---------------------------------------------------------------- names and downloads

def test_a_download_with_a_non_latin1_name_has_an_ascii_fallback_and_utf8_name(client, conn):
    response = client.http.post("/api/upload?filename=%E6%8A%A5%E5%91%8A.csv", headers={"Content-Type": "text/csv"},
                                body=LEADS)
    job = body(response)["job"]
    assert job["file_name"] == "报告.csv"
    got = download(client, job["id"])
    assert got.status_code == 200
    disposition = got.headers["Content-Disposition"]
    disposition.encode("latin-1")  # a header chalice local (and HTTP/1.1) can send
    assert disposition.startswith('attachment; filename="') and "filename*=UTF-8''%E6%8A%A5%E5%91%8A-openers.csv" in (
        disposition)


def test_bidi_and_other_format_characters_are_stripped_from_stored_names(client):
    name = "invoice\u202egnp.csv"  # right-to-left override: shows as "invoicevsc.png"
    created = body(post_json(client, "/api/upload/url", {"file_name": name, "size": 100}))
    assert created["job"]["file_name"] == "invoicegnp.csv"
    raw = client.http.post("/api/upload?filename=a%E2%80%8Bb%E2%81%A6.csv", headers={"Content-Type": "text/csv"},
                           body=LEADS)
    assert body(raw)["job"]["file_name"] == "ab.csv"


def test_downloading_a_drop_whose_source_was_deleted_is_410(client, conn, settings):
    storage = deps.storage()
    key = f"incoming/{client.account.id}/gone-{uuid.uuid4().hex[:6]}.csv"
    storage.put_bytes(key, LEADS)
    started = jobs.start_from_drop(conn, storage, deps.chunk_queue(), settings, key=key, version="v1")
    job_id = started["job"]["id"]
    for stored in s3_keys(f"incoming/{client.account.id}/") + s3_keys(f"uploads/{client.account.id}/{job_id}/"):
        storage.delete(stored)
    assert error_of(download(client, job_id)) == (410, "source_gone")


# ---------------------------------------------------------------- the model's text

def test_text_the_model_returns_is_stripped_of_nul_and_control_characters():
    from chalicelib.generation.answers import clean_opener

    raw = "Hi Acme\u0000 team, your\u0007 new\u001b[31m plant in Ohio\u202e looks impressive\u0085 indeed."
    cleaned = clean_opener(raw)
    assert cleaned is not None
    assert not any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f or c in "\u202a\u202b\u202c\u202d\u202e" for c in cleaned)
    assert "Acme team" in cleaned and "plant in Ohio" in cleaned



# ---------------------------------------------------------------- AWS payload limits

def test_the_body_limits_fit_lambdas_6_mb_once_base64_encoded():
    from chalicelib.jobs import export
    from chalicelib.settings import BINARY_BODY_LIMIT

    six_mb = 6 * 1024 * 1024
    assert len(base64.b64encode(b"x" * BINARY_BODY_LIMIT)) + 64 * 1024 <= six_mb
    assert export.INLINE_DOWNLOAD_LIMIT == BINARY_BODY_LIMIT
    assert 4_500_000 < BINARY_BODY_LIMIT < 4_720_000  # "~4.4 MB": what a direct upload can carry


def test_a_direct_upload_too_big_for_one_request_is_413_pointing_at_the_presigned_path(client, conn, env):
    env(MAX_DIRECT_UPLOAD="2000")
    data = b"url\n" + b"".join(f"site{i}.example.com\n".encode() for i in range(200))
    response = upload_csv(client, data)
    assert error_of(response) == (413, "use_presigned_upload")
    assert "/api/upload/url" in body(response)["error"]["message"]
    assert job_count(conn) == 0 and s3_keys(f"uploads/{client.account.id}/") == []


def test_downloading_a_completed_job_redirects_to_its_results_csv(client, conn):
    job_id, _ = upload_and_process(client)
    conn.execute("UPDATE urls SET status = 'completed', opener = 'Hi there, nice site.', finished_at = now() "
                 "WHERE job_id = %s", (job_id,))
    conn.execute("UPDATE jobs SET processed_rows = total_rows, progress = 100 WHERE id = %s", (job_id,))
    job = db.complete_job_if_done(conn, job_id)
    assert jobs.export_job(deps.conn, deps.storage(), job)
    response = download(client, job_id)
    assert response.status_code == 302
    location = response.headers["Location"]
    assert f"/results/{client.account.id}/{job_id}.csv?" in location
    import urllib.request

    with urllib.request.urlopen(location) as fetched:
        assert fetched.read().decode().count(",completed,") == 2


def test_with_several_cors_origins_the_callers_origin_is_answered_if_listed(client, env):
    env(CORS_ALLOW_ORIGIN="https://a.example.com,https://b.example.com")
    listed = client.http.get("/api/jobs", headers={"Origin": "https://b.example.com"})
    assert listed.headers["Access-Control-Allow-Origin"] == "https://b.example.com"
    assert listed.headers["Vary"] == "Origin"
    other = client.http.get("/api/jobs", headers={"Origin": "https://evil.example.com"})
    assert other.headers.get("Access-Control-Allow-Origin") != "https://evil.example.com"


@pytest.mark.parametrize("path, payload, code", [
    ("/api/upload/url", {"file_name": "\ud800.csv"}, "bad_file_name"),
    ("/api/upload/url", {"file_name": "leads.csv", "url_column": "\udfff"}, "bad_url_column"),
])
def test_lone_surrogates_in_json_text_are_400_not_500(client, conn, path, payload, code):
    assert error_of(post_json(client, path, payload)) == (400, code)
    job = body(upload_csv(client, LEADS))["job"]
    response = post_json(client, "/api/upload/process", {"job_id": job["id"], "instructions": "Hi \ud800"})
    assert error_of(response) == (400, "bad_instructions")


# ---------------------------------------------------------------- presigned uploads, bounded (issue 19, item 9)

def put(url: str, data: bytes) -> int:
    """PUT `data` to a presigned URL as a browser or the CLI does; the HTTP status S3 answered."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=data, method="PUT", headers={"Content-Type": "text/csv"})
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def presign(client, file_name: str, size: int) -> dict:
    response = post_json(client, "/api/upload/url", {"file_name": file_name, "size": size})
    assert response.status_code == 201, response.body
    return body(response)


SMALL_CSV = b"website\nacme.com\nglobex.com\n"


def test_s3_refuses_a_presigned_put_of_more_or_fewer_bytes_than_declared(client, conn):
    created = presign(client, "sized.csv", len(SMALL_CSV))
    key = f"uploads/{client.account.id}/{created['job']['id']}/sized.csv"
    assert "content-length" in created["upload_url"].lower()  # X-Amz-SignedHeaders names it
    assert put(created["upload_url"], SMALL_CSV + b"initech.com\n" * 1000) == 403
    assert put(created["upload_url"], SMALL_CSV[:-3]) == 403
    assert s3_keys(key) == []
    assert put(created["upload_url"], SMALL_CSV) == 200
    response = post_json(client, "/api/upload/process", {"job_id": created["job"]["id"]})
    assert response.status_code == 202, response.body


@pytest.mark.parametrize("payload", [
    {"file_name": "x.csv"},
    {"file_name": "x.csv", "size": None},
    {"file_name": "x.csv", "size": 0},
    {"file_name": "x.csv", "size": -5},
    {"file_name": "x.csv", "size": 1.5},
    {"file_name": "x.csv", "size": "100"},
    {"file_name": "x.csv", "size": True},
])
def test_a_presigned_upload_needs_its_size_in_whole_bytes(client, conn, payload):
    response = post_json(client, "/api/upload/url", payload)
    assert error_of(response) == (400, "bad_size")
    assert "size" in body(response)["error"]["message"]
    assert job_count(conn) == 0


def test_a_presigned_upload_over_max_file_size_is_413_before_anything_is_created(client, conn, env):
    env(MAX_FILE_SIZE="1000")
    assert error_of(post_json(client, "/api/upload/url", {"file_name": "x.csv", "size": 1001})) == (
        413, "file_too_large")
    assert job_count(conn) == 0
    assert presign(client, "x.csv", 1000)["job"]["status"] == "pending"


def test_a_presigned_file_that_fails_validation_is_deleted_and_its_job_failed(client, conn):
    data = b"%PDF-1.4 binary"
    created = presign(client, "bad.csv", len(data))
    key = f"uploads/{client.account.id}/{created['job']['id']}/bad.csv"
    assert put(created["upload_url"], data) == 200 and s3_keys(key) == [key]
    assert error_of(post_json(client, "/api/upload/process", {"job_id": created["job"]["id"]})) == (415, "not_csv")
    job = db.get_job(conn, created["job"]["id"])
    assert job["status"] == "failed" and "PDF" in job["error"]
    assert s3_keys(key) == []


def test_a_stored_file_over_max_file_size_is_deleted_and_its_job_failed(client, conn, env):
    data = b"website\n" + b"".join(f"site{i}.example.com\n".encode() for i in range(100))
    created = presign(client, "big.csv", len(data))
    key = f"uploads/{client.account.id}/{created['job']['id']}/big.csv"
    assert put(created["upload_url"], data) == 200
    env(MAX_FILE_SIZE="1000")  # lowered after the URL was signed
    assert error_of(post_json(client, "/api/upload/process", {"job_id": created["job"]["id"]})) == (
        413, "file_too_large")
    job = db.get_job(conn, created["job"]["id"])
    assert job["status"] == "failed" and "limit is 1,000" in job["error"]
    assert s3_keys(key) == []


def test_presigned_jobs_not_yet_processed_are_capped_per_account(client, conn, env, make_account):
    env(ACCOUNT_MAX_PENDING="2")
    first = presign(client, "a.csv", len(SMALL_CSV))
    presign(client, "b.csv", len(SMALL_CSV))
    refused = post_json(client, "/api/upload/url", {"file_name": "c.csv", "size": len(SMALL_CSV)})
    assert error_of(refused) == (429, "too_many_pending")
    assert "2 presigned uploads" in body(refused)["error"]["message"]
    assert job_count(conn) == 2
    other = client.as_account(make_account())  # another account's pending jobs are its own
    assert post_json(other, "/api/upload/url", {"file_name": "c.csv", "size": 5}).status_code == 201
    assert put(first["upload_url"], SMALL_CSV) == 200  # processing one frees its place
    assert post_json(client, "/api/upload/process", {"job_id": first["job"]["id"]}).status_code == 202
    presign(client, "c.csv", len(SMALL_CSV))


def test_a_big_download_of_an_unfinished_job_is_rendered_once_per_progress(client, conn, monkeypatch):
    from chalicelib.jobs import export

    monkeypatch.setattr(export, "INLINE_DOWNLOAD_LIMIT", 50)
    renders = []
    real_render = export.render_csv
    monkeypatch.setattr(export, "render_csv", lambda *args: renders.append(args[2]["id"]) or real_render(*args))
    job_id, _ = upload_and_process(client)
    prefix = f"exports/{client.account.id}/{job_id}/"

    first = download(client, job_id)
    second = download(client, job_id)
    assert first.status_code == second.status_code == 302
    assert len(renders) == 1  # the second found the first's export: no progress in between
    [stored] = s3_keys(prefix)
    assert f"/{stored}?" in first.headers["Location"] and f"/{stored}?" in second.headers["Location"]

    conn.execute("UPDATE urls SET status = 'completed', opener = 'Hi Acme, nice plant.', finished_at = now() "
                 "WHERE job_id = %s AND url LIKE 'https://acme.com%%'", (job_id,))
    conn.execute("UPDATE jobs SET processed_rows = 1, progress = 50 WHERE id = %s", (job_id,))
    third = download(client, job_id)
    assert third.status_code == 302 and len(renders) == 2
    [newer] = s3_keys(prefix)  # the older version is gone
    assert newer != stored and f"/{newer}?" in third.headers["Location"]
    import urllib.request

    with urllib.request.urlopen(third.headers["Location"]) as fetched:
        assert "Hi Acme, nice plant." in fetched.read().decode()
