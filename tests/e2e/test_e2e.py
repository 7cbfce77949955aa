"""End to end over real HTTP: `chalice local`, LocalStack, PostgreSQL, Redis, the event runner
with several workers and the fake OpenAI server enforcing a provider's rate limit just above ours
(see conftest.py). No URL is ever generated twice, and the shared limiter keeps its promises."""

from __future__ import annotations

import csv
import io
import os
import time
import uuid

import boto3
import pytest

from chalicelib.settings import DEFAULT_PRICES, parse_prices
from tests.support.e2e import (
    EXTRA_COLUMNS,
    STALL_S,
    assert_counters_consistent,
    assert_finished_cleanly,
    assert_limiter_kept_its_promises,
    assert_openers_came_from_the_llm,
    figures,
    job_row,
    limiter_figures,
    make_csv,
    neutralize,
    status_counts,
    time_for,
    url_rows,
    wait_for,
)
from tests.support.fake_openai import structured_opener


def tag() -> str:
    return f"e2e{uuid.uuid4().hex[:6]}"


MAX_429_SHARE = 0.02  # as in test_faults.py: our limit is below the provider's


def report(capsys, line: str) -> None:
    with capsys.disabled():
        print("\n" + line)


def check_limiter(stack, capsys) -> None:
    """The test's LLM requests as the provider saw them: the limiter's promises (helpers)."""
    lim = limiter_figures(stack.proxy.exchanges(since=stack.test_began), stack.runner_entries())
    report(capsys, f"[e2e]   {lim.line()}")
    assert_limiter_kept_its_promises(lim, MAX_429_SHARE)


def assert_download_matches(table: list[list[str]], csv_file, rows: list[dict]) -> None:
    """Every input row, in order, with its original cells, plus the opener columns."""
    header, *body = csv_file.rows
    assert table[0] == [neutralize(c) for c in header] + EXTRA_COLUMNS
    assert len(table) - 1 == len(body), (len(table) - 1, len(body))
    url_iter = iter(rows)  # URL rows in file order: one per valid input row
    for index, (original, got) in enumerate(zip(body, table[1:], strict=True)):
        assert got[:3] == [neutralize(c) for c in original], (index, original, got)
        opener, status, error, context = got[3:7]
        if index in csv_file.invalid_rows:
            assert (opener, status, context) == ("", "invalid", "") and error, (index, got)
            continue
        url = next(url_iter)
        assert status == url["status"], (index, got, url)
        assert context == (url["context_status"] or ""), (index, got, url)
        if status == "completed":
            assert opener == url["opener"] == structured_opener(url["url"]), (index, got, url)
            assert error == ""
        else:
            assert status == "failed" and opener == "" and error == url["error"], (index, got, url)
    assert next(url_iter, None) is None


def test_upload_process_complete_download(fresh, capsys):
    stack, api = fresh, fresh.api
    csv_file = make_csv(tag(), 400, invalid_every=9)
    began = time.monotonic()
    uploaded = api.upload(csv_file.name, csv_file.data)
    assert (uploaded["total_rows"], uploaded["invalid_rows"]) == (csv_file.valid, csv_file.invalid)
    assert uploaded["url_column"] == "website" and uploaded["job"]["status"] == "pending"
    job_id = uploaded["job"]["id"]

    started = api.process(job_id, instructions="We build onboarding software for B2B SaaS; friendly tone.")
    assert started["chunks"] == 4 and started["job"]["status"] == "processing"
    assert api.call("POST", "/api/upload/process", {"job_id": job_id}).status == 409  # enqueues nothing

    seen_partial = False
    deadline, last, last_change = began + time_for(csv_file.valid), None, time.monotonic()
    while True:  # progress is visible while chunks run, and the counters always add up
        job = api.job(job_id)
        assert job["processed_rows"] + job["failed_rows"] <= job["total_rows"]
        seen_partial |= 0 < job["processed_rows"] < job["total_rows"]
        if job["status"] == "completed":
            break
        if (job["processed_rows"], job["failed_rows"]) != last:
            last, last_change = (job["processed_rows"], job["failed_rows"]), time.monotonic()
        assert job["status"] == "processing", job
        assert time.monotonic() - last_change < STALL_S and time.monotonic() < deadline, (
            f"job stuck or too slow: {job}\n{stack.diagnose(job_id)}")
        time.sleep(0.05)
    seconds = time.monotonic() - began
    assert seen_partial, "no partial progress was ever visible"
    assert job["progress"] == 100 and job["processed_rows"] == csv_file.valid

    rows = assert_finished_cleanly(stack.database_url, job_id, csv_file.valid)
    stats = stack.fake.wait_quiet()
    fig = figures(stats, rows, seconds)
    report(capsys, fig.line("happy path"))
    assert_openers_came_from_the_llm(stats, rows)
    assert fig.completed == csv_file.valid == fig.ok and fig.duplicates == 0
    check_limiter(stack, capsys)

    assert_download_matches(api.download(job_id), csv_file, rows)
    results = api.call("GET", f"/api/jobs/{job_id}/results?limit=1000").json()["results"]
    assert [r["url"] for r in results] == [r["url"] for r in rows]
    assert all(r["status"] == "completed" and r["opener"] for r in results)
    listed = api.call("GET", "/api/jobs?status=completed&limit=100").json()["jobs"]
    assert job_id in {j["id"] for j in listed}


def test_cancel_mid_run_then_retry_completes(fresh, capsys):
    stack, api = fresh, fresh.api
    stack.fake.configure(latency_ms=[40, 80])
    csv_file = make_csv(tag(), 1000)
    job_id = api.upload(csv_file.name, csv_file.data)["job"]["id"]
    began = time.monotonic()
    api.process(job_id)
    stack.wait_job(job_id, urls=int(0.2 * csv_file.valid), fraction=0.2)

    reply = api.call("POST", f"/api/upload/{job_id}/cancel")
    assert reply.status == 200 and reply.json()["job"]["status"] == "canceled", reply.body
    canceled_at = time.monotonic()

    # the workers stop within a few seconds: the LLM stops being called
    def llm_quiet():
        before = stack.fake.stats()["requests"]
        time.sleep(1.0)
        return stack.fake.stats()["requests"] == before

    wait_for(llm_quiet, 10, every=0, what="no more LLM calls after cancel", diagnose=lambda: stack.diagnose(job_id))
    stopped_after = time.monotonic() - canceled_at
    # nothing is left processing (rows in flight were saved or given back)
    lease = int(stack.env["LEASE_SECONDS"])
    wait_for(lambda: status_counts(stack.database_url, job_id).get("processing", 0) == 0, lease + 5,
             what="no URL left processing after cancel", diagnose=lambda: stack.diagnose(job_id))
    job, counts = job_row(stack.database_url, job_id), status_counts(stack.database_url, job_id)
    assert job["status"] == "canceled"
    assert_counters_consistent(job, counts)
    done = job["processed_rows"] + job["failed_rows"]
    assert 0.2 * csv_file.valid <= done < csv_file.valid, job
    assert api.call("POST", f"/api/upload/{job_id}/cancel").status == 409  # already canceled

    reply = api.call("POST", f"/api/jobs/{job_id}/retry")
    assert reply.status == 202, reply.body
    assert reply.json()["retried"] == csv_file.valid - job["processed_rows"]
    stack.wait_job(job_id, urls=csv_file.valid - done)
    seconds = time.monotonic() - began

    rows = assert_finished_cleanly(stack.database_url, job_id, csv_file.valid)
    stats = stack.fake.wait_quiet()
    # An opener that arrived after the cancel's grace period was thrown away (and counted): its URL
    # is generated again by the retry, by design. Any other second generation is a duplicate.
    discarded = {e["url"]: 1 for e in stack.runner_entries()
                 if e["message"].startswith("generated opener discarded") and e.get("job_id") == job_id}
    assert job_row(stack.database_url, job_id)["discarded_results"] == len(discarded)
    fig = figures(stats, rows, seconds, allowed_extra=discarded)
    report(capsys, fig.line(f"cancel + retry (done at cancel {done}, LLM quiet {stopped_after:.1f} s after cancel, "
                            f"{len(discarded)} openers discarded after the grace period)"))
    assert_openers_came_from_the_llm(stats, rows)
    assert fig.completed == csv_file.valid
    assert fig.duplicates == 0, fig
    check_limiter(stack, capsys)
    assert api.call("POST", f"/api/upload/{job_id}/cancel").status == 409  # finished jobs cannot be canceled


def test_csv_dropped_in_s3_becomes_a_completed_job_with_result_files(fresh, capsys):
    stack, api = fresh, fresh.api
    name = f"drop-{tag()}"
    csv_file = make_csv(name, 120, invalid_every=10, name=f"{name}.csv")
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    bucket = os.environ["UPLOAD_BUCKET"]
    began = time.monotonic()
    account = stack.account_id
    s3.put_object(Bucket=bucket, Key=f"incoming/{account}/{csv_file.name}", Body=csv_file.data,
                  ContentType="text/csv")

    def completed_job():
        jobs = api.call("GET", "/api/jobs?limit=100").json()["jobs"]
        return next((j for j in jobs if j["file_name"] == csv_file.name and j["status"] == "completed"), None)

    def dropped_job():
        jobs = api.call("GET", "/api/jobs?limit=100").json()["jobs"]
        return next((j for j in jobs if j["file_name"] == csv_file.name), None)

    def drops_diagnosis() -> str:
        return stack.diagnose() + f"\n  drops queue: {stack.queue_depth(os.environ['DROPS_QUEUE_URL'])}"

    job = wait_for(dropped_job, 20, every=0.1, what="a job for the dropped file", diagnose=drops_diagnosis)
    stack.wait_job(job["id"], urls=csv_file.valid)
    job = completed_job()
    seconds = time.monotonic() - began
    assert job["source"] == "s3" and (job["total_rows"], job["invalid_rows"]) == (csv_file.valid, csv_file.invalid)

    keys = {f"results/{account}/{job['id']}.csv", f"results/{account}/{name}-openers.csv"}

    def result_keys():
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"results/{account}/").get("Contents", [])
        return keys <= {o["Key"] for o in listed}

    wait_for(result_keys, 20, what="both results files in S3", diagnose=lambda: stack.diagnose(job["id"]))
    rows = assert_finished_cleanly(stack.database_url, job["id"], csv_file.valid)
    for key in keys:
        text = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
        assert_download_matches(list(csv.reader(io.StringIO(text, newline=""))), csv_file, rows)
    assert_download_matches(api.download(job["id"]), csv_file, rows)
    stats = stack.fake.wait_quiet()
    fig = figures(stats, url_rows(stack.database_url, job["id"]), seconds)
    report(capsys, fig.line("S3 drop"))
    assert fig.duplicates == 0 and fig.completed == csv_file.valid
    check_limiter(stack, capsys)


def test_a_dropped_csv_starts_with_the_default_options(fresh):
    """README: a drop "starts a job of that account with default options"; PAGE_CONTEXT_DEFAULT is
    "a job's page_context when process does not say"."""
    stack, api = fresh, fresh.api
    name = f"drop-{tag()}"
    csv_file = make_csv(name, 3, name=f"{name}.csv")
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    s3.put_object(Bucket=os.environ["UPLOAD_BUCKET"], Key=f"incoming/{stack.account_id}/{csv_file.name}",
                  Body=csv_file.data, ContentType="text/csv")

    def dropped_job():
        jobs = api.call("GET", "/api/jobs?limit=100").json()["jobs"]
        return next((j for j in jobs if j["file_name"] == csv_file.name and j["status"] != "pending"), None)

    job = wait_for(dropped_job, 20, every=0.1, what="a job for the dropped file", diagnose=stack.diagnose)
    try:
        default = os.environ.get("PAGE_CONTEXT_DEFAULT", "true").lower() in ("1", "true", "yes", "on")
        assert job["page_context"] is default, job
    finally:
        api.call("POST", f"/api/upload/{job['id']}/cancel")  # nobody waits for this job


@pytest.mark.runner(RUNNER_SWEEP_S="1")
def test_a_batch_mode_job_goes_through_the_batch_api_and_the_sweep(fresh, capsys):
    """mode "batch": each chunk message sends one Batch API file; the runner's sweep (every second
    here, every 5 minutes on AWS) reads the finished batches back; the job, its results and its
    download are as a live job's, at half the price, and no live call is made."""
    stack, api = fresh, fresh.api
    stack.fake.configure(batch_delay_s=2)  # the provider takes 2 s per batch
    csv_file = make_csv(tag(), 250, invalid_every=10)
    job_id = api.upload(csv_file.name, csv_file.data)["job"]["id"]
    began = time.monotonic()
    started = api.process(job_id, mode="batch")
    assert started["job"]["mode"] == "batch" and started["chunks"] == 3
    estimate = started["estimate"]
    assert estimate["batch_cost_usd"] == round(estimate["cost_usd"] / 2, 4)

    job = stack.wait_job(job_id, urls=csv_file.valid, extra_s=30, stall_s=30)
    seconds = time.monotonic() - began
    rows = assert_finished_cleanly(stack.database_url, job_id, csv_file.valid)
    assert all(r["status"] == "completed" and r["opener"] == structured_opener(r["url"]) for r in rows)
    stats = stack.fake.stats()
    assert (stats["requests"], stats["batches"], stats["batch_requests"]) == (0, 3, csv_file.valid)
    assert_download_matches(api.download(job_id), csv_file, rows)
    assert job["prompt_tokens"] == sum(r["prompt_tokens"] for r in rows) > 0
    live_in, live_out, _cached = parse_prices(DEFAULT_PRICES)[job["model"]]  # USD per million tokens, live
    live = (float(live_in) * job["prompt_tokens"] + float(live_out) * job["completion_tokens"]) / 1e6
    assert job["cost_usd"] == round(live / 2, 6)  # the Batch API's half price
    report(capsys, f"[e2e] batch mode: {csv_file.valid} URLs in 3 batches, completed {seconds:.1f} s after "
                   f"process (provider 2 s per batch, sweep every 1 s); cost ${job['cost_usd']:.6f}, "
                   f"estimate live ${estimate['cost_usd']} / batch ${estimate['batch_cost_usd']}")


@pytest.mark.runner(OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32")
def test_a_job_with_a_callback_gets_one_signed_webhook(fresh, capsys):
    """The whole path of a webhook over real HTTP: the secret made through the API (stored
    sealed), the job completed by the runner's worker, one signed job.completed POST to a local
    receiver (reached through OUTBOUND_ALLOW_NETWORKS), and the delivery shown on the job."""
    import json

    from chalicelib.outbound import webhooks
    from tests.support.webhook_receiver import Receiver

    stack, api = fresh, fresh.api
    reply = api.call("POST", "/api/account/webhook-secret", {})
    assert reply.status == 201, reply.body[:300]
    secret = reply.json()["secret"]
    csv_file = make_csv(tag(), 12)
    with Receiver() as receiver:
        job_id = api.upload(csv_file.name, csv_file.data)["job"]["id"]
        api.process(job_id, callback_url=receiver.url, page_context=False)
        stack.wait_job(job_id, urls=csv_file.valid)
        wait_for(lambda: api.job(job_id).get("callback", {}).get("delivered_at"), 20, what="webhook delivered",
                 diagnose=stack.diagnose)
    [(headers, data)] = receiver.requests
    assert webhooks.verify(secret, headers["x-csv-opener-signature"], data)
    event = json.loads(data)
    assert (event["type"], event["job"]["id"], event["job"]["status"]) == ("job.completed", job_id, "completed")
    shown = api.job(job_id)["callback"]
    assert (shown["attempts"], shown["last_status"]) == (1, 200)
    report(capsys, f"[e2e] webhook: one signed job.completed POST for {csv_file.valid} URLs")
