"""Every opener checked before it is stored, through the chunk worker: the real PostgreSQL, Redis
(limiter and the job-wide duplicate index), LocalStack, and the fake OpenAI server misbehaving
on the first answer of chosen rows (invent, repeat, long, spam, wrong language), then behaving.

What is checked: the bad first answers are asked for again and what is saved is clean; a row that
stays ungrounded fails (strict) or is kept flagged (flag); the calls made again count in the
row's and the job's tokens (hence cost) and in ``regenerations`` and the job's quality counters;
two handlers of two chunks at once do not both accept the same line; and a server that refuses
``response_format`` is asked in words instead.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid

import pytest

from chalicelib import deps, jobs
from chalicelib.adapters import db
from chalicelib.generation.client import build_client
from chalicelib.generation.openers import OpenerGenerator
from chalicelib.generation.ratelimit import RateLimiter
from chalicelib.generation.worker import ChunkWorker
from chalicelib.quality.duplicates import DuplicateIndex, is_near_duplicate
from tests.support.accounts import service_account
from tests.support.rows import about

pytestmark = pytest.mark.usefixtures("clean")

INSTRUCTIONS = "We plan delivery routes for small food businesses. Mention what they do: {{about}}."


def make_worker(s, duplicates=None) -> ChunkWorker:
    generator = OpenerGenerator(build_client(s), RateLimiter(deps.redis_client(), 0, 0, prefix=uuid.uuid4().hex),
                                s.openai_model, max_retries=s.max_retries, sleep=lambda seconds: None)
    if duplicates is None:
        duplicates = DuplicateIndex(deps.redis_client(), prefix=f"{s.ratelimit_prefix}:dup:{uuid.uuid4().hex}")
    return ChunkWorker(get_conn=deps.conn, generator=generator, queue=deps.chunk_queue(), settings=s,
                       export=lambda job: None, deadline_margin_s=0, duplicates=duplicates)


def start(conn, s, hosts: list[str], *, with_about: bool = True, **options) -> str:
    account_id = service_account(conn)
    if with_about:
        lines = ["website,about", *(f"{h},{about(i)}" for i, h in enumerate(hosts))]
        options.setdefault("instructions", INSTRUCTIONS)
    else:
        lines = ["website", *hosts]
    job_id = jobs.create_from_upload(conn, deps.storage(), account_id=account_id, file_name="q.csv",
                                     data=("\n".join(lines) + "\n").encode(), url_column="website")["job"]["id"]
    jobs.start(conn, deps.storage(), deps.chunk_queue(), s, account_id, job_id, **options)
    return job_id


def rows(conn, job_id: str) -> dict[str, dict]:
    found = conn.execute("SELECT url, status, opener, error, evidence, grounding, quality, words, language, "
                         "regenerations, prompt_tokens, completion_tokens FROM urls WHERE job_id = %s", (job_id,))
    return {r["url"]: r for r in found.fetchall()}


def hosts(tag: str, n: int) -> list[str]:
    return [f"{tag}{i}-{uuid.uuid4().hex[:6]}.example.com" for i in range(n)]


BAD = {"invent": 0, "repeat": 1, "long": 2, "spam": 3, "wrong_language": 4}  # rule -> the row it hits
# The fake's 90-word answer is a good opener padded with more sentences: the cleaning keeps the
# first two (a long answer needs no call again); the others are asked again with what to fix.
REASKED = {rule: i for rule, i in BAD.items() if rule != "long"}


def test_bad_first_answers_are_asked_again_and_what_is_saved_is_clean_and_paid_for(conn, live, fake):
    names = hosts("q", 10)
    fake.configure(misbehave={rule: [names[i]] for rule, i in BAD.items()})
    job_id = start(conn, live, names)
    make_worker(live).process_chunk(job_id, 0, lambda: float("inf"))

    saved = rows(conn, job_id)
    stats = fake.stats()
    assert stats["misbehaved_by_rule"] == {**dict.fromkeys(BAD, 1), "no_json": 0}
    assert stats["reasks"] == len(REASKED) and stats["ok"] == 10 + len(REASKED)
    for url, row in saved.items():
        bad = any(names[i] in url for i in REASKED.values())
        assert row["status"] == "completed", row
        assert (row["grounding"], row["quality"], row["language"]) == ("verified", [], "en"), row
        assert row["evidence"] and row["evidence"] in row["opener"] and 8 <= row["words"] <= 40
        assert row["regenerations"] == (1 if bad else 0)
        assert "25 years" not in row["opener"] and "!!" not in row["opener"]
    # every call, the ones made again included, is in the rows' and the job's tokens (and so in its cost)
    job = db.get_job(conn, job_id)
    assert job["prompt_tokens"] == sum(r["prompt_tokens"] for r in saved.values()) == stats["prompt_tokens"]
    assert job["completion_tokens"] == sum(r["completion_tokens"] for r in saved.values()) == stats["completion_tokens"]
    first_calls = [r for url, r in saved.items() if not any(names[i] in url for i in REASKED.values())]
    assert job["prompt_tokens"] > sum(r["prompt_tokens"] for r in first_calls) * 10 // len(first_calls)
    quality = job["quality"]
    assert (quality["verified"], quality["generic"], quality["unsupported"], quality["regenerated"]) == (10, 0, 0, 4)
    assert quality["flagged"] == {} and sum(quality["words"].values()) == 10 and quality["reused"] == 0


@pytest.mark.parametrize("mode", ["strict", "flag"])
def test_an_opener_that_stays_ungrounded_fails_the_row_in_strict_mode_and_is_flagged_in_flag_mode(conn, live, fake,
                                                                                                  mode):
    s = dataclasses.replace(live, max_retries=1)  # no call left to ask an unsupported opener again
    names = hosts("u", 3)
    fake.configure(misbehave={"invent": [names[0]]})
    job_id = start(conn, s, names, grounding=mode)
    make_worker(s).process_chunk(job_id, 0, lambda: float("inf"))

    invented = next(r for url, r in rows(conn, job_id).items() if names[0] in url)
    job = db.get_job(conn, job_id)
    if mode == "strict":
        assert (invented["status"], invented["opener"], invented["grounding"]) == ("failed", None, "unsupported")
        assert invented["error"].startswith("ungrounded: ") and "25 years" not in invented["error"]
        assert (job["processed_rows"], job["failed_rows"]) == (2, 1)
    else:
        assert (invented["status"], invented["grounding"], invented["quality"]) == (
            "completed", "unsupported", ["ungrounded"])
        assert (job["processed_rows"], job["failed_rows"], job["quality"]["flagged"]) == (3, 0, {"ungrounded": 1})
    assert job["quality"]["unsupported"] == 1 and job["quality"]["verified"] == 2
    assert fake.stats()["reasks"] == 0


def test_two_handlers_of_two_chunks_at_once_never_both_keep_the_same_line_unflagged(conn, live, fake):
    s = dataclasses.replace(live, chunk_size=1)
    # one row per chunk; no data: the repeated generic line is flagged, not asked again (nothing
    # specific to ask for), and the index must still see the other handler's line
    names = hosts("d", 2)
    fake.configure(misbehave={"repeat": names})
    job_id = start(conn, s, names, with_about=False)
    assert db.get_job(conn, job_id)["chunks"] == 2

    both_looked = threading.Barrier(2, timeout=20)
    waited = threading.local()

    def after_lookup() -> None:  # each handler's first lookup waits for the other's: neither has added yet
        if not getattr(waited, "done", False):
            waited.done = True
            both_looked.wait()

    index = DuplicateIndex(deps.redis_client(), prefix=f"{s.ratelimit_prefix}:dup:{uuid.uuid4().hex}",
                           after_lookup=after_lookup)
    handlers = [threading.Thread(target=make_worker(s, index).process_chunk, args=(job_id, chunk, lambda: 1e9))
                for chunk in (0, 1)]
    for handler in handlers:
        handler.start()
    for handler in handlers:
        handler.join(60)

    first, second = rows(conn, job_id).values()
    assert first["status"] == second["status"] == "completed"
    assert [first["regenerations"], second["regenerations"]] == [0, 0]
    assert is_near_duplicate(first["opener"], second["opener"])
    assert sorted([first["quality"], second["quality"]]) == [["duplicate", "generic"], ["generic"]]  # exactly one
    assert fake.stats()["reasks"] == 0
    job = db.get_job(conn, job_id)
    assert job["status"] == "completed" and job["quality"]["regenerated"] == 0
    assert job["quality"]["flagged"]["duplicate"] == 1
    assert index.redis.exists(*index.keys(job_id)) == 0  # the completed job's index is forgotten


def test_a_server_refusing_response_format_gets_the_json_asked_for_in_words(conn, live, fake):
    live = dataclasses.replace(live, chunk_concurrency=1)  # one call in flight: the refusal is met once
    fake.configure(response_format_supported=False)
    names = hosts("r", 4)
    job_id = start(conn, live, names)
    make_worker(live).process_chunk(job_id, 0, lambda: float("inf"))

    saved = rows(conn, job_id)
    assert all(r["status"] == "completed" and r["grounding"] == "verified" and r["evidence"] for r in saved.values())
    stats = fake.stats()
    assert stats["refused"] == {"response_format": 1}  # once: the model is asked in words from then on
    assert stats["by_format"] == {"prompt": 4}
    assert all(r["regenerations"] == 0 for r in saved.values())


def test_bad_options_are_refused_with_clear_codes_before_anything_is_stored(conn, live):
    account_id = service_account(conn)
    job_id = jobs.create_from_upload(conn, deps.storage(), account_id=account_id, file_name="o.csv",
                                     data=b"website\na.example.com\n", url_column=None)["job"]["id"]
    for options, code in [({"grounding": "lenient"}, "bad_grounding"), ({"min_words": 0}, "invalid_word_limits"),
                          ({"min_words": 30, "max_words": 20}, "invalid_word_limits"),
                          ({"max_words": 201}, "invalid_word_limits"), ({"language": "German"}, "bad_language"),
                          ({"language": "DE"}, "bad_language")]:
        with pytest.raises(Exception) as info:
            jobs.start(conn, deps.storage(), deps.chunk_queue(), live, account_id, job_id, **options)
        assert getattr(info.value, "code", None) == code, options
    assert db.get_job(conn, job_id)["status"] == "pending"
    started = jobs.start(conn, deps.storage(), deps.chunk_queue(), live, account_id, job_id, grounding="flag",
                         min_words=5, max_words=25, language="de")
    job = db.get_job(conn, started["job"]["id"])
    assert (job["grounding"], job["min_words"], job["max_words"], job["language"]) == ("flag", 5, 25, "de")
