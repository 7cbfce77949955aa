"""Variants (SPEC "variants") end to end on the real stack: `process` with variants=3 through the
chunk worker against the fake OpenAI server (each row carries 3 checked variants), a person's
pick through PATCH (history with source person, 409 stale, 400 out of range), the download's
opener_2/opener_3 columns, reuse keeping a variants=3 row apart from a variants=1 job, the
answer's room (max_tokens) growing with the count against a fake that stops there, and the
options refused with a clear 400."""

from __future__ import annotations

import csv
import dataclasses
import io
import uuid

import httpx
import pytest

from chalicelib import deps
from chalicelib.generation import pricing
from chalicelib.generation.answers import UnusableAnswer, usable_answers
from chalicelib.generation.client import build_client
from chalicelib.generation.openers import OpenerGenerator
from chalicelib.generation.ratelimit import RateLimiter
from chalicelib.generation.worker import ChunkWorker
from tests.support.api import (
    body,
    download,
    error_of,
    patch_json,
    post_json,
    upload_and_process,
    upload_csv,
)
from tests.support.limiter import NoLimit

INSTRUCTIONS = "We plan delivery routes for small food businesses. Mention what they do: {{about}}."
ABOUT = ["Sourdough loaves baked before dawn in a wood oven by the river.",
         "Handmade noodles pulled to order with broth simmered overnight.",
         "Cold-pressed juices from fruit grown on our own orchard hills."]


pytestmark = pytest.mark.usefixtures("clean")


@pytest.fixture
def live(live):
    """The fake's settings (conftest.py) with two generators and the default reuse window."""
    return dataclasses.replace(live, chunk_size=20, chunk_concurrency=2, reuse_days=30)


def data(tag: str) -> bytes:
    return ("website,about\n" + "".join(f"https://v{i}-{tag}.example.com,{text}\n"
                                        for i, text in enumerate(ABOUT))).encode()


def processed(client, conn, live, fake, csv_data: bytes, **options) -> tuple[str, list[dict]]:
    """A job of `csv_data` started through the API and worked off by a chunk worker against the
    fake: (its id, its results in order)."""
    job_id, started = upload_and_process(client, csv_data, instructions=INSTRUCTIONS, page_context=False, **options)
    assert started.status_code == 202, started.body
    generator = OpenerGenerator(build_client(live), RateLimiter(deps.redis_client(), 0, 0, prefix=uuid.uuid4().hex),
                                live.openai_model, max_retries=live.max_retries, sleep=lambda seconds: None)
    worker = ChunkWorker(get_conn=deps.conn, generator=generator, queue=deps.chunk_queue(), settings=live,
                         export=lambda job: None, deadline_margin_s=0)
    for chunk in range(body(started)["chunks"]):
        worker.process_chunk(job_id, chunk, lambda: float("inf"))
    return job_id, body(client.http.get(f"/api/jobs/{job_id}/results"))["results"]


def test_a_variants_job_carries_three_checked_variants_picks_one_and_downloads_them(client, conn, live, fake):
    tag = uuid.uuid4().hex[:6]
    job_id, results = processed(client, conn, live, fake, data(tag), variants=3)
    job = body(client.http.get(f"/api/jobs/{job_id}"))["job"]
    assert job["status"] == "completed" and job["variants"] == 3 and job["processed_rows"] == 3
    assert fake.stats()["ok"] == 3  # one call per row for all three
    for row in results:
        assert row["status"] == "completed" and row["variant"] == 1 and len(row["variants"]) == 3
        assert len({v["opener"] for v in row["variants"]}) == 3
        for v in row["variants"]:
            assert v["grounding"] == "verified" and v["evidence"] in INSTRUCTIONS + " ".join(ABOUT)
            assert v["quality"] == [] and v["words"] > 8
        first = row["variants"][0]
        assert (row["opener"], row["evidence"], row["grounding"]) == (first["opener"], first["evidence"], "verified")

    row = results[0]
    url = f"/api/jobs/{job_id}/results/{row['id']}"
    picked = patch_json(client, url, {"variant": 2, "version": row["version"]})
    assert picked.status_code == 200, picked.body
    shown = body(picked)["result"]
    assert shown["variant"] == 2 and shown["opener"] == row["variants"][1]["opener"]
    assert shown["evidence"] == row["variants"][1]["evidence"] and shown["edited"] is False
    assert "edited" not in shown["quality"] and shown["version"] == row["version"] + 1
    history = body(client.http.get(url))["result"]["history"]
    assert [(h["opener"], h["source"]) for h in history] == [
        (row["variants"][0]["opener"], "model"), (row["variants"][1]["opener"], "person")]
    # a writer who read the row before the pick; a variant the row does not have
    assert error_of(patch_json(client, url, {"variant": 3, "version": row["version"]})) == (409, "stale_version")
    assert error_of(patch_json(client, url, {"variant": 4})) == (400, "bad_variant")
    assert error_of(patch_json(client, url, {"variant": "2"})) == (400, "bad_variant")
    assert body(client.http.get(url))["result"]["version"] == shown["version"]  # nothing changed
    # picking the one shown again changes nothing; the first again is a person's choice too
    assert body(patch_json(client, url, {"variant": 2}))["result"]["version"] == shown["version"]
    back = body(patch_json(client, url, {"variant": 1, "version": shown["version"]}))["result"]
    assert back["opener"] == row["opener"] and back["variant"] == 1
    assert body(client.http.get(url))["result"]["history"][-1]["source"] == "person"
    final = body(patch_json(client, url, {"variant": 3}))["result"]

    rows = list(csv.reader(io.StringIO(download(client, job_id).body.decode())))
    header = rows[0]
    assert header[-2:] == ["opener_2", "opener_3"] and header.count("opener") == 1
    cells = dict(zip(header, rows[1], strict=True))
    assert cells["opener"] == final["opener"] == row["variants"][2]["opener"]
    assert (cells["opener_2"], cells["opener_3"]) == (row["variants"][0]["opener"], row["variants"][1]["opener"])
    other = dict(zip(header, rows[2], strict=True))
    assert (other["opener"], other["opener_2"], other["opener_3"]) == tuple(
        v["opener"] for v in results[1]["variants"])

    # a person's pick is theirs: a regeneration by filter leaves the row alone, by id it does not
    regen = post_json(client, f"/api/jobs/{job_id}/regenerate", {"filter": {"status": "completed"}})
    assert regen.status_code == 202, regen.body
    assert body(regen)["regenerating"] == 2
    kept = body(client.http.get(url))["result"]
    assert (kept["status"], kept["opener"], kept["variant"]) == ("completed", final["opener"], 3)


def test_variants_too_alike_are_asked_again_and_reuse_keeps_variants_jobs_apart(client, conn, live, fake):
    tag = uuid.uuid4().hex[:6]
    fake.configure(misbehave={"repeat": [f"v0-{tag}"]})  # row 0's first answer: three identical lines
    job_id, results = processed(client, conn, live, fake, data(tag), variants=2)
    first = results[0]
    assert len(first["variants"]) == 2 and first["variants"][0]["opener"] != first["variants"][1]["opener"]
    assert fake.stats()["reasks"] == 1 and fake.stats()["ok"] == 4
    assert body(client.http.get(f"/api/jobs/{job_id}"))["job"]["quality"]["regenerated"] == 1

    # the same rows with one opener per row are not reused from the variants job, and the other way round
    before = fake.stats()["ok"]
    single_id, single = processed(client, conn, live, fake, data(tag))
    assert fake.stats()["ok"] - before == 3 and not any(r["reused"] for r in single)
    assert all(r["variants"] is None and r["variant"] is None for r in single)
    before = fake.stats()["ok"]
    again_id, again = processed(client, conn, live, fake, data(tag), variants=2)
    assert fake.stats()["ok"] == before and all(r["reused"] for r in again)
    assert [r["variants"] for r in again] == [r["variants"] for r in results]
    assert all(r["variant"] == 1 for r in again)
    header = next(csv.reader(io.StringIO(download(client, single_id).body.decode())))
    assert "opener_2" not in header


def test_a_variants_answer_fits_its_max_tokens_where_one_openers_room_would_cut_it(client, conn, live, fake):
    """The fake stops at max_tokens as OpenAI does: a variants=3 job's calls (room for 3 answers,
    3 x max_tokens) come back whole and each row keeps 3 variants; the same call with one
    opener's room is cut off ("length"), which is no usable answer."""
    fake.configure(max_tokens_honoured=True)
    tag = uuid.uuid4().hex[:6]
    _, results = processed(client, conn, live, fake, data(tag), variants=3)
    assert all(r["status"] == "completed" and len(r["variants"]) == 3 for r in results), results
    stats = fake.stats()
    assert (stats["ok"], stats["truncated"]) == (3, 0)

    generator = OpenerGenerator(None, NoLimit(), live.openai_model)
    request = generator.request_body(f"https://v0-{tag}.example.com", INSTRUCTIONS, fields={"about": ABOUT[0]},
                                     variants=3)
    assert request["max_tokens"] == 3 * generator.max_tokens
    answer = httpx.post(f"{fake.base_url}/chat/completions", json={**request, "max_tokens": generator.max_tokens},
                        timeout=10).json()
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == generator.max_tokens
    with pytest.raises(UnusableAnswer):
        usable_answers(answer, variants=3)
    assert fake.stats()["truncated"] == 1


@pytest.mark.parametrize(("options", "code"), [
    ({"variants": 4}, "bad_variants"),
    ({"variants": 0}, "bad_variants"),
    ({"variants": "3"}, "bad_variants"),
    ({"variants": 2, "mode": "batch"}, "variants_batch"),
])
def test_bad_variants_are_a_400_and_leave_the_job_pending(client, conn, options, code, env):
    env(OPENAI_DUMMY_MODE="false", OPENAI_API_KEY="sk-test")
    job_id, started = upload_and_process(client, data(uuid.uuid4().hex[:6]), page_context=False, **options)
    assert error_of(started) == (400, code)
    assert body(client.http.get(f"/api/jobs/{job_id}"))["job"]["status"] == "pending"


def test_a_preview_shows_the_variants_and_prices_them(client, conn):
    job = body(upload_csv(client, data(uuid.uuid4().hex[:6])))["job"]
    answer = post_json(client, f"/api/jobs/{job['id']}/preview", {"rows": 2, "variants": 3, "page_context": False,
                                                                  "grounding": "flag"})
    assert answer.status_code == 200, answer.body
    shown = body(answer)
    for row in shown["previews"]:
        assert len(row["variants"]) == 3 and row["opener"] == row["variants"][0]["opener"]
    # the longer answers, as estimated, then corrected by what the preview's calls really cost
    assert shown["estimate"]["completion_tokens_per_url"] > 2.5 * pricing.completion_tokens()
    assert error_of(post_json(client, f"/api/jobs/{job['id']}/preview", {"variants": 9})) == (400, "bad_variants")
