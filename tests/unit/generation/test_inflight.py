"""The in-flight limit found from latency (chalicelib/generation/ratelimit/inflight.py), on a
fake clock against a model server whose latency is base + k × calls in flight."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from chalicelib import deps
from chalicelib.generation.ratelimit import inflight
from chalicelib.generation.ratelimit.inflight import Params, State, Window, decide, due, share

BASE, K = 0.100, 0.015
SETTLED = inflight.SMOOTH_SAMPLES  # answers behind a smoothed latency: the baseline is established


def settled(limit: float, rtt: float, **kwargs) -> State:
    """A state past slow start whose baseline (and smoothed latency) is `rtt`."""
    return State(limit=limit, min_rtt=rtt, rtt=rtt, weight=SETTLED, **{"probing": False, **kwargs})


def run(state: State, params: Params, windows: int, latency, now: float = 0.0,
        saturated: bool = True) -> tuple[State, float, list[float]]:
    """`windows` decisions, each on a window of calls answered at latency(slots in flight)."""
    limits = []
    for _ in range(windows):
        rtt = latency(state.slots())
        n = max(params.min_samples * (1 if state.min_rtt else inflight.FIRST_WINDOW_SAMPLES), state.slots())
        now += max(params.window_s(state), rtt) + 1e-6
        window = Window(n, n * rtt, saturated)
        assert due(state, window, now, params)
        state = decide(state, window, now, params)
        limits.append(state.limit)
    return state, now, limits


def capacity(n: int) -> float:
    return BASE + K * n


def test_at_a_flat_latency_the_limit_grows_to_the_ceiling_and_stays_there():
    params = Params(ceiling=64)
    state, _, limits = run(State(), params, 12, lambda n: 0.2)
    assert limits[:6] == [2, 4, 8, 16, 32, 64]  # slow start, latency flat: doubled per window
    assert state.limit == 64 and state.probing
    assert all(limit <= 64 for limit in limits)


def test_slow_start_ends_once_the_delay_passes_its_share_of_the_target():
    params = Params(ceiling=64)
    state = settled(8, 0.1, probing=True)
    target = (inflight.TOLERANCE - 1) * 0.1
    quiet = 0.1 + 0.99 * inflight.SLOW_START_EXIT * target
    assert decide(state, Window(10, 10 * quiet, True), 1.0, params).limit == 16
    after = decide(state, Window(10, 10 * (0.1 + 0.6 * target), True), 1.0, params)
    assert 9 <= after.limit < 16 and not after.probing  # a step toward the target instead


def test_in_slow_start_a_latency_that_grows_doubles_every_other_window():
    params = Params(ceiling=64)
    state, _, limits = run(State(), params, 4, lambda n: 0.1 + 0.01 * n)
    assert limits == [2, 2, 4, 4]


def test_a_limit_not_used_does_not_grow():
    state, _, limits = run(State(limit=4), Params(ceiling=64), 5, lambda n: 0.2, saturated=False)
    assert limits == [4, 4, 4, 4, 4]


def test_as_the_latency_grows_with_the_calls_in_flight_the_limit_settles_at_the_knee():
    params = Params(ceiling=64)
    state, _, limits = run(State(), params, 200, capacity)
    assert not state.probing
    assert state.min_rtt == pytest.approx(capacity(1))
    settled = limits[-100:]
    # the knee of base + k·n: n = base / k ≈ 6.7 calls, latency 2 × base; the target is 1.7 × the least
    assert 5 <= min(settled) and max(settled) <= 9
    assert max(capacity(int(limit)) for limit in settled) <= 2 * capacity(1)


def test_the_cut_goes_where_the_delay_would_meet_the_target():
    params = Params(ceiling=64)
    state = settled(41, 0.1)
    target = (inflight.TOLERANCE - 1) * 0.1
    cut = decide(state, Window(10, 10 * (0.1 + 1.25 * target)), 1.0, params)  # 1.25 × the target delay
    assert cut.limit == pytest.approx(1 + 40 / 1.25)
    assert decide(state, Window(10, 10 * 1.5), 1.0, params).limit == 20.5  # never more than half at once


def test_the_delay_not_the_latency_sets_the_step():
    """Near the target a step is small (half the way to where the delay would meet it), far below
    it at most √limit; and never two steps up in a row, since the window after a step still holds
    calls sent before it."""
    params = Params(ceiling=200)
    state = settled(6, 0.1)
    target = (inflight.TOLERANCE - 1) * 0.1
    near = decide(state, Window(10, 10 * (0.1 + 0.7 * target), True), 1.0, params)
    assert near.limit == pytest.approx(6 + max(1, (1 + 5 / 0.7 - 6) / 2)) and near.grew
    far = decide(replace(state, limit=100), Window(10, 10 * (0.1 + 0.5 * target), True), 1.0, params)
    assert far.limit == pytest.approx(110)
    assert decide(near, Window(10, 10 * (0.1 + 0.5 * target), True), 2.0, params).limit == near.limit


def test_quiet_windows_after_slow_start_ended_start_it_again():
    """A noisy window ends slow start early; calm_windows quiet ones in a row double again."""
    params = Params(ceiling=256)
    state = settled(8, 1.0)
    limits = []
    for i in range(inflight.CALM_WINDOWS + 2):
        state = decide(state, Window(20, 20 * 1.0, True), float(i), params)
        limits.append(state.limit)
    assert state.probing
    assert limits[inflight.CALM_WINDOWS - 1] == 2 * limits[inflight.CALM_WINDOWS - 2]


def test_one_lucky_window_does_not_set_the_baseline():
    """The first window needs more answers; the baseline follows the latency smoothed over the
    windows (each weighed by its answers) until enough answers are behind it, and is the least
    of it only then: a noisy server's lucky window would set the target too low for good."""
    params = Params(ceiling=64)
    first = inflight.FIRST_WINDOW_SAMPLES * params.min_samples
    assert not due(State(), Window(first - 1, 0.1 * (first - 1), True), 10.0, params)
    assert due(State(), Window(first, 0.1 * first, True), 10.0, params)
    state = decide(State(), Window(4, 4 * 0.6, True), 1.0, params)  # lucky
    assert state.min_rtt == pytest.approx(0.6)
    state = decide(state, Window(12, 12 * 1.0, True), 2.0, params)
    assert state.min_rtt == pytest.approx((4 * 0.6 + 12 * 1.0) / 16)  # not yet the least: the smoothed
    held = decide(state, Window(16, 16 * 2.0, True), 3.0, params)
    assert held.min_rtt == state.min_rtt  # from now on the least


def test_the_window_latency_is_its_first_quartile():
    """A loaded machine only ever adds to a call's latency (a thread waiting for a CPU): the
    window's latency is its first quartile, which few such waits move, not its mean."""
    window = Window()
    for latency in [0.2] * 12 + [0.5] * 4:
        window = window.add(Window.of(latency))
    assert window.quantile() == pytest.approx(0.2, rel=inflight.BUCKET_GROWTH - 1)
    assert window.mean() == pytest.approx(0.275)
    assert Window(4, 0.8).quantile() == pytest.approx(0.2)  # no histogram: the mean


def test_a_429_or_timeout_cuts_the_limit_at_once_whatever_the_latency():
    params = Params(ceiling=64)
    state = settled(20, 0.1, decided_at=10.0, probing=True)
    window = Window(1, 0.1, True, drops=1)
    assert not due(state, window, 10.0 + params.min_window_s / 2, params)
    assert due(state, window, 10.0 + 2 * params.min_window_s, params)
    after = decide(state, window, 10.2, params)
    assert after.limit == pytest.approx(14) and not after.probing


def test_the_limit_stays_within_floor_and_ceiling():
    params = Params(ceiling=10, floor=1)
    state = State(limit=1, min_rtt=0.1, probing=False)
    for _ in range(5):
        state = decide(state, Window(5, 5 * 2.0, True, drops=2), 1.0, params)
    assert state.limit == 1 and state.slots() == 1
    state = settled(9.5, 0.1, probing=True)
    assert decide(state, Window(5, 0.5, True), 1.0, params).limit == 10


def test_the_limit_follows_a_server_slower_for_good_and_faster_again():
    """4 × slower at every n: the cuts reach one slot, where the latency measured is the unloaded
    one; it replaces the baseline and the limit climbs back to the knee (base / k: where it was).
    Faster again: a loaded window under the baseline by more than the target's margin proves it
    too high, and a probe at one call sets it back."""
    params = Params(ceiling=64)
    state, now, _ = run(State(), params, 60, capacity)
    slow, now, limits = run(state, params, 40, lambda n: 4 * capacity(n), now)
    assert min(limits) < 2  # one slot
    assert slow.min_rtt == pytest.approx(4 * capacity(1))
    assert 5 <= slow.limit <= 9  # back to the knee
    back, _, limits = run(slow, params, 40, capacity, now)
    assert back.min_rtt == pytest.approx(capacity(1))
    assert 5 <= back.limit <= 9


def probed(state: State, drained: float, unloaded: float, now: float = 100.0) -> list[State]:
    """The states through a probe begun by `state`'s decision: the window after the drop (calls
    sent before it, at `drained` s) and the one measured at one call (`unloaded` s)."""
    states = [state]
    for latency in (drained, unloaded):
        now += 1.0
        states.append(decide(states[-1], Window(8, 8 * latency, True), now, Params(ceiling=64)))
    return states


def test_the_unloaded_latency_is_probed_at_one_call_and_may_raise_the_baseline():
    params = Params(ceiling=64)
    state = settled(8, 0.1, probe_at=50.0, decided_at=40.0)
    before = decide(state, Window(8, 8 * 0.16), 49.0, params)
    assert not before.probe and before.probe_at == 50.0
    began = decide(state, Window(8, 8 * 0.16), 51.0, params)
    assert began.probe == inflight.PROBE_DRAIN and began.slots() == 1
    drained, measured = probed(began, drained=0.9, unloaded=0.15, now=51.0)[1:]
    # the window after the drop holds answers sent at 8 calls: not measured, nothing decided on it
    assert drained.probe == inflight.PROBE_MEASURE and drained.slots() == 1
    assert (drained.limit, drained.min_rtt, drained.rtt) == (began.limit, began.min_rtt, began.rtt)
    # measured at one call: the baseline rises to it, the limit is the one before the probe
    assert measured.probe == 0 and measured.min_rtt == pytest.approx(0.15) and measured.rtt == measured.min_rtt
    assert measured.limit == 8 and measured.slots() == 8 and measured.grew  # the next window is not grown on
    assert measured.probe_at == pytest.approx(53.0 + inflight.PROBE_RTTS * 0.15)


def test_a_probe_lower_than_the_baseline_halves_the_gap_unless_a_loaded_window_proved_it():
    """The least of a few answers from a noisy server is often lucky; a loaded window under the
    baseline / tolerance proves the server got faster: a probe at once, taken whole."""
    params = Params(ceiling=64)
    state = settled(8, 0.2, probe=inflight.PROBE_MEASURE, probe_at=90.0)
    assert decide(state, Window(8, 8 * 0.1), 100.0, params).min_rtt == pytest.approx(0.15)
    fast = decide(settled(8, 0.2, probe_at=900.0), Window(8, 8 * 0.1, True), 100.0, params)
    assert fast.probe == inflight.PROBE_DRAIN and fast.probe_at == 0
    assert probed(fast, drained=0.1, unloaded=0.06)[-1].min_rtt == pytest.approx(0.06)


def test_no_probe_before_the_baseline_is_established_or_in_slow_start():
    params = Params(ceiling=64)
    first = decide(State(), Window(12, 12 * 0.1, True), 1.0, params)
    assert not first.probe_at  # the baseline follows the smoothed latency still
    planned = decide(first, Window(8, 8 * 0.1, True), 2.0, params)
    assert planned.probe_at == pytest.approx(2.0 + inflight.PROBE_RTTS * 0.1) and not planned.probe
    quiet = settled(8, 0.1, probing=True, probe_at=10.0)
    assert not decide(quiet, Window(8, 8 * 0.1, True), 20.0, params).probe  # slow start: a flat latency


def test_at_one_slot_the_latency_is_unloaded_without_a_drop():
    """A due probe at the floor measures the next window at once; a cut that reaches one slot
    drains one window first (its answers were sent at more), then measures."""
    params = Params(ceiling=64)
    floor = settled(1, 0.1, probe_at=10.0)
    due_now = decide(floor, Window(8, 8 * 0.12), 20.0, params)
    assert due_now.probe == inflight.PROBE_MEASURE
    assert probed(due_now, 0.4, 0.4)[1].min_rtt == pytest.approx(0.4)
    cut = decide(settled(3, 0.1, probe_at=900.0), Window(8, 8 * 0.4, True), 20.0, params)
    assert cut.slots() == 1 and cut.probe == inflight.PROBE_DRAIN
    assert probed(cut, 0.8, 0.4)[-1].min_rtt == pytest.approx(0.4)


def test_a_drop_during_a_probe_ends_it_with_the_usual_cut():
    params = Params(ceiling=64)
    state = settled(8, 0.1, probe=inflight.PROBE_MEASURE, probe_at=50.0)
    after = decide(state, Window(4, 4 * 0.1, True, drops=1), 60.0, params)
    assert not after.probe and after.limit == pytest.approx(8 * inflight.DROP_FACTOR)
    assert after.min_rtt == pytest.approx(0.1)


def test_a_window_needs_its_samples_and_its_time():
    params = Params(min_samples=4, window_rtts=2.0, min_window_s=0.1)
    state = State(limit=8, min_rtt=0.5, decided_at=100.0, probing=False)
    assert not due(state, Window(3, 3 * 0.5, True), 102.0, params)
    assert not due(state, Window(10, 5.0, True), 100.9, params)  # 2 × 0.5 s not yet passed
    assert due(state, Window(10, 5.0, True), 101.0, params)
    assert params.window_s(State(min_rtt=0.5, probing=True)) == 0.5  # slow start: one round trip


@pytest.mark.parametrize(("slots", "ceiling", "parts"), [
    (6, 16, [2, 2, 1, 1]),
    (2, 16, [1, 1, 0, 0]),
    (64, 16, [16, 16, 16, 16]),
    (100, 16, [16, 16, 16, 16]),
])
def test_each_handler_takes_its_part_of_the_limit(slots, ceiling, parts):
    handlers = ["a", "b", "c", "d"]
    assert [share(slots, handlers, me, ceiling) for me in handlers] == parts


def test_a_new_handler_counts_itself():
    assert share(3, ["a"], "b", 16) == 1 and share(3, ["b"], "a", 16) == 2 and share(3, [], "a", 16) == 3
    assert inflight.State(limit=0.4).slots() == 1


@pytest.mark.parametrize(("base_url", "dummy", "adaptive", "gated"), [
    ("http://vllm.internal:8000/v1", "false", "true", True),  # a server named by OPENAI_BASE_URL
    ("", "false", "true", False),  # OpenAI's own API: bound by the rate it sells, not by capacity
    ("", "true", "true", False),  # dummy mode: its delay does not grow with calls in flight
    ("http://vllm.internal:8000/v1", "false", "false", False),  # turned off
])
def test_the_gate_applies_to_servers_named_by_base_url_only(env, base_url, dummy, adaptive, gated):
    env(OPENAI_BASE_URL=base_url, OPENAI_DUMMY_MODE=dummy, OPENAI_API_KEY="test", CONCURRENCY_ADAPTIVE=adaptive)
    assert deps.concurrency_gate().enabled is gated


def test_a_server_that_states_its_rate_budget_gets_the_ceiling_at_its_first_answer():
    """OpenAI-compatible clouds and gateways state their budget in headers: they are metered by
    rate (the rate limiter paces them), so no baseline is measured at one call first."""
    params = Params(ceiling=48)
    window = Window(stated=1)  # a warm-up answer: no latency measured, but its headers said so
    assert due(State(), window, 0.5, params)  # at once, not after 12 answers at one call
    state = decide(State(), window, 0.5, params)
    assert state.metered and state.limit == 48 and state.slots() == 48 and not state.probing
    # a slow answer does not cut a metered server's limit; the ceiling follows the handlers there
    slow = decide(state, Window(8, 8 * 5.0, True, stated=8), 2.0, replace(params, ceiling=64))
    assert slow.metered and slow.limit == 64
    # answers with and without the headers: any that states a budget keeps it metered
    assert decide(state, Window(4, 0.4, stated=1, unstated=3), 3.0, params).metered


def test_a_server_that_stops_stating_its_budget_is_measured_afresh():
    params = Params(ceiling=48)
    state = decide(State(), Window(stated=1), 0.5, params)
    window = Window(4, 0.4, True, unstated=4)
    assert due(state, window, state.decided_at + 2 * params.min_window_s, params)
    after = decide(state, window, 9.0, params)
    assert not after.metered and after.limit == inflight.INITIAL_LIMIT and after.probing and not after.min_rtt
    # a window that says nothing of the headers (no answer, or answers not told) changes nothing
    assert Window(drops=1).metered(True) and not Window(drops=1).metered(False)


def test_a_server_found_metered_in_the_middle_of_a_probe_ends_the_probe():
    params = Params(ceiling=48)
    probing = replace(settled(8, 0.1), probe=inflight.PROBE_MEASURE, probe_at=50.0)
    assert probing.slots() == 1
    after = decide(probing, Window(4, 0.4, True, stated=4), 60.0, params)
    assert after.metered and not after.probe and after.slots() == 48


@pytest.mark.parametrize("fields", [
    {}, {"limit": "4", "probing": "1"}, {"limit": "4", "probing": "0"},
    {"limit": "4", "probing": "0", "probe": "2"}, {"limit": "4", "metered": "1"},
])
def test_every_state_the_metrics_show_is_one_the_api_document_names(fields):
    import yaml

    from chalicelib.generation.ratelimit import gate

    class Hash:
        def hgetall(self, key):
            return {k.encode(): v.encode() for k, v in fields.items()}

    shown = gate.describe(Hash(), "p", "m", now=0.0)
    with open(Path(__file__).parents[3] / "chalicelib/web/openapi.yaml", encoding="utf-8") as f:
        schema = yaml.safe_load(f)["components"]["schemas"]["Concurrency"]["oneOf"][0]["properties"]
    assert shown["how"] in schema["how"]["enum"]
