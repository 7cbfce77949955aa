"""The rate found from 429s: how close the pipeline runs to a provider that states no limit at
all, how few of its calls are refused, and how fast it follows when that limit changes.

A fake OpenAI server (own process) enforces R requests per minute for the job's model (token
bucket, one second of burst, rejected calls counted, like OpenAI) with 200 ms latency, and sends
no ``x-ratelimit-*`` header at all (as vLLM, LiteLLM or Ollama): the limiter cannot learn R, it
has to find it from the 429s (lua/grow.lua, lua/cooldown.lua). A fresh RATELIMIT_PREFIX per run,
so every run starts from the cautious start. One job, 4 chunk handlers in 4 processes, 16 calls in
flight each. Rates are read from the fake's counters (``bench.learned.Sampler``/``Series``: time 0
is the first call).

Runs and figures (goals from issue 25):
  * "unset": OPENAI_RPM unset, RUN_S seconds: rate / R over [60 s, 120 s] (goal ≥ 0.9) and the
    share of calls answered 429 over [30 s, 120 s] (goal ≤ 2 %);
  * "3R": the same with OPENAI_RPM = 3R (a ceiling far over the real limit);
  * "changes": OPENAI_RPM unset, R doubled at UP_AT s and halved back at DOWN_AT s: seconds from
    each change until the trailing 10-s average is ≥ 0.9 of the new limit (goal ≤ 30 s), the rate
    / new limit over [change + 30 s, next change), and the 429 share after each change;
  * "remaining": as "unset", but the fake sends ``x-ratelimit-remaining-requests`` and
    ``-reset-requests`` (no ``-limit-*``, as gateways and Azure do): the rate is gauged from them
    (lua/gauge.lua) besides the 429s (goals as "unset");
  * "remaining-changes": "changes" with those headers;
  * "stated-changes": "changes" with every header, the limit stated (``x-ratelimit-limit-*``): the
    halving with headers that bench/learned.py (the doubling) lacks; goal ≥ 0.95 of the new limit
    within 30 s of each change.
Baseline, the same fake: the limiter of before (no controller: OPENAI_RPM = 3R in force from the
first answer) is not runnable any more; issue 25 measured it from outside at 0.872 of R with 75 %
429s (unset) and 1.000 with 50 % (3R).

    make bench BENCH=aimd
    BENCH_RPM=900 BENCH_RUN_S=120 BENCH_UP_AT_S=60 BENCH_DOWN_AT_S=150 BENCH_END_S=210 make bench BENCH=aimd
    make bench BENCH="aimd --only unset"
"""

from __future__ import annotations

import argparse
import os
import time

from bench.common import fake_call, fake_openai, job_counts
from bench.learned import SAMPLE_EVERY_S, WORKERS, Sampler, Series, sampled_run

RPM = int(os.environ.get("BENCH_RPM", "900"))
RUN_S = float(os.environ.get("BENCH_RUN_S", "120"))
UP_AT_S = float(os.environ.get("BENCH_UP_AT_S", "60"))
DOWN_AT_S = float(os.environ.get("BENCH_DOWN_AT_S", "150"))
END_S = float(os.environ.get("BENCH_END_S", "210"))

LATENCY_MS = "200"
RATE_FROM_S, SHARE_FROM_S = 60.0, 30.0
FOLLOW_S = 30.0  # a change must be followed within this
WINDOW_S = 10.0
GOAL_UTILIZATION, GOAL_SHARE_429 = 0.9, 0.02


class ScheduleSampler(Sampler):
    """``bench.learned.Sampler`` with a schedule of limits instead of one doubling: at each
    (seconds after the first call, rpm) the model's limit becomes rpm."""

    def __init__(self, base_url: str, model: str, schedule: list[tuple[float, int]], stop_at: float,
                 stop_file: str) -> None:
        super().__init__(base_url, model, None, stop_at, stop_file)
        self.schedule = list(schedule)
        self.changes: list[tuple[float, int]] = []  # (seconds after the first call, rpm), as done

    def sample(self) -> dict:
        stats = super().sample()
        if self.first is not None and self.schedule and time.time() - self.first >= self.schedule[0][0]:
            _, rpm = self.schedule.pop(0)
            before = time.time()
            fake_call(self.base_url, "/_fake/config", {"model_limits": {self.model: {"rpm": rpm}}})
            self.changes.append(((before + time.time()) / 2 - self.first, rpm))
        return stats


def trailing_recovery(series: Series, start: float, end: float, threshold: float) -> float | None:
    """Seconds after `start` until the trailing 10-s average first reaches `threshold` (before `end`)."""
    t = start
    while t <= min(end, series.end):
        if series.per_minute(t - WINDOW_S, t) >= threshold:
            return t - start
        t += SAMPLE_EVERY_S / 2
    return None


def run(base_url: str, label: str, ceiling: int, schedule: list[tuple[float, int]], stop_at: float,
        headers: str = "none") -> dict:
    """One run; ``headers``: what the fake sends, "none" (no x-ratelimit-* at all), "remaining"
    (remaining/reset, no limit) or "stated" (all of them)."""
    fake_call(base_url, "/_fake/config", {"model_limits": {}, "rpm": RPM, "ratelimit_headers": headers != "none",
                                          "ratelimit_limit_headers": headers == "stated"})
    top = max([RPM, *(rpm for _, rpm in schedule)])
    urls = round(top / 60 * stop_at * 1.2)
    done = sampled_run(base_url, "aimd", label, urls, ceiling,
                       lambda model, stop_file: ScheduleSampler(base_url, model, schedule, stop_at, stop_file))
    job_id, model, sampler, stats, wall, series = (done[k] for k in ("job_id", "model", "sampler", "stats", "wall",
                                                                     "series"))
    from chalicelib import deps

    limits = deps.rate_limiter().limits(model)
    return {"label": label, "ceiling": ceiling, "model": model, "series": series, "changes": sampler.changes,
            "job": job_counts(job_id), "wall_s": wall, "limits": limits, "urls": urls,
            "all_429_n": (stats["rate_limited"], stats["requests"])}


def steady(out: dict) -> dict:
    series = out["series"]
    end = min(RUN_S, series.end)
    share, limited, calls = series.share_429(SHARE_FROM_S, end)
    out.update(rate=series.per_minute(RATE_FROM_S, end) / RPM, share=share, share_n=(limited, calls), span_end=end,
               met=series.per_minute(RATE_FROM_S, end) / RPM >= GOAL_UTILIZATION and share <= GOAL_SHARE_429)
    return out


def follow(out: dict, goal: float = GOAL_UTILIZATION) -> dict:
    series, changes = out["series"], out["changes"]
    out["goal"] = goal
    rows = []
    for i, (at, rpm) in enumerate(changes):
        nxt = changes[i + 1][0] if i + 1 < len(changes) else series.end
        recovery = trailing_recovery(series, at, nxt, goal * rpm)
        after = series.per_minute(at + FOLLOW_S, nxt) / rpm if nxt > at + FOLLOW_S else None
        share, limited, calls = series.share_429(at, nxt)
        rows.append({"at": at, "rpm": rpm, "recovery": recovery, "after": after, "share": share,
                     "share_n": (limited, calls), "span": (at + FOLLOW_S, nxt)})
    out["follow"] = rows
    out["met"] = bool(rows) and all(r["recovery"] is not None and r["recovery"] <= FOLLOW_S for r in rows)
    return out


def report(results: dict) -> None:
    print(f"\nRate found from 429s: fake provider at R = {RPM} RPM ({LATENCY_MS} ms latency, bucket with 1 s of "
          f"burst, rejected calls counted), no x-ratelimit-* header (\"remaining\": only remaining/reset); "
          f"{WORKERS} processes × 16 in flight")
    for key in ("unset", "3R", "remaining"):
        out = results.get(key)
        if out:
            print(f"  {out['label']:28} rate / R [{RATE_FROM_S:.0f} s, {out['span_end']:.0f} s] {out['rate']:.3f}   "
                  f"429 share [{SHARE_FROM_S:.0f} s, {out['span_end']:.0f} s] {out['share']:.2%} "
                  f"({out['share_n'][0]} of {out['share_n'][1]})   goals {'met' if out['met'] else 'NOT met'}")
            print(f"    whole run: {out['all_429_n'][0]} 429s of {out['all_429_n'][1]} calls; job {out['job']}; "
                  f"limits at the end {out['limits']['in_force']} ({out['limits']['how']['rpm']}, "
                  f"found {out['limits']['found']})")
    ours, base = results.get("remaining"), results.get("unset")
    if ours and base:
        print(f"  remaining/reset ÷ no header: rate {ours['rate'] / base['rate']:.3f}, 429 share "
              f"{ours['share']:.2%} vs {base['share']:.2%}")
    for key in ("changes", "remaining-changes", "stated-changes"):
        out = results.get(key)
        if out:
            report_changes(out)


def report_changes(out: dict) -> None:
    if out:  # (the block below is one change run's report)
        print(f"  {out['label']}: R = {RPM}, then:")
        for r in out["follow"]:
            rec = "—" if r["recovery"] is None else f"{r['recovery']:.1f} s"
            after = "—" if r["after"] is None else f"{r['after']:.3f}"
            print(f"    at {r['at']:6.1f} s → {r['rpm']:5d} RPM: trailing 10-s avg ≥ {out['goal']} of it after {rec}; "
                  f"rate / it over [{r['span'][0]:.0f} s, {r['span'][1]:.0f} s] {after}; "
                  f"429 share until the next change {r['share']:.2%} ({r['share_n'][0]} of {r['share_n'][1]})")
        series = out["series"]
        per_5 = [series.per_minute(t, t + 5) / RPM for t in range(0, int(series.end) - 4, 5)]
        print("    rate / R per 5 s: " + " ".join(f"{r:.2f}" for r in per_5))
        print(f"    goal (≥ {out['goal']} of the new limit within {FOLLOW_S:.0f} s of each change): "
              f"{'met' if out['met'] else 'NOT met'}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.aimd")
    kinds = ("unset", "3R", "changes", "remaining", "remaining-changes", "stated-changes")
    parser.add_argument("--only", choices=kinds, action="append",
                        help="run only these (repeatable); default all")
    args = parser.parse_args(argv)
    only = args.only or list(kinds)
    results: dict = {}
    with fake_openai("--latency-ms", LATENCY_MS, "--rpm", str(RPM), "--no-ratelimit-headers") as base_url:
        if "unset" in only:
            results["unset"] = steady(run(base_url, "OPENAI_RPM unset", 0, [], RUN_S))
        if "3R" in only:
            results["3R"] = steady(run(base_url, "OPENAI_RPM = 3R", 3 * RPM, [], RUN_S))
        if "changes" in only:
            results["changes"] = follow(run(base_url, "R doubled, then halved (unset)", 0,
                                            [(UP_AT_S, 2 * RPM), (DOWN_AT_S, RPM)], END_S))
        if "remaining" in only:
            results["remaining"] = steady(run(base_url, "remaining/reset only, unset", 0, [], RUN_S,
                                              headers="remaining"))
        changes = [(UP_AT_S, 2 * RPM), (DOWN_AT_S, RPM)]
        if "remaining-changes" in only:
            results["remaining-changes"] = follow(run(base_url, "R doubled, then halved (remaining/reset)", 0,
                                                      changes, END_S, headers="remaining"))
        if "stated-changes" in only:
            results["stated-changes"] = follow(run(base_url, "R doubled, then halved (limit stated)", 0, changes,
                                                   END_S, headers="stated"), goal=0.95)
    report(results)
    return results


if __name__ == "__main__":
    main()
