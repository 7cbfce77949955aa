"""Row templates, the estimate before a start, the actual cost after, and max_cost_usd (issue 11)
through the API and the chunk worker, against the real PostgreSQL, LocalStack and Redis."""

from __future__ import annotations

import uuid

import pytest

from chalicelib import deps
from chalicelib.adapters import db
from chalicelib.generation.client import build_client
from chalicelib.generation.openers import OpenerGenerator
from chalicelib.generation.ratelimit import RateLimiter
from chalicelib.generation.worker import ChunkWorker
from chalicelib.settings import Settings
from tests.support.api import body, drain_queue, error_of, post_json, purge_queue, upload_csv

PEOPLE = (b"first_name,Company Name,website,notes\n"
          b"Ada,Acme Robotics,acme-robotics.com,x\n"
          b"Grace,Globex,globex.example.org,y\n"
          b"Linus,Initech,initech.example.net,z\n")


@pytest.fixture(autouse=True)
def clean(conn, settings):
    purge_queue(settings.chunk_queue_url)


def test_instructions_may_name_the_files_columns_and_each_row_carries_its_values(client, conn):
    job = body(upload_csv(client, PEOPLE))["job"]
    started = post_json(client, "/api/upload/process", {
        "job_id": job["id"], "instructions": "Greet {{first_name}} of {{ company_name }} warmly."})
    assert started.status_code == 202, started.body
    rows = conn.execute("SELECT url, fields FROM urls WHERE job_id = %s ORDER BY row_number", (job["id"],)).fetchall()
    assert [r["fields"] for r in rows] == [
        {"first_name": "Ada", "company_name": "Acme Robotics"},
        {"first_name": "Grace", "company_name": "Globex"},
        {"first_name": "Linus", "company_name": "Initech"},
    ]


def test_an_unknown_column_is_400_listing_the_files_columns_and_starts_nothing(client, conn, settings):
    job = body(upload_csv(client, PEOPLE))["job"]
    response = post_json(client, "/api/upload/process", {"job_id": job["id"], "instructions": "Hi {{role}}!"})
    assert error_of(response) == (400, "unknown_column")
    message = body(response)["error"]["message"]
    assert "{{role}}" in message and "first_name, Company Name, website, notes" in message
    assert db.get_job(conn, job["id"])["status"] == "pending"
    assert drain_queue(settings.chunk_queue_url) == []


def test_process_answers_an_estimate_with_the_batch_price_beside_it(client):
    job = body(upload_csv(client, PEOPLE))["job"]
    started = body(post_json(client, "/api/upload/process", {"job_id": job["id"], "page_context": False}))
    estimate = started["estimate"]
    assert estimate["urls"] == 3 and estimate["model"] == "gpt-4o-mini"
    per_url = estimate["prompt_tokens_per_url"]
    assert 250 < per_url < 600 and estimate["prompt_tokens"] == 3 * per_url
    # the structured answer within the default word limits (8..40): its JSON, ~24 words and a short evidence
    assert estimate["completion_tokens"] == 3 * estimate["completion_tokens_per_url"] and \
        30 < estimate["completion_tokens_per_url"] < 60
    assert (estimate["reused_rows"], estimate["cached_tokens"], estimate["basis"]) == (0, 0, "heuristic")
    # gpt-4o-mini: $0.15 / $0.60 per million input / output tokens
    expected = (estimate["prompt_tokens"] * 0.15 + estimate["completion_tokens"] * 0.60) / 1e6
    assert estimate["cost_usd"] == pytest.approx(expected, abs=1e-4)
    assert estimate["batch_cost_usd"] == pytest.approx(expected / 2, abs=1e-4)
    assert started["job"]["page_context"] is False and started["job"]["cost_usd"] == 0
    # the job shows the estimate beside its cost
    shown = started["job"]["estimate"]
    assert (shown["basis"], shown["prompt_tokens"], shown["cost_usd"]) == ("heuristic", estimate["prompt_tokens"],
                                                                          estimate["cost_usd"])
    assert shown["at_start"] == {"basis": "heuristic", "prompt_tokens": estimate["prompt_tokens"],
                                 "completion_tokens": estimate["completion_tokens"], "cost_usd": estimate["cost_usd"]}


def test_page_context_adds_to_the_estimate_and_bad_options_are_400(client, env):
    env(PAGE_CONTEXT_DEFAULT="true")  # the product's default (make test turns it off: no internet here)
    job = body(upload_csv(client, PEOPLE))["job"]
    for payload, code in [({"page_context": "yes"}, "bad_page_context"), ({"max_cost_usd": -1}, "bad_max_cost_usd"),
                          ({"max_cost_usd": True}, "bad_max_cost_usd"), ({"max_cost_usd": "5"}, "bad_max_cost_usd")]:
        assert error_of(post_json(client, "/api/upload/process", {"job_id": job["id"], **payload}))[1] == code
    with_pages = body(post_json(client, "/api/upload/process", {"job_id": job["id"], "max_cost_usd": 2.5}))
    assert with_pages["estimate"]["prompt_tokens_per_url"] > 500  # a page summary of ~1,200 characters
    assert with_pages["job"]["max_cost_usd"] == 2.5 and with_pages["job"]["page_context"] is True


def _worker(settings, **overrides) -> ChunkWorker:
    s = Settings(**{**settings.__dict__, "openai_dummy_mode": True, "openai_dummy_delay_ms": (0, 0),
                    "openai_rpm": 0, "openai_tpm": 0, "chunk_concurrency": 1, **overrides})
    generator = OpenerGenerator(build_client(s), RateLimiter(deps.redis_client(), 0, 0, prefix=uuid.uuid4().hex),
                                s.openai_model)
    return ChunkWorker(get_conn=deps.conn, generator=generator, queue=deps.chunk_queue(), settings=s,
                       export=lambda job: None, deadline_margin_s=0)


def test_a_job_stops_cleanly_at_its_max_cost_keeping_what_was_generated(client, conn, settings):
    data = b"url\n" + b"".join(f"site{i}-{uuid.uuid4().hex[:4]}.example.com\n".encode() for i in range(40))
    job = body(upload_csv(client, data))["job"]
    # a price that makes each opener cost about a cent: the budget of 5 cents lasts ~5 URLs
    # 50 ms a call, one at a time: the first save (after ~1 s) comes long before the 40th URL
    worker = _worker(settings, model_prices="gpt-4o-mini=30/30", openai_dummy_delay_ms=(50, 50))
    started = post_json(client, "/api/upload/process", {"job_id": job["id"], "max_cost_usd": 0.05,
                                                         "page_context": False})
    assert started.status_code == 202
    outcome = worker.process_chunk(job["id"], 0, lambda: float("inf"))
    row = db.get_job(conn, job["id"])
    assert row["status"] == "failed" and row["error"].startswith("budget_exceeded")
    assert 1 <= row["processed_rows"] < 40 and outcome.saved == row["processed_rows"]
    left = conn.execute("SELECT count(*) AS n FROM urls WHERE job_id = %s AND status = 'pending'",
                        (job["id"],)).fetchone()["n"]
    assert row["processed_rows"] + left == 40  # nothing lost: the rest waits for a retry
    # the worker's price table (30 / 30 per million) put the cost at the budget or just past it
    assert (row["prompt_tokens"] + row["completion_tokens"]) * 30 / 1e6 >= 0.05
    shown = body(client.http.get(f"/api/jobs/{job['id']}"))["job"]  # the API's own table: 0.15 / 0.60
    assert shown["cost_usd"] == pytest.approx((row["prompt_tokens"] * 0.15 + row["completion_tokens"] * 0.60) / 1e6,
                                              abs=1e-6)


def test_the_dummy_model_uses_the_template_fields(client, conn, settings):
    job = body(upload_csv(client, PEOPLE))["job"]
    post_json(client, "/api/upload/process", {"job_id": job["id"], "instructions": "Greet {{first_name}}.",
                                              "page_context": False})
    _worker(settings).process_chunk(job["id"], 0, lambda: float("inf"))
    openers = [r["opener"] for r in conn.execute("SELECT opener FROM urls WHERE job_id = %s ORDER BY row_number",
                                                 (job["id"],)).fetchall()]
    assert all(openers) and "Ada" in openers[0] and "Grace" in openers[1] and "Linus" in openers[2]


# ---------------------------------------------------------------- preview

def test_preview_writes_openers_for_the_first_valid_rows_without_starting_the_job(client, conn, env, settings):
    env(OPENAI_DUMMY_DELAY_MS="0")
    data = b"first_name,website\nAda,acme-robotics.com\nBob,not a url\nGrace,globex.example.org\nLinus,initech.io\n"
    job = body(upload_csv(client, data))["job"]
    response = post_json(client, f"/api/jobs/{job['id']}/preview",
                         {"instructions": "Greet {{first_name}}.", "rows": 2, "page_context": False})
    assert response.status_code == 200, response.body
    result = body(response)
    assert [(p["row"], p["url"]) for p in result["previews"]] == [
        (1, "https://acme-robotics.com/"), (3, "https://globex.example.org/")]
    assert result["previews"][0]["opener"].startswith("Hi Ada,") and "Grace" in result["previews"][1]["opener"]
    assert all(p["context_status"] == "off" and p["prompt_tokens"] > 0 for p in result["previews"])
    assert result["estimate"]["urls"] == 3
    assert db.get_job(conn, job["id"])["status"] == "pending"
    assert conn.execute("SELECT count(*) AS n FROM urls WHERE job_id = %s", (job["id"],)).fetchone()["n"] == 0
    assert drain_queue(settings.chunk_queue_url) == []


def test_preview_checks_its_input_and_the_job_like_process_does(client, make_account):
    job = body(upload_csv(client, PEOPLE))["job"]
    path = f"/api/jobs/{job['id']}/preview"
    assert error_of(post_json(client, path, {"rows": 6}))[1] == "bad_rows"
    assert error_of(post_json(client, path, {"rows": "2"}))[1] == "bad_rows"
    assert error_of(post_json(client, path, {"instructions": "Hi {{role}}"}))[1] == "unknown_column"
    assert error_of(post_json(client, path, {"model": "gpt-4o"}))[1] == "model_not_allowed"
    other = client.as_account(make_account())
    assert error_of(post_json(other, path, {})) == (404, "job_not_found")


def test_instructions_over_the_cap_are_400_on_preview_and_process_and_nothing_starts(client, conn, settings):
    """Both check MAX_INSTRUCTIONS (2,000 characters) before any {{column}} is looked for."""
    job = body(upload_csv(client, PEOPLE))["job"]
    hostile = "{{" + " " * 1_998 + "x"  # 2,001 characters once trimmed
    for path, payload in ((f"/api/jobs/{job['id']}/preview", {}), ("/api/upload/process", {"job_id": job["id"]})):
        response = post_json(client, path, {**payload, "instructions": hostile})
        assert error_of(response) == (400, "bad_instructions")
        assert "longer than 2000 characters" in body(response)["error"]["message"]
    assert db.get_job(conn, job["id"])["status"] == "pending"
    assert drain_queue(settings.chunk_queue_url) == []
