"""Unit tests for chalicelib.generation.pricing: the estimate counts what is really sent (the
rendered prompt, the response_format schema, a structured answer within the word limits) and
lands within 15 % of what the dummy and the fake OpenAI server (in-process) report; calibration
factors; a batch job's live re-asks priced live; the first chunk's crossing; the job's view."""

from __future__ import annotations

import json
import math

import httpx2
import openai
import pytest

from chalicelib.generation import checks, pricing
from chalicelib.generation.dummy import DummyTransport
from chalicelib.generation.openers import OpenerGenerator
from chalicelib.generation.prompt import build_messages
from chalicelib.generation.ratelimit import estimate_tokens
from chalicelib.outbound.summaries import summarize_html
from chalicelib.quality.answer import response_format
from chalicelib.settings import parse_prices
from tests.support.fake_openai import FakeOpenAI
from tests.support.fake_site import html
from tests.support.limiter import NoLimit

PRICES = parse_prices("gpt-4o-mini=0.15/0.60")
MODEL = "gpt-4o-mini"
SHORT = "Mention what they do."
LONG = ("We are Acme Analytics, a reporting platform for operations teams at mid-size manufacturing and logistics "
        "companies; our customers cut the time they spend on weekly reporting by two thirds. ") * 4


def test_the_estimate_counts_the_rendered_prompt_the_schema_and_the_reply_priming():
    per_url = pricing.estimate(PRICES, MODEL, 10, SHORT, ["company"], False)["prompt_tokens_per_url"]
    messages = build_messages("https://www.example.com/", SHORT, {"company": "x" * 20}, None)
    schema = math.ceil(len(json.dumps(response_format()["json_schema"], separators=(",", ":"))) / 4)
    assert schema > 50  # the schema is no small part of a short prompt
    assert per_url == estimate_tokens(messages, 0) + schema + pricing.REPLY_PRIMING
    with_page = pricing.estimate(PRICES, MODEL, 10, SHORT, ["company"], True)["prompt_tokens_per_url"]
    assert with_page - per_url == pytest.approx(pricing.EXPECTED_PAGE_CHARS / 4, abs=10)


def test_the_answer_size_follows_the_word_limits():
    default = pricing.completion_tokens()
    assert pricing.completion_tokens(8, 12) < default < pricing.completion_tokens(40, 80)
    estimate = pricing.estimate(PRICES, MODEL, 10, None, [], False, min_words=40, max_words=80)
    assert estimate["completion_tokens"] == 10 * pricing.completion_tokens(40, 80)


def test_calibration_is_actual_against_estimated_clamped_and_needs_a_sample():
    assert pricing.calibration((1000, 100), (900, 80), 3, "preview") == {
        "basis": "preview", "rows": 3, "prompt_factor": 0.9, "completion_factor": 0.8}
    assert pricing.calibration((1000, 100), (5000, 10), 3, "preview")["prompt_factor"] == 2.0
    assert pricing.calibration((1000, 100), (100, 1), 3, "preview")["completion_factor"] == 0.5
    assert pricing.calibration((1000, 100), (0, 0), 0, "preview") is None
    base = pricing.estimate(PRICES, MODEL, 100, SHORT, [], False)
    fixed = pricing.estimate(PRICES, MODEL, 100, SHORT, [], False,
                             calibrated={"basis": "preview", "prompt_factor": 0.9, "completion_factor": 0.8})
    assert fixed["basis"] == "preview" and base["basis"] == "heuristic"
    assert fixed["prompt_tokens_per_url"] == math.ceil(base["prompt_tokens_per_url"] * 0.9)
    assert fixed["completion_tokens_per_url"] == math.ceil(base["completion_tokens_per_url"] * 0.8)


def test_reused_rows_make_no_call_and_are_stated():
    estimate = pricing.estimate(PRICES, MODEL, 100, SHORT, [], False, reused_rows=40, cached_tokens=7)
    assert estimate["urls"] == 100 and (estimate["reused_rows"], estimate["cached_tokens"]) == (40, 7)
    assert estimate["prompt_tokens"] == 60 * estimate["prompt_tokens_per_url"]


def job(**fields) -> dict:
    return {"model": MODEL, "mode": "batch", "prompt_tokens": 2_000_000, "completion_tokens": 1_000_000,
            "live_prompt_tokens": 0, "live_completion_tokens": 0, "max_cost_usd": None, **fields}


def test_a_batch_jobs_live_reasks_are_priced_live_and_count_against_its_budget():
    all_batch = pricing.job_cost(PRICES, job())
    assert all_batch == pytest.approx((2 * 0.15 + 0.60) / 2)
    mixed = pricing.job_cost(PRICES, job(live_prompt_tokens=1_000_000, live_completion_tokens=0))
    assert mixed == pytest.approx(0.15 / 2 + 0.60 / 2 + 0.15)
    assert pricing.over_budget(PRICES, job(max_cost_usd=0.5)) is None  # 0.45 batch
    over = pricing.over_budget(PRICES, job(max_cost_usd=0.5, live_prompt_tokens=1_000_000))
    assert over is not None and over[0] == pytest.approx(0.525)
    assert pricing.job_cost(PRICES, job(mode="live")) == pytest.approx(0.9)


def test_usage_cost_prices_cached_tokens_batch_rows_and_live_reasks_each_at_their_rate():
    prices = parse_prices("m=0.20/0.80/0.10")  # cached input at half the input price
    tokens = {"prompt_tokens": 3_000_000, "completion_tokens": 1_000_000, "cached_tokens": 1_500_000,
              "live_prompt_tokens": 1_000_000, "live_completion_tokens": 500_000, "live_cached_tokens": 500_000}
    # batch: 2M prompt (1M cached), 0.5M completion at half price; live: 1M prompt (0.5M cached), 0.5M completion
    batch = (1.0 * 0.20 + 1.0 * 0.10 + 0.5 * 0.80) / 2
    live = 0.5 * 0.20 + 0.5 * 0.10 + 0.5 * 0.80
    assert pricing.usage_cost(prices, "m", "batch", tokens) == pytest.approx(batch + live)
    # live mode: everything live, the live_* split ignored; missing counters count 0
    assert pricing.usage_cost(prices, "m", "live", tokens) == pytest.approx(1.5 * 0.20 + 1.5 * 0.10 + 1.0 * 0.80)
    assert pricing.usage_cost(prices, "m", "batch", {"prompt_tokens": 1_000_000}) == pytest.approx(0.10)
    assert pricing.usage_cost(prices, "other", "live", tokens) is None
    # a job is priced by the same function
    assert pricing.job_cost(prices, {"model": "m", "mode": "batch", **tokens}) == pytest.approx(batch + live)


def test_the_first_chunks_worth_is_reached_by_one_save_only():
    def saved(done: int, wrote: int, total: int = 100) -> dict:
        return {"total_rows": total, "processed_rows": done - 1, "failed_rows": 1, "saved": wrote}

    assert pricing.first_chunk_rows(saved(40, 40), 50) is None
    assert pricing.first_chunk_rows(saved(60, 20), 50) == 50
    assert pricing.first_chunk_rows(saved(80, 20), 50) is None
    assert pricing.first_chunk_rows(saved(7, 7, total=7), 50) == 7  # a job smaller than a chunk: all of it


def test_the_jobs_estimate_shows_the_best_projection_and_the_start_beside_it():
    assert pricing.job_estimate(PRICES, job(estimate=None)) is None
    assert pricing.job_estimate(PRICES, job(estimate={"preview": {"prompt_factor": 1.0}})) is None
    start = pricing.estimate(PRICES, MODEL, 1000, SHORT, [], False)
    shown = pricing.job_estimate(PRICES, job(mode="live", estimate=start))
    assert shown["basis"] == "heuristic" and shown["cost_usd"] == start["cost_usd"]
    assert shown["at_start"] == {"basis": "heuristic", "prompt_tokens": start["prompt_tokens"],
                                 "completion_tokens": start["completion_tokens"], "cost_usd": start["cost_usd"]}
    later = {**start, "first_chunk": {"rows": 50, "prompt_tokens": 400_000, "completion_tokens": 40_000}}
    shown = pricing.job_estimate(PRICES, job(mode="batch", estimate=later))
    assert (shown["basis"], shown["prompt_tokens"]) == ("first_chunk", 400_000)
    assert shown["cost_usd"] == round((400_000 * 0.15 + 40_000 * 0.60) / 1e6 / 2, 4)
    assert shown["at_start"]["cost_usd"] == start["batch_cost_usd"]
    # a batch job's live re-asks seen in its first chunk are projected at the live price
    reasks = {**later, "first_chunk": {**later["first_chunk"], "live_prompt_tokens": 100_000,
                                       "live_completion_tokens": 10_000}}
    shown = pricing.job_estimate(PRICES, job(mode="batch", estimate=reasks))
    assert shown["cost_usd"] == round((300_000 * 0.15 + 30_000 * 0.60) / 1e6 / 2
                                      + (100_000 * 0.15 + 10_000 * 0.60) / 1e6, 4)


# ---------------------------------------------------------------- within 15 % of real usage



def page(i: int) -> str:
    """The summary of a small business's home page of a typical size (900-1,000 characters)."""
    city = ("Portland", "Denver", "Austin", "Boston")[i % 4]
    text = (f"Since {1990 + i} our team of {12 + i} has delivered fresh bread, pastries and cakes to cafés, hotels "
            f"and offices across {city}. We bake every night with flour from local mills and deliver before "
            "seven. Order online by midnight, change or pause any standing order, and talk to a person when you "
            "call. Our wholesale customers get weekly menus, seasonal specials and a dedicated account manager. ")
    return summarize_html(html(title=f"Sunrise Bakery {i} | Fresh bread in {city}",
                               description=f"Wholesale and retail bakery in {city}: bread, pastries, cakes.",
                               og_title=f"Sunrise Bakery {i}", og_description="Baked tonight, delivered by seven.",
                               headings=("Fresh every morning", "Wholesale", "Catering"), body=text * 2))


def ratio(client: openai.OpenAI, instructions: str, page_context: bool, rows: int = 8) -> float:
    """The estimate of `rows` rows ÷ what their checked generation really cost."""
    generator = OpenerGenerator(client, NoLimit(), MODEL, max_retries=3)
    prompt = completion = 0
    for i in range(rows):
        page_text = page(i) if page_context else None
        kept = checks.generate_checked(generator, job_id="j", url=f"https://c{i}-bakery.example.com/",
                                       instructions=instructions, model=MODEL, options=checks.Options(grounding="flag"),
                                       page=page_text)
        prompt, completion = prompt + kept.prompt_tokens, completion + kept.completion_tokens
    estimate = pricing.estimate(PRICES, MODEL, rows, instructions, [], page_context)
    return (pricing.cost_usd(PRICES, MODEL, estimate["prompt_tokens"], estimate["completion_tokens"])
            / pricing.cost_usd(PRICES, MODEL, prompt, completion))


CASES = [(SHORT, False), (LONG, False), (SHORT, True), (LONG, True)]


@pytest.mark.parametrize(("instructions", "page_context"), CASES, ids=["short", "long", "short-page", "long-page"])
def test_the_estimate_is_within_15_percent_of_the_dummys_usage(instructions, page_context):
    client = openai.OpenAI(api_key="dummy", base_url="http://dummy.invalid/v1", max_retries=0,
                           http_client=httpx2.Client(transport=DummyTransport()))
    assert 0.85 <= ratio(client, instructions, page_context) <= 1.15


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAI() as server:
        yield server


@pytest.mark.parametrize(("instructions", "page_context"), CASES, ids=["short", "long", "short-page", "long-page"])
def test_the_estimate_is_within_15_percent_of_the_fakes_usage(fake, instructions, page_context):
    client = openai.OpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=0)
    assert 0.85 <= ratio(client, instructions, page_context) <= 1.15
