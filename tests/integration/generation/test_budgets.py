"""Paying once (issue 22 items 3-5, issue 20's cost leftovers), against the real PostgreSQL, Redis,
LocalStack and the fake OpenAI server (live endpoint and Batch API) through the real SDK:

* estimates: a preview's real usage corrects the estimate (the preview's, the start's, kept on the
  job) and can push a batch job over its budget (400 over_budget, nothing enqueued); the first
  chunk's worth of rows corrects the job's estimate from its real usage, shown beside cost_usd;
* batch mode pays once: a crash right after the provider created a batch (injected) is recovered
  by the batch's metadata, so its rows are sent once; a batch the provider never got gives its
  rows back;
* cost: a row whose re-ask fails outright still counts the earlier call's tokens; a batch job's
  live re-asks are priced at the live price.
"""

from __future__ import annotations

import dataclasses
import math
import uuid

import openai
import pytest

from chalicelib import deps, jobs
from chalicelib.adapters import db
from chalicelib.errors import DomainError
from chalicelib.generation import pricing
from chalicelib.generation.answers import GenerationFailed
from chalicelib.generation.batches import BatchRunner
from chalicelib.generation.client import build_client
from chalicelib.generation.openers import OpenerGenerator
from chalicelib.generation.ratelimit import RateLimiter
from chalicelib.generation.worker import ChunkWorker
from chalicelib.jobs import preview as previews
from tests.support.accounts import service_account
from tests.support.api import drain_queue

pytestmark = pytest.mark.usefixtures("clean")

INSTRUCTIONS = "We help bakeries plan deliveries. Mention what the prospect does and keep it short."


def generator(s) -> OpenerGenerator:
    return OpenerGenerator(build_client(s), RateLimiter(deps.redis_client(), 0, 0, prefix=uuid.uuid4().hex),
                           s.openai_model, max_retries=s.max_retries, sleep=lambda seconds: None)


def worker(s, gen=None) -> ChunkWorker:
    return ChunkWorker(get_conn=deps.conn, generator=gen or generator(s), queue=deps.chunk_queue(), settings=s,
                       export=lambda job: None, deadline_margin_s=0)


def upload(conn, n: int, tag: str = "g") -> tuple[str, str, list[str]]:
    account_id = service_account(conn)
    hosts = [f"{tag}{i}-{uuid.uuid4().hex[:6]}.example.com" for i in range(n)]
    data = ("website\n" + "\n".join(hosts) + "\n").encode()
    job_id = jobs.create_from_upload(conn, deps.storage(), account_id=account_id, file_name="b.csv", data=data,
                                     url_column=None)["job"]["id"]
    return account_id, job_id, hosts


def start(conn, s, account_id: str, job_id: str, **options) -> dict:
    return jobs.start(conn, deps.storage(), deps.chunk_queue(), s, account_id, job_id, instructions=INSTRUCTIONS,
                      **options)


# ---------------------------------------------------------------- estimates

def test_a_preview_calibrates_the_estimate_and_the_start_keeps_it_beside_the_actual(conn, live, fake):
    account_id, job_id, _ = upload(conn, 30)
    heuristic = pricing.estimate(live.prices, live.openai_model, 30, INSTRUCTIONS, [], False)
    shown = previews.preview(conn, deps.storage(), live, generator(live), account_id, job_id,
                             instructions=INSTRUCTIONS, page_context=False, rows=3)
    paid = [p for p in shown["previews"] if p["prompt_tokens"]]
    assert len(paid) == 3
    calibration = db.get_job(conn, job_id)["estimate"]["preview"]
    # the factor is the previews' real prompt tokens against what the estimate says those rows cost
    assert calibration["basis"] == "preview" and calibration["rows"] == 3
    assert calibration["prompt_factor"] != 1.0  # the fake counts BPE-like, the heuristic characters / 4
    actual = sum(p["prompt_tokens"] for p in paid)
    assert math.isclose(calibration["prompt_factor"], actual / (3 * heuristic["prompt_tokens_per_url"]), rel_tol=0.02)
    estimate = shown["estimate"]
    assert estimate["basis"] == "preview"
    assert estimate["prompt_tokens_per_url"] == math.ceil(heuristic["prompt_tokens_per_url"]
                                                          * calibration["prompt_factor"])

    started = start(conn, live, account_id, job_id, page_context=False)
    assert started["estimate"]["basis"] == "preview"
    assert started["estimate"]["prompt_tokens"] == estimate["prompt_tokens"]
    job = jobs.job_json(db.get_job(conn, job_id))
    assert job["cost_usd"] == 0 and job["estimate"]["basis"] == "preview"
    assert job["estimate"]["at_start"]["prompt_tokens"] == estimate["prompt_tokens"]

    # the first chunk's worth of rows (10 of 30) corrects it from their real usage
    worker(live).process_chunk(job_id, 0, lambda: float("inf"))
    row = db.get_job(conn, job_id)
    done = row["processed_rows"] + row["failed_rows"]
    assert done == 10
    job = jobs.job_json(row)
    assert job["estimate"]["basis"] == "first_chunk"
    assert job["estimate"]["prompt_tokens"] == math.ceil(row["prompt_tokens"] * 30 / 10)
    assert job["estimate"]["completion_tokens"] == math.ceil(row["completion_tokens"] * 30 / 10)
    assert job["estimate"]["at_start"]["basis"] == "preview"
    for chunk in (1, 2):
        worker(live).process_chunk(job_id, chunk, lambda: float("inf"))
    final = jobs.job_json(db.get_job(conn, job_id))
    assert final["status"] == "completed"
    # the figures side by side; the start's estimate corrected by the preview is within 15 %
    ratio = final["estimate"]["at_start"]["cost_usd"] / final["cost_usd"]
    assert 0.85 <= ratio <= 1.15, ratio


def test_a_preview_that_shows_the_rows_cost_more_pushes_a_batch_job_over_its_budget(conn, live, fake):
    account_id, job_id, _ = upload(conn, 40)
    heuristic = pricing.estimate(live.prices, live.openai_model, 40, INSTRUCTIONS, [], False)
    budget = heuristic["batch_cost_usd"] * 1.05  # enough for the heuristic's estimate
    # real answers much longer than the estimate expects (a 90-word answer: the fake's "long")
    fake.configure(content="word " * 150)
    previews.preview(conn, deps.storage(), live, generator(live), account_id, job_id, instructions=INSTRUCTIONS,
                     page_context=False, rows=3, grounding="flag")
    assert db.get_job(conn, job_id)["estimate"]["preview"]["completion_factor"] > 1.5
    drain_queue(live.chunk_queue_url)
    with pytest.raises(DomainError) as refused:
        start(conn, live, account_id, job_id, page_context=False, mode="batch", max_cost_usd=budget)
    assert (refused.value.status, refused.value.code) == (400, "over_budget")
    assert db.get_job(conn, job_id)["status"] == "pending"
    assert conn.execute("SELECT count(*) AS n FROM urls WHERE job_id = %s", (job_id,)).fetchone()["n"] == 0
    assert drain_queue(live.chunk_queue_url) == []


def test_a_preview_row_that_fails_still_counts_its_calls_in_the_accounts_usage(conn, live, fake):
    account_id, job_id, _ = upload(conn, 4)

    def usage() -> tuple[int, int]:
        row = conn.execute("SELECT coalesce(sum(prompt_tokens), 0) AS p, coalesce(sum(completion_tokens), 0) AS c "
                           "FROM preview_usage WHERE account_id = %s", (account_id,)).fetchone()
        return int(row["p"]), int(row["c"])

    before = usage()
    # every answer claims a figure found nowhere: strict grounding fails the row after its calls
    fake.configure(content="Congratulations to {host} on 25 years in business; could we talk next week?")
    shown = previews.preview(conn, deps.storage(), live, generator(live), account_id, job_id,
                             instructions=INSTRUCTIONS, page_context=False, rows=2)["previews"]
    assert all(p["opener"] is None and p["error"].startswith("ungrounded") for p in shown)
    stats = fake.stats()
    assert stats["ok"] == 2 * live.max_retries  # each row asked max_retries times
    assert sum(p["prompt_tokens"] for p in shown) == stats["prompt_tokens"] > 0
    assert sum(p["completion_tokens"] for p in shown) == stats["completion_tokens"] > 0
    after = usage()
    assert (after[0] - before[0], after[1] - before[1]) == (stats["prompt_tokens"], stats["completion_tokens"])


# ---------------------------------------------------------------- tokens of failed rows

class FailingReasks:
    """The real generator, whose calls made again by the checks fail outright (the provider down
    for that call), as a wrapper: what the worker sees is a GenerationFailed from a re-ask."""

    def __init__(self, inner: OpenerGenerator) -> None:
        self.inner = inner
        self.max_retries = inner.max_retries

    def generate(self, url, instructions=None, model=None, should_stop=lambda: False, account=None, **data):
        if data.get("reask"):
            raise GenerationFailed("HTTP 503 from the model API: down", 3)
        return self.inner.generate(url, instructions, model, should_stop=should_stop, account=account, **data)


def test_a_row_whose_reask_fails_outright_still_counts_the_first_calls_tokens(conn, live, fake):
    account_id, job_id, hosts = upload(conn, 3)
    fake.configure(misbehave={"invent": [hosts[0]]})
    start(conn, live, account_id, job_id, page_context=False)
    worker(live, FailingReasks(generator(live))).process_chunk(job_id, 0, lambda: float("inf"))
    rows = {r["url"]: r for r in conn.execute(
        "SELECT url, status, error, prompt_tokens, completion_tokens FROM urls WHERE job_id = %s", (job_id,))}
    failed = next(r for url, r in rows.items() if hosts[0] in url)
    assert failed["status"] == "failed" and "503" in failed["error"]
    assert failed["prompt_tokens"] > 0 and failed["completion_tokens"] > 0  # the first answer was paid
    job = db.get_job(conn, job_id)
    stats = fake.stats()
    assert stats["requests"] == stats["ok"] == 3  # three answers, the failed re-ask never reached the fake
    assert (job["prompt_tokens"], job["completion_tokens"]) == (stats["prompt_tokens"], stats["completion_tokens"])


# ---------------------------------------------------------------- batch mode

class Crash(BaseException):
    """The handler dies (a Lambda killed): no except clause of ours runs."""


class CrashAfterCreate:
    """The SDK client's batches, whose create reaches the provider and then the process dies
    (`reach`: False, it dies before the request)."""

    def __init__(self, client: openai.OpenAI, reach: bool = True) -> None:
        self.client, self.reach = client, reach
        self.files = client.files

    @property
    def batches(self):
        outer = self

        class Batches:
            def create(self, **kwargs):
                if outer.reach:
                    outer.client.batches.create(**kwargs)
                raise Crash

        return Batches()


def batch_runner(s, client) -> BatchRunner:
    gen = generator(s)
    return BatchRunner(get_conn=deps.conn, client=client, generator=gen, settings=s)


def lease_runs_out(conn, job_id: str) -> None:
    """As after the submit lease: the batch row begun long ago, its rows' lease over."""
    conn.execute("UPDATE batches SET created_at = now() - interval '1 hour' WHERE job_id = %s", (job_id,))
    conn.execute("UPDATE urls SET lease_until = now() - interval '1 second' WHERE job_id = %s AND "
                 "status = 'processing'", (job_id,))


@pytest.mark.parametrize("reached", [True, False], ids=["created-then-crash", "crash-before-create"])
def test_a_crash_around_batch_creation_sends_every_row_once(conn, live, fake, reached):
    fake.configure(batch_delay_s=0)
    account_id, job_id, _ = upload(conn, 8)
    start(conn, live, account_id, job_id, page_context=False, mode="batch")
    client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)
    job = db.get_job(conn, job_id)
    with pytest.raises(Crash):
        batch_runner(live, CrashAfterCreate(client, reach=reached)).submit_chunk(job, 0)
    [left] = db.job_batches(conn, job_id, ("submitting",))
    assert fake.stats()["batches"] == (1 if reached else 0)

    runner = batch_runner(live, client)
    # within the submit lease nothing is touched: the submitter may still be alive
    assert runner.recover(conn, job_id, 0) == {"adopted": 0, "released": 0}
    lease_runs_out(conn, job_id)
    sent = runner.submit_chunk(job, 0)  # the chunk's message again (the sweep's requeue)
    batches = {b["id"]: b for b in conn.execute("SELECT * FROM batches WHERE job_id = %s", (job_id,))}
    if reached:
        assert sent == 0 and batches[left["id"]]["status"] == "submitted"
        assert batches[left["id"]]["provider_batch_id"] is not None
    else:
        assert sent == 8 and batches[left["id"]]["status"] == "done"
        assert batches[left["id"]]["error"].startswith("not sent")
    stats = fake.stats()
    assert (stats["batches"], stats["batch_requests"]) == (1, 8)  # every row sent once
    runner.poll()
    final = db.get_job(conn, job_id)
    assert (final["status"], final["processed_rows"], final["failed_rows"]) == ("completed", 8, 0)


def test_a_batch_jobs_live_reasks_are_priced_at_the_live_price(conn, live, fake):
    fake.configure(batch_delay_s=0)
    account_id, job_id, hosts = upload(conn, 6)
    fake.configure(misbehave={"invent": [hosts[0], hosts[1]]})
    start(conn, live, account_id, job_id, page_context=False, mode="batch")
    client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)
    runner = batch_runner(live, client)
    assert runner.submit_chunk(db.get_job(conn, job_id), 0) == 6
    runner.poll()
    job = db.get_job(conn, job_id)
    stats = fake.stats()
    assert job["status"] == "completed" and stats["ok"] == 2  # the two re-asks, live
    assert (job["live_prompt_tokens"], job["live_completion_tokens"]) == (stats["prompt_tokens"],
                                                                          stats["completion_tokens"])
    assert job["prompt_tokens"] > job["live_prompt_tokens"] > 0
    prices, model = live.prices, job["model"]
    expected = (pricing.cost_usd(prices, model, job["prompt_tokens"] - job["live_prompt_tokens"],
                                 job["completion_tokens"] - job["live_completion_tokens"], "batch")
                + pricing.cost_usd(prices, model, job["live_prompt_tokens"], job["live_completion_tokens"], "live"))
    all_batch = pricing.cost_usd(prices, model, job["prompt_tokens"], job["completion_tokens"], "batch")
    shown = jobs.job_json(job)
    assert shown["cost_usd"] == round(expected, 6) and expected > all_batch
    # the job's estimate, projected from its rows (all of them here), prices the re-asks live too
    assert shown["estimate"]["basis"] == "first_chunk" and shown["estimate"]["cost_usd"] == round(expected, 4)


def test_a_batch_job_retry_that_would_pass_its_budget_is_refused_with_nothing_reset(conn, live, fake):
    fake.configure(batch_delay_s=0, batch_expire_fraction=0.5)
    account_id, job_id, _ = upload(conn, 10)
    start(conn, live, account_id, job_id, page_context=False, mode="batch")
    s = dataclasses.replace(live, max_retries=1)  # an expired row fails at once (no try left)
    client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)
    runner = batch_runner(s, client)
    assert runner.submit_chunk(db.get_job(conn, job_id), 0) == 10
    runner.poll()
    job = db.get_job(conn, job_id)
    assert (job["status"], job["processed_rows"], job["failed_rows"]) == ("completed", 5, 5)
    spent = pricing.job_cost(live.prices, job)
    per_row = jobs.job_json(job)["estimate"]["cost_usd"] / 10
    # a budget the 5 rows of the retry would pass: refused, nothing reset, nothing enqueued
    job = db.update_job(conn, job_id, max_cost_usd=spent + per_row * 2)
    drain_queue(live.chunk_queue_url)
    with pytest.raises(DomainError) as refused:
        jobs.retry(conn, deps.chunk_queue(), live, account_id, job_id)
    assert (refused.value.status, refused.value.code) == (400, "over_budget")
    job = db.get_job(conn, job_id)
    assert (job["status"], job["failed_rows"]) == ("completed", 5) and drain_queue(live.chunk_queue_url) == []
    # with room for them it goes through
    db.update_job(conn, job_id, max_cost_usd=spent + per_row * 10)
    assert jobs.retry(conn, deps.chunk_queue(), live, account_id, job_id)["retried"] == 5
