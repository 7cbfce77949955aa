"""Accounts through the API (chalice.test.Client against the real PostgreSQL, Redis and
LocalStack): every /api route needs a key, one account never sees or touches another's jobs,
and the per-account limits refuse with their code and leave nothing half-done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

import pytest

from chalicelib import accounts, deps, jobs
from chalicelib.accounts import Authenticator
from chalicelib.adapters import db
from chalicelib.errors import DomainError
from tests.support.api import (
    LEADS,
    body,
    drain_queue,
    error_of,
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


def urls_file(n: int, tag: str = "q") -> bytes:
    return b"url\n" + b"".join(f"{tag}{i}-{uuid.uuid4().hex[:6]}.example.com\n".encode() for i in range(n))


# ---------------------------------------------------------------- 401

def unauthorized(response) -> str:
    assert error_of(response) == (401, "unauthorized"), response.body
    assert response.headers["WWW-Authenticate"] == "Bearer"
    return body(response)["error"]["message"]


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer garbage"},
    {"Authorization": "Bearer cso_0000000g_" + "a" * 43},
    {"Authorization": "Bearer cso_abc\x00def"},
    {"X-Api-Key": "not-a-key"},
], ids=["none", "basic", "empty-bearer", "garbage", "bad-prefix", "nul", "x-api-key-garbage"])
def test_missing_or_malformed_keys_are_401_on_every_route(client, headers):
    job_id = str(uuid.uuid4())
    for method, path in [("GET", "/api/jobs"), ("GET", f"/api/jobs/{job_id}"), ("GET", f"/api/jobs/{job_id}/results"),
                         ("POST", "/api/upload"), ("POST", "/api/upload/url"), ("POST", "/api/upload/process"),
                         ("POST", f"/api/jobs/{job_id}/retry"), ("POST", f"/api/upload/{job_id}/cancel"),
                         ("GET", f"/api/upload/{job_id}/download"), ("GET", "/api/metrics"), ("GET", "/api/account")]:
        unauthorized(client.anonymous.request(method, path, headers=headers))


def test_a_key_of_the_right_shape_that_does_not_exist_is_401(client, account):
    forged, _ = accounts.generate_key()
    message = unauthorized(client.anonymous.get("/api/jobs", headers={"Authorization": f"Bearer {forged}"}))
    assert forged.split("_", 2)[2] not in message
    # the right prefix with another secret is refused too
    wrong = f"cso_{account.prefix}_{forged.split('_', 2)[2]}"
    unauthorized(client.anonymous.get("/api/jobs", headers={"Authorization": f"Bearer {wrong}"}))


def test_bearer_and_x_api_key_both_work(client, account):
    assert client.anonymous.get("/api/jobs", headers={"Authorization": f"Bearer {account.key}"}).status_code == 200
    assert client.anonymous.get("/api/jobs", headers={"authorization": f"bearer {account.key}"}).status_code == 200
    assert client.anonymous.get("/api/jobs", headers={"X-Api-Key": account.key}).status_code == 200


def test_a_revoked_key_is_refused_once_the_cache_has_expired(client, conn, env, make_account):
    env(API_KEY_CACHE_S="0.3")
    holder = client.as_account(make_account())
    assert holder.http.get("/api/jobs").status_code == 200
    accounts.revoke_key(conn, holder.account.prefix)
    time.sleep(0.4)  # at least the cache's lifetime (≤ 60 s in production: API_KEY_CACHE_S)
    unauthorized(holder.http.get("/api/jobs"))


def test_a_disabled_account_is_401_and_enabled_again_works(client, conn, env, make_account):
    env(API_KEY_CACHE_S="0")
    holder = client.as_account(make_account())
    accounts.disable_account(conn, holder.account.id)
    unauthorized(holder.http.get("/api/jobs"))
    accounts.enable_account(conn, holder.account.id)
    assert holder.http.get("/api/jobs").status_code == 200


def test_keys_are_stored_only_as_hashes_and_never_logged(client, conn, account, capsys, monkeypatch):
    def boom(*_a, **_k):
        raise RuntimeError("forced failure")

    monkeypatch.setattr(jobs, "list_", boom)
    assert client.http.get("/api/jobs").status_code == 500  # an error path logs a traceback
    unauthorized(client.anonymous.get("/api/jobs", headers={"Authorization": f"Bearer {account.key}x"}))
    secret = account.key.split("_", 2)[2]
    rows = conn.execute("SELECT * FROM api_keys WHERE prefix = %s", (account.prefix,)).fetchall()
    assert rows and secret not in repr(rows) and account.key not in repr(rows)
    logged = capsys.readouterr()
    assert "forced failure" in logged.out
    assert secret not in logged.out + logged.err


# ---------------------------------------------------------------- isolation

def _same_as_unknown(response, job_id, unknown_response, unknown_id) -> None:
    assert response.status_code == unknown_response.status_code == 404
    assert body(response)["error"]["code"] == "job_not_found"
    assert response.body.decode().replace(job_id, "ID") == unknown_response.body.decode().replace(unknown_id, "ID")


def test_another_accounts_job_is_exactly_an_unknown_job_on_every_endpoint(client, conn, make_account, settings):
    owner = client
    job_id, started = upload_and_process(owner, urls_file(3))
    assert started.status_code == 202
    presigned = body(post_json(owner, "/api/upload/url", {"file_name": "later.csv", "size": 100}))["job"]["id"]
    drain_queue(settings.chunk_queue_url)
    before = {j: db.get_job(conn, j) for j in (job_id, presigned)}
    rows_before = conn.execute("SELECT * FROM urls WHERE job_id = %s ORDER BY row_number", (job_id,)).fetchall()
    objects_before = s3_keys(f"uploads/{owner.account.id}/")

    intruder = client.as_account(make_account(role="admin"))  # even an admin key of another account
    unknown = str(uuid.uuid4())
    for target in (job_id, presigned):
        for method, path, payload in [
            ("GET", "/api/jobs/{}", None),
            ("GET", "/api/jobs/{}/results", None),
            ("POST", "/api/jobs/{}/retry", None),
            ("POST", "/api/upload/{}/cancel", None),
            ("GET", "/api/upload/{}/download", None),
            ("POST", "/api/upload/process", "job_id"),
            ("POST", "/api/upload/process", "jobId"),
            ("POST", "/api/jobs/{}/preview", {"rows": 2}),  # a preview would generate (and be paid)
        ]:
            def call(some_id, method=method, path=path, payload=payload):
                if isinstance(payload, dict):
                    return post_json(intruder, path.format(some_id), payload)
                if payload:
                    return post_json(intruder, path, {payload: some_id})
                return intruder.http.request(method, path.format(some_id), headers={"Accept": "*/*"})

            _same_as_unknown(call(target), target, call(unknown), unknown)

    assert {j: db.get_job(conn, j) for j in (job_id, presigned)} == before
    assert conn.execute("SELECT * FROM urls WHERE job_id = %s ORDER BY row_number", (job_id,)).fetchall() == rows_before
    assert s3_keys(f"uploads/{owner.account.id}/") == objects_before
    assert drain_queue(settings.chunk_queue_url) == []

    # the intruder's own list, metrics and presigned URLs show nothing of the owner's
    assert body(intruder.http.get("/api/jobs"))["jobs"] == []
    assert body(intruder.http.get("/api/jobs?status=processing"))["jobs"] == []
    metrics = body(intruder.http.get("/api/metrics"))
    assert sum(metrics["jobs"].values()) == 0 and metrics["urls"]["pending"] == 0
    mine = body(post_json(intruder, "/api/upload/url", {"file_name": "x.csv", "size": 100}))
    path = urllib.parse.urlsplit(mine["upload_url"]).path
    assert f"/uploads/{intruder.account.id}/{mine['job']['id']}/x.csv" in path
    assert owner.account.id not in mine["upload_url"]
    # and the owner still sees exactly its own
    assert {j["id"] for j in body(owner.http.get("/api/jobs"))["jobs"]} == {job_id, presigned}


def test_presigned_urls_expire_within_15_minutes(client):
    data = body(post_json(client, "/api/upload/url", {"file_name": "big.csv", "size": 100}))
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(data["upload_url"]).query)
    assert int(query["X-Amz-Expires"][0]) <= 900


# ---------------------------------------------------------------- limits

def test_account_shows_its_limits_and_todays_usage(client, make_account):
    job_id, _ = upload_and_process(client, urls_file(4))
    data = body(client.http.get("/api/account"))["account"]
    assert data["id"] == client.account.id and data["name"] == client.account.name
    assert data["key"] == {"prefix": client.account.prefix, "role": "member"}
    assert data["operator"] is False
    assert body(client.as_account(make_account(operator=True)).http.get("/api/account"))["account"]["operator"] is True
    assert data["limits"] == {"requests_per_minute": 600, "urls_per_day": 100_000, "concurrent_jobs": 10,
                              "models": ["gpt-4o-mini"]}
    assert data["usage_today"]["urls"] == 4 and data["usage_today"]["urls_remaining"] == 99_996
    assert data["usage_today"]["processing_jobs"] == 1
    assert data["usage_today"]["cost_usd"] == 0  # nothing generated yet
    assert client.account.key not in json.dumps(data)


def test_a_process_over_the_daily_quota_is_refused_with_what_remains_and_enqueues_nothing(
        client, conn, make_account, settings):
    small = client.as_account(make_account(urls_per_day=5))
    ok_id, ok = upload_and_process(small, urls_file(3))
    assert ok.status_code == 202
    drain_queue(settings.chunk_queue_url)
    job_id, refused = upload_and_process(small, urls_file(3))
    assert error_of(refused) == (429, "quota_exceeded")
    message = body(refused)["error"]["message"]
    assert "2 of its 5" in message and int(refused.headers["Retry-After"]) <= 86_401
    assert drain_queue(settings.chunk_queue_url) == []
    job = db.get_job(conn, job_id)
    assert job["status"] == "pending" and conn.execute("SELECT count(*) AS n FROM urls WHERE job_id = %s",
                                                       (job_id,)).fetchone()["n"] == 0
    assert db.urls_today(conn, small.account.id) == 3
    # two more fit exactly
    assert upload_and_process(small, urls_file(2))[1].status_code == 202
    assert db.urls_today(conn, small.account.id) == 5


def test_a_retry_counts_against_the_quota_too(client, conn, make_account, settings):
    small = client.as_account(make_account(urls_per_day=4))
    job_id, _ = upload_and_process(small, urls_file(3))
    small.http.post(f"/api/upload/{job_id}/cancel")
    drain_queue(settings.chunk_queue_url)
    refused = small.http.post(f"/api/jobs/{job_id}/retry")
    assert error_of(refused) == (429, "quota_exceeded")
    assert db.get_job(conn, job_id)["status"] == "canceled"
    assert conn.execute("SELECT count(*) AS n FROM urls WHERE job_id = %s AND status = 'pending'",
                        (job_id,)).fetchone()["n"] == 3
    assert drain_queue(settings.chunk_queue_url) == []


def test_the_daily_count_is_exact_under_concurrent_process_calls(client, conn, make_account, settings):
    account = make_account(urls_per_day=10, max_jobs=0)
    ids = [jobs.create_from_upload(conn, deps.storage(), account_id=account.id, file_name=f"c{i}.csv",
                                   data=urls_file(3, f"c{i}"), url_column=None)["job"]["id"] for i in range(6)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(ids))

    def start(job_id: str) -> None:
        own = db.connect(settings.database_url)
        try:
            barrier.wait(10)
            jobs.start(own, deps.storage(), deps.chunk_queue(), settings, account.id, job_id)
            outcomes.append("started")
        except DomainError as exc:
            outcomes.append(exc.code)
        finally:
            own.close()

    threads = [threading.Thread(target=start, args=(j,)) for j in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["quota_exceeded"] * 3 + ["started"] * 3
    assert db.urls_today(conn, account.id) == 9
    assert conn.execute("SELECT count(*) AS n FROM urls u JOIN jobs j ON j.id = u.job_id WHERE j.account_id = %s",
                        (account.id,)).fetchone()["n"] == 9
    assert len(drain_queue(settings.chunk_queue_url)) == 3


def test_concurrent_jobs_limit_is_429_too_many_jobs(client, conn, make_account, settings):
    one = client.as_account(make_account(max_jobs=1))
    first, started = upload_and_process(one, urls_file(2))
    assert started.status_code == 202
    drain_queue(settings.chunk_queue_url)
    second, refused = upload_and_process(one, urls_file(2))
    assert error_of(refused) == (429, "too_many_jobs")
    assert db.get_job(conn, second)["status"] == "pending" and drain_queue(settings.chunk_queue_url) == []
    one.http.post(f"/api/upload/{first}/cancel")
    assert post_json(one, "/api/upload/process", {"job_id": second}).status_code == 202


def test_only_allowed_models_and_the_default_is_the_first_allowed(client, conn, make_account):
    job_id = body(upload_csv(client, LEADS))["job"]["id"]
    refused = post_json(client, "/api/upload/process", {"job_id": job_id, "model": "gpt-4o"})
    assert error_of(refused) == (400, "model_not_allowed")
    assert "gpt-4o-mini" in body(refused)["error"]["message"]
    assert db.get_job(conn, job_id)["status"] == "pending"
    assert body(post_json(client, "/api/upload/process", {"job_id": job_id}))["job"]["model"] == "gpt-4o-mini"

    picky = client.as_account(make_account(models=["gpt-4o", "o3-mini"]))
    job_id = body(upload_csv(picky, LEADS))["job"]["id"]
    assert error_of(post_json(picky, "/api/upload/process", {"job_id": job_id, "model": "gpt-4o-mini"})) == (
        400, "model_not_allowed")
    started = body(post_json(picky, "/api/upload/process", {"job_id": job_id, "model": "o3-mini"}))
    assert started["job"]["model"] == "o3-mini"


# ---------------------------------------------------------------- /health

def test_health_is_open_but_details_are_for_operator_keys(client, make_account):
    anonymous = body(client.anonymous.get("/health"))
    assert anonymous == {"status": "ok", "checks": {n: {"ok": True} for n in ("postgres", "redis", "s3", "sqs")}}
    assert body(client.http.get("/health")) == anonymous  # a member key
    customer_admin = client.as_account(make_account(role="admin"))
    assert body(customer_admin.http.get("/health")) == anonymous  # an admin of a customer account
    for role in ("member", "admin"):  # any key of an operator account
        operator = client.as_account(make_account(role=role, operator=True))
        detailed = body(operator.http.get("/health"))
        assert all("latency_ms" in c for c in detailed["checks"].values()), detailed


def _from_address(monkeypatch) -> str:
    """Requests from a fresh address (API Gateway's identity.sourceIp, as chalice.test sets it)."""
    from chalice.local import LambdaEventConverter

    address = f"2001:db8::{uuid.uuid4().hex[:4]}"
    monkeypatch.setattr(LambdaEventConverter, "LOCAL_SOURCE_IP", address)
    return address


def test_health_is_rate_limited_per_address(client, env, monkeypatch):
    env(IP_RATE_LIMIT_PER_MINUTE="2", API_RATE_WINDOW_S="600")
    _from_address(monkeypatch)
    codes = [client.anonymous.get("/health").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert error_of(client.anonymous.get("/health"))[1] == "rate_limited"
    _from_address(monkeypatch)  # another address has its own window
    assert client.anonymous.get("/health").status_code == 200


class CountingLookups:
    """A get_conn for a real Authenticator that counts how often it goes to the database."""

    def __init__(self, get_conn) -> None:
        self._get_conn = get_conn
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self._get_conn()


def test_an_address_over_its_failed_authentication_limit_is_429_before_any_key_lookup(
        client, env, monkeypatch, make_account):
    env(IP_RATE_LIMIT_PER_MINUTE="3", API_RATE_WINDOW_S="600", API_KEY_CACHE_S="0")
    lookups = CountingLookups(deps.conn)
    auth = Authenticator(lookups, ttl_s=0)  # the app's, counting its trips to the database
    monkeypatch.setattr(deps, "authenticator", lambda: auth)
    good = make_account()
    _from_address(monkeypatch)
    forged = [accounts.generate_key()[0] for _ in range(6)]  # made-up keys: each a lookup if it got one
    codes = [client.anonymous.get("/api/jobs", headers={"Authorization": f"Bearer {key}"}).status_code
             for key in forged[:3]]
    assert codes == [401, 401, 401] and lookups.calls == 3
    for key in (*forged[3:], good.key):  # over the limit: refused unread, a good key too
        limited = client.anonymous.get("/api/jobs", headers={"Authorization": f"Bearer {key}"})
        assert error_of(limited) == (429, "rate_limited")
        assert 500 <= int(limited.headers["Retry-After"]) <= 600
    assert lookups.calls == 3  # not one more query
    # /health does not look up a key for that address either: the anonymous answer
    assert body(client.anonymous.get("/health", headers={"Authorization": f"Bearer {good.key}"}))["checks"][
        "postgres"] == {"ok": True}
    assert lookups.calls == 3

    _from_address(monkeypatch)  # another address: a good key works, its own failures are its own
    assert client.anonymous.get("/api/jobs", headers={"Authorization": f"Bearer {good.key}"}).status_code == 200
    assert lookups.calls == 4
    assert client.anonymous.get("/api/jobs", headers={"Authorization": f"Bearer {forged[0]}"}).status_code == 401


def test_health_requests_do_not_use_up_the_failed_authentication_limit(client, env, monkeypatch):
    env(IP_RATE_LIMIT_PER_MINUTE="2", API_RATE_WINDOW_S="600")
    _from_address(monkeypatch)
    assert [client.anonymous.get("/health").status_code for _ in range(3)] == [200, 200, 429]
    assert client.http.get("/api/jobs").status_code == 200  # a key from that address is still looked at


# ---------------------------------------------------------------- the operators' command over HTTP

def admin_command(*argv: str) -> str:
    """`python -m chalicelib.admin ARGV` in a subprocess against the test database; its last line."""
    done = subprocess.run([sys.executable, "-m", "chalicelib.admin", *argv], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.rstrip("\n").splitlines()[-1]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_revoke_key_by_the_command_takes_effect_when_the_key_cache_expires(client, env, monkeypatch, make_account):
    env(API_KEY_CACHE_S="5")
    ttl = deps.authenticator().ttl_s
    assert ttl == 5  # the app's authenticator trusts a lookup for API_KEY_CACHE_S
    clock = FakeClock()  # the app's authenticator with that TTL, on a clock the test moves
    auth = Authenticator(deps.conn, ttl_s=ttl, clock=clock)
    monkeypatch.setattr(deps, "authenticator", lambda: auth)
    holder = client.as_account(make_account())
    assert holder.http.get("/api/jobs").status_code == 200  # looked up and cached

    admin_command("revoke-key", holder.account.prefix)
    clock.now += ttl - 0.1
    assert holder.http.get("/api/jobs").status_code == 200  # still within the cache's lifetime
    clock.now += 0.2
    assert "revoked" in unauthorized(holder.http.get("/api/jobs"))


def test_the_key_cache_cannot_outlive_60_s(env):
    env(API_KEY_CACHE_S="3600")
    assert deps.authenticator().ttl_s == 60
    with pytest.raises(ValueError, match="60"):
        Authenticator(deps.conn, ttl_s=60.5)


def test_an_accounts_rpm_set_by_the_command_limits_its_requests_only(client, env, make_account, redis_client,
                                                                      settings):
    env(API_RATE_WINDOW_S="600", API_RATE_LIMIT_PER_MINUTE="100")
    limited, other = client.as_account(make_account()), client.as_account(make_account())
    admin_command("set-limits", limited.account.id, "--rpm", "3")
    assert [limited.http.get("/api/jobs").status_code for _ in range(3)] == [200, 200, 200]
    refused = limited.http.get("/api/jobs")
    assert error_of(refused) == (429, "rate_limited") and 500 <= int(refused.headers["Retry-After"]) <= 600
    assert [other.http.get("/api/jobs").status_code for _ in range(5)] == [200] * 5  # the default, 100
    counter = f"{settings.ratelimit_prefix}:api:{{account:{limited.account.id}}}"
    assert int(redis_client.get(counter)) == 4


# ---------------------------------------------------------------- S3 drops

def test_drops_outside_an_account_folder_or_for_a_disabled_account_are_moved_aside_with_the_reason(
        conn, make_account, settings):
    storage = deps.storage()
    disabled = make_account()
    accounts.disable_account(conn, disabled.id)
    cases = {
        f"incoming/loose-{uuid.uuid4().hex[:6]}.csv": "not in an account folder",
        f"incoming/not-an-id/x-{uuid.uuid4().hex[:6]}.csv": "not an account id",
        f"incoming/{uuid.uuid4()}/x-{uuid.uuid4().hex[:6]}.csv": "no account with id",
        f"incoming/{disabled.id}/x-{uuid.uuid4().hex[:6]}.csv": "is disabled",
    }
    for key, reason in cases.items():
        storage.put_bytes(key, b"url\nacme.com\n")
        assert jobs.start_from_drop(conn, storage, deps.chunk_queue(), settings, key=key, version="v1") is None
        moved = "rejected/" + key.removeprefix("incoming/")
        assert s3_keys(key) == [] and s3_keys(moved) == [moved, moved + ".reason.txt"]
        text = storage.s3.get_object(Bucket=storage.bucket, Key=moved + ".reason.txt")["Body"].read().decode()
        assert reason in text
    assert conn.execute("SELECT count(*) AS n FROM jobs WHERE source = 's3'").fetchone()["n"] == 0
    assert drain_queue(settings.chunk_queue_url) == []


def test_a_drop_into_an_account_folder_is_that_accounts_job(client, conn, settings):
    storage = deps.storage()
    key = f"incoming/{client.account.id}/leads-{uuid.uuid4().hex[:6]}.csv"
    storage.put_bytes(key, LEADS)
    started = jobs.start_from_drop(conn, storage, deps.chunk_queue(), settings, key=key, version="v1")
    assert started["job"]["account_id"] == client.account.id and started["job"]["status"] == "processing"
    listed = body(client.http.get("/api/jobs"))["jobs"]
    assert [j["id"] for j in listed] == [started["job"]["id"]]
