import json

import pytest


@pytest.fixture
def account(make_account):
    """Health details (latencies, error texts) are for the keys of an operator account."""
    return make_account(operator=True)


def test_health_reports_every_dependency(client):
    response = client.http.get("/health")
    body = json.loads(response.body)
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"postgres", "redis", "s3", "sqs"}
    for check in body["checks"].values():
        assert check["ok"] is True
        assert check["latency_ms"] >= 0


def test_health_is_503_naming_what_failed_when_localstack_is_down(client, env):
    env(AWS_ENDPOINT_URL="http://127.0.0.1:9")  # nothing listens on the discard port
    response = client.http.get("/health")
    body = json.loads(response.body)
    assert response.status_code == 503
    assert body["status"] == "error"
    assert body["checks"]["s3"]["ok"] is False and body["checks"]["sqs"]["ok"] is False
    assert "error" in body["checks"]["s3"]
    assert body["checks"]["postgres"]["ok"] is True and body["checks"]["redis"]["ok"] is True


def test_health_is_503_when_redis_is_down(client, env):
    env(REDIS_URL="redis://127.0.0.1:9/0")
    response = client.http.get("/health")
    body = json.loads(response.body)
    assert response.status_code == 503
    assert body["status"] == "error"
    assert body["checks"]["redis"]["ok"] is False
    assert all(body["checks"][name]["ok"] is True for name in ("postgres", "s3", "sqs")), body


def test_a_customer_admin_key_gets_no_details(client, make_account, env):
    env(AWS_ENDPOINT_URL="http://127.0.0.1:9")
    customer = client.as_account(make_account(role="admin"))
    response = customer.http.get("/health")
    assert response.status_code == 503
    assert json.loads(response.body)["checks"] == {"postgres": {"ok": True}, "redis": {"ok": True},
                                                   "s3": {"ok": False}, "sqs": {"ok": False}}
    assert "127.0.0.1" not in response.body.decode()


def test_every_response_carries_security_headers(client):
    headers = client.http.get("/health").headers
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert "max-age" in headers["Strict-Transport-Security"]
    assert "default-src 'none'" in headers["Content-Security-Policy"]
