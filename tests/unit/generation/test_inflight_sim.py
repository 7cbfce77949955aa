"""The in-flight controller (ratelimit/inflight.py) end to end against a simulated server limited by
capacity (tests/support/capacity_sim.py: deterministic, seeded), four handlers sharing one limit
as ratelimit/gate.py has them do: where it settles, what it costs and how fast it ramps."""

from __future__ import annotations

import math
import statistics

import pytest

from chalicelib.generation.ratelimit import inflight
from tests.support.capacity_sim import Server, simulate

WARM, END = 5.0, 25.0


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("overhead", "jitter"), [(0.0, 0.0), (0.005, 0.005), (0.005, 0.01), (0.01, 0.01)])
def test_against_a_capacity_bound_server_the_limit_settles_near_the_knee(overhead, jitter, seed):
    """The bench/capacity.py server: 100 ms + 15 ms per call in flight, whose latency is 2 × the
    unloaded one (115 ms) at ~8.7 calls. The client adds its own overhead (SDK, a loaded machine's
    waits for a CPU) to what it measures: up to ~20 ms here (bench/capacity.py saw 2–9 ms between
    the client's HTTP exchange and the server's own record); the baseline holds it too, so with
    30 ms (a quarter of the unloaded latency) the limit spends up to ~10 % of the time at 9.
    The server's latency is judged as bench/capacity.py does."""
    server = Server(base=0.100, k=0.015, overhead=overhead, jitter=jitter)
    run = simulate(server, END, seed=seed)
    fixed8 = simulate(server, END, limit=8)
    limits = run.limits_between(WARM, END)
    assert 5.5 <= statistics.mean(limits) <= 8.5
    assert sum(limit >= 9 for limit in limits) <= 0.05 * len(limits)
    assert run.p95(WARM, END) <= 2 * server.unloaded()
    assert run.throughput(WARM, END) >= 0.85 * fixed8.throughput(WARM, END)


@pytest.mark.parametrize("seed", range(8))
def test_against_a_noisy_server_the_ramp_is_fast_and_settles_below_the_knee(seed):
    """A self-hosted model whose latency varies ±20 % call to call (log-normal), 1 s + 20 ms per
    call in flight: knee ~50 calls, target ~36. A noisy window ends slow start early; quiet
    windows start it again and the steps are up to √limit, so 20 calls are reached within ~10
    windows (2 s each) of leaving the first 12 answers' single call (~12 s); from an early end
    at 4 calls, +1 every other window would take ~30 windows more."""
    server = Server(base=1.0, k=0.02, sigma=0.2)
    run = simulate(server, 90.0, seed=seed, ceiling=32)
    assert run.first_time_at(20) <= 33.0
    settled = run.limits_between(40.0, 90.0)
    assert 15 <= min(settled) and max(settled) <= 50


def test_against_a_server_whose_latency_never_grows_nothing_is_held_back():
    """A server limited by rate, not capacity (flat latency): the limit doubles to the ceiling and
    the throughput is that of every slot in use."""
    server = Server(base=0.2, k=0.0, jitter=0.005)
    run = simulate(server, 20.0, seed=1)
    assert run.first_time_at(64) <= 7.0  # 12 answers at one call, then a doubling every other window
    assert run.throughput(5.0, 20.0) >= 0.98 * simulate(server, 20.0, limit=64, seed=1).throughput(5.0, 20.0)


SLOWER_AT, LATE, LAST = 30.0, 90.0, 120.0


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize(("overhead", "jitter"), [(0.0, 0.0), (0.005, 0.005), (0.01, 0.01)])
@pytest.mark.parametrize("factor", [1.5, 4.0])
def test_a_server_slower_for_good_is_followed_to_its_new_knee(factor, overhead, jitter, seed):
    """From 30 s on every latency is `factor` × what it was (other tenants loading a shared vLLM,
    a heavier model behind the same name): the unloaded latency grows, the knee base / k does not
    move, so the band is the steady server's. Without probing the unloaded latency again the
    baseline stayed where it was and the limit was held at ~2 calls (1.5 ×) or at the floor (4 ×);
    within 60 s of the change it is back at the knee, the latency under 2.1 × the new unloaded."""
    server = Server(base=0.100, k=0.015, overhead=overhead, jitter=jitter, change_at=SLOWER_AT, factor=factor)
    run = simulate(server, LAST, seed=seed)
    assert 5.5 <= statistics.mean(run.limits_between(LATE, LAST)) <= 8.5
    assert run.p95(LATE, LAST) <= 2.1 * factor * server.unloaded()


@pytest.mark.parametrize(("overhead", "jitter"), [(0.0, 0.0), (0.01, 0.01)])
def test_a_server_four_times_slower_climbs_back_from_the_floor(overhead, jitter):
    """4 × slower at 40 s, between two probes (~30 s apart): the cuts reach one slot, where the
    latency measured is the unloaded one (no probe needed), and the limit climbs back to the knee."""
    server = Server(base=0.100, k=0.015, overhead=overhead, jitter=jitter, change_at=40.0, factor=4.0)
    run = simulate(server, 130.0, seed=0)
    assert min(run.limits_between(40.0, 50.0)) < 2
    assert 5.5 <= statistics.mean(run.limits_between(100.0, 130.0)) <= 8.5
    assert run.p95(100.0, 130.0) <= 2.1 * 4.0 * server.unloaded()


@pytest.mark.parametrize(("overhead", "jitter"), [(0.0, 0.0), (0.01, 0.01)])
def test_a_server_faster_again_is_followed_back(overhead, jitter):
    """A server 4 × faster from 30 s on: its loaded windows fall under the baseline / tolerance,
    which proves the baseline too high; a probe at once sets it back (else the limit would hold
    the latency at 1.75 × a stale baseline, 7 × the new unloaded one)."""
    server = Server(base=0.400, k=0.060, overhead=overhead, jitter=jitter, change_at=SLOWER_AT, factor=0.25)
    run = simulate(server, LAST, seed=0)
    assert 5.5 <= statistics.mean(run.limits_between(LATE, LAST)) <= 8.5
    assert run.p95(LATE, LAST) <= 2.1 * 0.25 * server.unloaded()


@pytest.mark.parametrize(("overhead", "jitter"), [(0.0, 0.0), (0.005, 0.005), (0.01, 0.01)])
def test_probing_the_unloaded_latency_costs_little_on_a_steady_server(monkeypatch, overhead, jitter):
    """A probe holds one call in flight for two windows every PROBE_RTTS × the baseline (~30 s
    here): at most 3 % of the throughput of the same server not probed (1–2 % measured)."""
    server = Server(base=0.100, k=0.015, overhead=overhead, jitter=jitter)
    probed = simulate(server, LAST, seed=0)
    monkeypatch.setattr(inflight, "PROBE_RTTS", math.inf)
    steady = simulate(server, LAST, seed=0)
    assert probed.probes >= 3 and not steady.probes
    assert probed.throughput(WARM, LAST) >= 0.97 * steady.throughput(WARM, LAST)
