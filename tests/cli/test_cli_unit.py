"""The `csv-opener` command without a server: arguments, exit codes, output and the HTTP it sends,
against a scripted API behind httpx.MockTransport (S3 included: presigned URLs point at a fake
storage host, which must never see the key)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest

from csv_opener_cli import api as api_module
from csv_opener_cli.api import Api, ApiError, filename_from, key_label, parse_retry_after, printable
from csv_opener_cli.main import main
from csv_opener_cli.progress import LineDisplay, RateMeter, format_duration, progress_line

KEY = "cso_1a2b3c4d_" + "S" * 43
SECRET = KEY.split("_", 2)[2]
API = "http://api.test"
S3 = "http://s3.test"
JOB_ID = "3f2c9a1e-5b6d-4e8f-9a0b-1c2d3e4f5a6b"
ENV = {"CSV_OPENER_API": API, "CSV_OPENER_KEY": KEY}


def job(status: str = "processing", processed: int = 0, failed: int = 0, total: int = 4, **extra) -> dict:
    done = processed + failed
    return {"id": JOB_ID, "file_name": "leads.csv", "status": status, "total_rows": total,
            "processed_rows": processed, "failed_rows": failed, "progress": round(100 * done / total),
            "invalid_rows": 1, "url_column": "website", "model": "gpt-4o-mini", "error": None,
            "created_at": "2025-01-02T03:04:05.678Z", "started_at": None, "finished_at": None, **extra}


def error(status: int, code: str, message: str, headers: dict | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}}, headers=headers)


class FakeApi:
    """Routes of the API (and a fake S3) as a MockTransport handler; every request is recorded.
    `polls` is the sequence of answers GET /api/jobs/{id} gives (the last one repeats)."""

    def __init__(self, polls: list | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.polls = polls or [job("completed", 3, 0, total=3)]
        self.overrides: dict[tuple[str, str], object] = {}
        self.csv = (b"company,website,opener,opener_status,opener_error,context_status\r\n"
                    b"Acme,acme.com,Hi Acme,completed,,fetched\r\n")

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def calls(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]

    def handle(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        route = (request.method, request.url.path)
        if route in self.overrides:
            answer = self.overrides[route]
            if isinstance(answer, list):
                answer = answer.pop(0) if len(answer) > 1 else answer[0]
            return answer(request) if callable(answer) else answer
        if request.url.host == "s3.test":
            if request.method == "PUT":
                return httpx.Response(200)
            return httpx.Response(200, content=self.csv, headers={
                "Content-Type": "text/csv", "Content-Disposition": 'attachment; filename="leads-openers.csv"'})
        if route == ("POST", "/api/upload"):
            return httpx.Response(201, json={"job": job("pending"), "url_column": "website", "total_rows": 4,
                                             "invalid_rows": 1, "columns": ["company", "website"],
                                             "errors": [{"row": 5, "value": "localhost", "message": "local host"}]})
        if route == ("POST", "/api/upload/url"):
            return httpx.Response(201, json={"job": job("pending"), "upload_url": f"{S3}/uploads/x?X-Amz-Signature=s",
                                             "method": "PUT", "headers": {"Content-Type": "text/csv"}})
        if route == ("POST", "/api/upload/process"):
            return httpx.Response(202, json={"job": job("processing"), "chunks": 1})
        if route == ("GET", f"/api/jobs/{JOB_ID}"):
            answer = self.polls.pop(0) if len(self.polls) > 1 else self.polls[0]
            return answer if isinstance(answer, httpx.Response) else httpx.Response(200, json={"job": answer})
        if route == ("GET", f"/api/upload/{JOB_ID}/download"):
            return httpx.Response(302, headers={"Location": f"{S3}/results/{JOB_ID}.csv?X-Amz-Signature=s"})
        if route == ("POST", f"/api/upload/{JOB_ID}/cancel"):
            return httpx.Response(200, json={"job": job("canceled", 1, 0)})
        if route == ("POST", f"/api/jobs/{JOB_ID}/retry"):
            return httpx.Response(202, json={"job": job("processing", 2, 0), "retried": 2})
        return httpx.Response(403, json={"message": "Missing Authentication Token"})


class Run:
    def __init__(self, code: int, out: str, err: str, sleeps: list[float]) -> None:
        self.code, self.out, self.err, self.sleeps = code, out, err, sleeps

    def json(self):
        return json.loads(self.out)


class TtyInput(io.StringIO):
    def isatty(self) -> bool:
        return True


def cli(fake: FakeApi, *argv: str, env: dict | None = None, stdin: io.StringIO | None = None,
        sleep=None) -> Run:
    out, err, sleeps = io.StringIO(), io.StringIO(), []
    code = main(list(argv), transport=fake.transport(), environ=ENV if env is None else env,
                stdin=stdin or io.StringIO(), stdout=out, stderr=err, sleep=sleep or sleeps.append)
    return Run(code, out.getvalue(), err.getvalue(), sleeps)


@pytest.fixture
def leads(tmp_path: Path) -> Path:
    path = tmp_path / "leads.csv"
    path.write_text("company,website\nAcme,acme.com\nBeta,beta.io\nGamma,gamma.org\nDelta,delta.net\nX,localhost\n")
    return path


def assert_no_secret(run: Run) -> None:
    assert SECRET not in run.out and SECRET not in run.err


# ---------------------------------------------------------------- arguments and exit codes


def test_help_exits_0_and_names_the_environment_and_exit_codes(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for needle in ("CSV_OPENER_API", "CSV_OPENER_KEY", "visible", "ps", "exit status", "130", "run", "preview"):
        assert needle in text


@pytest.mark.parametrize("argv", [
    ["run", "leads.csv"],                                 # --instructions is required
    ["run", "leads.csv", "--instructions", "x", "--instructions-file", "y"],
    ["status", "not-a-uuid"],
    ["jobs", "--status", "done"],
    ["jobs", "--limit", "0"],
    ["preview", JOB_ID, "--instructions", "x", "--rows", "6"],
    ["frobnicate"],
    [],
])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv, environ=ENV) == 2
    assert "usage: csv-opener" in capsys.readouterr().err


def test_global_options_work_before_and_after_the_command():
    fake = FakeApi()
    before = cli(fake, "--json", "status", JOB_ID)
    after = cli(fake, "status", JOB_ID, "--json")
    assert before.code == after.code == 0
    assert before.json() == after.json() == {"job": fake.polls[0]}


def test_no_key_is_a_usage_error_before_any_request():
    fake = FakeApi()
    run = cli(fake, "jobs", env={"CSV_OPENER_API": API})
    assert run.code == 2 and "CSV_OPENER_KEY" in run.err
    assert fake.requests == []


def test_key_from_the_flag_or_the_environment_is_sent_as_bearer():
    fake = FakeApi()
    assert cli(fake, "status", JOB_ID).code == 0
    assert cli(fake, "--key", "cso_99999999_" + "k" * 43, "status", JOB_ID).code == 0
    assert [r.headers["authorization"] for r in fake.requests] == [f"Bearer {KEY}",
                                                                   "Bearer cso_99999999_" + "k" * 43]


def test_bad_api_url_is_a_usage_error():
    run = cli(FakeApi(), "jobs", env={**ENV, "CSV_OPENER_API": "127.0.0.1:8000"})
    assert run.code == 2 and "http(s) URL" in run.err


# ---------------------------------------------------------------- errors in words


def test_unauthorized_shows_the_message_and_only_the_key_prefix():
    fake = FakeApi()
    fake.overrides[("GET", f"/api/jobs/{JOB_ID}")] = error(
        401, "unauthorized", "The API key starting cso_1a2b3c4d is not valid: check it, or ask for a new one.",
        {"WWW-Authenticate": "Bearer"})
    run = cli(fake, "status", JOB_ID)
    assert run.code == 2
    assert "is not valid: check it" in run.err and "401 unauthorized" in run.err and "key cso_1a2b3c4d" in run.err
    assert "{" not in run.err  # words, not raw JSON
    assert_no_secret(run)


def test_json_mode_prints_the_error_document_on_stdout():
    fake = FakeApi()
    fake.overrides[("GET", "/api/jobs")] = error(429, "rate_limited", "Too many requests; try again in 7 s",
                                                 {"Retry-After": "7"})
    run = cli(fake, "jobs", "--json")
    assert run.code == 2
    assert run.json() == {"error": {"status": 429, "code": "rate_limited",
                                    "message": "Too many requests; try again in 7 s", "retry_after": 7.0}}
    assert "Too many requests" in run.err and "retry after 7 s" in run.err


def test_non_json_error_and_unreachable_api():
    fake = FakeApi()
    fake.overrides[("GET", f"/api/jobs/{JOB_ID}")] = httpx.Response(502, text="<html>bad gateway</html>")
    run = cli(fake, "status", JOB_ID)
    assert run.code == 2 and "HTTP 502 Bad Gateway" in run.err and "<html>" not in run.err

    def refuse(request):
        raise httpx.ConnectError("Connection refused", request=request)

    fake.overrides[("GET", f"/api/jobs/{JOB_ID}")] = refuse
    run = cli(fake, "status", JOB_ID)
    assert run.code == 2 and "Could not reach the API at http://api.test" in run.err
    assert "Is the API running" in run.err


def test_preview_on_a_server_without_it_says_so():
    fake = FakeApi()  # unknown routes answer API Gateway's 403
    run = cli(fake, "preview", JOB_ID, "--instructions", "We sell rockets")
    assert run.code == 2 and "does not offer previews" in run.err
    fake.overrides[("POST", f"/api/jobs/{JOB_ID}/preview")] = error(404, "not_found", "No such route")
    assert "does not offer previews" in cli(fake, "preview", JOB_ID, "--instructions", "x").err
    fake.overrides[("POST", f"/api/jobs/{JOB_ID}/preview")] = error(404, "job_not_found", f"No job with id '{JOB_ID}'")
    assert "No job with id" in cli(fake, "preview", JOB_ID, "--instructions", "x").err


def test_api_gateway_answer_that_quotes_the_key_is_never_shown():
    """`chalice local` (and API Gateway) answer an unknown route that carries a Bearer header with
    a 403 whose message quotes the whole Authorization header."""
    fake = FakeApi()
    fake.overrides[("POST", f"/api/jobs/{JOB_ID}/preview")] = lambda request: httpx.Response(403, json={
        "message": "Authorization header requires 'Credential' parameter. Authorization header requires "
                   f"'Signature' parameter. Authorization={request.headers['authorization']}"})
    run = cli(fake, "preview", JOB_ID, "--instructions", "x", "--json")
    assert run.code == 2 and "does not offer previews" in run.err and run.json()["error"]["code"] == "not_available"
    assert_no_secret(run)
    fake.overrides[("GET", f"/api/jobs/{JOB_ID}")] = error(400, "odd", f"you sent {KEY} and {SECRET}")
    run = cli(fake, "status", JOB_ID, "--json")
    assert "you sent cso_1a2b3c4d and <secret>" in run.err
    assert_no_secret(run)


def test_preview_sends_the_spec_body_and_prints_the_openers():
    fake = FakeApi()
    fake.overrides[("POST", f"/api/jobs/{JOB_ID}/preview")] = httpx.Response(200, json={
        "previews": [{"row": 2, "url": "https://acme.com/", "opener": "Hi Acme team", "context_status": "fetched",
                      "prompt_tokens": 120, "completion_tokens": 30}],
        "estimate": {"urls": 4, "prompt_tokens": 480, "completion_tokens": 120, "cost_usd": 0.0012}})
    run = cli(fake, "preview", JOB_ID, "--instructions", "We sell rockets", "--rows", "2", "--model", "m")
    assert run.code == 0
    assert json.loads(fake.requests[0].content) == {"instructions": "We sell rockets", "rows": 2, "model": "m"}
    assert "row 2  https://acme.com/  (context fetched, 120+30 tokens)" in run.out and "Hi Acme team" in run.out
    assert "4 URLs" in run.out


def test_api_text_is_made_safe_for_the_terminal():
    assert printable("bad\x1b[31m name\u202e") == "bad?[31m name?"
    fake = FakeApi()
    fake.overrides[("GET", f"/api/jobs/{JOB_ID}")] = error(400, "bad", "oops\x1b]0;pwned\x07")
    assert "\x1b" not in cli(fake, "status", JOB_ID).err


# ---------------------------------------------------------------- run


def test_run_direct_upload_follow_and_download(leads, tmp_path):
    fake = FakeApi(polls=[job("processing", 1, 0), job("processing", 2, 1), job("completed", 3, 1)])
    run = cli(fake, "run", str(leads), "--instructions", "We are Acme", "--model", "gpt-4o-mini",
              "--url-column", "website")
    assert run.code == 0, run.err
    out = tmp_path / "leads-openers.csv"
    assert out.read_bytes() == fake.csv
    assert f"Job {JOB_ID} completed: 3 processed · 1 failed · 4 total → {out}" in run.out
    # the upload: multipart part "file" plus the url_column field, made by httpx
    upload = fake.calls("POST", "/api/upload")[0]
    assert upload.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b'name="file"; filename="leads.csv"' in upload.content and b'name="url_column"' in upload.content
    assert json.loads(fake.calls("POST", "/api/upload/process")[0].content) == {
        "job_id": JOB_ID, "instructions": "We are Acme", "model": "gpt-4o-mini"}
    # progress lines on stderr (not a terminal), ending with the finished state; rate and ETA shown
    assert "4 URLs in column 'website', 1 invalid row(s)" in run.err and "row 5: 'localhost'" in run.err
    assert "completed 4/4 (3 processed, 1 failed) 100%" in run.err and "URLs/s" in run.err and "ETA" in run.err
    assert "retry" in run.err  # a failed URL: how to try it again
    # the result came from S3 via the 302, without the key
    s3_get = [r for r in fake.requests if r.url.host == "s3.test"][0]
    assert "authorization" not in s3_get.headers
    assert all(r.headers.get("authorization") == f"Bearer {KEY}" for r in fake.requests if r.url.host == "api.test")
    assert_no_secret(run)


def test_run_json_prints_one_document(leads, tmp_path):
    fake = FakeApi()
    run = cli(fake, "run", str(leads), "--instructions", "x", "-o", str(tmp_path / "o.csv"), "--json", "-q")
    assert run.code == 0
    document = run.json()
    assert document["job"]["status"] == "completed" and document["output"] == str(tmp_path / "o.csv")
    assert document["upload"]["how"] == "direct" and document["upload"]["invalid_rows"] == 1
    assert run.err == ""  # --quiet


def test_run_falls_back_to_presigned_when_the_api_says_so(leads):
    fake = FakeApi()
    fake.overrides[("POST", "/api/upload")] = error(413, "use_presigned_upload", "too big for one request")
    run = cli(fake, "run", str(leads), "--instructions", "x", "--url-column", "website")
    assert run.code == 0, run.err
    assert json.loads(fake.calls("POST", "/api/upload/url")[0].content) == {
        "file_name": "leads.csv", "size": leads.stat().st_size, "url_column": "website"}  # the PUT's exact length
    put = [r for r in fake.requests if r.method == "PUT"][0]
    assert put.url.host == "s3.test" and put.content == leads.read_bytes()
    assert put.headers["content-type"] == "text/csv" and put.headers["content-length"] == str(leads.stat().st_size)
    assert "authorization" not in put.headers and "transfer-encoding" not in put.headers
    assert "presigned" in run.err


def test_big_files_go_presigned_without_trying_direct(leads):
    fake = FakeApi()
    with Api(API, KEY, transport=fake.transport()) as client:
        upload = client.upload(leads, direct_limit=api_module.MULTIPART_OVERHEAD + 10)
    assert upload.how == "presigned" and not fake.calls("POST", "/api/upload")


def test_presigned_put_refused_by_storage_is_reported(leads):
    fake = FakeApi()
    fake.overrides[("POST", "/api/upload")] = error(413, "use_presigned_upload", "too big")
    fake.overrides[("PUT", "/uploads/x")] = httpx.Response(
        403, text="<?xml version='1.0'?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature "
                  "we calculated does not match</Message></Error>", headers={"Content-Type": "application/xml"})
    run = cli(fake, "run", str(leads), "--instructions", "x")
    assert run.code == 2 and "signature we calculated does not match" in run.err
    assert "SignatureDoesNotMatch" in run.err and "<Error>" not in run.err


def test_bad_file_is_exit_2_with_the_api_message(leads):
    fake = FakeApi()
    fake.overrides[("POST", "/api/upload")] = error(400, "no_url_column", "No column of this file holds URLs")
    run = cli(fake, "run", str(leads), "--instructions", "x")
    assert run.code == 2 and "No column of this file holds URLs [400 no_url_column]" in run.err


def test_process_refused_names_the_job(leads):
    fake = FakeApi()
    fake.overrides[("POST", "/api/upload/process")] = error(
        429, "quota_exceeded", "This account may enqueue 0 more URLs today", {"Retry-After": "3600"})
    run = cli(fake, "run", str(leads), "--instructions", "x")
    assert run.code == 2 and "0 more URLs today" in run.err and f"(job {JOB_ID})" in run.err


@pytest.mark.parametrize("status", ["failed", "canceled"])
def test_run_job_failed_or_canceled_exits_1_without_download(leads, tmp_path, status):
    fake = FakeApi(polls=[job(status, 1, 0, error="results file not written" if status == "failed" else None)])
    run = cli(fake, "run", str(leads), "--instructions", "x")
    assert run.code == 1
    assert f"Job {JOB_ID} {status}" in run.err
    assert not (tmp_path / "leads-openers.csv").exists() and not fake.calls("GET", f"/api/upload/{JOB_ID}/download")


def test_run_refuses_to_overwrite_its_input(leads):
    run = cli(FakeApi(), "run", str(leads), "--instructions", "x", "-o", str(leads))
    assert run.code == 2 and "overwrite the input" in run.err


def test_run_missing_file_is_a_usage_error(tmp_path):
    run = cli(FakeApi(), "run", str(tmp_path / "nope.csv"), "--instructions", "x")
    assert run.code == 2 and "no such file" in run.err


def test_instructions_from_a_file(leads, tmp_path):
    (tmp_path / "pitch.txt").write_text("We are Acme.\nFriendly tone.\n")
    fake = FakeApi()
    assert cli(fake, "run", str(leads), "--instructions-file", str(tmp_path / "pitch.txt")).code == 0
    assert json.loads(fake.calls("POST", "/api/upload/process")[0].content)["instructions"] == \
        "We are Acme.\nFriendly tone."


def test_run_in_batch_mode_sends_the_mode_and_shows_both_prices(leads):
    fake = FakeApi()
    fake.overrides[("POST", "/api/upload/process")] = httpx.Response(202, json={
        "job": {**job("processing"), "mode": "batch"}, "chunks": 1,
        "estimate": {"urls": 4, "cost_usd": 0.0123, "batch_cost_usd": 0.0062}})
    run = cli(fake, "run", str(leads), "--instructions", "x", "--mode", "batch")
    assert run.code == 0, run.err
    assert json.loads(fake.calls("POST", "/api/upload/process")[0].content) == {
        "job_id": JOB_ID, "instructions": "x", "mode": "batch"}
    assert "(batch mode: results within 24 hours)" in run.err
    assert "Estimated cost: $0.01 live, $0.01 in batch mode" in run.err
    assert cli(FakeApi(), "run", str(leads), "--instructions", "x", "--mode", "fast").code == 2  # a usage error


# ---------------------------------------------------------------- polling


def test_polling_honours_retry_after_and_waits_out_an_outage(leads):
    fake = FakeApi(polls=[
        error(429, "rate_limited", "Too many requests for this account; try again in 7 s", {"Retry-After": "7"}),
        httpx.Response(503, json={"message": "Service Unavailable"}),
        job("processing", 2, 0),
        job("completed", 4, 0),
    ])
    run = cli(fake, "run", str(leads), "--instructions", "x")
    assert run.code == 0, run.err
    assert run.sleeps[0] == 7.0  # the Retry-After, not the poll interval
    assert "try again in 7 s (waiting 7 s)" in run.err and "Service Unavailable; asking again" in run.err


def test_polling_gives_up_on_a_lasting_error(leads):
    fake = FakeApi(polls=[error(404, "job_not_found", "No job with id")])
    run = cli(fake, "run", str(leads), "--instructions", "x")
    assert run.code == 2 and "No job with id" in run.err


# ---------------------------------------------------------------- Ctrl-C


def interrupting_sleep(_seconds: float) -> None:
    raise KeyboardInterrupt


def test_ctrl_c_without_a_terminal_leaves_the_job_running(leads):
    fake = FakeApi(polls=[job("processing", 1, 0)])
    run = cli(fake, "run", str(leads), "--instructions", "x", sleep=interrupting_sleep)
    assert run.code == 130
    assert f"csv-opener status {JOB_ID}" in run.err and f"csv-opener download {JOB_ID}" in run.err
    assert not fake.calls("POST", f"/api/upload/{JOB_ID}/cancel")


def test_ctrl_c_at_a_terminal_asks_and_cancels(leads):
    fake = FakeApi(polls=[job("processing", 1, 0)])
    run = cli(fake, "run", str(leads), "--instructions", "x", "--json", stdin=TtyInput("y\n"),
              sleep=interrupting_sleep)
    assert run.code == 1
    assert f"Cancel job {JOB_ID}? [y/N]" in run.err and "Canceled job" in run.err
    assert len(fake.calls("POST", f"/api/upload/{JOB_ID}/cancel")) == 1
    assert run.json()["canceled"] is True and run.json()["job"]["status"] == "canceled"


def test_ctrl_c_at_a_terminal_answered_no_leaves_it_running(leads):
    fake = FakeApi(polls=[job("processing", 1, 0)])
    run = cli(fake, "run", str(leads), "--instructions", "x", stdin=TtyInput("\n"), sleep=interrupting_sleep)
    assert run.code == 130 and "keeps running" in run.err
    assert not fake.calls("POST", f"/api/upload/{JOB_ID}/cancel")


# ---------------------------------------------------------------- the other commands


def test_status_human_output():
    run = cli(FakeApi(polls=[job("processing", 2, 1)]), "status", JOB_ID)
    assert run.code == 0
    assert f"job        {JOB_ID}" in run.out and "status     processing, 75%" in run.out
    assert "2 processed · 1 failed · 4 total · 1 invalid rows" in run.out and "2025-01-02 03:04 UTC" in run.out


def test_jobs_follows_cursors_up_to_the_limit():
    fake = FakeApi()
    pages = [httpx.Response(200, json={"jobs": [job() for _ in range(100)], "next_cursor": "c1"}),
             httpx.Response(200, json={"jobs": [job() for _ in range(50)], "next_cursor": "c2"})]
    fake.overrides[("GET", "/api/jobs")] = lambda request: pages.pop(0)
    run = cli(fake, "jobs", "--limit", "150", "--status", "processing", "--json")
    assert run.code == 0 and len(run.json()["jobs"]) == 150
    params = [dict(r.url.params) for r in fake.calls("GET", "/api/jobs")]
    assert params == [{"status": "processing", "limit": "100"},
                      {"status": "processing", "limit": "50", "cursor": "c1"}]


def test_jobs_human_table_and_empty_list():
    fake = FakeApi()
    fake.overrides[("GET", "/api/jobs")] = httpx.Response(200, json={"jobs": [job("completed", 3, 1)],
                                                                     "next_cursor": None})
    lines = cli(fake, "jobs").out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "PROGRESS", "OK/FAILED/TOTAL", "CREATED", "FILE"]
    assert lines[1].split() == [JOB_ID, "completed", "100%", "3/1/4", "2025-01-02", "03:04", "UTC", "leads.csv"]
    fake.overrides[("GET", "/api/jobs")] = httpx.Response(200, json={"jobs": [], "next_cursor": None})
    assert cli(fake, "jobs", "--status", "failed").out == "No jobs failed.\n"


def test_results_table():
    fake = FakeApi()
    fake.overrides[("GET", f"/api/jobs/{JOB_ID}/results")] = httpx.Response(200, json={"results": [
        {"row": 2, "url": "https://acme.com/", "status": "completed", "opener": "Hi\nAcme", "error": None},
        {"row": 3, "url": "https://beta.io/", "status": "failed", "opener": None, "error": "timeout"}],
        "next_cursor": None})
    run = cli(fake, "results", JOB_ID, "--status", "failed", "--limit", "5")
    assert run.code == 0
    assert run.out.splitlines()[1].split() == ["2", "completed", "https://acme.com/", "–", "Hi", "Acme"]
    assert run.out.splitlines()[2].split() == ["3", "failed", "https://beta.io/", "–", "timeout"]
    assert dict(fake.calls("GET", f"/api/jobs/{JOB_ID}/results")[0].url.params) == {"status": "failed", "limit": "5"}


def test_download_inline_uses_the_servers_file_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake = FakeApi()
    fake.overrides[("GET", f"/api/upload/{JOB_ID}/download")] = httpx.Response(200, content=b"a,b\r\n", headers={
        "Content-Disposition": "attachment; filename=\"_nicode-openers.csv\"; "
                               "filename*=UTF-8''%C3%BCnicode-openers.csv"})
    run = cli(fake, "download", JOB_ID)
    assert run.code == 0 and (tmp_path / "ünicode-openers.csv").read_bytes() == b"a,b\r\n"
    assert "Wrote ünicode-openers.csv" in run.out
    assert [p.name for p in tmp_path.iterdir()] == ["ünicode-openers.csv"]  # no temporary file left


def test_download_to_stdout_and_errors_leave_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake = FakeApi()
    run = cli(fake, "download", JOB_ID, "-o", "-")
    assert run.code == 0 and run.out == fake.csv.decode()
    fake.overrides[("GET", f"/api/upload/{JOB_ID}/download")] = error(409, "not_ready", "call process first")
    run = cli(fake, "download", JOB_ID, "-o", "x.csv")
    assert run.code == 2 and "call process first" in run.err
    assert list(tmp_path.iterdir()) == []
    assert cli(fake, "download", JOB_ID, "-o", "-", "--json").code == 2  # two things for one stdout


def test_download_waits_while_the_server_builds_a_big_csv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake = FakeApi()
    building = httpx.Response(202, json={"export": "building", "retry_after": 7}, headers={"Retry-After": "7"})
    fake.overrides[("GET", f"/api/upload/{JOB_ID}/download")] = [
        building, building, httpx.Response(302, headers={"Location": f"{S3}/exports/x.csv?X-Amz-Signature=s"})]
    run = cli(fake, "download", JOB_ID)
    assert run.code == 0 and run.sleeps == [7, 7]  # the server's Retry-After, twice, then the 302
    assert (tmp_path / "leads-openers.csv").read_bytes() == fake.csv
    assert "building the CSV…" in run.err and "(waited 7 s)" in run.err
    assert len(fake.calls("GET", f"/api/upload/{JOB_ID}/download")) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["leads-openers.csv"]


def test_download_gives_up_on_a_csv_never_built_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake = FakeApi()
    fake.overrides[("GET", f"/api/upload/{JOB_ID}/download")] = httpx.Response(
        202, json={"export": "building", "retry_after": 15}, headers={"Retry-After": "15"})
    run = cli(fake, "download", JOB_ID, "--quiet")
    assert run.code == 2 and "still building the CSV" in run.err
    assert sum(run.sleeps) <= 20 * 60 and len(run.sleeps) == 80
    assert list(tmp_path.iterdir()) == []


def test_cancel_and_retry():
    fake = FakeApi(polls=[job("completed", 4, 0)])
    run = cli(fake, "cancel", JOB_ID)
    assert run.code == 0 and "canceled" in run.out
    fake.overrides[("POST", f"/api/upload/{JOB_ID}/cancel")] = error(
        409, "not_cancelable", "Job is already completed; only pending or processing jobs can be canceled")
    assert cli(fake, "cancel", JOB_ID).code == 2
    run = cli(fake, "retry", JOB_ID)
    assert run.code == 0 and "2 URL(s) queued again" in run.out
    run = cli(fake, "retry", JOB_ID, "--wait", "--json")
    assert run.code == 0 and run.json()["retried"] == 2 and run.json()["job"]["status"] == "completed"
    fake.polls = [job("failed", 2, 2)]
    assert cli(fake, "retry", JOB_ID, "--wait").code == 1


# ---------------------------------------------------------------- helpers


def test_key_label_never_shows_the_secret():
    assert key_label(KEY) == "cso_1a2b3c4d"
    assert key_label("sk-abcdef") == "a key not of the form cso_<prefix>_<secret>"
    assert key_label(None) == "no key"


def test_parse_retry_after_and_filenames():
    assert parse_retry_after("12") == 12.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") <= 0.0  # a past date: now
    assert filename_from('attachment; filename="../../etc/passwd"') == "_.._etc_passwd"
    assert filename_from(None) is None


def test_rate_meter_and_progress_line():
    meter = RateMeter(window=30)
    for t, done in [(0, 0), (10, 100), (20, 200)]:
        meter.add(t, done)
    assert meter.rate() == 10.0 and meter.eta(50) == 5.0
    assert format_duration(3725) == "1:02:05" and format_duration(None) == "–"
    line = progress_line(job("processing", 117, 3, total=400), meter)
    assert line == "processing 120/400 (117 processed, 3 failed) 30% · 10.0 URLs/s · ETA 0:28"


def test_line_display_prints_changes_at_most_every_few_seconds():
    stream, now = io.StringIO(), [0.0]
    display = LineDisplay(stream, every=5, clock=lambda: now[0])
    display.start(JOB_ID)
    for t, processed in [(0, 0), (1, 1), (2, 2), (6, 3), (7, 3)]:
        now[0] = t
        display.update(job("processing", processed, 0))
    display.update(job("completed", 4, 0))
    lines = stream.getvalue().splitlines()
    assert [line.split(": ", 1)[1].split(" (")[0] for line in lines] == [
        "processing 0/4", "processing 3/4", "completed 4/4"]


def test_api_error_transient():
    assert ApiError(0, "connection_error", "x").transient and ApiError(503, "x", "y").transient
    assert not ApiError(429, "rate_limited", "z").transient


# ---------------------------------------------------------------- quality


QUALITY = {"verified": 2, "generic": 1, "flagged": {"too_long": 1, "duplicate": 1}, "duplicate_rate": 0.3333,
           "median_words": 17.5, "regenerated": 2, "reused": 0}


def test_run_sends_the_quality_options_and_prints_the_summary(leads, tmp_path):
    fake = FakeApi(polls=[job("completed", 3, 0, total=3, quality=QUALITY)])
    run = cli(fake, "run", str(leads), "--instructions", "x", "--grounding", "flag", "--min-words", "5",
              "--max-words", "30", "--language", "DE", "-o", str(tmp_path / "o.csv"))
    assert run.code == 0, run.err
    assert json.loads(fake.calls("POST", "/api/upload/process")[0].content) == {
        "job_id": JOB_ID, "instructions": "x", "grounding": "flag", "min_words": 5, "max_words": 30, "language": "de"}
    assert ("Quality: 2 verified · 1 generic · flagged: 1 duplicate, 1 too_long · duplicates 33.3% · "
            "median 17.5 words · 2 regenerated · 0 reused") in run.out
    assert f"csv-opener results {JOB_ID} --quality FLAG" in run.err
    # without the options nothing is sent (the API's defaults hold), and an old server's job prints no line
    plain = FakeApi()
    run = cli(plain, "run", str(leads), "--instructions", "x", "-o", str(tmp_path / "p.csv"))
    assert run.code == 0 and "Quality" not in run.out
    assert json.loads(plain.calls("POST", "/api/upload/process")[0].content) == {"job_id": JOB_ID, "instructions": "x"}


def test_no_reuse_asks_the_model_for_every_row(leads, tmp_path):
    fake = FakeApi()
    run = cli(fake, "run", str(leads), "--instructions", "x", "--no-reuse", "-o", str(tmp_path / "o.csv"))
    assert run.code == 0, run.err
    assert json.loads(fake.calls("POST", "/api/upload/process")[0].content) == {
        "job_id": JOB_ID, "instructions": "x", "reuse": False}


def test_variants_asks_for_that_many_openers_per_row(leads, tmp_path):
    fake = FakeApi()
    run = cli(fake, "run", str(leads), "--instructions", "x", "--variants", "3", "-o", str(tmp_path / "o.csv"))
    assert run.code == 0, run.err
    assert json.loads(fake.calls("POST", "/api/upload/process")[0].content) == {
        "job_id": JOB_ID, "instructions": "x", "variants": 3}


def test_status_shows_the_quality_summary():
    run = cli(FakeApi(polls=[job("completed", 3, 0, total=3, quality={**QUALITY, "flagged": {}, "duplicate_rate": 0})]),
              "status", JOB_ID)
    assert "quality    2 verified · 1 generic · flagged: none · median 17.5 words" in run.out


@pytest.mark.parametrize("argv", [
    ["--grounding", "loose"], ["--min-words", "0"], ["--max-words", "201"], ["--language", "deu"],
    ["--language", "d1"], ["--min-words", "30", "--max-words", "10"], ["--variants", "4"], ["--variants", "0"],
])
def test_bad_quality_options_are_usage_errors_before_any_request(leads, argv):
    fake = FakeApi()
    run = cli(fake, "run", str(leads), "--instructions", "x", *argv)
    assert run.code == 2 and fake.requests == []


def test_results_filter_by_flag_shows_flags_and_evidence():
    fake = FakeApi()
    fake.overrides[("GET", f"/api/jobs/{JOB_ID}/results")] = httpx.Response(200, json={"results": [
        {"row": 2, "url": "https://acme.com/", "status": "completed", "opener": "Hi Acme", "error": None,
         "quality": ["duplicate", "too_long"], "evidence": "since 1921\x1b[31m"}], "next_cursor": None})
    run = cli(fake, "results", JOB_ID, "--quality", "duplicate")
    assert run.code == 0
    assert run.out.splitlines()[0].split() == ["ROW", "STATUS", "URL", "FLAGS", "OPENER", "/", "ERROR"]
    assert run.out.splitlines()[1].split() == ["2", "completed", "https://acme.com/", "duplicate,too_long", "Hi",
                                               "Acme"]
    assert "row 2 evidence: since 1921?[31m" in run.out
    assert dict(fake.calls("GET", f"/api/jobs/{JOB_ID}/results")[0].url.params) == {"quality": "duplicate",
                                                                                    "limit": "50"}
    fake.overrides[("GET", f"/api/jobs/{JOB_ID}/results")] = httpx.Response(200, json={"results": [],
                                                                                      "next_cursor": None})
    assert cli(fake, "results", JOB_ID, "--quality", "spammy").out == "No results flagged spammy.\n"
    assert cli(FakeApi(), "results", JOB_ID, "--quality", "dupe").code == 2  # a usage error, no request


def test_preview_sends_the_quality_options_and_shows_flags_and_evidence():
    fake = FakeApi()
    fake.overrides[("POST", f"/api/jobs/{JOB_ID}/preview")] = httpx.Response(200, json={
        "previews": [{"row": 1, "url": "https://acme.com/", "opener": "Hi Acme", "context_status": "fetched",
                      "prompt_tokens": 1, "completion_tokens": 1, "quality": ["too_short"],
                      "evidence": "family bakery"}], "estimate": {"urls": 4}})
    run = cli(fake, "preview", JOB_ID, "--instructions", "x", "--language", "fr", "--grounding", "strict")
    assert run.code == 0, run.err
    assert json.loads(fake.requests[0].content) == {"instructions": "x", "language": "fr", "grounding": "strict"}
    assert "  flags: too_short" in run.out and "  evidence: family bakery" in run.out


# ---------------------------------------------------------------- cost beside the estimate

ESTIMATE = {"basis": "first_chunk", "cost_usd": 0.1190, "prompt_tokens": 1, "completion_tokens": 1,
            "at_start": {"basis": "preview", "cost_usd": 0.13}, "reused_rows": 9000, "cached_tokens": 0}


def test_status_shows_the_cost_beside_the_estimate_with_reused_rows_and_cached_tokens():
    polled = job("completed", 3, 0, total=3, cost_usd=0.1123, estimate=ESTIMATE, mode="batch",
                 cached_tokens=12345, quality={**QUALITY, "reused": 9000})
    run = cli(FakeApi(polls=[polled]), "status", JOB_ID)
    assert run.code == 0, run.err
    assert ("cost       $0.1123 (estimate $0.1190, from the first rows; $0.1300 at the start) · batch mode · "
            "9,000 reused · 12,345 cached tokens") in run.out
    # a job not started yet: no estimate, nothing reused or cached; an old server's job: no line
    fresh = cli(FakeApi(polls=[job("pending", cost_usd=None, estimate=None)]), "status", JOB_ID)
    assert "cost       – · live mode" in fresh.out
    assert "cost " not in cli(FakeApi(polls=[job("processing")]), "status", JOB_ID).out


def test_run_wait_ends_with_the_cost_beside_the_estimate(leads, tmp_path):
    fake = FakeApi(polls=[job("completed", 3, 0, total=3, cost_usd=0.0021, mode="live", cached_tokens=0,
                              estimate={**ESTIMATE, "basis": "heuristic", "cost_usd": 0.002})])
    run = cli(fake, "run", str(leads), "--instructions", "x", "-o", str(tmp_path / "o.csv"))
    assert run.code == 0, run.err
    assert "Cost: $0.0021 (estimate $0.0020, from the prompt) · live mode" in run.out
    # the CSV on stdout: the line goes to stderr
    piped = cli(fake, "run", str(leads), "--instructions", "x", "-o", "-")
    assert "Cost: $0.0021" in piped.err and "Cost:" not in piped.out
