"""What counting calls per minute costs on the hot path: the shared limiter's acquire script, run
once per LLM call, now also counts the call admitted in the model's and the job's per-second
counters (lua/common.lua `count_call`: a few hash operations inside the same script, no extra
round trip). Measured against the stack's Redis: blocks of BLOCK bookings with counting (the
model's and a job's counter, as every call of a chunk handler) and without (count 0: the script
as before but for the skipped branch), side by side for ROUNDS rounds; the figures are µs per
booking and the ratio counted ÷ not counted (goal: close to 1; an LLM call takes hundreds of ms). The bookings
are on an unlimited model (no ceiling, no cautious start), so nobody waits.

    make bench BENCH=callcount
"""

from __future__ import annotations

import os
import statistics
import time
import uuid

BLOCK = int(os.environ.get("BENCH_BLOCK", "100"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "100"))


def main() -> dict:
    from chalicelib import deps
    from chalicelib.generation.ratelimit import RateLimiter

    limiter = RateLimiter(deps.redis_client(), rpm=0, tpm=0, prefix=f"bench:callcount:{uuid.uuid4().hex}")
    job = str(uuid.uuid4())

    def timed(count: int) -> float:
        started = time.perf_counter()
        for _ in range(BLOCK):
            limiter._book(1, None, "m", count, job if count else None)
        return time.perf_counter() - started

    timed(2)
    timed(0)  # scripts loaded, connection warm
    counted, plain = [], []
    for i in range(ROUNDS):  # blocks side by side, the order alternating: the machine's load drifts
        if i % 2:
            counted.append(timed(2))
            plain.append(timed(0))
        else:
            plain.append(timed(0))
            counted.append(timed(2))
    per = {"counted_us": sum(counted) / (BLOCK * ROUNDS) * 1e6, "plain_us": sum(plain) / (BLOCK * ROUNDS) * 1e6}
    pairs = statistics.median(c / p for c, p in zip(counted, plain, strict=True))
    calls = limiter.calls_per_minute(models=["m"], jobs=[job])
    print(f"\nCalls per minute counting: {ROUNDS} rounds of {BLOCK} bookings each way, side by side, against the "
          "stack's Redis")
    print(f"  acquire script, counting (model + job): {per['counted_us']:.1f} µs per booking")
    print(f"  acquire script, not counting:           {per['plain_us']:.1f} µs per booking")
    print(f"  ratio counted ÷ not counted: {per['counted_us'] / per['plain_us']:.3f} (totals), {pairs:.3f} (median "
          f"of the rounds); counters read back: {calls}")
    print(f"  load average: {os.getloadavg()}")
    return {**per, "median_ratio": pairs}


if __name__ == "__main__":
    main()
