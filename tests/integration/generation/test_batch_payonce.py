"""Paying once in batch mode, and usage priced as jobs are (issue 22), against the real
PostgreSQL, Redis, LocalStack and the fake OpenAI server's Batch API through the real SDK:

* a batch job reuses what an earlier job of the account wrote (one lookup for the claimed rows):
  those rows are saved at once, reused, and left out of the batch file; a row whose page changed
  is sent; a chunk whose rows are all reused sends no batch, and the job completes; a batch
  job's openers are reused by later jobs as a live job's are;
* the batch answers' cached prompt tokens are recorded per row and job, and priced at the batch
  rate's cached price; the re-asks' at the live price;
* ``GET /api/account`` and the operators' ``usage`` price the day's tokens as the jobs' own
  ``cost_usd`` does (cached tokens, batch rows, live re-asks of a batch job).
"""

from __future__ import annotations

import io
import uuid
from urllib.parse import urlsplit

import openai
import pytest

from chalicelib import accounts, admin, deps, jobs, operations
from chalicelib.accounts.keys import Caller
from chalicelib.adapters import db
from chalicelib.generation import pricing
from chalicelib.generation.batches import BatchRunner
from chalicelib.generation.client import build_client
from chalicelib.generation.openers import OpenerGenerator
from chalicelib.generation.ratelimit import RateLimiter
from chalicelib.jobs import views
from tests.support.accounts import make_account

INSTRUCTIONS = "We help bakeries plan deliveries. Mention what the prospect does and keep it short."
CARRIED = ("opener", "evidence", "grounding", "quality", "words", "language", "context_status")


pytestmark = pytest.mark.usefixtures("clean")  # clean, fake, live: conftest.py


@pytest.fixture(autouse=True)
def batches_at_once(fake):
    fake.configure(batch_delay_s=0)


def runner(s, pages: dict[str, str] | None = None) -> BatchRunner:
    generator = OpenerGenerator(build_client(s), RateLimiter(deps.redis_client(), 0, 0, prefix=uuid.uuid4().hex),
                                s.openai_model, max_retries=s.max_retries, sleep=lambda seconds: None)
    summary = None if pages is None else (lambda url, account_id: (pages[urlsplit(url).hostname], "fetched"))
    client = openai.OpenAI(base_url=s.openai_base_url, api_key="sk-test", max_retries=0)
    return BatchRunner(get_conn=deps.conn, client=client, generator=generator, settings=s, page_summary=summary)


def hosts(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [f"p{i}-{tag}.example.com" for i in range(n)]


def batch_job(conn, s, account_id: str, names: list[str], pages=None, **options) -> tuple[dict, int]:
    """A batch job of `names` submitted and read back: (the job, the requests its batches held)."""
    data = ("website\n" + "\n".join(names) + "\n").encode()
    job_id = jobs.create_from_upload(conn, deps.storage(), account_id=account_id, file_name="b.csv", data=data,
                                     url_column=None)["job"]["id"]
    options.setdefault("page_context", pages is not None)
    started = jobs.start(conn, deps.storage(), deps.chunk_queue(), s, account_id, job_id, instructions=INSTRUCTIONS,
                         mode="batch", **options)
    run = runner(s, pages)
    sent = sum(run.submit_chunk(db.get_job(conn, job_id), chunk) for chunk in range(started["chunks"]))
    run.poll()
    return db.get_job(conn, job_id), sent


def rows_of(conn, job_id) -> dict[str, dict]:
    found = conn.execute(
        "SELECT url, status, opener, evidence, grounding, quality, words, language, context_status, reused, "
        "prompt_tokens, completion_tokens, cached_tokens, live_prompt_tokens, live_completion_tokens, "
        "live_cached_tokens, fingerprint, page_hash FROM urls WHERE job_id = %s", (job_id,)).fetchall()
    return {urlsplit(r["url"]).hostname: r for r in found}


def test_a_batch_job_reuses_what_did_not_change_and_sends_only_the_rest(conn, live, fake):
    account = make_account(conn).id
    names = hosts(8)
    pages = {name: f"{name} bakes sourdough bread for cafes in the old town. Title: {name}" for name in names}
    first, sent = batch_job(conn, live, account, names, pages)
    assert (first["status"], first["processed_rows"], sent) == ("completed", 8, 8)
    first_rows = rows_of(conn, first["id"])
    # a batch job's openers carry their fingerprint and page hash: later jobs can reuse them
    assert all(r["fingerprint"] is not None and r["page_hash"] is not None for r in first_rows.values())

    second_names = [*names[:7], hosts(1)[0]]  # a new URL
    changed = dict(pages, **{second_names[7]: "A new bakery.", names[1]: f"{names[1]} now sells cakes only."})
    before = fake.stats()
    second, sent = batch_job(conn, live, account, second_names, changed)
    stats = fake.stats()
    assert sent == 2 and stats["batch_requests"] - before["batch_requests"] == 2  # the new URL, the changed page
    assert (second["status"], second["processed_rows"], second["quality"]["reused"]) == ("completed", 8, 6)
    rows = rows_of(conn, second["id"])
    for name, row in rows.items():
        if name in (second_names[7], names[1]):
            assert not row["reused"] and row["prompt_tokens"] > 0 and row["fingerprint"] is not None
            continue
        assert row["reused"] and {c: row[c] for c in CARRIED} == {c: first_rows[name][c] for c in CARRIED}
        assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (0, 0, 0)
    assert second["prompt_tokens"] == sum(r["prompt_tokens"] for r in rows.values()) > 0

    # every row reused: no batch is sent (no file, no batch row), and the job completes
    before = fake.stats()
    third, sent = batch_job(conn, live, account, second_names, changed)
    after = fake.stats()
    assert sent == 0 and (after["files"], after["batches"]) == (before["files"], before["batches"])
    assert (third["status"], third["quality"]["reused"], third["prompt_tokens"]) == ("completed", 8, 0)
    assert conn.execute("SELECT count(*) AS n FROM batches WHERE job_id = %s", (third["id"],)).fetchone()["n"] == 0
    assert jobs.job_json(third)["cost_usd"] == 0

    # reuse off: everything is sent again
    fourth, sent = batch_job(conn, live, account, second_names, changed, reuse=False)
    assert sent == 8 and fourth["quality"]["reused"] == 0


def test_batch_answers_cached_tokens_are_recorded_and_priced_at_the_batch_rate(conn, live, fake):
    # the fake caches a repeated prefix (the job's constant system message) from 64 tokens
    fake.configure(prompt_cache_min_tokens=64)
    account = make_account(conn).id
    job, sent = batch_job(conn, live, account, hosts(6))
    assert job["status"] == "completed" and sent == 6
    rows = rows_of(conn, job["id"])
    stats = fake.stats()
    assert job["cached_tokens"] == sum(r["cached_tokens"] for r in rows.values()) == stats["cached_tokens"] > 0
    assert all(r["live_prompt_tokens"] is None for r in rows.values())  # no re-ask: nothing paid live
    prices, model = live.prices, job["model"]
    expected = pricing.cost_usd(prices, model, job["prompt_tokens"], job["completion_tokens"], "batch",
                                job["cached_tokens"])
    uncached = pricing.cost_usd(prices, model, job["prompt_tokens"], job["completion_tokens"], "batch")
    assert jobs.job_json(job)["cost_usd"] == round(expected, 6) and expected < uncached


def test_usage_is_priced_as_the_jobs_are(conn, live, fake):
    """Cached tokens at the cached price, batch rows at the batch price, a batch job's re-asks at
    the live price: the day's cost in GET /api/account and the operators' usage is the sum of the
    jobs' cost_usd."""
    fake.configure(prompt_cache_min_tokens=64)
    account = make_account(conn)
    names = hosts(6)
    fake.configure(misbehave={"invent": [names[0], names[1]]})  # two batch answers asked again, live
    batch, _ = batch_job(conn, live, account.id, names)
    assert batch["status"] == "completed" and batch["live_prompt_tokens"] > 0
    rows = rows_of(conn, batch["id"])
    for name in ("live_prompt_tokens", "live_completion_tokens", "live_cached_tokens"):
        assert batch[name] == sum(r[name] or 0 for r in rows.values())
    assert batch["cached_tokens"] > batch["live_cached_tokens"]

    caller = Caller(key_id="k", key_prefix=account.prefix, role="member", account_id=account.id,
                    account_name=account.name)
    expected = pricing.job_cost(live.prices, batch)
    all_batch = pricing.cost_usd(live.prices, batch["model"], batch["prompt_tokens"], batch["completion_tokens"],
                                 "batch")
    assert expected > all_batch  # the re-asks cost more, priced live
    usage = views.account_view(conn, live, caller)["account"]["usage_today"]
    assert usage["cost_usd"] == pytest.approx(round(expected, 6), abs=2e-6)
    assert usage["cached_tokens"] == batch["cached_tokens"]
    lines = operations.usage(conn, live.prices, live.openai_model, account.id, days=1)
    assert len(lines) == 1 and lines[0]["cost_usd"] == pytest.approx(expected, abs=2e-6)
    assert lines[0]["cached_tokens"] == batch["cached_tokens"]
    out = io.StringIO()
    admin.usage(conn, admin.build_parser().parse_args(["usage", account.id]), out)
    assert "CACHED TOKENS" in out.getvalue() and f"{expected:.4f}" in out.getvalue()
    assert accounts.usage_today(conn, account.id)["cached_tokens"] == batch["cached_tokens"]
