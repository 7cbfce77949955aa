"""What a start is refused for, decided before the file is read (issue 19 items 1, 5, 6, 21):
quota and job limit from the counts validation stored, budgets (a model without a price, a batch
job estimated above its max_cost_usd), a callback without a webhook secret; and the quotas of
drops and retries. Against the real PostgreSQL and LocalStack; a refused start leaves the job
pending, no URL row, no message and the day's count as it was."""

from __future__ import annotations

import uuid

import pytest

from chalicelib import deps, jobs
from chalicelib.adapters import db
from chalicelib.adapters.storage import Storage
from chalicelib.errors import DomainError
from chalicelib.generation import pricing
from tests.support.api import body, drain_queue, error_of, post_json, purge_queue, upload_and_process, upload_csv


@pytest.fixture(autouse=True)
def clean(conn, settings):
    purge_queue(settings.chunk_queue_url)


class CountingStorage(Storage):
    """The real LocalStack-backed storage, recording every object it reads."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner.s3, inner.bucket)
        self.reads: list[str] = []

    def iter_chunks(self, key, etag=None, *args, **kwargs):
        self.reads.append(key)
        return super().iter_chunks(key, etag, *args, **kwargs)


def urls_file(n: int) -> bytes:
    tag = uuid.uuid4().hex[:6]
    return b"url\n" + b"".join(f"l{i}-{tag}.example.com\n".encode() for i in range(n))


def url_rows(conn, job_id) -> int:
    return conn.execute("SELECT count(*) AS n FROM urls WHERE job_id = %s", (job_id,)).fetchone()["n"]


def uploaded(conn, account_id: str, data: bytes) -> str:
    return jobs.create_from_upload(conn, deps.storage(), account_id=account_id, file_name="big.csv", data=data,
                                   url_column=None)["job"]["id"]


# ---------------------------------------------------------------- item 1: refusals before the heavy work

def test_a_start_over_the_quota_is_refused_without_reading_the_file_or_copying_a_row(conn, make_account,
                                                                                     settings):
    account = make_account(urls_per_day=1000)
    job_id = uploaded(conn, account.id, urls_file(2500))
    storage = CountingStorage(deps.storage())
    with pytest.raises(DomainError) as refused:
        jobs.start(conn, storage, deps.chunk_queue(), settings, account.id, job_id)
    assert (refused.value.status, refused.value.code) == (429, "quota_exceeded")
    assert "This needs 2,500 URLs but the account has 1,000 of its 1,000" in refused.value.message
    assert 0 < int(refused.value.headers["Retry-After"]) <= 86_401
    assert storage.reads == [] and url_rows(conn, job_id) == 0
    assert db.get_job(conn, job_id)["status"] == "pending" and db.urls_today(conn, account.id) == 0
    assert drain_queue(settings.chunk_queue_url) == []
    # within the quota the same storage reads the file once and the start goes through
    fits = uploaded(conn, account.id, urls_file(1000))
    jobs.start(conn, storage, deps.chunk_queue(), settings, account.id, fits)
    assert len(storage.reads) == 1 and url_rows(conn, fits) == 1000 and db.urls_today(conn, account.id) == 1000


def test_a_start_over_the_job_limit_is_refused_without_reading_the_file(conn, make_account, settings):
    account = make_account(max_jobs=1)
    storage = CountingStorage(deps.storage())
    jobs.start(conn, storage, deps.chunk_queue(), settings, account.id, uploaded(conn, account.id, urls_file(3)))
    storage.reads.clear()
    second = uploaded(conn, account.id, urls_file(2000))
    with pytest.raises(DomainError) as refused:
        jobs.start(conn, storage, deps.chunk_queue(), settings, account.id, second)
    assert (refused.value.status, refused.value.code) == (429, "too_many_jobs")
    assert storage.reads == [] and url_rows(conn, second) == 0


def test_a_presigned_file_is_not_read_when_the_quota_is_already_used_up(conn, make_account, settings):
    account = make_account(urls_per_day=5)
    db.add_urls_today(conn, account.id, 5)
    data = urls_file(50)
    job = jobs.create_presigned_upload(conn, deps.storage(), settings, account_id=account.id, file_name="p.csv",
                                       size=len(data))["job"]
    deps.storage().put_bytes(db.get_job(conn, job["id"])["file_path"], data)
    storage = CountingStorage(deps.storage())
    with pytest.raises(DomainError) as refused:
        jobs.start(conn, storage, deps.chunk_queue(), settings, account.id, job["id"])
    assert (refused.value.status, refused.value.code) == (429, "quota_exceeded")
    assert "has 0 of its 5 URLs per day left" in refused.value.message and storage.reads == []
    assert db.get_job(conn, job["id"])["status"] == "pending"


# ---------------------------------------------------------------- item 5: budgets

def test_a_budget_on_a_model_without_a_price_is_400_no_price(client, conn, make_account, settings):
    priced = settings.openai_model
    owner = client.as_account(make_account(urls_per_day=100, models=[priced, "unpriced-model-x"]))
    job_id = body(upload_csv(owner, urls_file(3)))["job"]["id"]
    refused = post_json(owner, "/api/upload/process", {"job_id": job_id, "model": "unpriced-model-x",
                                                       "max_cost_usd": 5, "page_context": False})
    assert error_of(refused) == (400, "no_price")
    assert "unpriced-model-x" in body(refused)["error"]["message"]
    assert db.get_job(conn, job_id)["status"] == "pending" and url_rows(conn, job_id) == 0
    assert db.urls_today(conn, owner.account.id) == 0 and drain_queue(settings.chunk_queue_url) == []
    # without a budget the unpriced model may run; a priced one takes the budget
    assert post_json(owner, "/api/upload/process", {"job_id": job_id, "model": "unpriced-model-x",
                                                    "page_context": False}).status_code == 202
    _, started = upload_and_process(owner, urls_file(2), max_cost_usd=5, page_context=False)
    assert started.status_code == 202


@pytest.fixture
def provider_settings(env):
    """Batch mode needs a provider (not dummy mode); a start never calls it."""
    env(OPENAI_DUMMY_MODE="false", OPENAI_API_KEY="sk-test", OPENAI_BASE_URL="http://127.0.0.1:9/v1")


def test_a_batch_job_estimated_above_its_budget_is_400_over_budget_and_takes_nothing(
        client, conn, make_account, settings, provider_settings):
    owner = client.as_account(make_account(urls_per_day=1000))
    job_id = body(upload_csv(owner, urls_file(500)))["job"]["id"]
    estimate = pricing.estimate(deps.settings().prices, deps.settings().openai_model, 500, None, [], False)
    tight = estimate["batch_cost_usd"] / 2
    refused = post_json(owner, "/api/upload/process", {"job_id": job_id, "mode": "batch", "max_cost_usd": tight,
                                                       "page_context": False})
    assert error_of(refused) == (400, "over_budget")
    message = body(refused)["error"]["message"]
    assert f"${estimate['batch_cost_usd']:,.4f}" in message and f"${tight:,.4f}" in message  # estimate and budget
    assert url_rows(conn, job_id) == 0
    assert db.get_job(conn, job_id)["status"] == "pending" and db.urls_today(conn, owner.account.id) == 0
    assert drain_queue(settings.chunk_queue_url) == []
    # the same budget holds a live job (stopped when reached, not refused); a budget above the
    # batch estimate starts the batch job
    live = post_json(owner, "/api/upload/process", {"job_id": job_id, "mode": "live", "max_cost_usd": tight,
                                                    "page_context": False})
    assert live.status_code == 202, live.body
    other = body(upload_csv(owner, urls_file(500)))["job"]["id"]
    started = post_json(owner, "/api/upload/process", {"job_id": other, "mode": "batch", "page_context": False,
                                                       "max_cost_usd": estimate["batch_cost_usd"] * 2})
    assert started.status_code == 202, started.body
    assert body(started)["estimate"]["batch_cost_usd"] == estimate["batch_cost_usd"]


def test_a_budget_on_an_unpriced_model_in_batch_mode_is_400_no_price_and_takes_nothing(
        client, conn, make_account, settings, provider_settings):
    owner = client.as_account(make_account(urls_per_day=100, models=[settings.openai_model, "unpriced-model-x"]))
    job_id = body(upload_csv(owner, urls_file(3)))["job"]["id"]
    refused = post_json(owner, "/api/upload/process", {"job_id": job_id, "model": "unpriced-model-x",
                                                       "mode": "batch", "max_cost_usd": 5, "page_context": False})
    assert error_of(refused) == (400, "no_price")
    assert "unpriced-model-x" in body(refused)["error"]["message"]
    assert db.get_job(conn, job_id)["status"] == "pending" and url_rows(conn, job_id) == 0
    assert db.urls_today(conn, owner.account.id) == 0 and drain_queue(settings.chunk_queue_url) == []


# ---------------------------------------------------------------- item 6: no unsigned webhook

def test_a_callback_without_a_webhook_secret_is_400_and_starts_nothing(client, conn, settings):
    job_id = body(upload_csv(client, urls_file(3)))["job"]["id"]
    payload = {"job_id": job_id, "callback_url": "https://hooks.example.com/done", "page_context": False}
    refused = post_json(client, "/api/upload/process", payload)
    assert error_of(refused) == (400, "webhook_secret_missing")
    assert "POST /api/account/webhook-secret" in body(refused)["error"]["message"]
    assert db.get_job(conn, job_id)["status"] == "pending" and url_rows(conn, job_id) == 0
    assert drain_queue(settings.chunk_queue_url) == []
    assert post_json(client, "/api/account/webhook-secret", {}).status_code == 201
    started = post_json(client, "/api/upload/process", payload)
    assert started.status_code == 202 and body(started)["job"]["callback_url"] == payload["callback_url"]


# ---------------------------------------------------------------- item 21: quotas on drops and retries

def test_a_drop_over_the_daily_quota_fails_its_job_with_the_reason_and_enqueues_nothing(conn, make_account,
                                                                                        settings):
    account = make_account(urls_per_day=4)
    key = f"incoming/{account.id}/over-{uuid.uuid4().hex[:6]}.csv"
    deps.storage().put_bytes(key, urls_file(5))
    started = jobs.start_from_drop(conn, deps.storage(), deps.chunk_queue(), settings, key=key,
                                   version=uuid.uuid4().hex)
    assert started is None
    [job] = conn.execute("SELECT * FROM jobs WHERE account_id = %s", (account.id,)).fetchall()
    assert job["status"] == "failed" and job["file_path"] == key
    assert "This needs 5 URLs but the account has 4 of its 4 URLs per day left" in job["error"]
    assert url_rows(conn, job["id"]) == 0 and db.urls_today(conn, account.id) == 0
    assert drain_queue(settings.chunk_queue_url) == []
    # a drop within what is left starts and counts
    fits = f"incoming/{account.id}/fits-{uuid.uuid4().hex[:6]}.csv"
    deps.storage().put_bytes(fits, urls_file(4))
    assert jobs.start_from_drop(conn, deps.storage(), deps.chunk_queue(), settings, key=fits,
                                version=uuid.uuid4().hex)["job"]["status"] == "processing"
    assert db.urls_today(conn, account.id) == 4


def test_a_retry_counts_its_urls_in_the_days_usage_and_is_refused_over_the_quota(client, conn, make_account,
                                                                                settings):
    owner = client.as_account(make_account(urls_per_day=8))
    job_id, started = upload_and_process(owner, urls_file(3), page_context=False)
    assert started.status_code == 202
    owner.http.post(f"/api/upload/{job_id}/cancel")
    drain_queue(settings.chunk_queue_url)
    assert db.urls_today(conn, owner.account.id) == 3
    retried = owner.http.post(f"/api/jobs/{job_id}/retry")
    assert retried.status_code == 202 and body(retried)["retried"] == 3
    assert db.urls_today(conn, owner.account.id) == 6
    account = body(owner.http.get("/api/account"))["account"]["usage_today"]
    assert (account["urls"], account["urls_remaining"]) == (6, 2)
    owner.http.post(f"/api/upload/{job_id}/cancel")
    drain_queue(settings.chunk_queue_url)
    refused = owner.http.post(f"/api/jobs/{job_id}/retry")
    assert error_of(refused) == (429, "quota_exceeded") and "needs 3 URLs" in body(refused)["error"]["message"]
    assert db.urls_today(conn, owner.account.id) == 6 and drain_queue(settings.chunk_queue_url) == []
    assert db.get_job(conn, job_id)["status"] == "canceled"
