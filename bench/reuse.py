"""Paying once: reuse across jobs and provider prompt caching (issue 22).

    make bench BENCH=reuse

(a) **Overlapping lists.** A job of URLS rows (a ``{{about}}`` column the instructions name, page
    context on), then the same file with 10 % of its rows changed: a third of them a new URL, a
    third a changed ``{{about}}`` value, a third a changed page. Through the real chunk worker,
    Redis limiter and duplicate index, PostgreSQL and the fake OpenAI server (LATENCY_MS per
    answer). Calls and cost of the second job ÷ the first: ≤ 0.11.
(b) **The lookup's cost.** Rows per second of a job whose rows are all unchanged (the second
    file again: every row reused, so this is the second job's unchanged rows on their own) ÷ rows
    per second of the first job: ≥ 20. The second job's own rate is printed too.
(c) **Cached tokens.** A job of CACHE_URLS rows with long instructions, against the fake
    discounting a repeated prompt prefix as OpenAI does (prefixes of ≥ ``min_tokens`` tokens, in
    steps of 128), priced at gpt-4o-mini's list prices (input 0.15, cached 0.075, output 0.60 USD
    per 1M): cost with the layout (the job's constant part first, its row data last, with
    ``prompt_cache_key``) ÷ without it (the row's data first), at OpenAI's threshold of 1,024
    tokens and at 512.

Pages are served by an in-process table (url -> summary) handed to the worker as its page
fetcher: what is measured is reuse, not fetching (bench/pagecontext.py measures that).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from urllib.parse import urlsplit

URLS = int(os.environ.get("BENCH_REUSE_URLS", "10000"))
CACHE_URLS = int(os.environ.get("BENCH_REUSE_CACHE_URLS", "200"))
LATENCY_MS = float(os.environ.get("BENCH_REUSE_LATENCY_MS", "200"))
INSTRUCTIONS = "We plan delivery routes for small food businesses. Mention what they do: {{about}}."
SYLLABLES = ["ka", "lo", "mi", "ne", "pu", "ra", "si", "to", "vu", "ze", "ba", "do", "fe", "gi", "ho", "ju"]
PRICES = "gpt-4o-mini=0.15/0.60/0.075"


def words(i: int, n: int = 8) -> str:
    """``n`` made-up words for item ``i`` (items share few of them: their openers are not alike)."""
    import random

    pick = random.Random(i)
    return " ".join("".join(pick.choice(SYLLABLES) for _ in range(4)) for _ in range(n))


def table(n: int, tag: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(host, about) rows and the pages by host."""
    rows = [(f"{words(-i - 1, 1)}-{i}-{tag}.example.com", f"{words(i)} bakery") for i in range(n)]
    pages = {host: f"Title: {about.title()}\nText: We bake for {about} every day." for host, about in rows}
    return rows, pages


def changed(rows: list[tuple[str, str]], pages: dict[str, str]) -> tuple[list, dict, dict]:
    """10 % of the rows changed (a third each: new URL, new {{about}}, new page); what changed."""
    rows, pages, kinds = list(rows), dict(pages), {"new_url": 0, "new_about": 0, "new_page": 0}
    for i in range(0, len(rows), 10):
        host, about = rows[i]
        if i % 30 == 0:
            host = f"new-{host}"
            rows[i] = (host, about)
            pages[host] = pages[rows[i][0].removeprefix("new-")]
            kinds["new_url"] += 1
        elif i % 30 == 10:
            rows[i] = (host, f"{words(10_000_000 + i)} bakery")
            kinds["new_about"] += 1
        else:
            pages[host] += " Now with a cafe."
            kinds["new_page"] += 1
    return rows, pages, kinds


def start(rows: list[tuple[str, str]], instructions: str = INSTRUCTIONS, **options) -> dict:
    from bench.common import bench_account
    from chalicelib import deps, jobs

    conn = deps.conn()
    account_id = bench_account(conn, "bench-reuse")
    data = "website,about\n" + "".join(f"{host},{about}\n" for host, about in rows)
    job_id = jobs.create_from_upload(conn, deps.storage(), account_id=account_id, file_name="reuse.csv",
                                     data=data.encode(), url_column="website")["job"]["id"]
    started = jobs.start(conn, deps.storage(), deps.chunk_queue(), deps.settings(), account_id, job_id,
                         instructions=instructions, **options)
    deps.chunk_queue().sqs.purge_queue(QueueUrl=deps.settings().chunk_queue_url)
    return started


def worker(pages: dict[str, str] | None, generator=None):
    from chalicelib import deps
    from chalicelib.generation.worker import ChunkWorker

    def page_summary(url: str, account_id: str) -> tuple[str | None, str]:
        return pages[urlsplit(url).hostname], "fetched"

    return ChunkWorker(get_conn=deps.conn, generator=generator or deps.opener_generator(), queue=deps.chunk_queue(),
                       settings=deps.settings(), export=lambda job: None,
                       page_summary=page_summary if pages is not None else None, duplicates=deps.duplicate_index())


def run(base_url: str, rows, pages, generator=None, instructions: str = INSTRUCTIONS, **options) -> dict:
    """A job of `rows` processed to the end, chunk after chunk: its calls, cost, rate and counters."""
    from bench.common import fake_call
    from chalicelib import deps
    from chalicelib.adapters import db
    from chalicelib.generation import pricing

    before = fake_call(base_url, "/_fake/stats")["ok"]
    started = start(rows, instructions, page_context=pages is not None, **options)
    job_id, handler = started["job"]["id"], worker(pages, generator)
    began = time.perf_counter()
    for chunk in range(started["chunks"]):
        handler.process_chunk(job_id, chunk, lambda: float("inf"))
    seconds = time.perf_counter() - began
    job = db.get_job(deps.conn(), job_id)
    cost = pricing.cost_usd(deps.settings().prices, job["model"], job["prompt_tokens"], job["completion_tokens"],
                            cached_tokens=job["cached_tokens"])
    return {"rows": len(rows), "status": job["status"], "processed": job["processed_rows"],
            "failed": job["failed_rows"], "calls": fake_call(base_url, "/_fake/stats")["ok"] - before,
            "prompt_tokens": job["prompt_tokens"], "cached_tokens": job["cached_tokens"], "cost_usd": cost,
            "reused": job["quality"].get("reused", 0), "reused_estimate": started["estimate"].get("reused_rows"),
            "seconds": round(seconds, 2), "rows_per_s": round(len(rows) / seconds, 1)}


def overlapping(base_url: str) -> dict:
    from bench.common import fake_call

    fake_call(base_url, "/_fake/config", {"latency_ms": LATENCY_MS})
    rows, pages = table(URLS, uuid.uuid4().hex[:6])
    first = run(base_url, rows, pages)
    second_rows, second_pages, kinds = changed(rows, pages)
    second = run(base_url, second_rows, second_pages)
    again = run(base_url, second_rows, second_pages)  # nothing changed since the second job
    return {"first": first, "second": second, "unchanged": again, "changed": kinds,
            "calls_ratio": round(second["calls"] / first["calls"], 4),
            "cost_ratio": round(second["cost_usd"] / first["cost_usd"], 4),
            "unchanged_speedup": round(again["rows_per_s"] / first["rows_per_s"], 1),
            "second_speedup": round(second["rows_per_s"] / first["rows_per_s"], 1)}


def without_layout():
    """The generator with the row's data first and the job's constant part after it."""
    from chalicelib import deps
    from chalicelib.generation.openers import OpenerGenerator

    class RowFirst(OpenerGenerator):
        def request_body(self, *args, **kwargs) -> dict:
            request = super().request_body(*args, **kwargs)
            system, user, *rest = request["messages"]
            request["messages"] = [user, system, *rest]
            return request

    inner = deps.opener_generator()
    return RowFirst(inner.client, inner.limiter, inner.model, max_retries=inner.max_retries)


def prompt_caching(base_url: str) -> dict:
    from bench.common import fake_call
    from chalicelib.generation.prompt import MAX_INSTRUCTIONS_CHARS

    sentences = [f"Our {words(i, 3)} service helps {words(i + 50, 2)} teams plan {words(i + 90, 2)} routes."
                 for i in range(200)]
    long = (" ".join(sentences)[:MAX_INSTRUCTIONS_CHARS - len(INSTRUCTIONS) - 1].rsplit(" ", 1)[0] + " "
            + INSTRUCTIONS)
    fake_call(base_url, "/_fake/config", {"latency_ms": 0})
    found = {}
    for min_tokens in (1024, 512):
        fake_call(base_url, "/_fake/config", {"prompt_cache_min_tokens": min_tokens})
        rows, _ = table(CACHE_URLS, uuid.uuid4().hex[:6])
        layout = run(base_url, rows, None, instructions=long)
        rows, _ = table(CACHE_URLS, uuid.uuid4().hex[:6])
        plain = run(base_url, rows, None, generator=without_layout(), instructions=long)
        found[min_tokens] = {
            "prompt_tokens_per_row": round(layout["prompt_tokens"] / max(1, layout["calls"])),
            "cached_share": [round(r["cached_tokens"] / max(1, r["prompt_tokens"]), 3) for r in (layout, plain)],
            "cost_usd": [round(r["cost_usd"], 6) for r in (layout, plain)],
            "ratio": round(layout["cost_usd"] / plain["cost_usd"], 4)}
    fake_call(base_url, "/_fake/config", {"prompt_cache_min_tokens": 1024})
    return found


def main() -> dict:
    from bench.common import fake_openai, use_fake

    with fake_openai() as base_url:
        use_fake(base_url, CHUNK_SIZE="500", CHUNK_CONCURRENCY="16", OPENAI_RPM="0", OPENAI_TPM="0",
                 MODEL_PRICES=PRICES, OPENAI_MODEL="gpt-4o-mini", REUSE_DAYS="30",
                 INGEST_INLINE_BYTES=str(64 << 20))  # the file stored by process, as before background ingest
        lists = overlapping(base_url)
        cache = prompt_caching(base_url)
    first, second, again = lists["first"], lists["second"], lists["unchanged"]
    print(f"\nReuse (a): {URLS} rows, then 10 % changed {lists['changed']} (latency {LATENCY_MS:.0f} ms)")
    for name, job in (("first", first), ("second", second), ("unchanged", again)):
        print(f"  {name}: {job['calls']} calls, ${job['cost_usd']:.4f}, {job['reused']} reused "
              f"(estimate said {job['reused_estimate']}), {job['rows_per_s']} rows/s, {job['status']} "
              f"{job['processed']}/{job['rows']}")
    print(f"  calls second ÷ first {lists['calls_ratio']}, cost {lists['cost_ratio']} (goal ≤ 0.11)")
    print(f"Reuse (b): rows/s unchanged ÷ first {lists['unchanged_speedup']} (goal ≥ 20); "
          f"second ÷ first {lists['second_speedup']}")
    for min_tokens, found in cache.items():
        print(f"Reuse (c): prefix cached from {min_tokens} tokens, {found['prompt_tokens_per_row']} prompt tokens "
              f"per row: cached share {found['cached_share']}, cost {found['cost_usd']} (layout, without): "
              f"ratio {found['ratio']}")
    result = {"overlapping": lists, "prompt_caching": cache}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
