"""Estimates within 15 % (issue 22 item 3): what `process` says a job will cost ÷ what it costs.

For each backend (the fake OpenAI server in its own process, counting tokens BPE-like, the
response_format schema included; the dummy, in-process, counting characters / 4), each length of
instructions (short, medium, long) and page context off and on, a job of URLS rows
(`https://<name>-<i>.example.com/`; with page context, each row's page is a realistic small-business
home page from bench/pagecontext.py, summarised as the fetcher does) is:

  estimated  `pricing.estimate` as `jobs.start` calls it (no preview: basis "heuristic");
  calibrated the same corrected by a preview of the first 3 rows (`jobs.preview`'s calibration:
             their real usage against what the estimate says those rows cost; basis "preview");
  projected  the first chunk's worth (CHUNK rows) of real usage × URLS / CHUNK (the job's
             estimate once its first chunk is done, basis "first_chunk");
  live       every row through `checks.generate_checked` (the worker's path: quality checks and
             their re-asks, strict grounding), 16 at a time; tokens as the server reported them,
             priced live;
  batch      (fake only: the dummy has no Batch API) the rows' request bodies as a Batch API file,
             one batch, its answers read back and checked as `BatchRunner` does (re-asks live):
             first answers priced at the batch price, re-asks at the live price, against the
             estimate's `batch_cost_usd`.

Then variants=3 (three openers per row in one call: the longer prompt and answer; live only,
since batch mode refuses variants), on the fake and the dummy ("fake-v3", "dummy-v3"), beside
the same cases at variants=1 above. Then, on the fake with 20 % of first answers bad
(misbehave: an invented fact or spam, asked
again by the checks; in batch mode those re-asks are live calls), two of the cases again
("fake20").

Prices: gpt-4o-mini from the table ($0.15 / $0.60 per million). Each figure is estimate ÷ actual
(goal: within [0.85, 1.15]). Also shown: the estimate before this work (no schema, 70 completion
tokens) ÷ the same actual.

    make bench BENCH=estimate
    BENCH_URLS=100 make bench BENCH=estimate
"""

from __future__ import annotations

import io
import json
import math
import os
import random
from concurrent.futures import ThreadPoolExecutor

import httpx2
import openai

from bench.common import fake_call, fake_openai
from bench.pagecontext import make_page
from tests.support.limiter import NoLimit

URLS = int(os.environ.get("BENCH_URLS", "300"))
CHUNK = int(os.environ.get("BENCH_CHUNK", "50"))
PREVIEW_ROWS = 3
MODEL = "gpt-4o-mini"
INSTRUCTIONS = {
    "short": "Mention what they do.",
    "medium": ("We are Acme Analytics: we help operations teams at mid-size companies cut the time they spend on "
               "weekly reporting. Keep it friendly and specific; mention what the prospect does."),
    "long": ("We are Acme Analytics, a reporting platform for operations teams at mid-size manufacturing and "
             "logistics companies. Our customers cut the time they spend on weekly reporting by two thirds, catch "
             "supply problems days earlier and stop copying numbers between spreadsheets. We connect to the tools "
             "they already use, set up in a week, and price per team, not per seat. ") * 3
            + "Keep it friendly, specific and short; mention what the prospect does and one detail from their page.",
}




def rows(page_context: bool) -> list[tuple[str, str | None]]:
    from chalicelib.outbound.summaries import summarize_html

    rng = random.Random(11)
    out = []
    for i in range(URLS):
        body, company = make_page(rng, i)
        slug = company.lower().replace(" ", "-")
        out.append((f"https://{slug}.example.com/", summarize_html(body) if page_context else None))
    return out


def old_estimate(instructions: str, page_context: bool) -> tuple[int, int]:
    """The estimate before issue 22 (pricing.py at main): messages only, 70 completion tokens."""
    from chalicelib.generation.prompt import build_messages
    from chalicelib.generation.ratelimit import estimate_tokens

    messages = build_messages("https://www.example.com/", instructions, {}, "x" * 950 if page_context else None)
    return estimate_tokens(messages, 0) * URLS, 70 * URLS


def live(generator, instructions: str, sample: list[tuple[str, str | None]],
         variants: int = 1) -> list[tuple[int, int]]:
    """(prompt, completion) tokens of each row, checked as the worker does."""
    from chalicelib.generation import checks
    from chalicelib.generation.answers import GenerationFailed

    def one(row: tuple[str, str | None]) -> tuple[int, int]:
        url, page = row
        try:
            kept = checks.generate_checked(generator, job_id="bench", url=url, instructions=instructions, model=MODEL,
                                           options=checks.Options(variants=variants), page=page, max_calls=3)
        except GenerationFailed as exc:  # a failed row counts what it cost
            return exc.prompt_tokens, exc.completion_tokens
        return kept.prompt_tokens, kept.completion_tokens

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, sample))


def batch(base_url: str, generator, instructions: str, sample: list[tuple[str, str | None]]) -> tuple[float, float]:
    """The batch job's actual cost (one batch of every row, answers checked, re-asks live) and
    its first chunk's projection (the first CHUNK rows' batch and live tokens × URLS / CHUNK)."""
    from chalicelib.generation import checks, pricing
    from chalicelib.generation.answers import GenerationFailed, UnusableAnswer, opener_from_answer
    from chalicelib.settings import get_settings

    prices = get_settings().prices
    client = generator.client
    options = checks.Options()
    by_id = {str(i): row for i, row in enumerate(sample)}
    lines = []
    for key, (url, page) in by_id.items():
        body = generator.request_body(url, instructions, MODEL, None, page, language=checks.row_language(options, page))
        lines.append(json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body}))
    uploaded = client.files.create(file=("bench.jsonl", io.BytesIO(("\n".join(lines) + "\n").encode())),
                                   purpose="batch")
    created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                    completion_window="24h")
    fake_call(base_url, "/_fake/age_batches", {"seconds": 10})
    done = client.batches.retrieve(created.id)
    def one(line: dict) -> tuple[int, int, int, int]:
        """(batch prompt, batch completion, live prompt, live completion) tokens of one row."""
        url, page = by_id[line["custom_id"]]
        body = (line.get("response") or {}).get("body")
        try:
            opener = opener_from_answer(body, url, instructions)
        except UnusableAnswer:
            usage = (body or {}).get("usage") or {}
            return usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), 0, 0
        try:
            kept = checks.generate_checked(generator, job_id="bench", url=url, instructions=instructions, model=MODEL,
                                           options=options, page=page, max_calls=3, first=opener)
            spent = (kept.prompt_tokens, kept.completion_tokens)
        except GenerationFailed as exc:
            spent = (exc.prompt_tokens or opener.prompt_tokens, exc.completion_tokens or opener.completion_tokens)
        return (opener.prompt_tokens, opener.completion_tokens, spent[0] - opener.prompt_tokens,
                spent[1] - opener.completion_tokens)

    answers = [json.loads(raw) for raw in client.files.content(done.output_file_id).text.splitlines() if raw.strip()]
    with ThreadPoolExecutor(16) as pool:
        spent = dict(zip((line["custom_id"] for line in answers), pool.map(one, answers), strict=True))

    def cost(keys: list[str], scale: float = 1.0) -> float:
        sums = [math.ceil(sum(spent[k][i] for k in keys if k in spent) * scale) for i in range(4)]
        return (pricing.cost_usd(prices, MODEL, sums[0], sums[1], "batch")
                + pricing.cost_usd(prices, MODEL, sums[2], sums[3], "live"))

    return cost(list(by_id)), cost([str(i) for i in range(CHUNK)], URLS / CHUNK)


def measure(backend: str, client: openai.OpenAI, base_url: str | None,
            cases: tuple[tuple[bool, str], ...] | None = None, variants: int = 1) -> list[dict]:
    from chalicelib.generation import pricing
    from chalicelib.generation.openers import OpenerGenerator
    from chalicelib.jobs.preview import preview_calibration
    from chalicelib.settings import get_settings

    prices = get_settings().prices
    generator = OpenerGenerator(client, NoLimit(), MODEL, max_retries=3)
    out = []
    cases = cases or tuple((page, name) for page in (False, True) for name in INSTRUCTIONS)
    for page_context, name in cases:
        sample = rows(page_context)
        instructions = INSTRUCTIONS[name]
        if base_url:
            fake_call(base_url, "/_fake/reset", {"keep_config": True})
        tokens = live(generator, instructions, sample, variants)
        actual = pricing.cost_usd(prices, MODEL, sum(p for p, _ in tokens), sum(c for _, c in tokens))
        estimate = pricing.estimate(prices, MODEL, URLS, instructions, [], page_context, variants=variants)
        # the preview: its first rows' real usage against what the estimate says those rows cost
        shown = [{"row": i, "prompt_tokens": p, "completion_tokens": c}
                 for i, (p, c) in enumerate(tokens[:PREVIEW_ROWS])]
        per_row = {i: (pricing.sample_request(instructions, [], page_context, sample_url=url, values={},
                                              page=page or "", variants=variants),
                          pricing.completion_tokens(variants=variants))
                   for i, (url, page) in enumerate(sample[:PREVIEW_ROWS])}
        calibrated = pricing.estimate(prices, MODEL, URLS, instructions, [], page_context,
                                      calibrated=preview_calibration(shown, per_row), variants=variants)
        head = tokens[:CHUNK]
        projected = pricing.cost_usd(prices, MODEL, -(-sum(p for p, _ in head) * URLS // CHUNK),
                                     -(-sum(c for _, c in head) * URLS // CHUNK))  # as calibrate_estimate rounds
        old_p, old_c = old_estimate(instructions, page_context)
        figures = {
            "backend": backend, "instructions": name, "page_context": page_context,
            "prompt_per_url": estimate["prompt_tokens_per_url"],
            "actual_prompt_per_url": sum(p for p, _ in tokens) / URLS,
            "completion_per_url": estimate["completion_tokens_per_url"],
            "actual_completion_per_url": sum(c for _, c in tokens) / URLS,
            "live": pricing.cost_usd(prices, MODEL, estimate["prompt_tokens"], estimate["completion_tokens"])
            / actual,
            "calibrated": pricing.cost_usd(prices, MODEL, calibrated["prompt_tokens"],
                                           calibrated["completion_tokens"]) / actual,
            "projected": projected / actual,
            "old": pricing.cost_usd(prices, MODEL, old_p, old_c) / actual,
            "batch": None, "batch_calibrated": None, "batch_projected": None,
        }
        if base_url and variants == 1:
            fake_call(base_url, "/_fake/reset", {"keep_config": True})
            batch_actual, batch_projected = batch(base_url, generator, instructions, sample)
            figures["batch_projected"] = batch_projected / batch_actual
            figures["batch"] = pricing.cost_usd(prices, MODEL, estimate["prompt_tokens"],
                                                estimate["completion_tokens"], "batch") / batch_actual
            figures["batch_calibrated"] = pricing.cost_usd(prices, MODEL, calibrated["prompt_tokens"],
                                                           calibrated["completion_tokens"], "batch") / batch_actual
        out.append(figures)
        print(line(figures), flush=True)
    return out


def line(f: dict) -> str:
    def r(value: float | None) -> str:
        return "   n/a" if value is None else f"{value:6.3f}"

    return (f"{f['backend']:8} {f['instructions']:6} page {'on ' if f['page_context'] else 'off'} | prompt/URL "
            f"{f['prompt_per_url']:4} est {f['actual_prompt_per_url']:6.1f} act | completion/URL "
            f"{f['completion_per_url']:3} est {f['actual_completion_per_url']:5.1f} act | live {r(f['live'])} "
            f"calibrated {r(f['calibrated'])} first chunk {r(f['projected'])} | batch {r(f['batch'])} "
            f"calibrated {r(f['batch_calibrated'])} first chunk {r(f['batch_projected'])} | before {r(f['old'])}")


def main() -> list[dict]:
    from chalicelib.generation.dummy import DummyTransport

    os.environ.setdefault("OPENAI_MODEL", MODEL)
    print(f"Estimate ÷ actual, {URLS} rows per job, {MODEL} prices; preview {PREVIEW_ROWS} rows, first chunk {CHUNK}")
    results = []
    with fake_openai("--latency-ms", "0") as base_url:
        client = openai.OpenAI(api_key="bench", base_url=base_url, max_retries=0)
        results += measure("fake", client, base_url)
        results += measure("fake-v3", client, base_url, ((False, "medium"), (True, "medium"), (True, "long")), 3)
        # 20 % of first answers bad (an invented fact, spam): re-asks, live in batch mode too
        fake_call(base_url, "/_fake/config", {"misbehave": {"invent": 0.1, "spam": 0.1}})
        results += measure("fake20", client, base_url, ((True, "medium"), (False, "short")))
    dummy = openai.OpenAI(api_key="dummy", base_url="http://dummy.invalid/v1", max_retries=0,
                          http_client=httpx2.Client(transport=DummyTransport()))
    results += measure("dummy", dummy, None)
    results += measure("dummy-v3", dummy, None, ((False, "medium"), (True, "medium")), 3)
    keys = ("live", "calibrated", "projected", "batch", "batch_calibrated", "batch_projected")
    values = [r[k] for r in results for k in keys if r[k] is not None]
    print(f"\nall {len(values)} ratios within [{min(values):.3f}, {max(values):.3f}]; "
          f"inside [0.85, 1.15]: {sum(0.85 <= v <= 1.15 for v in values)} of {len(values)}; "
          f"before this work: [{min(r['old'] for r in results):.3f}, {max(r['old'] for r in results):.3f}]")
    return results


if __name__ == "__main__":
    main()
