"""How many calls to one model may be in flight at once, found from their latency (pure: no I/O,
the clock passed in).

Why: a server limited by capacity, not rate (a self-hosted vLLM, a busy gateway) states no limit
and answers no 429; it answers slower the more calls it has in flight. Its throughput
n / latency(n) keeps rising a little with n while the latency grows in proportion, so "as many
as allowed" (CHUNK_CONCURRENCY per handler) only makes every call slow. The limit wanted is the
knee: the most calls in flight while the latency stays under twice the server's unloaded latency
(for a latency base + k·n, Kleinrock's power throughput / latency is highest at n = base / k,
where the latency is 2 × base).

Measures (Vegas-style, against a baseline):
  * a window's latency is the first quartile of its answers' (``QUANTILE``, from a histogram
    the handlers pool): what the client measures is the server's latency plus its own waits (a
    thread waiting for a CPU on a loaded machine), which only lengthen calls, and few of them
    move a low quantile while they move the mean (the caller measures the HTTP exchange itself,
    not the SDK's work around it: ``gate.Call.answered``);
  * the smoothed latency weighs each window by its answers (the past as ``SMOOTH_SAMPLES`` at
    most); the baseline, the latency with almost nothing queued, is the least smoothed latency,
    but only once ``BASELINE_SAMPLES`` answers are behind it (until then it follows it: the
    first window, at one call in flight, needs FIRST_WINDOW_SAMPLES × ``min_samples`` answers,
    and a noisy server's lucky first window would otherwise set the target low for good);
  * the delay is the window's latency less the baseline; its target is (``tolerance`` − 1) ×
    the baseline (1.75, the hold band 0.9 of it: with the latency measured at the HTTP exchange
    the baseline holds little of the client's overhead, and at 1.7 and 0.8 a quiet machine held
    6 calls against a server whose knee is 6.7 and whose latency is 2 × at 8, 0.87 of the
    throughput of 8; these hold 7–8 in the simulator with up to 20 ms of overhead, p95 ≤ 1.91 ×,
    bench/RESULTS.md).

One decision per window (``window_rtts`` × the baseline, at least ``min_samples`` answers):
  * a 429 or a timeout in the window: limit × ``drop_factor`` (overload whatever the latency);
  * delay > target: cut to where the delay would meet the target if it grows in proportion to
    the calls queued, 1 + (limit − 1) × target / delay (``at_target``), at most by half;
  * delay ≤ ``hold`` × target and the limit used (some handler had all its slots busy): grow.
    In slow start (from the first call, or again after ``calm_windows`` quiet windows in a row,
    so a noisy window that ended it costs a few windows) double while the delay stays under
    ``slow_start_exit`` × target (a rate-limited server whose latency never grows reaches the
    ceiling in a few windows); else step half the way to ``at_target``, at least 1 and at most
    √limit (fast far below the knee, careful near it). Never in the window right after a rise
    (it still holds answers to calls sent before it: doubling on those overshot to 16 calls in
    the bench before the latency of 8 was seen), unless in slow start with a delay under
    ``FLAT`` × target (a latency that does not grow at all: a rate-limited server's ceiling is
    reached sooner);
  * between the two the limit holds, so it does not swing around the target;
  * always within [``floor``, ``ceiling``]; the caller holds the ceiling (CHUNK_CONCURRENCY ×
    handlers) and the floor (1: a job always moves).

A server that states its rate budget (``x-ratelimit-limit-*``, or ``-remaining-*`` / ``-reset-*``:
OpenAI-compatible clouds, gateways, Azure) is metered by rate: the rate limiter paces its calls and
its latency follows the answers' length, not our calls in flight (a cloud's capacity is not ours to
fill). Holding it to one call while a baseline is measured only slowed every job's start (12
answers one after another: ~30 s at 2 s a call, and a 16-row job on a slow server took 16 of
them). So the first window with an answer that states a budget is decided at once and the limit
is the ceiling while answers keep stating one (``State.metered``); a window of answers that state
none ends it, and the server is measured afresh from one call.

The least latency only falls: a server whose unloaded latency grows for good (other tenants
loading a shared vLLM, a heavier model behind the same name) would keep a target too low for it,
the limit cut far below its new knee (latency × 1.5 at every n: held at ~2 calls instead of ~7;
× 4: at the floor). So the unloaded latency is measured again (Netflix concurrency-limits' Vegas
probe, adapted), once slow start is over and the baseline established, every ``PROBE_RTTS`` ×
the baseline (~30 s at 115 ms: the probe's cost is in proportion to the baseline, so the
interval is too; 0.5–1.7 % of the throughput in the simulator) and whenever a cut reaches the
floor (one slot):
  * the shared limit is held at one call in flight for two windows (``State.probe``; ``slots``
    is 1 while ``limit`` keeps the limit in force before): the first is not measured (it holds
    answers to calls sent before the drop, as the window after a rise is not grown on), the
    second (``min_samples`` answers at one call) gives the unloaded latency, its first quartile;
  * above the baseline it replaces it (and the smoothed latency); below, it halves the gap (the
    least of 4 answers from a noisy server is often lucky), unless a window of several calls in
    flight was already under the baseline / ``tolerance``: that proves the server faster (its
    latency at load is under the unloaded one), begins a probe at once, and its measure is taken
    whole (else the limit would keep the latency at 1.75 × a stale baseline);
  * the limit returns to what it was, not scaled by the baseline's move: the knee base / k does
    not follow the latency's ratio (a server slower × 1.5 at every n has its knee where it was),
    and the usual steps take it from there; the window after it is not grown on (``grew``);
  * at the floor the latency measured is unloaded already: a due probe measures the next window
    without a drop (it costs nothing there).

``State`` is what the handlers of a model share (through Redis, ``ratelimit.gate``), ``Window``
what they measured since the last decision; ``decide`` turns both into the next state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

TOLERANCE = 1.75  # target: mean latency ≤ this × the baseline, i.e. a delay ≤ (this − 1) × the baseline
HOLD = 0.9  # between this share of the target delay and the target, the limit holds
SLOW_START_EXIT = 0.4  # slow start doubles while the delay is under this share of the target
FLAT = 0.1  # in slow start, a delay under this share of the target allows a doubling right after one
CALM_WINDOWS = 3  # quiet windows in a row (delay under the slow-start share) that restart slow start
DROP_FACTOR = 0.7
MAX_CUT = 0.5
WINDOW_RTTS = 2.0
MIN_WINDOW_S = 0.1
MIN_SAMPLES = 4
FIRST_WINDOW_SAMPLES = 3  # × MIN_SAMPLES
INITIAL_LIMIT = 1.0
SMOOTH_SAMPLES = 24  # the smoothed latency weighs each window by its answers, the past as this many at most
BASELINE_SAMPLES = 12  # the baseline is the least smoothed latency once this many answers are behind it
PROBE_RTTS = 250  # the unloaded latency is measured again every this many × the baseline
PROBE_DRAIN, PROBE_MEASURE = 1, 2  # State.probe: the window after the drop (not measured), the measured one


@dataclass(frozen=True)
class State:
    limit: float = INITIAL_LIMIT
    min_rtt: float = 0.0  # the baseline: least window mean latency, s (0: none yet)
    rtt: float = 0.0  # the windows' latencies smoothed, s
    weight: float = 0.0  # answers behind ``rtt`` (at most SMOOTH_SAMPLES)
    decided_at: float = 0.0  # clock of the last decision
    probing: bool = True  # slow start: doubling per window
    calm: int = 0  # quiet windows in a row since slow start ended
    grew: bool = False  # the last decision raised the limit (the next window only holds or cuts)
    metered: bool = False  # the server states its rate budget: the limit is the ceiling
    probe: int = 0  # measuring the unloaded latency at one call (PROBE_DRAIN, PROBE_MEASURE; 0: not)
    probe_at: float = 0.0  # clock of the next probe (0: none planned yet; in a probe: the server got faster)

    def slots(self) -> int:
        """Calls in flight this limit allows (at least 1; 1 while probing the unloaded latency)."""
        return 1 if self.probe else max(1, math.floor(self.limit + 1e-9))

    def target(self, tolerance: float = TOLERANCE) -> float:
        return tolerance * self.min_rtt


BUCKET_BASE_S = 0.001  # latency histogram: bucket i holds latencies in [1 ms × GROWTH^i, 1 ms × GROWTH^(i+1))
BUCKET_GROWTH = 1.04
QUANTILE = 0.25  # the window's latency is its first quartile: a loaded machine's waits only lengthen calls


def bucket(latency: float) -> int:
    """The histogram bucket of a latency (s)."""
    return max(0, int(math.log(max(latency, BUCKET_BASE_S) / BUCKET_BASE_S) / math.log(BUCKET_GROWTH)))


@dataclass(frozen=True)
class Window:
    samples: int = 0  # answered calls
    rtt_sum: float = 0.0  # their latencies, s
    saturated: bool = False  # a handler had every slot busy
    drops: int = 0  # 429s and timeouts
    buckets: Mapping[int, int] = field(default_factory=dict)  # {bucket: answers}
    stated: int = 0  # answers (measured or not) that stated the server's rate budget
    unstated: int = 0  # answers that stated none

    @classmethod
    def of(cls, latency: float) -> Window:
        return cls(1, latency, buckets={bucket(latency): 1})

    @classmethod
    def told(cls, stated: bool) -> Window:
        """What one answer said of the server's rate budget."""
        return cls(stated=1) if stated else cls(unstated=1)

    def mean(self) -> float:
        return self.rtt_sum / self.samples if self.samples else 0.0

    def quantile(self, q: float = QUANTILE) -> float:
        """The latency under which a share `q` of the answers fell (the middle of its bucket);
        the mean if no histogram was kept."""
        total = sum(self.buckets.values())
        if not total:
            return self.mean()
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= q * total:
                return BUCKET_BASE_S * BUCKET_GROWTH ** (index + 0.5)
        return self.mean()

    def add(self, other: Window) -> Window:
        merged = dict(self.buckets)
        for index, count in other.buckets.items():
            merged[index] = merged.get(index, 0) + count
        return Window(self.samples + other.samples, self.rtt_sum + other.rtt_sum,
                      self.saturated or other.saturated, self.drops + other.drops, merged,
                      self.stated + other.stated, self.unstated + other.unstated)

    def metered(self, before: bool) -> bool:
        """Whether the server is metered by rate after this window (`before`: it was): any answer
        stating a budget says so; only answers stating none say it is not."""
        return self.stated > 0 if self.stated or self.unstated else before


@dataclass(frozen=True)
class Params:
    ceiling: float = 16.0
    floor: float = 1.0
    tolerance: float = TOLERANCE
    drop_factor: float = DROP_FACTOR
    window_rtts: float = WINDOW_RTTS
    min_window_s: float = MIN_WINDOW_S
    min_samples: int = MIN_SAMPLES
    hold: float = HOLD
    slow_start_exit: float = SLOW_START_EXIT
    calm_windows: int = CALM_WINDOWS

    def window_s(self, state: State) -> float:
        rtts = 1.0 if state.probing else self.window_rtts  # slow start: once per round trip
        return max(self.min_window_s, rtts * (state.min_rtt or state.rtt))


def due(state: State, window: Window, now: float, params: Params) -> bool:
    """Whether the window holds enough to decide on: a drop, or news of the server's rate budget,
    at once; else its time and samples."""
    if window.drops or window.metered(state.metered) != state.metered:
        return now - state.decided_at >= params.min_window_s
    first = 1 if state.min_rtt else FIRST_WINDOW_SAMPLES  # the first window sets the baseline: more samples
    return window.samples >= first * params.min_samples and now - state.decided_at >= params.window_s(state)


def at_target(limit: float, delay: float, target: float) -> float:
    """The limit whose delay would be `target`, if the delay grows in proportion to the calls
    queued (limit − 1: one call in flight queues behind none)."""
    return 1 + (limit - 1) * target / delay if delay > 0 else math.inf


def decide(state: State, window: Window, now: float, params: Params) -> State:
    """The next state from the window just closed (call when ``due``)."""
    if state.metered and not window.metered(True):  # it no longer states a budget: measured afresh
        return State(decided_at=now)
    if state.probe and not window.drops and not window.metered(state.metered):
        return _probe(state, window, now)
    if state.probe:  # a drop ends it (overload: the usual cut), the next one planned as after a probe
        state = replace(state, probe=0, probe_at=now + PROBE_RTTS * state.min_rtt)
    limit = state.limit
    mean = window.quantile()
    weight = state.weight if state.rtt else 0.0
    smooth = (state.rtt * weight + mean * window.samples) / (weight + window.samples) if mean else state.rtt
    weight = min(SMOOTH_SAMPLES, weight + (window.samples if mean else 0))
    # until enough answers are behind it the baseline follows the smoothed latency (a first window
    # of a few answers from a noisy server may be lucky); then it is the least of it
    base = min(state.min_rtt, smooth) if state.min_rtt and state.weight >= BASELINE_SAMPLES else smooth
    target = (params.tolerance - 1) * base
    delay = max(0.0, mean - base) if mean else 0.0
    quiet = delay <= params.slow_start_exit * target and not window.drops
    grow = window.saturated and delay <= params.hold * target and not window.drops
    probing = state.probing and quiet  # a window past the slow-start share ends it
    calm = state.calm + 1 if grow and quiet and not probing else 0
    if window.metered(state.metered):  # metered by rate: the limiter paces it, the gate holds the ceiling
        return replace(state, limit=params.ceiling, min_rtt=base, rtt=smooth, weight=weight, decided_at=now,
                       probing=False, calm=0, grew=False, metered=True, probe=0)
    if calm >= params.calm_windows:  # quiet again: that window ended slow start too early
        probing, calm = True, 0
    if window.drops:
        limit *= params.drop_factor
    elif mean and delay > target:
        limit = max(limit * MAX_CUT, at_target(limit, delay, target))
    elif grow and state.grew and not (probing and delay <= FLAT * target):
        pass  # the window after a rise still holds answers to calls sent before it
    elif grow and probing:
        limit *= 2
    elif grow:
        limit += min(math.sqrt(limit), max(1.0, (at_target(limit, delay, target) - limit) / 2))
    limit = min(params.ceiling, max(params.floor, limit))
    new = replace(state, limit=limit, min_rtt=base, rtt=smooth, weight=weight, decided_at=now, probing=probing,
                  calm=calm, grew=limit > state.limit)
    return _plan_probe(new, state, now, 0 < mean * params.tolerance < state.min_rtt and state.slots() > 1)


def _probe(state: State, window: Window, now: float) -> State:
    """A window of the probe of the unloaded latency (``state.probe``): the first is passed over,
    the second measured (a drop ends the probe before: overload, the usual cut). A higher latency
    replaces the baseline; a lower one only halves the gap (the least of 4 answers from a noisy
    server is often lucky: 0.61 s against a baseline of 0.82 s in the simulator, which cut the
    limit by a third), unless a loaded window proved the baseline too high (``probe_at`` 0)."""
    if state.probe == PROBE_DRAIN:
        return replace(state, probe=PROBE_MEASURE, decided_at=now)
    unloaded = window.quantile() or state.min_rtt
    if unloaded < state.min_rtt and state.probe_at:
        unloaded = (unloaded + state.min_rtt) / 2
    restored = replace(state, probe=0)
    return replace(restored, probe_at=now + PROBE_RTTS * unloaded, decided_at=now, min_rtt=unloaded,
                   rtt=unloaded, grew=restored.slots() > 1 or state.grew)


def _plan_probe(new: State, old: State, now: float, fell: bool) -> State:
    """The next probe of the unloaded latency: planned once the baseline is established, begun when
    due (slow start over; at the floor measured at once: nothing to drain), when a cut reaches the
    floor, or at once when a window of more than one call was faster than the baseline by more than
    the target's margin (`fell`: the server got faster; ``probe_at`` 0 marks it)."""
    if not new.min_rtt or old.weight < BASELINE_SAMPLES:  # the baseline not yet the least latency
        return new
    if fell:
        return replace(new, probe=PROBE_DRAIN, probe_at=0.0)
    if not new.probe_at:
        return replace(new, probe_at=now + PROBE_RTTS * new.min_rtt)
    if new.slots() == 1 and old.slots() > 1:
        return replace(new, probe=PROBE_DRAIN)
    if now >= new.probe_at and not new.probing:
        return replace(new, probe=PROBE_DRAIN if new.slots() > 1 else PROBE_MEASURE)
    return new


def share(limit_slots: int, handlers: list[str], me: str, ceiling: int) -> int:
    """This handler's part of the model's slots: an equal split, the remainder to the first
    handlers in order of id (so the parts add up to the limit), at most the handler's ceiling.
    A part may be 0 when there are fewer slots than handlers: the other handlers do the calls."""
    ids = sorted(set(handlers) | {me})
    base, extra = divmod(max(0, limit_slots), len(ids))
    return min(ceiling, base + (1 if ids.index(me) < extra else 0))
