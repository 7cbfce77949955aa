"""Every endpoint and error code of SPEC.md through chalice.test.Client, against the real
PostgreSQL and LocalStack (S3, SQS) that `make test` provides."""

from __future__ import annotations

import csv
import io
import json
import uuid

import pytest

from chalicelib import deps
from chalicelib.adapters.queue import parse_chunk_message
from tests.support.api import (
    LEADS,
    body,
    download,
    drain_queue,
    error_of,
    mark_urls_done,
    multipart,
    post_json,
    purge_queue,
    s3_keys,
    upload_and_process,
    upload_csv,
)
from tests.support.util import ROOT


@pytest.fixture(autouse=True)
def clean(conn, settings):
    purge_queue(settings.chunk_queue_url)
    yield


# ---------------------------------------------------------------- upload

def test_multipart_upload_creates_a_pending_job_and_stores_the_original(client, conn, account):
    headers, payload = multipart({}, ("leads.csv", LEADS, "text/csv"))
    response = client.http.post("/api/upload", headers=headers, body=payload)
    data = body(response)
    assert response.status_code == 201, data
    assert data["url_column"] == "website"
    assert data["columns"] == ["name", "website", "notes"]
    assert (data["total_rows"], data["invalid_rows"]) == (2, 1)
    assert data["errors"] == [{"row": 3, "value": "javascript:alert(1)",
                               "message": "not an http(s) URL (javascript: links are not supported)"}]
    job = data["job"]
    assert job["status"] == "pending" and job["file_name"] == "leads.csv"
    key = f"uploads/{account.id}/{job['id']}/leads.csv"
    assert job["account_id"] == account.id
    assert s3_keys(f"uploads/{account.id}/{job['id']}/") == [key]
    assert deps.storage().s3.get_object(Bucket=deps.storage().bucket, Key=key)["Body"].read() == LEADS


def test_multipart_url_column_field_picks_the_column(client):
    data = b"a,b\nacme.com,globex.com\ninitech.com,umbrella.com\n"
    headers, payload = multipart({"url_column": "b"}, ("x.csv", data, "text/csv"))
    assert body(client.http.post("/api/upload", headers=headers, body=payload))["url_column"] == "b"


def test_raw_csv_body_upload(client):
    response = upload_csv(client, b"url\nacme.com\n", filename="raw.csv")
    assert response.status_code == 201
    assert body(response)["job"]["file_name"] == "raw.csv"


@pytest.mark.parametrize("case, expected", [
    ("no_file", (400, "no_file")),
    ("empty", (400, "empty_file")),
    ("no_urls", (400, "no_valid_urls")),
    ("binary", (415, "not_csv")),
    ("pdf_name", (415, "not_csv")),
    ("image_type", (415, "not_csv")),
    ("json_type", (415, "not_csv")),
    ("unknown_column", (400, "unknown_url_column")),
])
def test_rejected_uploads_store_nothing(client, conn, case, expected):
    if case == "no_file":
        headers, payload = multipart({"x": "y"}, None)
    elif case == "empty":
        headers, payload = multipart({}, ("e.csv", b"   \n", "text/csv"))
    elif case == "no_urls":
        headers, payload = multipart({}, ("n.csv", b"url\nnot a url\nlocalhost\n", "text/csv"))
    elif case == "binary":
        headers, payload = multipart({}, ("b.csv", b"url\x00\x01\x02binary", "text/csv"))
    elif case == "pdf_name":
        headers, payload = multipart({}, ("doc.pdf", b"url\nacme.com\n", "application/pdf"))
    elif case == "image_type":
        headers, payload = multipart({}, ("a.csv", b"url\nacme.com\n", "image/png"))
    elif case == "json_type":
        headers, payload = {"Content-Type": "application/json"}, b'{"url": "acme.com"}'
    else:
        headers, payload = multipart({"url_column": "nope"}, ("u.csv", LEADS, "text/csv"))
    before = s3_keys("uploads/")
    response = client.http.post("/api/upload", headers=headers, body=payload)
    assert error_of(response) == expected
    assert conn.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"] == 0
    assert s3_keys("uploads/") == before


@pytest.mark.parametrize("boundary", ["caf\u00e9-\u20ac", "\U0001f4c4boundary"], ids=["euro-sign", "emoji"])
def test_a_multipart_content_type_outside_latin1_is_400_in_the_error_shape(client, conn, boundary):
    _, payload = multipart({}, ("leads.csv", LEADS, "text/csv"))
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = client.http.post("/api/upload", headers=headers, body=payload)
    assert error_of(response) == (400, "bad_multipart")
    assert "Latin-1" in body(response)["error"]["message"]
    assert conn.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"] == 0


def test_file_over_max_file_size_is_413(client, env, conn):
    env(MAX_FILE_SIZE="1000")
    response = upload_csv(client, b"url\n" + b"acme.com\n" * 200)
    assert error_of(response) == (413, "file_too_large")
    assert conn.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"] == 0


# ---------------------------------------------------------------- process

def test_process_stores_urls_and_enqueues_one_message_per_chunk(client, conn, env, settings):
    env(CHUNK_SIZE="2")
    data = b"url\n" + b"".join(f"company{i}.com\n".encode() for i in range(5))
    job_id, response = upload_and_process(client, data, instructions="We sell robots.", model="gpt-4o-mini")
    result = body(response)
    assert response.status_code == 202, result
    assert result["chunks"] == 3
    job = result["job"]
    assert (job["status"], job["total_rows"], job["instructions"]) == ("processing", 5, "We sell robots.")
    rows = conn.execute("SELECT row_number, chunk, url, status FROM urls WHERE job_id = %s ORDER BY row_number",
                        (job_id,)).fetchall()
    assert [(r["row_number"], r["chunk"]) for r in rows] == [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2)]
    assert rows[0]["url"] == "https://company0.com/" and {r["status"] for r in rows} == {"pending"}
    messages = [parse_chunk_message(m["Body"]) for m in drain_queue(settings.chunk_queue_url)]
    assert sorted(messages) == [(job_id, 0), (job_id, 1), (job_id, 2)]


def test_second_process_call_is_409_and_enqueues_nothing(client, conn, settings):
    job_id, first = upload_and_process(client)
    assert first.status_code == 202
    drain_queue(settings.chunk_queue_url)
    second = post_json(client, "/api/upload/process", {"jobId": job_id})
    assert error_of(second) == (409, "already_started")
    assert drain_queue(settings.chunk_queue_url) == []
    assert conn.execute("SELECT count(*) AS n FROM urls WHERE job_id = %s", (job_id,)).fetchone()["n"] == 2


def test_failed_enqueue_leaves_the_job_pending_with_no_rows(client, conn, monkeypatch):
    job = body(upload_csv(client, LEADS))["job"]

    def broken(*_args, **_kwargs):
        raise RuntimeError("SQS is down")

    monkeypatch.setattr(deps.chunk_queue(), "send_chunks", broken)
    response = post_json(client, "/api/upload/process", {"job_id": job["id"]})
    assert response.status_code == 500
    assert body(response)["error"]["code"] == "internal_error"
    row = conn.execute("SELECT status, total_rows, chunks FROM jobs WHERE id = %s", (job["id"],)).fetchone()
    assert row["status"] == "pending" and row["chunks"] == 0
    assert conn.execute("SELECT count(*) AS n FROM urls WHERE job_id = %s", (job["id"],)).fetchone()["n"] == 0
    monkeypatch.undo()
    assert post_json(client, "/api/upload/process", {"job_id": job["id"]}).status_code == 202


@pytest.mark.parametrize("payload, raw, expected", [
    ({}, None, (400, "missing_job_id")),
    (None, "{not json", (400, "bad_json")),
    ({"job_id": str(uuid.uuid4())}, None, (404, "job_not_found")),
    ({"job_id": "not-a-uuid"}, None, (404, "job_not_found")),
])
def test_process_errors(client, payload, raw, expected):
    assert error_of(post_json(client, "/api/upload/process", payload, raw)) == expected


def test_instructions_must_be_text(client):
    job = body(upload_csv(client, LEADS))["job"]
    response = post_json(client, "/api/upload/process", {"job_id": job["id"], "instructions": ["x"]})
    assert error_of(response) == (400, "bad_instructions")


# ---------------------------------------------------------------- presigned upload

def test_presigned_upload_then_process_validates_the_stored_file(client, conn, settings):
    import urllib.request

    file = b"website\nacme.com\nglobex.com\nbad value\n"
    created = post_json(client, "/api/upload/url", {"file_name": "big.csv", "size": len(file)})
    data = body(created)
    assert created.status_code == 201 and data["job"]["status"] == "pending"
    request = urllib.request.Request(data["upload_url"], data=file,
                                     method="PUT", headers={"Content-Type": "text/csv"})
    with urllib.request.urlopen(request) as put:
        assert put.status == 200
    response = post_json(client, "/api/upload/process", {"job_id": data["job"]["id"]})
    result = body(response)
    assert response.status_code == 202, result
    assert (result["job"]["total_rows"], result["job"]["invalid_rows"], result["chunks"]) == (2, 1, 1)


def test_presigned_upload_of_a_bad_file_fails_the_job_with_the_reason(client, conn, account):
    import urllib.request

    data = body(post_json(client, "/api/upload/url", {"file_name": "bad.csv", "size": 15}))
    request = urllib.request.Request(data["upload_url"], data=b"%PDF-1.4 binary", method="PUT",
                                     headers={"Content-Type": "text/csv"})
    with urllib.request.urlopen(request) as put:  # the client PUTs to the URL it was given
        assert put.status == 200
    # ...which is uploads/{account_id}/{job_id}/{name}, the only object under the account's uploads
    assert s3_keys(f"uploads/{account.id}/") == [f"uploads/{account.id}/{data['job']['id']}/bad.csv"]
    response = post_json(client, "/api/upload/process", {"job_id": data["job"]["id"]})
    assert error_of(response) == (415, "not_csv")
    job = body(client.http.get(f"/api/jobs/{data['job']['id']}"))["job"]
    assert job["status"] == "failed" and "PDF" in job["error"]
    assert conn.execute("SELECT count(*) AS n FROM urls").fetchone()["n"] == 0


def test_process_before_the_presigned_put_is_400_and_keeps_the_job_pending(client):
    data = body(post_json(client, "/api/upload/url", {"file_name": "later.csv", "size": 100}))
    response = post_json(client, "/api/upload/process", {"job_id": data["job"]["id"]})
    assert error_of(response) == (400, "file_not_uploaded")
    assert body(client.http.get(f"/api/jobs/{data['job']['id']}"))["job"]["status"] == "pending"


def test_presigned_upload_needs_a_csv_file_name(client):
    assert error_of(post_json(client, "/api/upload/url", {})) == (400, "missing_file_name")
    assert error_of(post_json(client, "/api/upload/url", {"file_name": "x.xlsx"})) == (415, "not_csv")


# ---------------------------------------------------------------- read side

def test_jobs_list_is_newest_first_with_filter_and_cursor(client):
    ids = [body(upload_csv(client, LEADS, filename=f"f{i}.csv"))["job"]["id"] for i in range(5)]
    page1 = body(client.http.get("/api/jobs?limit=2"))
    page2 = body(client.http.get(f"/api/jobs?limit=2&cursor={page1['next_cursor']}"))
    page3 = body(client.http.get(f"/api/jobs?limit=2&cursor={page2['next_cursor']}"))
    seen = [j["id"] for j in page1["jobs"] + page2["jobs"] + page3["jobs"]]
    assert seen == ids[::-1]
    assert page3["next_cursor"] is None
    assert body(client.http.get("/api/jobs?status=completed"))["jobs"] == []
    assert error_of(client.http.get("/api/jobs?status=done")) == (400, "bad_status")
    assert error_of(client.http.get("/api/jobs?limit=101")) == (400, "bad_limit")
    assert error_of(client.http.get("/api/jobs?cursor=garbage")) == (400, "bad_cursor")


def test_job_and_results_in_file_order_with_keyset_cursor(client, conn):
    data = b"url\n" + b"".join(f"site{i}.com\n".encode() for i in range(7))
    job_id, _ = upload_and_process(client, data)
    job = body(client.http.get(f"/api/jobs/{job_id}"))["job"]
    assert (job["total_rows"], job["processed_rows"], job["failed_rows"], job["progress"]) == (7, 0, 0, 0)
    first = body(client.http.get(f"/api/jobs/{job_id}/results?limit=3"))
    assert [r["row"] for r in first["results"]] == [1, 2, 3]
    assert set(first["results"][0]) == {"id", "row", "url", "status", "opener", "error", "retry_count",
                                        "context_status", "evidence", "grounding", "quality", "words", "language",
                                        "reused", "review", "version", "updated_at", "edited", "feedback",
                                        "cached_tokens", "variants", "variant"}
    rest = body(client.http.get(f"/api/jobs/{job_id}/results?limit=10&cursor={first['next_cursor']}"))
    assert [r["row"] for r in rest["results"]] == [4, 5, 6, 7] and rest["next_cursor"] is None
    assert body(client.http.get(f"/api/jobs/{job_id}/results?status=failed"))["results"] == []
    assert error_of(client.http.get(f"/api/jobs/{job_id}/results?limit=1001")) == (400, "bad_limit")
    assert error_of(client.http.get(f"/api/jobs/{uuid.uuid4()}")) == (404, "job_not_found")
    assert error_of(client.http.get(f"/api/jobs/{uuid.uuid4()}/results")) == (404, "job_not_found")


# ---------------------------------------------------------------- control

def test_cancel_then_cancel_again_is_409(client):
    job_id, _ = upload_and_process(client)
    response = client.http.post(f"/api/upload/{job_id}/cancel")
    assert response.status_code == 200 and body(response)["job"]["status"] == "canceled"
    assert error_of(client.http.post(f"/api/upload/{job_id}/cancel")) == (409, "not_cancelable")
    assert error_of(client.http.post(f"/api/upload/{uuid.uuid4()}/cancel")) == (404, "job_not_found")


def test_retry_reenqueues_only_chunks_with_failed_urls(client, conn, env, settings):
    env(CHUNK_SIZE="2")
    data = b"url\n" + b"".join(f"r{i}.com\n".encode() for i in range(6))
    job_id, _ = upload_and_process(client, data)
    assert error_of(client.http.post(f"/api/jobs/{job_id}/retry")) == (409, "not_retryable")
    mark_urls_done(conn, job_id, failed_rows=[4])
    drain_queue(settings.chunk_queue_url)
    response = client.http.post(f"/api/jobs/{job_id}/retry")
    result = body(response)
    assert response.status_code == 202, result
    assert result["retried"] == 1 and result["job"]["status"] == "processing"
    assert (result["job"]["processed_rows"], result["job"]["failed_rows"], result["job"]["progress"]) == (5, 0, 83)
    assert [parse_chunk_message(m["Body"]) for m in drain_queue(settings.chunk_queue_url)] == [(job_id, 1)]
    mark_urls_done(conn, job_id)
    assert error_of(client.http.post(f"/api/jobs/{job_id}/retry")) == (409, "nothing_to_retry")


def test_retry_of_a_canceled_job_takes_the_unprocessed_urls(client, conn, settings):
    job_id, _ = upload_and_process(client)
    client.http.post(f"/api/upload/{job_id}/cancel")
    drain_queue(settings.chunk_queue_url)
    result = body(client.http.post(f"/api/jobs/{job_id}/retry"))
    assert result["retried"] == 2 and result["job"]["status"] == "processing"
    assert len(drain_queue(settings.chunk_queue_url)) == 1


# ---------------------------------------------------------------- download

def test_download_has_every_row_in_order_with_opener_columns_and_no_formulas(client, conn):
    data = b"name,website,notes\nAcme,acme.com,=SUM(A1)\nBad,javascript:alert(1),x\nGlobex,globex.com,\n"
    job_id, _ = upload_and_process(client, data)
    mark_urls_done(conn, job_id, failed_rows=[3])
    response = download(client, job_id)
    assert response.status_code == 200, response.body
    assert response.headers["Content-Type"].startswith("text/csv")
    assert 'attachment; filename="leads-openers.csv"' in response.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.body.decode("utf-8"))))
    assert rows[0] == ["name", "website", "notes", "opener", "opener_status", "opener_error", "context_status",
                       "opener_evidence", "opener_quality", "opener_language"]
    assert rows[1] == ["Acme", "acme.com", "'=SUM(A1)", "'=Hello https://acme.com/", "completed", "", "fetched",
                       "", "", ""]
    assert rows[2][:2] == ["Bad", "javascript:alert(1)"] and rows[2][4] == "invalid" and rows[2][5]
    assert rows[2][6:] == ["", "", "", ""]
    assert rows[3] == ["Globex", "globex.com", "", "", "failed", "HTTP 500", "timeout", "", "", ""]


def test_download_of_a_headerless_latin1_file_adds_a_header_and_reencodes(client, conn):
    data = "acme.com\ncaf\u00e9-berlin.de\n".encode("cp1252")
    job_id, _ = upload_and_process(client, data)
    rows = list(csv.reader(io.StringIO(download(client, job_id).body.decode("utf-8"))))
    assert rows[0] == ["url", "opener", "opener_status", "opener_error", "context_status", "opener_evidence",
                       "opener_quality", "opener_language"]
    assert rows[2][0] == "caf\u00e9-berlin.de" and rows[2][2:] == ["pending", "", "", "", "", ""]


def test_download_before_processing_lists_rows_as_pending(client):
    job = body(upload_csv(client, LEADS))["job"]
    rows = list(csv.reader(io.StringIO(download(client, job["id"]).body.decode())))
    status = rows[0].index("opener_status")
    assert [r[status] for r in rows[1:]] == ["pending", "pending", "invalid"]
    assert [r[status + 2:] for r in rows[1:]] == [["", "", "", ""]] * 3


def test_download_to_a_client_that_does_not_accept_csv_is_406_in_the_error_shape(client):
    job_id = body(upload_csv(client, LEADS))["job"]["id"]
    for accept in ("application/json", None, "text/html, application/xml;q=0.9"):
        headers = {"Accept": accept} if accept else {}
        response = client.http.get(f"/api/upload/{job_id}/download", headers=headers)
        assert error_of(response) == (406, "not_acceptable"), response.body
        assert "text/csv" in body(response)["error"]["message"]
    unknown = client.http.get(f"/api/upload/{uuid.uuid4()}/download", headers={"Accept": "application/json"})
    assert error_of(unknown) == (404, "job_not_found")  # the job is looked at first
    for accept in ("text/csv", "text/csv;q=0.9, application/json", "*/*"):
        response = client.http.get(f"/api/upload/{job_id}/download", headers={"Accept": accept})
        assert response.status_code == 200 and response.body.startswith(b"name,website,notes,opener")


def test_big_download_redirects_to_a_presigned_url(client, conn, monkeypatch):
    from chalicelib.jobs import export

    monkeypatch.setattr(export, "INLINE_DOWNLOAD_LIMIT", 50)
    job_id, _ = upload_and_process(client)
    response = download(client, job_id)
    assert response.status_code == 302
    import urllib.request

    with urllib.request.urlopen(response.headers["Location"]) as fetched:
        text = fetched.read().decode()
    assert text.startswith("name,website,notes,opener,opener_status,opener_error,context_status,opener_evidence,"
                           "opener_quality,opener_language\r\n")


# ---------------------------------------------------------------- metrics, hygiene

def test_metrics_reports_the_accounts_own_figures_and_the_shared_ones_to_operator_keys_only(
        client, conn, make_account, env):
    env(OPENAI_RPM="3000", OPENAI_TPM="")
    other = client.as_account(make_account())
    other_job, _ = upload_and_process(other)  # another account's work never shows
    mark_urls_done(conn, other_job)
    conn.execute("UPDATE urls SET finished_at = now() WHERE job_id = %s", (other_job,))
    job_id, _ = upload_and_process(client)
    mark_urls_done(conn, job_id, failed_rows=[2])
    conn.execute("UPDATE urls SET finished_at = now() WHERE job_id = %s", (job_id,))
    own = {"jobs": {"pending": 0, "ingesting": 0, "processing": 0, "completed": 1, "failed": 0, "canceled": 0},
           "urls": {"pending": 0, "processing": 0, "completed": 1, "failed": 1},
           "throughput": {"urls_last_minute": 2, "urls_per_second": 0.03}, "discarded_results": 0}
    assert body(client.http.get("/api/metrics")) == own  # a member key
    customer_admin = client.as_account(make_account(role="admin", models=["gpt-4o-mini", "gpt-4o"]))
    admin_job, _ = upload_and_process(customer_admin)
    data = body(customer_admin.http.get("/api/metrics"))  # an admin of a customer account: its own only
    assert "queues" not in data and "provider_limits" not in data
    assert data["jobs"]["processing"] == 1 and data["urls"]["pending"] == 2 and data["jobs"]["completed"] == 0

    operator = client.as_account(make_account(operator=True, models=["gpt-4o-mini", "gpt-4o"]))  # a member key
    deps.rate_limiter().observe("gpt-4o", {"x-ratelimit-limit-requests": "5000", "x-ratelimit-limit-tokens": "800000"})
    data = body(operator.http.get("/api/metrics"))
    assert sum(data["jobs"].values()) == 0  # still its own account's jobs
    assert set(data["queues"]) == {"chunks", "dead_letter"} and "visible" in data["queues"]["chunks"]
    limits = data["provider_limits"]
    assert set(limits) == {"gpt-4o-mini", "gpt-4o"}
    assert limits["gpt-4o"]["learned"] == {"rpm": 5000, "tpm": 800000}
    assert limits["gpt-4o"]["ceiling"] == {"rpm": 3000, "tpm": 0}  # OPENAI_RPM=3000, OPENAI_TPM unset
    assert limits["gpt-4o"]["in_force"] == {"rpm": 3000, "tpm": 800000}


def test_an_unreachable_queue_in_metrics_is_described_not_quoted(client, env, make_account):
    operator = client.as_account(make_account(operator=True))
    env(AWS_ENDPOINT_URL="http://127.0.0.1:9", REDIS_URL="redis://127.0.0.1:9/0")  # nothing listens there
    data = body(operator.http.get("/api/metrics"))
    assert data["queues"] == {
        "chunks": {"error": "the chunks queue could not be reached (EndpointConnectionError)"},
        "dead_letter": {"error": "the dead_letter queue could not be reached (EndpointConnectionError)"}}
    assert data["provider_limits"]["gpt-4o-mini"]["error"].startswith(
        "the rate limiter's store (Redis) could not be reached (")
    assert "127.0.0.1" not in json.dumps(data)


def test_unexpected_errors_are_500_with_a_request_id_and_no_traceback(client, monkeypatch, capsys):
    from chalicelib import jobs

    def boom(*_a, **_k):
        raise KeyError("secret internals")

    monkeypatch.setattr(jobs, "list_", boom)
    response = client.http.get("/api/jobs")
    data = body(response)
    assert response.status_code == 500 and data["error"]["code"] == "internal_error"
    assert "request id" in data["error"]["message"] and "secret" not in response.body.decode()
    assert "secret internals" in capsys.readouterr().out  # the traceback goes to the log


def test_api_rate_limit_is_per_account_with_retry_after(client, env, make_account, redis_client, settings):
    # The window opens with the account's first request and lasts API_RATE_WINDOW_S, so the
    # test never straddles a boundary; the keys live under this run's RATELIMIT_PREFIX only.
    env(API_RATE_LIMIT_PER_MINUTE="3", API_RATE_WINDOW_S="600")
    codes = [client.http.get("/api/jobs").status_code for _ in range(4)]
    limited = client.http.get("/api/jobs")
    assert codes == [200, 200, 200, 429]
    assert error_of(limited) == (429, "rate_limited") and 500 <= int(limited.headers["Retry-After"]) <= 600
    # another account has its own budget; one with its own limit gets that
    assert client.as_account(make_account()).http.get("/api/jobs").status_code == 200
    roomy = client.as_account(make_account(rpm=10))
    assert [roomy.http.get("/api/jobs").status_code for _ in range(5)] == [200] * 5
    # The limiter's counter of this account (`<RATELIMIT_PREFIX>:api:{account:<id>}`, the hash tag
    # keeping it on one cluster slot) counted every request, and no key under any other prefix did.
    counter = f"{settings.ratelimit_prefix}:api:{{account:{client.account.id}}}"
    assert int(redis_client.get(counter)) == 5
    everywhere = sorted(k.decode() for k in redis_client.scan_iter(f"*:api:{{account:{client.account.id}}}"))
    assert everywhere == [counter]


def test_cors_headers_from_the_setting(client, env):
    """CORS_ALLOW_ORIGIN reaches every route: app.py, imported afresh with another value, carries
    it on each route and answers with it (the routes' CORS is fixed when app.py is imported)."""
    import importlib.util

    from chalice.test import Client

    response = client.http.get("/api/jobs", headers={"Origin": "https://app.example.com"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"  # the default
    env(CORS_ALLOW_ORIGIN="https://app.example.com")
    spec = importlib.util.spec_from_file_location("app_with_cors", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    routes = [(path, method, entry) for path, methods in module.app.routes.items() for method, entry in methods.items()]
    assert len(routes) > 10
    assert {(path, method): entry.cors.allow_origin for path, method, entry in routes} == {
        (path, method): "https://app.example.com" for path, method, _ in routes}
    with Client(module.app, stage_name="local") as other:
        response = other.http.get("/api/jobs", headers={"Origin": "https://app.example.com",
                                                        **client.account.headers})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"


def test_requeue_unfinished_enqueues_the_chunks_that_still_have_work(client, conn, env, settings):
    from chalicelib import jobs

    env(CHUNK_SIZE="2")
    job_id, _ = upload_and_process(client, b"url\n" + b"".join(f"q{i}.com\n".encode() for i in range(5)))
    conn.execute("UPDATE urls SET status = 'completed' WHERE job_id = %s AND chunk = 1", (job_id,))
    purge_queue(settings.chunk_queue_url)
    assert jobs.requeue_unfinished(conn, deps.chunk_queue()) == 2
    assert sorted(parse_chunk_message(m["Body"]) for m in drain_queue(settings.chunk_queue_url)) == [
        (job_id, 0), (job_id, 2)]


def test_the_scheduled_sweep_requeues_only_jobs_without_progress(client, conn, settings):
    stalled, _ = upload_and_process(client)
    busy, _ = upload_and_process(client)  # unfinished too, but it moved a moment ago
    with conn.transaction():  # backdate past the trigger that keeps updated_at current
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("UPDATE jobs SET updated_at = now() - interval '11 minutes' WHERE id = %s", (stalled,))
    conn.execute("UPDATE urls SET status = 'processing', claimed_by = gen_random_uuid(), "
                 "lease_until = now() - interval '1 minute' WHERE job_id = %s AND row_number = 1", (stalled,))
    purge_queue(settings.chunk_queue_url)
    event = client.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event", detail={},
                                            resources=[], region="us-east-1")
    client.lambda_.invoke("requeue_stalled", event)
    assert conn.execute("SELECT count(*) AS n FROM urls WHERE job_id = %s AND status = 'pending'",
                        (busy,)).fetchone()["n"] == 2
    assert [parse_chunk_message(m["Body"]) for m in drain_queue(settings.chunk_queue_url)] == [(stalled, 0)]
