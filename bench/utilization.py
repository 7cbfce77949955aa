"""Utilization: how close the pipeline runs to the provider's rate limit, the physical bound
on its speed.

A fake OpenAI server enforces R requests per minute (token bucket, one second of burst, like
OpenAI) with 200 ms latency. Our Redis limiter is set to the same R; 4 chunk handlers in 4
processes share it. Side by side, a single-process reference in the style of the OpenAI
cookbook's api_request_parallel_processor (asyncio client, local token bucket, everyone pauses
after a 429) runs on the same server.

Figures: achieved rate / R over the run, and the share of calls answered 429.
Goals: ≥ 0.95 and ≤ 1 %.
"""

from __future__ import annotations

import asyncio
import os
import time

import openai

from bench.common import fake_call, fake_openai, job_counts, make_job, run_chunks_in_processes, use_fake

RPM = int(os.environ.get("BENCH_RPM", "3000"))
URLS = int(os.environ.get("BENCH_URLS", "2000"))
WORKERS = 4
LATENCY_MS = "200"


def rate_figures(stats: dict, rpm: int) -> dict:
    """Achieved rate from the fake's own clock: successful calls per minute between the first
    and last request, over R; 429 share of all calls."""
    span = max(1e-9, stats["last_request_at"] - stats["first_request_at"])
    per_minute = stats["ok"] * 60 / span
    return {
        "ok": stats["ok"],
        "calls": stats["requests"],
        "rate_limited": stats["rate_limited"],
        "seconds": round(span, 1),
        "achieved_rpm": round(per_minute),
        "utilization": per_minute / rpm,
        "share_429": stats["rate_limited"] / max(1, stats["requests"]),
    }


def run_ours(base_url: str) -> dict:
    fake_call(base_url, "/_fake/reset", {"keep_config": True})
    settings = {"OPENAI_RPM": str(RPM), "OPENAI_TPM": "0", "CHUNK_SIZE": str(URLS // WORKERS),
                "CHUNK_CONCURRENCY": "16", "OPENAI_TIMEOUT_S": "10",
                "RATELIMIT_PREFIX": f"{os.environ.get('RATELIMIT_PREFIX', 'bench')}:util:{time.time_ns()}"}
    use_fake(base_url, **settings)
    job_id = make_job(URLS, f"util-{time.time_ns()}")
    env = {k: os.environ[k] for k in os.environ if k.startswith(("OPENAI_", "CHUNK_", "RATELIMIT_"))}
    wall = run_chunks_in_processes(job_id, WORKERS, env)
    figures = rate_figures(fake_call(base_url, "/_fake/stats"), RPM)
    figures.update(wall_s=round(wall, 1), job=job_counts(job_id))
    return figures


async def _reference(base_url: str, urls: list[str]) -> None:
    """Cookbook-style: one process, asyncio, a local request bucket refilled continuously and
    capped at one second's worth; after a 429 every task pauses (for the server's Retry-After,
    not the cookbook's fixed 15 s, which made this run take ten minutes)."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=10)
    capacity = RPM / 60
    state = {"available": capacity, "last": time.monotonic(), "paused_until": 0.0}
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)

    async def take_slot() -> None:
        while True:
            now = time.monotonic()
            if now < state["paused_until"]:
                await asyncio.sleep(state["paused_until"] - now)
                continue
            state["available"] = min(capacity, state["available"] + (now - state["last"]) * RPM / 60)
            state["last"] = now
            if state["available"] >= 1:
                state["available"] -= 1
                return
            await asyncio.sleep(0.001)

    async def worker() -> None:
        while not queue.empty():
            url = await queue.get()
            for _attempt in range(5):
                await take_slot()
                try:
                    await client.chat.completions.create(
                        model="gpt-4o-mini", max_tokens=120,
                        messages=[{"role": "user", "content": f"Write a one-sentence opener for {url}"}])
                    break
                except openai.RateLimitError as exc:
                    pause = float(exc.response.headers.get("retry-after", "1"))
                    state["paused_until"] = max(state["paused_until"], time.monotonic() + pause)
                except openai.APIError:
                    await asyncio.sleep(1)

    await asyncio.gather(*(worker() for _ in range(64)))
    await client.close()


def run_reference(base_url: str) -> dict:
    fake_call(base_url, "/_fake/reset", {"keep_config": True})
    started = time.monotonic()
    asyncio.run(_reference(base_url, [f"https://ref-{i}.example.com/" for i in range(URLS)]))
    figures = rate_figures(fake_call(base_url, "/_fake/stats"), RPM)
    figures["wall_s"] = round(time.monotonic() - started, 1)
    return figures


def main() -> dict:
    with fake_openai("--latency-ms", LATENCY_MS, "--rpm", str(RPM)) as base_url:
        ours = run_ours(base_url)
        reference = run_reference(base_url)
    print(f"\nUtilization: fake provider at R = {RPM} RPM, {LATENCY_MS} ms latency, {URLS} URLs")
    print(f"{'':28}{'ours (4 processes, Redis)':>28}{'reference (1 process)':>24}")
    for label, key, fmt in (("achieved rate / R", "utilization", "{:.3f}"), ("share of calls answered 429",
                            "share_429", "{:.2%}"), ("achieved RPM", "achieved_rpm", "{}"),
                            ("successful calls", "ok", "{}"), ("calls", "calls", "{}"),
                            ("seconds (first→last call)", "seconds", "{}"), ("wall seconds", "wall_s", "{}")):
        print(f"{label:28}{fmt.format(ours[key]):>28}{fmt.format(reference[key]):>24}")
    print(f"our job: {ours['job']}")
    return {"ours": ours, "reference": reference, "rpm": RPM, "urls": URLS}


if __name__ == "__main__":
    main()
