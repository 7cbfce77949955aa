"""A model server limited by capacity and the chunk handlers' in-flight gate, simulated in pure
Python (deterministic: a seeded random source, a simulated clock) to test the controller of
chalicelib/generation/ratelimit/inflight.py end to end without a machine's timing in it.

The server answers each call after (base + k × the calls it has in flight when the call arrives,
itself included) × a log-normal noise factor (sigma 0: none), as the fake OpenAI server's
capacity mode does. The client holds each call's slot ``overhead`` s longer than the server holds
the call (half before, half after: building the request, a thread waiting for a CPU); the
latency measured is the server's plus that overhead. ``handlers`` handlers share one limit as
ratelimit/gate.py has them do: each keeps up to its part (``inflight.share``) in flight, always
with work waiting, and every ``sync_s`` the window pooled from all of them is decided on once due.
``limit=None`` runs the controller; a number holds that many calls in flight (the fixed runs of
bench/capacity.py).
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field, replace

from chalicelib.generation.ratelimit import inflight


@dataclass(frozen=True)
class Server:
    base: float = 0.100  # s
    k: float = 0.015  # s per call in flight
    sigma: float = 0.0  # log-normal noise of each latency
    overhead: float = 0.0  # the client's own share of each measured latency, s
    jitter: float = 0.0  # mean of an exponential delay added to each overhead (a loaded machine's CPU waits), s
    change_at: float = math.inf  # from this time on (s) the server's latency is × `factor` at every n
    factor: float = 1.0  # (other tenants loading a shared server, a heavier model behind the same name)

    def unloaded(self) -> float:
        return self.base + self.k

    def latency(self, now: float, in_flight: int) -> float:
        """The server's latency for a call arriving at `now` with `in_flight` calls (itself included), no noise."""
        return (self.base + self.k * in_flight) * (self.factor if now >= self.change_at else 1.0)


@dataclass
class Result:
    calls: list[tuple[float, float]] = field(default_factory=list)  # (admitted at, server latency s)
    limits: list[tuple[float, float]] = field(default_factory=list)  # (time, limit) at each sync
    probes: int = 0  # probes of the unloaded latency begun (inflight.State.probe)

    def throughput(self, start: float, end: float) -> float:
        return sum(start <= t < end for t, _ in self.calls) / (end - start)

    def p95(self, start: float, end: float) -> float:
        window = sorted(s for t, s in self.calls if start <= t < end)
        return window[min(len(window) - 1, int(0.95 * len(window)))]

    def limits_between(self, start: float, end: float) -> list[float]:
        return [limit for t, limit in self.limits if start <= t < end]

    def first_time_at(self, limit: float) -> float:
        """When the limit first reached `limit` (inf: never)."""
        return next((t for t, value in self.limits if value >= limit), math.inf)


def simulate(server: Server, seconds: float, *, params: inflight.Params | None = None, limit: int | None = None,
             handlers: int = 4, ceiling: int = 16, sync_s: float = 0.1, seed: int = 0) -> Result:
    rng = random.Random(seed)
    params = params or inflight.Params(ceiling=handlers * ceiling)
    ids = [f"h{i}" for i in range(handlers)]
    state, window = inflight.State(), inflight.Window()
    busy = dict.fromkeys(ids, 0)
    server_in_flight = 0
    result = Result()
    events: list[tuple[float, int, str, str, float]] = []  # (time, order, kind, handler, measured latency)
    order = 0

    def push(at: float, kind: str, handler: str = "", measured: float = 0.0) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (at, order, kind, handler, measured))

    def part(handler: str) -> int:
        slots = limit if limit is not None else state.slots()
        return inflight.share(slots, ids, handler, ceiling)

    def fill(now: float) -> None:
        nonlocal window
        for handler in ids:
            while busy[handler] < part(handler):
                busy[handler] += 1
                push(now + server.overhead / 2, "arrive", handler)
            if busy[handler] >= part(handler):
                window = replace(window, saturated=True)

    push(0.0, "sync")
    while events:
        now, _, kind, handler, measured = heapq.heappop(events)
        if now >= seconds:
            break
        if kind == "arrive":
            server_in_flight += 1
            latency = server.latency(now, server_in_flight) * math.exp(server.sigma * rng.gauss(0, 1))
            waited = rng.expovariate(1 / server.jitter) if server.jitter else 0.0
            result.calls.append((now, latency))
            push(now + latency, "served", handler)
            push(now + latency + server.overhead / 2 + waited, "answered", handler,
                 latency + server.overhead + waited)
        elif kind == "served":
            server_in_flight -= 1
        elif kind == "answered":
            busy[handler] -= 1
            window = window.add(inflight.Window.of(measured))
            fill(now)
        else:  # sync
            if limit is None and inflight.due(state, window, now, params):
                new = inflight.decide(state, window, now, params)
                result.probes += bool(new.probe and not state.probe)
                state, window = new, inflight.Window()
            result.limits.append((now, limit if limit is not None else state.limit))
            fill(now)
            push(now + sync_s, "sync")
    return result
