"""How many calls to one model may be in flight at once, found from their latency (pure: no I/O,
the clock passed in).

Why: a server limited by capacity, not rate (a self-hosted vLLM, a busy gateway) states no limit
and answers no 429; it answers slower the more calls it has in flight. Its throughput
n / latency(n) keeps rising a little with n while the latency grows in proportion, so "as many
as allowed" (CHUNK_CONCURRENCY per handler) only makes every call slow. The limit wanted is the
knee: the most calls in flight while the latency stays near the server's unloaded latency. For a
server whose latency grows linearly, base + k·n, the knee by Kleinrock's power
(throughput / latency) is n = base / k, where the latency is 2 × base: past it each added call
buys less throughput than it costs in latency. So the target is ``tolerance`` × the least latency
seen (1.5 by default, under 2 ×: the latency is measured by the client, with its own overhead,
which the target multiplies too, and the limit moves in steps measured a round trip late;
bench/RESULTS.md has 1.7 overshooting on a loaded machine).

The controller (a delay-based AIMD, as TCP Vegas or LEDBAT, one decision per window):
  * a window lasts ``window_rtts`` × the least latency (at least ``min_window_s``) and needs
    ``min_samples`` answers; its mean latency is the signal (a mean of many calls, so one short
    answer does not set the floor), and the least window mean so far is the unloaded latency;
  * mean ≤ ``hold`` × target (0.9), and the limit was used (some handler had all its slots
    busy): grow (between the two the limit holds, so it does not swing around the target). Until
    the latency first goes half the way to the target, double per window (slow start: a
    rate-limited server whose latency never grows reaches the ceiling in a few windows; it
    stops early because the calls of a doubling are only measured a round trip later); after,
    +1 per window;
  * mean > target: cut in proportion, limit × max(0.5, target / mean);
  * a 429 or a timeout in the window: limit × ``drop_factor`` (a sign of overload whatever the
    latency says);
  * always within [``floor``, ``ceiling``]; the caller holds the ceiling (CHUNK_CONCURRENCY ×
    handlers) and the floor (1: a job always moves).

``State`` is what the handlers of a model share (through Redis, ``ratelimit.gate``), ``Window``
what they measured since the last decision; ``decide`` turns both into the next state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

TOLERANCE = 1.5
HOLD = 0.9  # between this share of the target and the target, the limit holds
SLOW_START_EXIT = 0.5  # slow start ends once the latency has gone this share of the way to the target
DROP_FACTOR = 0.7
MAX_CUT = 0.5
WINDOW_RTTS = 2.0
MIN_WINDOW_S = 0.1
MIN_SAMPLES = 4
INITIAL_LIMIT = 1.0


@dataclass(frozen=True)
class State:
    limit: float = INITIAL_LIMIT
    min_rtt: float = 0.0  # least window mean latency, s (0: none yet)
    rtt: float = 0.0  # the last window's mean latency, s
    decided_at: float = 0.0  # clock of the last decision
    probing: bool = True  # slow start: the latency has not passed the target yet

    def slots(self) -> int:
        """Calls in flight this limit allows (at least 1)."""
        return max(1, math.floor(self.limit + 1e-9))

    def target(self, tolerance: float = TOLERANCE) -> float:
        return tolerance * self.min_rtt


@dataclass(frozen=True)
class Window:
    samples: int = 0  # answered calls
    rtt_sum: float = 0.0  # their latencies, s
    saturated: bool = False  # a handler had every slot busy
    drops: int = 0  # 429s and timeouts

    def mean(self) -> float:
        return self.rtt_sum / self.samples if self.samples else 0.0

    def add(self, other: Window) -> Window:
        return Window(self.samples + other.samples, self.rtt_sum + other.rtt_sum,
                      self.saturated or other.saturated, self.drops + other.drops)


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

    def window_s(self, state: State) -> float:
        rtts = 1.0 if state.probing else self.window_rtts  # slow start: once per round trip
        return max(self.min_window_s, rtts * (state.min_rtt or state.rtt))


def due(state: State, window: Window, now: float, params: Params) -> bool:
    """Whether the window holds enough to decide on: a drop at once; else its time and samples."""
    if window.drops:
        return now - state.decided_at >= params.min_window_s
    return window.samples >= params.min_samples and now - state.decided_at >= params.window_s(state)


def decide(state: State, window: Window, now: float, params: Params) -> State:
    """The next state from the window just closed (call when ``due``)."""
    limit = state.limit
    mean = window.mean()
    min_rtt = min(state.min_rtt, mean) if state.min_rtt and mean else (mean or state.min_rtt)
    probing = state.probing
    target = params.tolerance * min_rtt
    if window.drops:
        limit, probing = limit * params.drop_factor, False
    elif mean and mean > target:
        limit, probing = limit * max(MAX_CUT, target / mean), False
    elif window.saturated and (probing or mean < params.hold * target):
        if probing and mean > min_rtt * (1 + SLOW_START_EXIT * (params.tolerance - 1)):
            probing = False
        limit = limit * 2 if probing else limit + 1
    limit = min(params.ceiling, max(params.floor, limit))
    return replace(state, limit=limit, min_rtt=min_rtt, rtt=mean or state.rtt, decided_at=now, probing=probing)


def share(limit_slots: int, handlers: list[str], me: str, ceiling: int) -> int:
    """This handler's part of the model's slots: an equal split, the remainder to the first
    handlers in order of id (so the parts add up to the limit), at most the handler's ceiling.
    A part may be 0 when there are fewer slots than handlers: the other handlers do the calls."""
    ids = sorted(set(handlers) | {me})
    base, extra = divmod(max(0, limit_slots), len(ids))
    return min(ceiling, base + (1 if ids.index(me) < extra else 0))
