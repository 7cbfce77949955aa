"""A server limited by capacity, not rate: how close the adaptive in-flight limit runs to the
best fixed concurrency, and whether the latency stays down.

The fake OpenAI server (own process) answers each call after BASE_MS + PER_CALL_MS × the calls
in flight when it is admitted (a self-hosted vLLM: slower with every call it batches), with no
rate limit and no ``x-ratelimit-*`` header, as vLLM answers (a server stating its rate budget is
metered by rate, and the gate holds it at its ceiling: ``ratelimit/inflight.py``). One job,
WORKERS chunk handlers in their own processes; each run lasts RUN_S seconds from its first call
(handlers stopped as at their Lambda deadline); throughput and latency are taken from the
fake's own record of every answer (``GET /_fake/latencies``: admitted at, latency) over
[WARM_S, RUN_S], so the load of the machine on our processes does not enter the latency figures.

Runs, side by side on the same server:
  * unloaded: one handler, one call in flight: the unloaded latency (p95);
  * fixed N for N in SWEEP: CONCURRENCY_ADAPTIVE=false, CHUNK_CONCURRENCY = N / WORKERS (the
    code of before: every handler keeps its CHUNK_CONCURRENCY calls in flight);
  * adaptive: CONCURRENCY_ADAPTIVE=true, CHUNK_CONCURRENCY=16 (64 in all at most), a fresh
    RATELIMIT_PREFIX (the controller starts from nothing).
Figures: throughput (answers/s) and p95 latency of each run; the adaptive run's throughput over
the best fixed run's (overall, and of the fixed runs whose p95 stays ≤ 2 × unloaded: the knee)
and its p95 over the unloaded p95. Goals (issue 25): ≥ 0.9 of the best fixed, p95 ≤ 2 × unloaded.
With latency = base + k·n the throughput n / (base + k·n) keeps rising toward 1/k as n grows
while the latency grows with it: "best" and "≤ 2 × unloaded" pull apart, see bench/RESULTS.md.

    make bench BENCH=capacity
    BENCH_RUN_S=30 BENCH_SWEEP=4,8,16,32,64 make bench BENCH=capacity
"""

from __future__ import annotations

import os
import tempfile
import threading
import time

from bench.common import fake_call, fake_openai, job_counts, make_job, run_chunks_until, use_fake

BASE_MS = float(os.environ.get("BENCH_BASE_MS", "100"))
PER_CALL_MS = float(os.environ.get("BENCH_PER_CALL_MS", "15"))
RUN_S = float(os.environ.get("BENCH_RUN_S", "25"))
WARM_S = float(os.environ.get("BENCH_WARM_S", "5"))
SWEEP = [int(n) for n in os.environ.get("BENCH_SWEEP", "4,8,16,32,64").split(",")]
ADAPTIVE_RUNS = int(os.environ.get("BENCH_ADAPTIVE_RUNS", "2"))
WORKERS = 4
GOAL_THROUGHPUT, GOAL_P95 = 0.9, 2.0
SAMPLE_S = 0.05
KNEE = int((BASE_MS + 2 * PER_CALL_MS) / PER_CALL_MS)  # most calls in flight with latency ≤ 2 × unloaded (1 call)


def _stop_after(base_url: str, seconds: float, stop_file: str, done: threading.Event) -> None:
    """Create `stop_file` `seconds` after the fake's first call of this run."""
    while not done.is_set():
        first = fake_call(base_url, "/_fake/stats")["first_request_at"]
        if first is not None and time.time() - first >= seconds:
            open(stop_file, "w").close()
            return
        done.wait(0.2)


def _sample_limit(key: str, done: threading.Event, out: list) -> None:
    """The shared in-flight limit every SAMPLE_S (adaptive runs): [(time, limit, client latency s)]."""
    from chalicelib import deps

    redis = deps.redis_client()
    while not done.wait(SAMPLE_S):
        limit, rtt = redis.hmget(key, "limit", "rtt")
        if limit is not None:
            out.append((time.time(), float(limit), float(rtt or 0)))


def run(base_url: str, label: str, workers: int, concurrency: int, adaptive: bool) -> dict:
    fake_call(base_url, "/_fake/reset", {"keep_config": True})
    urls = round(1.3 * RUN_S * 1000 / PER_CALL_MS) + 200  # more than the server can answer in RUN_S
    use_fake(base_url, OPENAI_RPM="0", OPENAI_TPM="0", CHUNK_SIZE=str(-(-urls // workers)),
             CHUNK_CONCURRENCY=str(concurrency), CONCURRENCY_ADAPTIVE="true" if adaptive else "false",
             OPENAI_TIMEOUT_S="30", PAGE_CONTEXT_DEFAULT="false",
             RATELIMIT_PREFIX=f"{os.environ.get('RATELIMIT_PREFIX', 'bench')}:capacity:{time.time_ns()}")
    job_id = make_job(urls, f"capacity-{time.time_ns()}")
    env = {k: os.environ[k] for k in os.environ if k.startswith(("OPENAI_", "CHUNK_", "RATELIMIT_", "CONCURRENCY_",
                                                                 "PAGE_"))}
    with tempfile.TemporaryDirectory() as tmp:
        stop_file, done = os.path.join(tmp, "stop"), threading.Event()
        stopper = threading.Thread(target=_stop_after, args=(base_url, RUN_S, stop_file, done), daemon=True)
        stopper.start()
        limits: list = []
        if adaptive:
            from chalicelib import deps
            from chalicelib.generation.ratelimit.gate import state_key

            key = state_key(os.environ["RATELIMIT_PREFIX"], deps.settings().openai_model)
            threading.Thread(target=_sample_limit, args=(key, done, limits), daemon=True).start()
        try:
            run_chunks_until(job_id, workers, env, stop_file)
        finally:
            done.set()
    stats = fake_call(base_url, "/_fake/stats")
    first = stats["first_request_at"]
    print(f"  [{label}] calls {stats['requests']}, ok {stats['ok']}, 429 {stats['rate_limited']}, "
          f"most in flight {stats['max_in_flight']}, until the last call {stats['last_request_at'] - first:.1f} s",
          flush=True)
    answers = [(t - first, ms) for t, ms in fake_call(base_url, "/_fake/latencies")["latencies"]]
    window = sorted(ms for t, ms in answers if WARM_S <= t < RUN_S)
    if limits:
        held = [limit for t, limit, _ in limits if WARM_S <= t - first < RUN_S]
        rtts = [rtt for t, _, rtt in limits if WARM_S <= t - first < RUN_S]
        trace = " ".join(f"{limit:.0f}" for _, limit, _ in limits[::int(1 / SAMPLE_S)])
        flights = [round((ms - BASE_MS) / PER_CALL_MS) for ms in window]
        print(f"  [{label}] limit over the window: mean {sum(held) / max(1, len(held)):.1f}, "
              f"share of time > {KNEE} {sum(limit >= KNEE + 1 for limit in held) / max(1, len(held)):.2f}; "
              f"server in flight at admission: mean {sum(flights) / max(1, len(flights)):.1f}, "
              f"share > {KNEE} {sum(n > KNEE for n in flights) / max(1, len(flights)):.2f}; "
              f"latency mean: at the client {1000 * sum(rtts) / max(1, len(rtts)):.0f} ms (window means), "
              f"at the server {sum(window) / max(1, len(window)):.0f} ms; limit per second: {trace}",
              flush=True)
    p95 = window[min(len(window) - 1, int(0.95 * len(window)))] if window else float("nan")
    return {"label": label, "n": workers * concurrency, "adaptive": adaptive, "answers": len(window),
            "throughput": len(window) / (RUN_S - WARM_S), "p95_ms": p95,
            "mean_ms": sum(window) / len(window) if window else float("nan"), "job": job_counts(job_id)}


def report(unloaded: dict, fixed: list[dict], adaptive: list[dict]) -> None:
    limit = GOAL_P95 * unloaded["p95_ms"]
    best = max(fixed, key=lambda r: r["throughput"])
    within = [r for r in fixed if r["p95_ms"] <= limit]
    knee = max(within, key=lambda r: r["throughput"]) if within else None
    print(f"\nCapacity-bound fake: latency {BASE_MS:g} ms + {PER_CALL_MS:g} ms × calls in flight, no rate limit; "
          f"{WORKERS} handler processes; figures over [{WARM_S:g} s, {RUN_S:g} s] of each run (the fake's record)")
    print(f"  {'run':34} {'in flight':>9} {'answers/s':>9} {'mean ms':>8} {'p95 ms':>7} {'p95/unloaded':>12}")
    for r in [unloaded, *fixed, *adaptive]:
        flight = "adaptive" if r["adaptive"] else str(r["n"])
        print(f"  {r['label']:34} {flight:>9} {r['throughput']:9.1f} {r['mean_ms']:8.0f} {r['p95_ms']:7.0f} "
              f"{r['p95_ms'] / unloaded['p95_ms']:12.2f}")
    print(f"  unloaded p95 {unloaded['p95_ms']:.0f} ms: the latency goal is p95 ≤ {limit:.0f} ms")
    for r in adaptive:
        share_best = r["throughput"] / best["throughput"]
        share_knee = r["throughput"] / knee["throughput"] if knee else float("nan")
        p95_ratio = r["p95_ms"] / unloaded["p95_ms"]
        met = share_knee >= GOAL_THROUGHPUT and p95_ratio <= GOAL_P95
        print(f"  {r['label']}: throughput / best fixed ({best['n']} in flight, p95 "
              f"{best['p95_ms'] / unloaded['p95_ms']:.1f} × unloaded) {share_best:.3f}; "
              f"/ best fixed within the latency goal ({knee['n'] if knee else '—'} in flight) {share_knee:.3f}; "
              f"p95 / unloaded {p95_ratio:.2f}; goals (≥ {GOAL_THROUGHPUT} of the knee, ≤ {GOAL_P95:g} ×) "
              f"{'met' if met else 'NOT met'}; job {r['job']}")


def main() -> dict:
    with fake_openai("--latency-ms", str(BASE_MS), "--latency-per-call-ms", str(PER_CALL_MS)) as base_url:
        unloaded = run(base_url, "unloaded (1 handler, 1 call)", 1, 1, False)
        fixed, adaptive = [], []
        for i, n in enumerate(SWEEP):  # the adaptive runs among the fixed ones: the same machine load
            fixed.append(run(base_url, f"fixed {n} ({WORKERS} × {n // WORKERS})", WORKERS, max(1, n // WORKERS),
                             False))
            if i % max(1, len(SWEEP) // ADAPTIVE_RUNS) == 0 and len(adaptive) < ADAPTIVE_RUNS:
                adaptive.append(run(base_url, f"adaptive #{len(adaptive) + 1} (ceiling {WORKERS} × 16)", WORKERS,
                                    16, True))
    report(unloaded, fixed, adaptive)
    return {"unloaded": unloaded, "fixed": fixed, "adaptive": adaptive}


if __name__ == "__main__":
    main()
