"""Reuse across jobs (SPEC "Paying once"), through the chunk worker: the real PostgreSQL, Redis,
LocalStack and the fake OpenAI server.

What is checked: a second job of the same account reuses what the first wrote (no call, no
tokens, counted in ``quality.reused``, announced in the estimate's ``reused_rows``) and calls the
model for what changed (a new URL, a changed ``{{column}}`` value, a changed page); another
account never reuses; ``REUSE_DAYS`` bounds the window; ``no_reuse`` (a regeneration) and
``reuse: false`` are honoured; a person's edit is not reused; and the lookup is one indexed
query per claimed batch of rows, not one per row.
"""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from chalicelib import deps, jobs
from chalicelib.adapters import db
from chalicelib.generation.client import build_client
from chalicelib.generation.openers import OpenerGenerator
from chalicelib.generation.ratelimit import RateLimiter
from chalicelib.generation.worker import ChunkWorker
from tests.support.accounts import make_account
from tests.support.rows import about

pytestmark = pytest.mark.usefixtures("clean")

INSTRUCTIONS = "We plan delivery routes for small food businesses. Mention what they do: {{about}}."
CARRIED = ("opener", "evidence", "grounding", "quality", "words", "language", "context_status")


@pytest.fixture
def live(live):
    """chunks of 20; reuse over 30 days."""
    return dataclasses.replace(live, chunk_size=20, reuse_days=30)


def make_worker(s, pages: dict[str, str] | None = None) -> ChunkWorker:
    generator = OpenerGenerator(build_client(s), RateLimiter(deps.redis_client(), 0, 0, prefix=uuid.uuid4().hex),
                                s.openai_model, max_retries=s.max_retries, sleep=lambda seconds: None)
    summary = None if pages is None else (lambda url, account_id: (pages[url.rstrip("/")], "fetched"))
    return ChunkWorker(get_conn=deps.conn, generator=generator, queue=deps.chunk_queue(), settings=s,
                       export=lambda job: None, deadline_margin_s=0, page_summary=summary)


def table(n: int) -> list[tuple[str, str]]:
    tag = uuid.uuid4().hex[:6]
    return [(f"https://r{i}-{tag}.example.com", about(i)) for i in range(n)]


def start(conn, s, account_id: str, lines: list[tuple[str, str]], **options) -> dict:
    data = "website,about\n" + "".join(f"{url},{text}\n" for url, text in lines)
    job_id = jobs.create_from_upload(conn, deps.storage(), account_id=account_id, file_name="r.csv",
                                     data=data.encode(), url_column="website")["job"]["id"]
    return jobs.start(conn, deps.storage(), deps.chunk_queue(), s, account_id, job_id, instructions=INSTRUCTIONS,
                      **options)


def run(conn, s, account_id, lines, fake, pages=None, **options) -> tuple[dict, dict[str, dict], int, dict]:
    """A job of `lines` processed to the end: (its row, its rows by URL, calls it made, the start's estimate)."""
    before = fake.stats()["ok"]
    started = start(conn, s, account_id, lines, **options)
    job_id = started["job"]["id"]
    worker = make_worker(s, pages)
    for chunk in range(started["chunks"]):
        worker.process_chunk(job_id, chunk, lambda: float("inf"))
    found = conn.execute("SELECT url, status, opener, evidence, grounding, quality, words, language, context_status, "
                         "reused, prompt_tokens, completion_tokens, cached_tokens, no_reuse, fingerprint "
                         "FROM urls WHERE job_id = %s", (job_id,)).fetchall()
    return (db.get_job(conn, job_id), {r["url"].rstrip("/"): r for r in found}, fake.stats()["ok"] - before,
            started["estimate"])


def test_a_second_job_reuses_what_did_not_change_and_pays_for_what_did(conn, live, fake):
    account = make_account(conn).id
    first_lines = table(8)
    first, first_rows, first_calls, estimate = run(conn, live, account, first_lines, fake)
    assert first["status"] == "completed" and first_calls == 8 and estimate["reused_rows"] == 0
    assert all(r["fingerprint"] is not None and not r["reused"] for r in first_rows.values())

    second_lines = list(first_lines)
    second_lines[0] = (f"https://new-{uuid.uuid4().hex[:6]}.example.com", about(100))  # a new URL
    second_lines[1] = (second_lines[1][0], about(101))  # a changed {{about}} value
    second, rows, calls, estimate = run(conn, live, account, second_lines, fake)
    assert estimate["reused_rows"] == 6 and calls == 2
    assert second["status"] == "completed" and second["processed_rows"] == 8
    assert second["quality"]["reused"] == 6
    for url, row in rows.items():
        if url in (second_lines[0][0], second_lines[1][0]):
            assert not row["reused"] and row["prompt_tokens"] > 0 and row["fingerprint"] is not None
            continue
        earlier = first_rows[url]
        assert row["reused"] and row["status"] == "completed"
        assert {c: row[c] for c in CARRIED} == {c: earlier[c] for c in CARRIED}
        assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (0, 0, 0)
        assert row["fingerprint"] is None  # an opener is reused for REUSE_DAYS after it was written
    assert second["prompt_tokens"] == sum(r["prompt_tokens"] for r in rows.values())
    assert 0 < second["prompt_tokens"] < first["prompt_tokens"] / 2
    assert jobs.get(conn, account, str(second["id"]))["job"]["quality"]["reused"] == 6

    # the same file a third time: every row reused, no call, and the job completes as any other
    third, rows, calls, estimate = run(conn, live, account, second_lines, fake)
    assert (calls, estimate["reused_rows"], third["status"], third["quality"]["reused"]) == (0, 8, "completed", 8)
    assert third["prompt_tokens"] == third["completion_tokens"] == 0


def test_a_row_whose_page_changed_is_generated_again(conn, live, fake):
    account = make_account(conn).id
    lines = table(5)
    pages = {url: f"Title: Bakery {i}\nText: We bake bread for {about(i)}." for i, (url, _) in enumerate(lines)}
    first, first_rows, calls, _ = run(conn, live, account, lines, fake, pages=pages, page_context=True)
    assert calls == 5 and all(r["context_status"] == "fetched" for r in first_rows.values())
    changed = lines[2][0]
    pages[changed] += " Now with a cafe."
    second, rows, calls, estimate = run(conn, live, account, lines, fake, pages=pages, page_context=True)
    assert estimate["reused_rows"] == 5  # with page context, an upper bound: pages are not fetched to estimate
    assert calls == 1 and second["quality"]["reused"] == 4
    assert not rows[changed]["reused"] and all(r["reused"] for url, r in rows.items() if url != changed)
    # the same rows without page context have another prompt: nothing reused
    _, _, calls, estimate = run(conn, live, account, lines, fake, page_context=False)
    assert calls == 5 and estimate["reused_rows"] == 0


def test_nothing_is_reused_across_accounts(conn, live, fake):
    lines = table(4)
    run(conn, live, make_account(conn).id, lines, fake)
    other, _, calls, estimate = run(conn, live, make_account(conn).id, lines, fake)
    assert calls == 4 and estimate["reused_rows"] == 0 and other["quality"]["reused"] == 0


def test_reuse_days_bounds_the_window(conn, live, fake):
    account = make_account(conn).id
    lines = table(4)
    first, _, _, _ = run(conn, live, account, lines, fake)
    conn.execute("UPDATE urls SET finished_at = finished_at - interval '31 days' WHERE job_id = %s", (first["id"],))
    within = dataclasses.replace(live, reuse_days=40)
    _, rows, calls, estimate = run(conn, within, account, lines, fake)
    assert calls == 0 and estimate["reused_rows"] == 4 and all(r["reused"] for r in rows.values())
    _, rows, calls, estimate = run(conn, live, account, lines, fake)  # 30 days: the opener is too old
    assert calls == 4 and estimate["reused_rows"] == 0 and not any(r["reused"] for r in rows.values())
    _, _, calls, estimate = run(conn, dataclasses.replace(live, reuse_days=0), account, lines, fake)
    assert calls == 4 and estimate["reused_rows"] == 0  # 0: never reuse


def test_no_reuse_rows_the_reuse_option_and_edited_openers_are_called_again(conn, live, fake):
    account = make_account(conn).id
    lines = table(6)
    first, _, _, _ = run(conn, live, account, lines, fake)
    edited = lines[5][0]
    conn.execute("UPDATE urls SET opener = 'A person wrote this.', quality = '{edited}' "
                 "WHERE job_id = %s AND url LIKE %s", (first["id"], edited + "%"))

    # a regeneration marks its rows no_reuse: they are called again, and the mark is cleared on save
    started = start(conn, live, account, lines)
    assert started["estimate"]["reused_rows"] == 5  # the edited row is not the model's opener any more
    job_id = started["job"]["id"]
    marked = conn.execute("UPDATE urls SET no_reuse = true WHERE id IN (SELECT id FROM urls WHERE job_id = %s "
                          "ORDER BY row_number LIMIT 2) RETURNING id", (job_id,)).fetchall()
    before = fake.stats()["ok"]
    make_worker(live).process_chunk(job_id, 0, lambda: float("inf"))
    assert fake.stats()["ok"] - before == 3  # two marked rows and the edited one
    saved = {r["id"]: r for r in conn.execute("SELECT id, reused, no_reuse, url, opener FROM urls WHERE job_id = %s",
                                              (job_id,)).fetchall()}
    assert all(not saved[m["id"]]["reused"] and not saved[m["id"]]["no_reuse"] for m in marked)
    assert sum(r["reused"] for r in saved.values()) == 3
    assert all(r["opener"] != "A person wrote this." for r in saved.values())

    # reuse: false calls the model for every row
    job, _, calls, estimate = run(conn, live, account, lines, fake, reuse=False)
    assert calls == 6 and estimate["reused_rows"] == 0 and job["reuse"] is False and job["quality"]["reused"] == 0


def test_the_lookup_is_one_indexed_query_per_claimed_batch(conn, live, fake, monkeypatch):
    account = make_account(conn).id
    lines = table(20)
    run(conn, live, account, lines, fake)
    claims, lookups = [], []
    claim, lookup = db.claim_urls, db.reusable_openers

    def counted_claim(*args):
        rows = claim(*args)
        claims.append(len(rows))
        return rows

    def counted_lookup(c, account_id, fingerprints, days):
        lookups.append(len(fingerprints))
        return lookup(c, account_id, fingerprints, days)

    monkeypatch.setattr(db, "claim_urls", counted_claim)
    monkeypatch.setattr(db, "reusable_openers", counted_lookup)
    changed = list(lines)
    changed[3] = (changed[3][0], about(300))
    _, rows, calls, _ = run(conn, live, account, changed, fake)
    assert calls == 1 and sum(r["reused"] for r in rows.values()) == 19
    batches = [n for n in claims if n]
    assert len(lookups) == len(batches) < 20 and sum(lookups) == sum(batches) == 20
    # ... and the fingerprint part of that query can use the index (on tables this small the planner
    # would scan, or start from the account's few jobs, as it may for an account with few jobs)
    fingerprints = [bytes(r["fingerprint"]) for r in conn.execute(
        "SELECT fingerprint FROM urls WHERE fingerprint IS NOT NULL LIMIT 5").fetchall()]
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r["QUERY PLAN"] for r in conn.execute(
            "EXPLAIN SELECT id FROM urls WHERE fingerprint = ANY(%s) "
            "AND finished_at > now() - make_interval(days => 30)", (fingerprints,)).fetchall())
    assert "urls_fingerprint_idx" in plan, plan
