"""Learned limits: how close the pipeline runs to a provider limit it was never told, and how
fast it follows when that limit changes.

A fake OpenAI server (own process) enforces R requests per minute for the job's model (token
bucket, one second of burst, like OpenAI) with 200 ms latency, and states it in
``x-ratelimit-limit-requests`` on every answer. Ours: OPENAI_RPM and OPENAI_TPM empty and a fresh
RATELIMIT_PREFIX, so our Redis limiter starts cautiously (START_RPM) and then paces at what the
answers state. One job, 4 chunks, 4 chunk handlers in 4 processes, 16 calls in flight each.
CHANGE_AT seconds after the first call the fake doubles the model's limit to 2R
(``model_limits``); the run goes on for AFTER seconds more.

The fake's stats give only totals, so this process reads ``/_fake/stats`` every half second and
takes rates from the counters' differences (``ok``: successful calls; ``rate_limited``: 429s;
``requests``: all calls), interpolated linearly between samples, on the wall clock the fake's
``first_request_at`` uses (time 0 = the first call).

Figures (ours):
  * rate / R over [30 s, CHANGE_AT) and the share of calls answered 429 there (goals ≥ 0.95, ≤ 1 %);
  * recovery after the doubling: seconds from the change until the trailing 10-s moving average
    of the rate is ≥ 0.95 × 2R and stays so for 30 s (goal ≤ 60 s; a trailing average needs
    ≥ 9 s even if the rate doubled at once), and the same with forward 10-s windows (when the
    rate itself is back);
  * rate / 2R over the 30 s after the recovery; the 429 share over the whole run.
Baselines, the same job and server: OPENAI_RPM = R (the operator knows the limit; it is then a
ceiling, so the doubling is not followed), stopped AFTER seconds after the change; and
OPENAI_RPM = R/2 (told too low), stopped at CHANGE_AT.

The halving with headers (R → 2R → R, the limit stated) is bench/aimd.py's "stated-changes" run
(its schedule sampler).

    make bench BENCH=learned
    BENCH_RPM=3000 make bench BENCH=learned    # also BENCH_CHANGE_AT_S, BENCH_AFTER_S, BENCH_URLS
    make bench BENCH="learned --skip-half"     # without the R/2 run
"""

from __future__ import annotations

import argparse
import bisect
import os
import tempfile
import threading
import time

from bench.common import fake_call, fake_openai, job_counts, make_job, run_chunks_until, use_fake

RPM = int(os.environ.get("BENCH_RPM", "1200"))
CHANGE_AT_S = float(os.environ.get("BENCH_CHANGE_AT_S", "45"))
AFTER_S = float(os.environ.get("BENCH_AFTER_S", "55"))
# enough work to keep R busy until the change and 2R for AFTER_S after it
URLS = int(os.environ.get("BENCH_URLS", str(round(RPM / 60 * (CHANGE_AT_S + 2 * AFTER_S)))))
WORKERS = 4
LATENCY_MS = "200"
SETTLED_FROM_S = 30.0  # the goal's "after the first 30 s"
WINDOW_S = 10.0  # the moving average
HOLD_S = 30.0  # the recovered rate must hold this long; utilization of 2R is taken over it
SAMPLE_EVERY_S = 0.5
GOAL_UTILIZATION, GOAL_SHARE_429, GOAL_RECOVERY_S = 0.95, 0.01, 60.0
ENV_PREFIXES = ("OPENAI_", "CHUNK_", "RATELIMIT_")


class Sampler(threading.Thread):
    """Reads the fake's counters every SAMPLE_EVERY_S; doubles the model's limit `change_at` s
    after the first call (if given); creates `stop_file` `stop_at` s after it (if given)."""

    def __init__(self, base_url: str, model: str, change_at: float | None, stop_at: float | None,
                 stop_file: str) -> None:
        super().__init__(daemon=True)
        self.base_url, self.model, self.change_at, self.stop_at, self.stop_file = (
            base_url, model, change_at, stop_at, stop_file)
        self.samples: list[tuple[float, int, int, int, int]] = []  # (wall time, requests, ok, rate_limited, tokens)
        self.first: float | None = None
        self.changed_at: float | None = None
        self.finished = threading.Event()

    def sample(self) -> dict:
        before = time.time()
        stats = fake_call(self.base_url, "/_fake/stats")
        self.samples.append(((before + time.time()) / 2, stats["requests"], stats["ok"], stats["rate_limited"],
                             stats.get("charged_tokens", 0)))
        if stats["first_request_at"] is not None:
            self.first = stats["first_request_at"]
        return stats

    def run(self) -> None:
        while not self.finished.is_set():
            tick = time.monotonic()
            self.sample()
            if self.first is not None:
                elapsed = time.time() - self.first
                if self.change_at is not None and self.changed_at is None and elapsed >= self.change_at:
                    before = time.time()
                    fake_call(self.base_url, "/_fake/config", {"model_limits": {self.model: {"rpm": 2 * RPM}}})
                    self.changed_at = (before + time.time()) / 2 - self.first
                if self.stop_at is not None and elapsed >= self.stop_at and not os.path.exists(self.stop_file):
                    open(self.stop_file, "w").close()
            self.finished.wait(max(0.0, SAMPLE_EVERY_S - (time.monotonic() - tick)))


class Series:
    """The fake's cumulative counters against seconds since the first call, interpolated."""

    def __init__(self, samples: list[tuple[float, int, int, int, int]], first: float) -> None:
        self.t = [s[0] - first for s in samples]
        self.columns = {"requests": [s[1] for s in samples], "ok": [s[2] for s in samples],
                        "rate_limited": [s[3] for s in samples], "tokens": [s[4] for s in samples]}
        self.end = self.t[-1]

    def at(self, name: str, t: float) -> float:
        values = self.columns[name]
        i = bisect.bisect_left(self.t, t)
        if i <= 0:
            return values[0] if t >= self.t[0] else 0.0
        if i >= len(self.t):
            return values[-1]
        t0, t1 = self.t[i - 1], self.t[i]
        return values[i - 1] + (values[i] - values[i - 1]) * (t - t0) / max(1e-9, t1 - t0)

    def per_minute(self, a: float, b: float, column: str = "ok") -> float:
        """Successful calls (``column="tokens"``: tokens the provider charged for them) per minute over [a, b]."""
        return (self.at(column, b) - self.at(column, a)) * 60 / max(1e-9, b - a)

    def share_429(self, a: float, b: float) -> tuple[float, int, int]:
        calls = self.at("requests", b) - self.at("requests", a)
        limited = self.at("rate_limited", b) - self.at("rate_limited", a)
        return limited / max(1.0, calls), round(limited), round(calls)

    def recovery(self, start: float, threshold: float, trailing: bool) -> float | None:
        """Seconds after `start` from which every 10-s window (trailing: ending at t; else starting at
        t) over the next HOLD_S has a rate ≥ threshold; None if not within the data."""
        step = SAMPLE_EVERY_S / 2

        def ok(t: float) -> bool:
            a, b = (t - WINDOW_S, t) if trailing else (t, t + WINDOW_S)
            return self.per_minute(a, b) >= threshold

        span = HOLD_S if trailing else HOLD_S - WINDOW_S
        x = 0.0
        while start + x + span + (0 if trailing else WINDOW_S) <= self.end:
            t = start + x
            failing = next((u for u in _steps(t, t + span, step) if not ok(u)), None)
            if failing is None:
                return x
            x = failing - start + step
        return None


def _steps(a: float, b: float, step: float):
    t = a
    while t <= b + 1e-9:
        yield t
        t += step


def sampled_run(base_url: str, bench: str, label: str, urls: int, ceiling: int, make_sampler) -> dict:
    """The harness both limit benchmarks share: a fresh job of `urls` URLs on the fake (its counters
    reset, its config kept), our ceiling OPENAI_RPM = `ceiling` (0: none) and a fresh limiter prefix,
    WORKERS chunk handlers in their own processes until the sampler made by
    ``make_sampler(model, stop_file)`` creates the stop file. -> job, model, sampler, series, wall."""
    fake_call(base_url, "/_fake/reset", {"keep_config": True})
    use_fake(base_url, OPENAI_RPM=str(ceiling) if ceiling else "", OPENAI_TPM="", CHUNK_SIZE=str(-(-urls // WORKERS)),
             CHUNK_CONCURRENCY="16", OPENAI_TIMEOUT_S="10",
             RATELIMIT_PREFIX=f"{os.environ.get('RATELIMIT_PREFIX', 'bench')}:{bench}:{time.time_ns()}")
    from chalicelib import deps
    from chalicelib.adapters import db

    # no long run of digits in the host names: the output guard takes 8+ digits for a phone number
    job_id = make_job(urls, f"{bench}-{''.join(c for c in label if c.isalpha())}")
    model = db.get_job(deps.conn(), job_id)["model"]
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}
    with tempfile.TemporaryDirectory(prefix=f"bench-{bench}-") as tmp:
        sampler = make_sampler(model, os.path.join(tmp, "stop"))
        sampler.start()
        wall = run_chunks_until(job_id, WORKERS, env, sampler.stop_file)
        sampler.finished.set()
        sampler.join()
    stats = sampler.sample()
    if stats["first_request_at"] is None:
        raise RuntimeError(f"the fake received no call in this run (job {job_id}: {job_counts(job_id)})")
    return {"job_id": job_id, "model": model, "sampler": sampler, "stats": stats, "wall": wall,
            "series": Series(sampler.samples, stats["first_request_at"])}


def run(base_url: str, label: str, ceiling: int, change_at: float | None, stop_at: float | None,
        recovery_window: tuple[float, float] | None = None) -> dict:
    """One run: a fresh job of URLS URLs on a fake limited to R, our ceiling OPENAI_RPM = `ceiling`
    (0: none, learn it)."""
    fake_call(base_url, "/_fake/config", {"model_limits": {}, "rpm": RPM})
    done = sampled_run(base_url, "learned", label, URLS, ceiling,
                       lambda model, stop_file: Sampler(base_url, model, change_at, stop_at, stop_file))
    job_id, model, sampler, stats, wall, series = (done[k] for k in ("job_id", "model", "sampler", "stats", "wall",
                                                                     "series"))
    change = sampler.changed_at
    settled_to = change if change is not None else min(CHANGE_AT_S, series.end)
    share, limited, calls = series.share_429(SETTLED_FROM_S, settled_to)
    out = {
        "label": label, "ceiling": ceiling, "model": model, "change_s": change, "job": job_counts(job_id),
        "wall_s": wall, "end_s": series.end,
        "first_30": series.per_minute(0, SETTLED_FROM_S) / RPM,
        "settled": series.per_minute(SETTLED_FROM_S, settled_to) / RPM, "settled_span": (SETTLED_FROM_S, settled_to),
        "settled_429": share, "settled_429_n": (limited, calls),
        "all_429": stats["rate_limited"] / max(1, stats["requests"]),
        "all_429_n": (stats["rate_limited"], stats["requests"]),
        "series": series,
    }
    if change is not None:
        threshold = 0.95 * 2 * RPM
        out["recovery_trailing"] = series.recovery(change, threshold, trailing=True)
        out["recovery_forward"] = series.recovery(change, threshold, trailing=False)
        if recovery_window is None and out["recovery_trailing"] is not None:
            recovery_window = (change + out["recovery_trailing"], change + out["recovery_trailing"] + HOLD_S)
        if recovery_window is not None and recovery_window[1] <= series.end:
            out["after_window"] = recovery_window
            out["after"] = series.per_minute(*recovery_window) / (2 * RPM)
            out["after_429"] = series.share_429(*recovery_window)
    return out


def _fmt(value: object, fmt: str) -> str:
    return "—" if value is None else fmt.format(value)


def _ratio(a: float | None, b: float | None, fmt: str = "{:.3f}") -> str:
    return "—" if a is None or b is None or b == 0 else fmt.format(a / b)


def report(ours: dict, told: dict, half: dict | None) -> None:
    print(f"\nLearned limits: fake provider at R = {RPM} RPM for {ours['model']} ({LATENCY_MS} ms latency, bucket with "
          f"1 s of burst), {URLS} URLs, {WORKERS} processes × 16 in flight; limit doubled to {2 * RPM} at "
          f"{ours['change_s']:.1f} s (ours) / {told['change_s']:.1f} s (told R)")
    head = f"{'':44}{'ours (not told)':>17}{'told R':>12}{'ours ÷ told R':>15}"
    if half:
        head += f"{'told R/2':>11}"
    print(head)
    a, b = ours["settled_span"]

    def row(label: str, key: str, fmt: str, ratio: bool = True) -> None:
        line = f"{label:44}{_fmt(ours.get(key), fmt):>17}{_fmt(told.get(key), fmt):>12}"
        line += f"{_ratio(ours.get(key), told.get(key)) if ratio else '':>15}"
        if half:
            line += f"{_fmt(half.get(key), fmt):>11}"
        print(line)

    row(f"rate / R, [{a:.0f} s, {b:.1f} s)", "settled", "{:.3f}")
    row(f"429 share, [{a:.0f} s, {b:.1f} s)", "settled_429", "{:.2%}")
    row("rate / R, first 30 s (cautious start)", "first_30", "{:.3f}")
    row("recovery, trailing 10-s avg ≥ 0.95·2R, s", "recovery_trailing", "{:.1f}", ratio=False)
    row("recovery, forward 10-s windows, s", "recovery_forward", "{:.1f}", ratio=False)
    window = ours.get("after_window")
    label = f"rate / 2R, [{window[0]:.1f} s, {window[1]:.1f} s)" if window else "rate / 2R, 30 s after recovery"
    row(label, "after", "{:.3f}")
    row("429 share, whole run", "all_429", "{:.2%}")
    row("seconds, first call → last sample", "end_s", "{:.1f}", ratio=False)
    for run_ in (ours, told, half):
        if run_:
            limited, calls = run_["settled_429_n"]
            print(f"  {run_['label']}: 429s in the settled span {limited} of {calls}; whole run "
                  f"{run_['all_429_n'][0]} of {run_['all_429_n'][1]}; job {run_['job']}; wall {run_['wall_s']:.1f} s")
    series, change = ours["series"], ours["change_s"]
    rates = [series.per_minute(change + k, change + k + 1) / (2 * RPM) for k in range(-3, 10)]
    print("  ours, rate / 2R per second from 3 s before the change: " + " ".join(f"{r:.2f}" for r in rates))
    met = (ours["settled"] >= GOAL_UTILIZATION and ours["settled_429"] <= GOAL_SHARE_429
           and ours.get("recovery_trailing") is not None and ours["recovery_trailing"] <= GOAL_RECOVERY_S
           and ours.get("after") is not None and ours["after"] >= GOAL_UTILIZATION)
    print(f"  goals (≥ {GOAL_UTILIZATION} of R after 30 s, ≤ {GOAL_SHARE_429:.0%} 429s, ≥ {GOAL_UTILIZATION} of 2R "
          f"within {GOAL_RECOVERY_S:.0f} s of the doubling): {'met' if met else 'NOT met'}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.learned")
    parser.add_argument("--skip-half", action="store_true", help="skip the OPENAI_RPM = R/2 baseline")
    args = parser.parse_args(argv)
    with fake_openai("--latency-ms", LATENCY_MS, "--rpm", str(RPM)) as base_url:
        ours = run(base_url, "ours", 0, CHANGE_AT_S, CHANGE_AT_S + AFTER_S + 60)
        offset = None
        if ours.get("after_window"):
            offset = tuple(t - ours["change_s"] for t in ours["after_window"])
        told = run(base_url, "told R", RPM, CHANGE_AT_S, CHANGE_AT_S + AFTER_S)
        if offset is not None and told["change_s"] is not None:  # the same seconds after its change as ours
            window = (told["change_s"] + offset[0], told["change_s"] + offset[1])
            if window[1] <= told["series"].end:
                told["after_window"] = window
                told["after"] = told["series"].per_minute(*window) / (2 * RPM)
        half = None if args.skip_half else run(base_url, "told R/2", RPM // 2, None, CHANGE_AT_S)
    report(ours, told, half)
    return {"ours": ours, "told": told, "half": half}


if __name__ == "__main__":
    main()
