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
  * fixed-window runs, "fixed-unset", "fixed-3R", "fixed-changes" and the same with
    "-remaining" after "fixed": the fake enforces R per fixed 60-s window (a counter reset at the
    minute, as many gateways and LiteLLM do: a whole minute's budget passes at a window's start,
    then 429s with retry-after = the time to the window's end), without any header, or with
    remaining/reset (reset = seconds to the window's end); goals as the bucket runs;
  * "tokens", "tokens-none": a server limited only in tokens per minute, TPM = BENCH_TPM (bucket,
    one second of burst), OPENAI_RPM and OPENAI_TPM unset, with ``x-ratelimit-remaining-tokens`` /
    ``-reset-tokens`` and no ``-limit-*`` ("tokens": the token rate gauged from them, lua/gauge.lua)
    or no header ("tokens-none", the side-by-side baseline: only the 429s); tokens charged per
    minute (the fake's ``charged_tokens``: prompt + max_tokens of the admitted calls) / TPM over
    [60 s, 120 s] (goal ≥ 0.9) and the 429 share over [30 s, 120 s] (goal ≤ 2 %).
Baseline, the same fake: the limiter of before (no controller: OPENAI_RPM = 3R in force from the
first answer) is not runnable any more; issue 25 measured it from outside at 0.872 of R with 75 %
429s (unset) and 1.000 with 50 % (3R).

    make bench BENCH=aimd
    BENCH_RPM=900 BENCH_RUN_S=120 BENCH_UP_AT_S=60 BENCH_DOWN_AT_S=150 BENCH_END_S=210 make bench BENCH=aimd
    make bench BENCH="aimd --only unset"
    make bench BENCH="aimd --only fixed-unset --only fixed-remaining --only tokens --only tokens-none"
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
TPM = int(os.environ.get("BENCH_TPM", "360000"))

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
        headers: str = "none", mode: str = "bucket", tpm: int = 0) -> dict:
    """One run; ``headers``: what the fake sends, "none" (no x-ratelimit-* at all), "remaining"
    (remaining/reset, no limit) or "stated" (all of them); ``mode``: the fake's "bucket" or
    "fixed" (window); ``tpm``: a server limited in tokens per minute only (no request limit)."""
    fake_call(base_url, "/_fake/config", {"model_limits": {}, "rpm": 0 if tpm else RPM, "tpm": tpm,
                                          "rate_limit_mode": mode, "ratelimit_headers": headers != "none",
                                          "ratelimit_limit_headers": headers == "stated"})
    top = max([RPM, *(rpm for _, rpm in schedule)])
    # enough work not to run out before stop_at (a fixed window passes up to two minutes' budget in
    # one minute across a window's turn), in a file small enough to be ingested at once (1 MB: the
    # benchmark runs no ingest function)
    urls = min(9000, round(top / 60 * stop_at * (2.2 if mode == "fixed" else 1.2)))
    done = sampled_run(base_url, "aimd", label, urls, ceiling,
                       lambda model, stop_file: ScheduleSampler(base_url, model, schedule, stop_at, stop_file))
    job_id, model, sampler, stats, wall, series = (done[k] for k in ("job_id", "model", "sampler", "stats", "wall",
                                                                     "series"))
    from chalicelib import deps

    limits = deps.rate_limiter().limits(model)
    return {"label": label, "ceiling": ceiling, "model": model, "series": series, "changes": sampler.changes,
            "tpm": tpm, "job": job_counts(job_id), "wall_s": wall, "limits": limits, "urls": urls,
            "all_429_n": (stats["rate_limited"], stats["requests"])}


def steady(out: dict) -> dict:
    """Rate / R (a token-limited run: tokens charged per minute / TPM) and the 429 share."""
    series = out["series"]
    end = min(RUN_S, series.end)
    share, limited, calls = series.share_429(SHARE_FROM_S, end)
    rate = (series.per_minute(RATE_FROM_S, end, "tokens") / out["tpm"] if out["tpm"]
            else series.per_minute(RATE_FROM_S, end) / RPM)
    out.update(rate=rate, share=share, share_n=(limited, calls), span_end=end,
               calls_per_min=series.per_minute(RATE_FROM_S, end),
               met=rate >= GOAL_UTILIZATION and share <= GOAL_SHARE_429)
    return out


def follow(out: dict, goal: float = GOAL_UTILIZATION, fixed: bool = False) -> dict:
    """Each change: seconds until the trailing 10-s average is ≥ goal × the new limit (goal: within
    FOLLOW_S), the rate / new limit from FOLLOW_S after it to the next change, the 429 share. A
    fixed window passes a minute's budget in bursts, so no 10-s average says anything there: the
    goal is then the rate / new limit over the whole minute from FOLLOW_S after the change."""
    series, changes = out["series"], out["changes"]
    out["goal"], out["fixed"] = goal, fixed
    rows = []
    for i, (at, rpm) in enumerate(changes):
        nxt = changes[i + 1][0] if i + 1 < len(changes) else series.end
        recovery = None if fixed else trailing_recovery(series, at, nxt, goal * rpm)
        until = min(nxt, at + FOLLOW_S + 60.0) if fixed else nxt
        after = series.per_minute(at + FOLLOW_S, until) / rpm if until > at + FOLLOW_S else None
        share, limited, calls = series.share_429(at, nxt)
        rows.append({"at": at, "rpm": rpm, "recovery": recovery, "after": after, "share": share,
                     "share_n": (limited, calls), "span": (at + FOLLOW_S, until)})
    out["follow"] = rows
    if fixed:
        out["met"] = bool(rows) and all(r["after"] is not None and r["span"][1] - r["span"][0] >= 59.0
                                        and r["after"] >= goal for r in rows)
    else:
        out["met"] = bool(rows) and all(r["recovery"] is not None and r["recovery"] <= FOLLOW_S for r in rows)
    return out


def report(results: dict) -> None:
    print(f"\nRate found from 429s: fake provider at R = {RPM} RPM ({LATENCY_MS} ms latency, bucket with 1 s of "
          f"burst, rejected calls counted), no x-ratelimit-* header (\"remaining\": only remaining/reset); "
          f"{WORKERS} processes × 16 in flight")
    for key in STEADY:
        out = results.get(key)
        if out:
            of = f"tokens / TPM {TPM}" if out["tpm"] else "rate / R"
            print(f"  {out['label']:28} {of} [{RATE_FROM_S:.0f} s, {out['span_end']:.0f} s] {out['rate']:.3f}   "
                  f"429 share [{SHARE_FROM_S:.0f} s, {out['span_end']:.0f} s] {out['share']:.2%} "
                  f"({out['share_n'][0]} of {out['share_n'][1]})   goals {'met' if out['met'] else 'NOT met'}")
            print(f"    whole run: {out['all_429_n'][0]} 429s of {out['all_429_n'][1]} calls; job {out['job']}; "
                  f"limits at the end {out['limits']['in_force']} ({out['limits']['how']['rpm']}, "
                  f"found {out['limits']['found']}); {out['calls_per_min']:.0f} calls/min")
    for ours, base in (("remaining", "unset"), ("fixed-remaining", "fixed-unset"), ("tokens", "tokens-none")):
        if results.get(ours) and results.get(base):
            print(f"  {ours} ÷ {base}: rate {results[ours]['rate'] / results[base]['rate']:.3f}, 429 share "
                  f"{results[ours]['share']:.2%} vs {results[base]['share']:.2%}")
    for key in CHANGES:
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
        how = "; a fixed window: over the minute from then" if out["fixed"] else ""
        print(f"    goal (≥ {out['goal']} of the new limit within {FOLLOW_S:.0f} s of each change{how}): "
              f"{'met' if out['met'] else 'NOT met'}")


# kind -> (label, OPENAI_RPM as a multiple of R, headers the fake sends, its mode, token-limited)
STEADY = {
    "unset": ("OPENAI_RPM unset", 0, "none", "bucket", False),
    "3R": ("OPENAI_RPM = 3R", 3, "none", "bucket", False),
    "remaining": ("remaining/reset only, unset", 0, "remaining", "bucket", False),
    "fixed-unset": ("fixed window, unset", 0, "none", "fixed", False),
    "fixed-3R": ("fixed window, OPENAI_RPM = 3R", 3, "none", "fixed", False),
    "fixed-remaining": ("fixed window, remaining/reset", 0, "remaining", "fixed", False),
    "fixed-remaining-3R": ("fixed window, remaining/reset, 3R", 3, "remaining", "fixed", False),
    "tokens": ("TPM only, remaining/reset", 0, "remaining", "bucket", True),
    "tokens-none": ("TPM only, no header", 0, "none", "bucket", True),
}
# kind -> (label, headers, mode, goal): R doubled at UP_AT_S, halved back at DOWN_AT_S, OPENAI_RPM unset
CHANGES = {
    "changes": ("R doubled, then halved (unset)", "none", "bucket", GOAL_UTILIZATION),
    "remaining-changes": ("R doubled, then halved (remaining/reset)", "remaining", "bucket", GOAL_UTILIZATION),
    "stated-changes": ("R doubled, then halved (limit stated)", "stated", "bucket", 0.95),
    "fixed-changes": ("fixed window: R doubled, then halved", "none", "fixed", GOAL_UTILIZATION),
    "fixed-remaining-changes": ("fixed window, remaining/reset: R doubled, then halved", "remaining", "fixed", 0.95),
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.aimd")
    parser.add_argument("--only", choices=(*STEADY, *CHANGES), action="append",
                        help="run only these (repeatable); default all")
    args = parser.parse_args(argv)
    only = args.only or [*STEADY, *CHANGES]
    results: dict = {}
    with fake_openai("--latency-ms", LATENCY_MS, "--rpm", str(RPM), "--no-ratelimit-headers") as base_url:
        for kind in only:
            try:
                results[kind] = run_kind(base_url, kind)
            except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others' figures
                print(f"  {kind}: the run failed ({type(exc).__name__}: {exc})", flush=True)
                continue
            report({kind: results[kind]})  # each run's figures as soon as it is done
    report(results)
    return results


def run_kind(base_url: str, kind: str) -> dict:
    if kind in STEADY:
        label, times, headers, mode, tokens = STEADY[kind]
        return steady(run(base_url, label, times * RPM, [], RUN_S, headers=headers, mode=mode,
                          tpm=TPM if tokens else 0))
    label, headers, mode, goal = CHANGES[kind]
    fixed = mode == "fixed"  # a minute from FOLLOW_S after the halving, too
    end = max(END_S, DOWN_AT_S + FOLLOW_S + 62.0) if fixed else END_S
    return follow(run(base_url, label, 0, [(UP_AT_S, 2 * RPM), (DOWN_AT_S, RPM)], end, headers=headers, mode=mode),
                  goal=goal, fixed=fixed)


if __name__ == "__main__":
    main()
