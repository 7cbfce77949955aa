"""What a job costs: with the per-model price table (chalicelib/settings.py, since prices change), the estimate a
user sees before starting, and the actual cost from the tokens the provider reported.

Prices are US dollars per million input, output and cached input tokens (the provider's prompt
cache: cached prompt tokens are part of ``prompt_tokens`` and cost the cached price instead of the
input price). OpenAI's Batch API takes the same requests at half the price (BATCH_DISCOUNT); a
batch job's live re-asks (a batch answer the quality checks sent back) are paid at the live price
(``live_prompt_tokens``/``live_completion_tokens`` of the job, part of its totals).

The estimate counts what is really sent (no tokenizer is available offline: characters / 4, as
the limiter counts): the request body a live call or a Batch API line carries for a typical row
(the prompt as ``prompt.build_messages`` renders it, the ``response_format`` JSON schema, a page
summary of typical length when page context is on) and the structured answer's size from the
job's word limits. It is then corrected by what calls really cost (``calibration``): the
preview's usage before the start, the first chunk's after it (``calibrated``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from decimal import Decimal

from chalicelib.generation.prompt import build_messages
from chalicelib.generation.ratelimit import estimate_tokens
from chalicelib.quality.answer import response_format
from chalicelib.quality.flags import DEFAULT_MAX_WORDS, DEFAULT_MIN_WORDS

BATCH_DISCOUNT = Decimal("0.5")
EXPECTED_PAGE_CHARS = 950  # a typical page summary (capped at 1,000 characters)
EXPECTED_OPENER_WORDS = 24  # "one or two sentences, under 300 characters", within the job's word limits
TOKENS_PER_WORD = 4 / 3  # English prose in OpenAI's BPE tokenizers: about 0.75 words a token
EXPECTED_EVIDENCE_WORDS = 4  # a company name or a page title, copied; null for a generic opener
REPLY_PRIMING = 3  # tokens every chat request adds to prime the reply
CALIBRATION_RANGE = (0.5, 2.0)  # a factor outside it says the sample was odd, not the heuristic wrong


def cost_usd(prices: dict, model: str | None, prompt_tokens: int, completion_tokens: int,
             mode: str = "live", cached_tokens: int = 0) -> float | None:
    """Dollars for these tokens of `model` (through the Batch API when `mode` is "batch"), or
    None when the table has no price for it. `cached_tokens` (of `prompt_tokens`) cost the
    model's cached-input price."""
    if model not in prices:
        return None
    inp, out, *rest = prices[model]
    cached = min(max(0, int(cached_tokens or 0)), prompt_tokens)
    cached_price = rest[0] if rest else inp
    cost = (inp * (prompt_tokens - cached) + cached_price * cached + out * completion_tokens) / Decimal(1_000_000)
    return float(cost * BATCH_DISCOUNT if mode == "batch" else cost)


def usage_cost(prices: dict, model: str | None, mode: str, tokens: Mapping) -> float | None:
    """Dollars of token counters of one model and mode: a job's, or usage summed per day, model
    and mode (jobs, rows, previews). `tokens`: ``prompt_tokens``, ``completion_tokens`` and
    ``cached_tokens`` (of the prompts), and for a batch job the part of each that was paid live
    (``live_prompt_tokens``, ``live_completion_tokens``, ``live_cached_tokens``: the quality
    checks' re-asks of batch answers); missing counters count 0. In batch mode the rest is paid
    at the batch price, its cached tokens at the batch's cached price; in live mode everything is
    live. The one pricing of usage: the job's ``cost_usd``, its budget, ``GET /api/account`` and
    the operators' ``usage`` all come here. None without a price for `model`."""
    def n(name: str) -> int:
        return int(tokens.get(name) or 0)

    prompt, completion, cached = n("prompt_tokens"), n("completion_tokens"), n("cached_tokens")
    if mode != "batch":
        return cost_usd(prices, model, prompt, completion, "live", cached)
    live_p, live_c, live_k = n("live_prompt_tokens"), n("live_completion_tokens"), n("live_cached_tokens")
    batch = cost_usd(prices, model, prompt - live_p, completion - live_c, "batch", cached - live_k)
    live = cost_usd(prices, model, live_p, live_c, "live", live_k)
    return None if batch is None or live is None else batch + live


def job_cost(prices: dict, job: dict) -> float | None:
    """A job's dollars from its counters (``usage_cost``)."""
    return usage_cost(prices, job["model"], job["mode"], job)


def over_budget(prices: dict, job: dict) -> tuple[float, str] | None:
    """(cost, the budget_exceeded reason) once a job's cost from its counters (`model`, `mode`,
    `prompt_tokens`, `completion_tokens`, and a batch job's live re-asks) reaches its
    `max_cost_usd`; None below it or without one."""
    if job["max_cost_usd"] is None:
        return None
    cost = job_cost(prices, job)
    if cost is None or cost < float(job["max_cost_usd"]):
        return None
    return cost, (f"budget_exceeded: the job cost ${cost:.4f}, reaching its max_cost_usd of "
                  f"${float(job['max_cost_usd']):.4f}; every opener generated is kept. Retry the job to go on.")


def request_tokens(messages: list[dict], fmt: dict | None = None) -> int:
    """Prompt tokens of one chat request as sent: its messages (with their framing), the
    ``response_format`` JSON schema, which the provider adds to the prompt, and the reply priming."""
    schema = math.ceil(len(json.dumps(fmt["json_schema"], separators=(",", ":"))) / 4) \
        if fmt and isinstance(fmt.get("json_schema"), dict) else 0
    return estimate_tokens(messages, 0) + schema + REPLY_PRIMING


def completion_tokens(min_words: int = DEFAULT_MIN_WORDS, max_words: int = DEFAULT_MAX_WORDS,
                      variants: int = 1) -> int:
    """Completion tokens of one structured answer: the JSON's keys and quotes (compact, as
    structured outputs send it), an opener of a typical length within the word limits, and a
    short evidence; with variants, that many of them inside ``{"openers": [...]}``."""
    one = {"opener": "", "evidence": ""}
    shape = one if variants <= 1 else {"openers": [one] * variants}
    skeleton = math.ceil(len(json.dumps(shape, separators=(",", ":"))) / 4)
    words = min(max(EXPECTED_OPENER_WORDS, min_words), max_words) + EXPECTED_EVIDENCE_WORDS
    return skeleton + math.ceil(words * TOKENS_PER_WORD * max(1, variants))


def sample_request(instructions: str | None, fields: list[str], page_context: bool, *,
                   min_words: int = DEFAULT_MIN_WORDS, max_words: int = DEFAULT_MAX_WORDS,
                   sample_url: str = "https://www.example.com/", values: dict[str, str] | None = None,
                   page: str | None = None, variants: int = 1) -> int:
    """Prompt tokens of the request a typical row sends (fields of a typical length, a page
    summary of a typical length when page context is on), or of the given row (`values`, `page`)."""
    values = values if values is not None else {name: "x" * 20 for name in fields}
    if page is None and page_context:
        page = "x" * EXPECTED_PAGE_CHARS
    messages = build_messages(sample_url, instructions, values, page, min_words=min_words, max_words=max_words,
                              variants=variants)
    return request_tokens(messages, response_format(variants))


def calibration(estimated: tuple[int, int], actual: tuple[int, int], rows: int, basis: str) -> dict | None:
    """How real calls differ from the estimate, from `rows` rows of a preview or the first chunk:
    {"basis", "rows", "prompt_factor", "completion_factor"} (actual ÷ estimated, re-asks
    included, clamped to CALIBRATION_RANGE), or None without a usable sample."""
    (est_p, est_c), (act_p, act_c) = estimated, actual
    if rows <= 0 or est_p <= 0 or est_c <= 0 or act_p <= 0:
        return None
    low, high = CALIBRATION_RANGE

    def factor(a: int, e: int) -> float:
        return round(min(high, max(low, a / e)), 4)

    return {"basis": basis, "rows": rows, "prompt_factor": factor(act_p, est_p),
            "completion_factor": factor(act_c, est_c) if act_c > 0 else 1.0}


def estimate(prices: dict, model: str, urls: int, instructions: str | None, fields: list[str],
             page_context: bool, sample_url: str = "https://www.example.com/", *,
             min_words: int = DEFAULT_MIN_WORDS, max_words: int = DEFAULT_MAX_WORDS,
             calibrated: dict | None = None, reused_rows: int = 0, cached_tokens: int = 0,
             variants: int = 1) -> dict:
    """Expected tokens and price of a job of `urls` rows: the request of a typical row (see
    ``sample_request``) and a structured answer within the word limits, each times the
    `calibrated` factors (``calibration``) when real calls were seen. `reused_rows` are rows
    whose earlier opener is reused (no call, no cost); `cached_tokens`, prompt tokens the
    provider is expected to serve from its prompt cache (0 until reuse and caching say more);
    `variants`: openers per row, asked for in one call (a longer prompt and a longer answer)."""
    per_prompt = sample_request(instructions, fields, page_context, min_words=min_words, max_words=max_words,
                                sample_url=sample_url, variants=variants)
    per_completion = completion_tokens(min_words, max_words, variants)
    if calibrated:
        per_prompt = math.ceil(per_prompt * calibrated["prompt_factor"])
        per_completion = math.ceil(per_completion * calibrated["completion_factor"])
    calls = max(0, urls - reused_rows)
    prompt_tokens, completion_total = per_prompt * calls, per_completion * calls
    live = cost_usd(prices, model, prompt_tokens, completion_total)
    return {
        "urls": urls,
        "model": model,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_total,
        "cost_usd": None if live is None else round(live, 4),
        "batch_cost_usd": None if live is None else round(float(Decimal(str(live)) * BATCH_DISCOUNT), 4),
        "prompt_tokens_per_url": per_prompt,
        "completion_tokens_per_url": per_completion,
        "reused_rows": reused_rows,
        "cached_tokens": cached_tokens,
        "basis": calibrated["basis"] if calibrated else "heuristic",
    }


def for_exact_count(prices: dict, stored: dict, urls: int) -> dict:
    """A start's estimate (made on the count sampled from the file's first MiB) for the exact
    URL count its ingest found: the same tokens per URL, times the rows that will be called.
    The count it was made on stays as ``sampled_urls``. {} for an estimate without per-URL figures."""
    if "prompt_tokens_per_url" not in stored or "urls" not in stored:
        return {}
    calls = max(0, urls - int(stored.get("reused_rows") or 0))
    prompt_tokens = int(stored["prompt_tokens_per_url"]) * calls
    completion_total = int(stored["completion_tokens_per_url"]) * calls
    live = cost_usd(prices, stored.get("model"), prompt_tokens, completion_total)
    return {"urls": urls, "sampled_urls": int(stored.get("sampled_urls", stored["urls"])),
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_total,
            "cost_usd": None if live is None else round(live, 4),
            "batch_cost_usd": None if live is None else round(float(Decimal(str(live)) * BATCH_DISCOUNT), 4)}


def _priced(prices: dict, model: str | None, prompt_tokens: int, completion_tokens: int, mode: str) -> float | None:
    cost = cost_usd(prices, model, prompt_tokens, completion_tokens, mode)
    return None if cost is None else round(cost, 4)


def job_estimate(prices: dict, job: dict) -> dict | None:
    """The job's estimate as its JSON shows it beside ``cost_usd``: the best projection of the
    whole job in its mode (from the first chunk's real usage once known, else the start's),
    what was estimated at the start, and how the figures were made (``basis``). None for a job
    never started (or started before estimates were kept)."""
    stored = job.get("estimate") or {}
    if "prompt_tokens" not in stored:
        return None
    mode = job["mode"]
    at_start = {"basis": stored.get("basis", "heuristic"), "prompt_tokens": stored["prompt_tokens"],
                "completion_tokens": stored["completion_tokens"],
                "cost_usd": _priced(prices, job["model"], stored["prompt_tokens"], stored["completion_tokens"], mode)}
    best = at_start
    chunk = stored.get("first_chunk")
    if chunk:
        best = {"basis": "first_chunk", "prompt_tokens": int(chunk["prompt_tokens"]),
                "completion_tokens": int(chunk["completion_tokens"])}
        cost = usage_cost(prices, job["model"], mode, chunk)
        best["cost_usd"] = None if cost is None else round(cost, 4)
    return {**best, "urls": stored.get("urls"), "reused_rows": stored.get("reused_rows", 0),
            "cached_tokens": stored.get("cached_tokens", 0), "at_start": at_start}


def first_chunk_rows(saved: dict, chunk_size: int) -> int | None:
    """The rows after which a job's estimate is corrected by real usage (the first chunk's
    worth, or the whole job if smaller), when the save that returned `saved` (the job's counters
    after it, and the rows it wrote) is the one that reached them; else None."""
    threshold = max(1, min(int(saved["total_rows"]), int(chunk_size)))
    done = int(saved["processed_rows"]) + int(saved["failed_rows"])
    return threshold if done - int(saved["saved"]) < threshold <= done else None


def retry_cost(prices: dict, job: dict, urls: int) -> float | None:
    """What sending `urls` rows of `job` again is expected to cost in its mode: per row, the job's
    projection from its first chunk when it has one, else its estimate at the start; None
    without a price or an estimate."""
    shown = job_estimate(prices, job)
    if shown is None or shown["cost_usd"] is None or not job.get("total_rows"):
        return None
    return shown["cost_usd"] / job["total_rows"] * urls
