"""What a job costs: with the per-model price table (chalicelib/settings.py, since prices change), the estimate a
user sees before starting, and the actual cost from the tokens the provider reported.

Prices are US dollars per million input, output and cached input tokens (the provider's prompt
cache: cached prompt tokens are part of ``prompt_tokens`` and cost the cached price instead of the
input price). OpenAI's Batch API takes the same requests at half the price (BATCH_DISCOUNT).
"""

from __future__ import annotations

from decimal import Decimal

from chalicelib.generation.prompt import build_messages
from chalicelib.generation.ratelimit import estimate_tokens

BATCH_DISCOUNT = Decimal("0.5")
EXPECTED_COMPLETION_TOKENS = 70  # an opener of one or two sentences, under 300 characters
EXPECTED_PAGE_CHARS = 950  # a typical page summary (capped at 1,000 characters)


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


def over_budget(prices: dict, job: dict) -> tuple[float, str] | None:
    """(cost, the budget_exceeded reason) once a job's cost from its counters (`model`, `mode`,
    `prompt_tokens`, `completion_tokens`) reaches its `max_cost_usd`; None below it or without one."""
    if job["max_cost_usd"] is None:
        return None
    cost = cost_usd(prices, job["model"], job["prompt_tokens"], job["completion_tokens"], job["mode"],
                    job.get("cached_tokens") or 0)
    if cost is None or cost < float(job["max_cost_usd"]):
        return None
    return cost, (f"budget_exceeded: the job cost ${cost:.4f}, reaching its max_cost_usd of "
                  f"${float(job['max_cost_usd']):.4f}; every opener generated is kept. Retry the job to go on.")


def estimate(prices: dict, model: str, urls: int, instructions: str | None, fields: list[str],
             page_context: bool, sample_url: str = "https://www.example.com/") -> dict:
    """Expected tokens and price of `urls` calls: the prompt as built for a typical row (fields of
    a typical length, a page summary of a typical length when page context is on)."""
    messages = build_messages(sample_url, instructions, {name: "x" * 20 for name in fields},
                              "x" * EXPECTED_PAGE_CHARS if page_context else None)
    per_prompt = estimate_tokens(messages, 0)
    prompt_tokens, completion_tokens = per_prompt * urls, EXPECTED_COMPLETION_TOKENS * urls
    live = cost_usd(prices, model, prompt_tokens, completion_tokens)
    return {
        "urls": urls,
        "model": model,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cost_usd": None if live is None else round(live, 4),
        "batch_cost_usd": None if live is None else round(float(Decimal(str(live)) * BATCH_DISCOUNT), 4),
        "prompt_tokens_per_url": per_prompt,
    }

