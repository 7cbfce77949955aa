"""Previews are paid like any other call (issue 19 item 2, SPEC "Paying once"): their rows count
in the account's URLs-per-day quota (refused over it before any call) and their tokens and cost
in GET /api/account's usage, of that account only; and (item 21) the rows default to 3, at most
5, and every call takes its turn from the account's fair share of the shared limiter."""

from __future__ import annotations

import uuid

import pytest

from chalicelib import deps
from tests.support.api import body, error_of, post_json, upload_csv


@pytest.fixture(autouse=True)
def instant(env):
    env(OPENAI_DUMMY_DELAY_MS="0")  # dummy mode: openers generated in the request, through the limiter


def leads(n: int) -> bytes:
    tag = uuid.uuid4().hex[:6]
    return b"website\n" + b"".join(f"p{i}-{tag}.example.com\n".encode() for i in range(n))


def preview(client, job_id: str, **options):
    return post_json(client, f"/api/jobs/{job_id}/preview", {"page_context": False, **options})


def usage(client) -> dict:
    return body(client.http.get("/api/account"))["account"]["usage_today"]


def limiter_saw(account_id: str) -> bool:
    """Whether the shared limiter counted the account among those asking (its fair-share set)."""
    limiter = deps.rate_limiter()
    r = deps.redis_client()
    return any(r.zscore(key, account_id) is not None
               for key in r.scan_iter(match=f"{limiter.prefix}:*active_accounts"))


def test_a_preview_counts_its_urls_tokens_and_cost_in_the_accounts_usage_only(client, make_account):
    other = client.as_account(make_account())
    before, others_before = usage(client), usage(other)
    job_id = body(upload_csv(client, leads(6)))["job"]["id"]
    response = preview(client, job_id, rows=2)
    assert response.status_code == 200, response.body
    previews = body(response)["previews"]
    assert len(previews) == 2 and all(p["opener"] for p in previews)
    after = usage(client)
    assert after["urls"] == before["urls"] + 2
    assert after["urls_remaining"] == before["urls_remaining"] - 2
    assert after["prompt_tokens"] == before["prompt_tokens"] + sum(p["prompt_tokens"] for p in previews) > 0
    assert after["completion_tokens"] == before["completion_tokens"] + sum(p["completion_tokens"] for p in previews)
    assert after["cost_usd"] > before["cost_usd"]
    assert usage(other) == others_before  # another account's usage does not move


def test_a_preview_over_the_daily_quota_is_429_and_generates_nothing(client, make_account):
    small = client.as_account(make_account(urls_per_day=4))
    job_id = body(upload_csv(small, leads(6)))["job"]["id"]
    assert preview(small, job_id, rows=3).status_code == 200
    refused = preview(small, job_id)  # 3 rows by default, 1 left
    assert error_of(refused) == (429, "quota_exceeded")
    assert "This needs 3 URLs but the account has 1 of its 4" in body(refused)["error"]["message"]
    assert int(refused.headers["Retry-After"]) <= 86_401
    spent = usage(small)
    assert (spent["urls"], spent["urls_remaining"]) == (3, 1)
    assert preview(small, job_id, rows=1).status_code == 200  # what is left fits
    assert usage(small)["urls"] == 4


def test_a_refused_preview_makes_no_call(client, make_account):
    spent = client.as_account(make_account(urls_per_day=2))
    job_id = body(upload_csv(spent, leads(3)))["job"]["id"]
    assert error_of(preview(spent, job_id))[1] == "quota_exceeded"
    usage_now = usage(spent)
    assert (usage_now["urls"], usage_now["prompt_tokens"]) == (0, 0)
    assert not limiter_saw(spent.account.id)


def test_preview_rows_default_to_three_and_go_up_to_five(client):
    job_id = body(upload_csv(client, leads(7)))["job"]["id"]
    default = body(preview(client, job_id))["previews"]
    assert [p["row"] for p in default] == [1, 2, 3]
    assert [p["row"] for p in body(preview(client, job_id, rows=5))["previews"]] == [1, 2, 3, 4, 5]
    assert error_of(preview(client, job_id, rows=6)) == (400, "bad_rows")
    assert error_of(preview(client, job_id, rows=0)) == (400, "bad_rows")


def test_a_preview_takes_its_turn_from_the_accounts_fair_share_of_the_limiter(client):
    job_id = body(upload_csv(client, leads(2)))["job"]["id"]
    assert not limiter_saw(client.account.id)
    assert preview(client, job_id, rows=1).status_code == 200
    assert limiter_saw(client.account.id)
