"""Quality: openers you can trust, and what the checks cost (issue 20 item 6).

    make bench BENCH=quality

(a) **What ships.** A job of URLS rows (each with a short description the instructions name as
    {{about}}) against the fake OpenAI server whose first answer misbehaves for 20 % of the rows
    (invent, repeat, long, spam, wrong_language: 4 % each), through the real chunk worker, Redis
    limiter and duplicate index. Of the openers shipped, the share with an invented fact (an
    unsupported claim or the fake's invented evidence), a line repeated across the job, a length
    outside the job's word limits, spam or the wrong language must be 0; the extra calls per URL
    (calls made again by the checks or the retry policy) ≤ 0.3.
(b) **The checks' own cost.** Checks on (the worker as it is) ÷ checks off (the worker as before
    issue 20: the generator's answer saved as it comes), goal ≥ 0.97, two ways:
    - at the utilization benchmark's setup (bench/utilization.py, the goal's own terms): a fake
      provider enforcing R = UTIL_RPM with 200 ms latency, 4 chunk handlers in 4 processes,
      16 calls in flight each, sharing the Redis limiter set to R; utilization (achieved rate / R)
      with checks on ÷ off, alternated runs, the median of each;
    - at zero provider latency (the pipeline's CPU is then all there is): rows per second through
      one handler, alternated runs in one process, the median of each.
(c) **Duplicate detection stays O(1) per opener.** Time per ``DuplicateIndex.check_and_add`` of
    PROBES new openers against a job index already holding 100,000 openers ÷ against one holding
    1,000 (real Redis, one run, both sides): ≤ 2.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
import uuid

URLS = int(os.environ.get("BENCH_QUALITY_URLS", "300"))
SPEED_URLS = int(os.environ.get("BENCH_QUALITY_SPEED_URLS", "200"))
SPEED_RUNS = int(os.environ.get("BENCH_QUALITY_SPEED_RUNS", "3"))
BIG_INDEX = int(os.environ.get("BENCH_QUALITY_BIG_INDEX", "100000"))
UTIL_RPM = int(os.environ.get("BENCH_QUALITY_UTIL_RPM", "3000"))
UTIL_URLS = int(os.environ.get("BENCH_QUALITY_UTIL_URLS", "2000"))
UTIL_RUNS = int(os.environ.get("BENCH_QUALITY_UTIL_RUNS", "2"))
UTIL_WORKERS = 4
UTIL_LATENCY_MS = 200
SMALL_INDEX = 1000
PROBES = 500
MISBEHAVE = {"invent": 0.04, "repeat": 0.04, "long": 0.04, "spam": 0.04, "wrong_language": 0.04}
INSTRUCTIONS = "We plan delivery routes for small food businesses. Mention what they do: {{about}}."
SYLLABLES = ["ka", "lo", "mi", "ne", "pu", "ra", "si", "to", "vu", "ze", "ba", "do", "fe", "gi", "ho", "ju"]


def pseudo_words(i: int, n: int = 8) -> list[str]:
    """``n`` made-up words of four syllables for item ``i``, drawn at random (seeded by ``i``) from
    65,536: items share few of them, so their openers are not alike."""
    pick = random.Random(i)
    return ["".join(pick.choice(SYLLABLES) for _ in range(4)) for _ in range(n)]


def start_job(n: int, tag: str, **options) -> str:
    from bench.common import bench_account
    from chalicelib import deps, jobs

    # Hosts told apart by letters (a made-up word each): the duplicate rule compares words, not
    # digits, so "x-1.example.com" and "x-2.example.com" read the same.
    rows = "".join(f"{pseudo_words(-i - 1, 1)[0]}-{i}-{tag}.example.com,{' '.join(pseudo_words(i))} bakery\n"
                   for i in range(n))
    conn = deps.conn()
    account_id = bench_account(conn)
    job_id = jobs.create_from_upload(conn, deps.storage(), account_id=account_id, file_name=f"{tag}.csv",
                                     data=("website,about\n" + rows).encode(), url_column="website")["job"]["id"]
    jobs.start(conn, deps.storage(), deps.chunk_queue(), deps.settings(), account_id, job_id,
               instructions=INSTRUCTIONS, **options)
    deps.chunk_queue().sqs.purge_queue(QueueUrl=deps.settings().chunk_queue_url)
    return job_id


def run_job(job_id: str, worker) -> float:
    """Every chunk of the job through ``worker``, one after the other; seconds taken."""
    from chalicelib import deps
    from chalicelib.adapters import db

    chunks = db.get_job(deps.conn(), job_id)["chunks"]
    started = time.perf_counter()
    for chunk in range(chunks):
        worker.process_chunk(job_id, chunk, lambda: float("inf"))
    return time.perf_counter() - started


# -- (a) -------------------------------------------------------------------------------------------


def shipped_faults(job_id: str) -> dict:
    """Of the job's completed openers: how many carry each fault, re-checked here from the text."""
    from chalicelib import deps
    from chalicelib.quality import flags, language
    from chalicelib.quality.duplicates import is_near_duplicate
    from tests.support.fake_openai.writing import INVENTED_EVIDENCE

    conn = deps.conn()
    job = conn.execute("SELECT min_words, max_words FROM jobs WHERE id = %s", (job_id,)).fetchone()
    rows = conn.execute("SELECT opener, evidence, grounding, regenerations FROM urls "
                        "WHERE job_id = %s AND status = 'completed'", (job_id,)).fetchall()
    openers = [r["opener"] for r in rows]
    repeated = sum(1 for i, a in enumerate(openers) if any(is_near_duplicate(a, b) for b in openers[:i]))
    return {
        "shipped": len(rows),
        "invented": sum(1 for r in rows if r["grounding"] == "unsupported" or r["evidence"] == INVENTED_EVIDENCE
                        or "25 years" in r["opener"]),
        "repeated": repeated,
        "wrong_length": sum(1 for o in openers if not job["min_words"] <= flags.count_words(o) <= job["max_words"]),
        "spam": sum(1 for o in openers if flags.is_spammy(o)),
        "wrong_language": sum(1 for o in openers if language.is_wrong_language(o, "en")),
    }


def misbehaving(base_url: str) -> dict:
    from bench.common import fake_call
    from chalicelib import deps
    from chalicelib.adapters import db

    fake_call(base_url, "/_fake/reset", {"keep_config": True})
    fake_call(base_url, "/_fake/config", {"misbehave": MISBEHAVE, "misbehave_seed": 20})
    job_id = start_job(URLS, f"q{uuid.uuid4().hex[:6]}")
    seconds = run_job(job_id, deps.chunk_worker())
    stats = fake_call(base_url, "/_fake/stats")
    job = db.get_job(deps.conn(), job_id)
    faults = shipped_faults(job_id)
    calls = stats["ok"]
    return {"urls": URLS, "job": {k: job[k] for k in ("status", "processed_rows", "failed_rows")},
            "misbehaved": stats["misbehaved_by_rule"], "calls": calls,
            "extra_calls_per_url": round((calls - URLS) / URLS, 3), "faults": faults,
            "fault_share": round(sum(v for k, v in faults.items() if k != "shipped") / max(1, faults["shipped"]), 4),
            "quality": job["quality"], "seconds": round(seconds, 1)}


# -- (b) -------------------------------------------------------------------------------------------


def unchecked_worker():
    """The worker as before issue 20: the generator's answer saved as it comes (checks off)."""
    from chalicelib import deps
    from chalicelib.generation.answers import GenerationFailed
    from chalicelib.generation.ratelimit import LimiterStopped
    from chalicelib.generation.worker import ChunkWorker

    class Unchecked(ChunkWorker):
        def _generate(self, row, job, stop, page_fetch=None):
            base = {"id": row["id"], "opener": None, "error": None, "prompt_tokens": None,
                    "completion_tokens": None, "context_status": "off"}
            try:
                opener = self.generator.generate(row["url"], job["instructions"], job["model"],
                                                 should_stop=stop.is_set, account=str(job["account_id"]),
                                                 fields=row.get("fields"))
            except LimiterStopped:
                return None
            except GenerationFailed as exc:
                return {**base, "status": "failed", "error": exc.message, "retry_count": row["retry_count"] + 1}
            return {**base, "status": "completed", "opener": opener.text, "retry_count": row["retry_count"],
                    "prompt_tokens": opener.prompt_tokens, "completion_tokens": opener.completion_tokens}

    checked = deps.chunk_worker()
    return Unchecked(get_conn=deps.conn, generator=checked.generator, queue=deps.chunk_queue(),
                     settings=deps.settings(), export=lambda job: None)


def checks_cost(base_url: str) -> dict:
    from bench.common import fake_call
    from chalicelib import deps

    fake_call(base_url, "/_fake/config", {"misbehave": {}})
    on_worker, off_worker = deps.chunk_worker(), unchecked_worker()
    run_job(start_job(20, f"w{uuid.uuid4().hex[:6]}"), on_worker)  # warm: model loads, connections, scripts
    on, off = [], []
    for _ in range(SPEED_RUNS):
        for worker, out in ((off_worker, off), (on_worker, on)):
            seconds = run_job(start_job(SPEED_URLS, f"s{uuid.uuid4().hex[:6]}"), worker)
            out.append(SPEED_URLS / seconds)
    return {"rows_per_s_on": [round(x, 1) for x in on], "rows_per_s_off": [round(x, 1) for x in off],
            "ratio": round(statistics.median(on) / statistics.median(off), 3)}


def _handle_chunk(args: tuple[str, int, dict, bool]) -> float:
    """One chunk in a process of its own (spawned), through the worker with or without checks."""
    job_id, chunk, env, checks = args
    os.environ.update(env)
    from chalicelib import deps
    from chalicelib.quality import language

    worker = deps.chunk_worker() if checks else unchecked_worker()
    # A warm handler, as a Lambda container is after its first invocation: the language model
    # (about a second to load, many more on a loaded machine, while the handler's calls wait)
    # is loaded before the chunk, in both kinds of process alike.
    language.detect("a warm handler has its language model loaded already")
    started = time.monotonic()
    worker.process_chunk(job_id, chunk, lambda: float("inf"))
    return time.monotonic() - started


def utilization_cost() -> dict:
    """(b) at the utilization benchmark's setup (its own fake server, started as that benchmark
    starts it): utilization with checks on ÷ off."""
    import multiprocessing

    from bench.common import fake_call, fake_openai, job_counts, use_fake
    from bench.utilization import rate_figures

    runs: dict[str, list[dict]] = {"off": [], "on": []}
    with fake_openai("--latency-ms", str(UTIL_LATENCY_MS), "--rpm", str(UTIL_RPM)) as base_url:
        for _ in range(UTIL_RUNS):
            for label in ("off", "on"):
                fake_call(base_url, "/_fake/reset", {"keep_config": True})
                use_fake(base_url, OPENAI_RPM=str(UTIL_RPM), OPENAI_TPM="0", CHUNK_SIZE=str(UTIL_URLS // UTIL_WORKERS),
                         CHUNK_CONCURRENCY="16", OPENAI_TIMEOUT_S="10",
                         RATELIMIT_PREFIX=f"{os.environ.get('RATELIMIT_PREFIX', 'bench')}:qutil:{time.time_ns()}")
                job_id = start_job(UTIL_URLS, f"u{uuid.uuid4().hex[:6]}")
                env = {k: os.environ[k] for k in os.environ if k.startswith(("OPENAI_", "CHUNK_", "RATELIMIT_"))}
                started = time.monotonic()
                with multiprocessing.get_context("spawn").Pool(UTIL_WORKERS) as pool:
                    pool.map(_handle_chunk, [(job_id, k, env, label == "on") for k in range(UTIL_WORKERS)])
                figures = rate_figures(fake_call(base_url, "/_fake/stats"), UTIL_RPM)
                figures.update(wall_s=round(time.monotonic() - started, 1), job=job_counts(job_id))
                runs[label].append(figures)
    on = [r["utilization"] for r in runs["on"]]
    off = [r["utilization"] for r in runs["off"]]
    return {"rpm": UTIL_RPM, "urls": UTIL_URLS, "utilization_on": [round(x, 3) for x in on],
            "utilization_off": [round(x, 3) for x in off],
            "share_429_on": [round(r["share_429"], 4) for r in runs["on"]],
            "share_429_off": [round(r["share_429"], 4) for r in runs["off"]],
            "jobs_on": [r["job"] for r in runs["on"]], "wall_s_on": [r["wall_s"] for r in runs["on"]],
            "wall_s_off": [r["wall_s"] for r in runs["off"]],
            "ratio": round(statistics.median(on) / statistics.median(off), 3)}


# -- (c) -------------------------------------------------------------------------------------------


def opener(i: int) -> str:
    words = pseudo_words(i, 10)
    return f"I read that {' '.join(words[:5])} bakes {' '.join(words[5:])} every morning; could we talk soon?"


def per_check_s(index, job_id: str, first: int) -> float:
    started = time.perf_counter()
    for i in range(first, first + PROBES):
        index.check_and_add(job_id, opener(i))
    return (time.perf_counter() - started) / PROBES


def duplicate_scaling() -> dict:
    from chalicelib import deps
    from chalicelib.quality.duplicates import DuplicateIndex

    index = DuplicateIndex(deps.redis_client(), prefix=f"{deps.settings().ratelimit_prefix}:benchdup")
    big, small = f"big-{uuid.uuid4().hex[:6]}", f"small-{uuid.uuid4().hex[:6]}"
    started = time.perf_counter()
    index.seed(big, (opener(i) for i in range(BIG_INDEX)))
    seeded_s = time.perf_counter() - started
    index.seed(small, (opener(i) for i in range(SMALL_INDEX)))
    probe_from = 10_000_000
    per_check_s(index, f"warm-{uuid.uuid4().hex[:6]}", probe_from)  # scripts loaded, connections made
    per_small = per_check_s(index, small, probe_from)
    per_big = per_check_s(index, big, probe_from)
    for job in (big, small):
        index.forget(job)
    return {"stored": [SMALL_INDEX, BIG_INDEX], "ms_per_opener": [round(per_small * 1000, 3), round(per_big * 1000, 3)],
            "ratio": round(per_big / per_small, 3), "seed_s": round(seeded_s, 1)}


def main() -> dict:
    from bench.common import fake_openai, use_fake

    parts = os.environ.get("BENCH_QUALITY_PARTS", "abuc")  # a: what ships, b, u: the checks' cost, c: duplicates
    ships, cost, util, scaling = {}, {}, {}, {}
    with fake_openai() as base_url:
        use_fake(base_url, CHUNK_SIZE="50", PAGE_CONTEXT_DEFAULT="false", OPENAI_RPM="0", OPENAI_TPM="0")
        if "a" in parts:
            ships = misbehaving(base_url)
            print(f"\nQuality (a): {URLS} URLs, 20 % of first answers bad {ships['misbehaved']}")
            print(f"  shipped openers with a fault: {ships['fault_share']:.2%} {ships['faults']} (goal 0)")
            print(f"  extra calls per URL: {ships['extra_calls_per_url']} (goal ≤ 0.3); job {ships['job']}")
        if "b" in parts:
            cost = checks_cost(base_url)
            print(f"Quality (b): rows/s with checks on ÷ off at zero latency: {cost['ratio']} (goal ≥ 0.97) "
                  f"on {cost['rows_per_s_on']} off {cost['rows_per_s_off']}")
    if "u" in parts:
        util = utilization_cost()
        print(f"Quality (b): utilization with checks on ÷ off at R = {UTIL_RPM}, {UTIL_LATENCY_MS} ms: "
                  f"{util['ratio']} (goal ≥ 0.97) on {util['utilization_on']} off {util['utilization_off']}")
    if "c" in parts:
        scaling = duplicate_scaling()
        print(f"Quality (c): ms per duplicate check at {scaling['stored']} stored: {scaling['ms_per_opener']}, "
              f"ratio {scaling['ratio']} (goal ≤ 2)")
    result = {"ships": ships, "checks_cost": cost, "utilization": util, "duplicates": scaling}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
