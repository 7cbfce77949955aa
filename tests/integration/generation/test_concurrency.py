"""The in-flight limit found from latency (ratelimit/gate.py, inflight.py) in the chunk worker,
against the fake OpenAI server in its capacity mode (each answer slower by a fixed time per call
in flight) and the real Redis, PostgreSQL and LocalStack; and what GET /api/metrics shows of it.

The fakes' latencies are large against this machine's own overhead, so the figures asserted
(calls in flight at once, seen by the fake) do not depend on its speed."""

from __future__ import annotations

import uuid

import pytest

from chalicelib import deps, jobs
from chalicelib.generation.ratelimit.gate import WARM_UP_CALLS, ConcurrencyGate
from tests.support.accounts import service_account
from tests.support.api import body
from tests.support.fake_openai import FakeOpenAI

CEILING = 16
pytestmark = pytest.mark.usefixtures("clean")


@pytest.fixture
def fake():
    """The fake as a self-hosted server: no rate limit, and no x-ratelimit-* header."""
    with FakeOpenAI() as server:
        yield server


def use(env, fake, adaptive: str = "true", urls: int = 60) -> None:
    env(OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY="test", OPENAI_DUMMY_MODE="false", OPENAI_RPM="0",
        OPENAI_TPM="0", CHUNK_CONCURRENCY=str(CEILING), CHUNK_SIZE=str(urls), CONCURRENCY_ADAPTIVE=adaptive,
        PAGE_CONTEXT_DEFAULT="false", RATELIMIT_PREFIX=f"test:concurrency:{uuid.uuid4().hex}")


def run_job(conn, urls: int) -> None:
    data = ("website\n" + "".join(f"capacity{i}.example.com\n" for i in range(urls))).encode()
    account_id = service_account(conn)
    created = jobs.create_from_upload(conn, deps.storage(), account_id=account_id, file_name="c.csv", data=data,
                                      url_column=None)
    job_id = created["job"]["id"]
    jobs.start(conn, deps.storage(), deps.chunk_queue(), deps.settings(), account_id, job_id)
    outcome = deps.chunk_worker().process_chunk(job_id, 0, lambda: float("inf"))
    assert outcome.reason == "done"


def test_as_the_server_slows_with_each_call_the_worker_keeps_few_in_flight_and_metrics_show_it(
        conn, env, fake, client, make_account):
    # 40 ms + 80 ms per call in flight: 1 call answers in 120 ms, 2 in 200 ms, 16 in 1.3 s
    fake.configure(latency_ms=40, latency_per_call_ms=80)
    use(env, fake)
    run_job(conn, 60)
    stats = fake.stats()
    assert stats["ok"] == 60
    assert stats["max_in_flight"] <= CEILING // 2  # CHUNK_CONCURRENCY (16) would all be in flight without it
    operator = client.as_account(make_account(operator=True))
    model = deps.settings().openai_model
    shown = body(operator.http.get("/api/metrics"))["concurrency"][model]
    assert shown["adaptive"] is True and shown["ceiling_per_handler"] == CEILING and shown["handlers"] == 1
    assert 1 <= shown["limit"] <= CEILING // 2
    assert shown["how"] == "found from latency"
    assert shown["unloaded_latency_ms"] >= 120 and shown["target_latency_ms"] > shown["unloaded_latency_ms"]


def test_at_a_flat_latency_the_limit_grows_to_the_ceiling(conn, env, fake):
    fake.configure(latency_ms=500)  # a server limited by rate, or not at all: latency never grows
    use(env, fake, urls=120)
    run_job(conn, 120)
    assert fake.stats()["max_in_flight"] == CEILING
    assert deps.concurrency_gate().describe(deps.settings().openai_model)["limit"] > CEILING // 2


def test_a_server_that_states_its_rate_budget_is_not_held_by_latency(conn, env, client, make_account):
    """The same server stating a rate limit (as OpenAI-compatible clouds and gateways do) is
    metered by rate: the limiter paces it, every handler keeps its ceiling in flight from its
    first answer on, however slow the calls get."""
    with FakeOpenAI(rpm=1_000_000) as fake:
        fake.configure(latency_ms=40, latency_per_call_ms=80)
        use(env, fake, urls=40)
        run_job(conn, 40)
        stats = fake.stats()
    assert stats["ok"] == 40 and stats["max_in_flight"] == CEILING
    operator = client.as_account(make_account(operator=True))
    shown = body(operator.http.get("/api/metrics"))["concurrency"][deps.settings().openai_model]
    assert shown["adaptive"] is True and shown["limit"] == CEILING and shown["handlers"] == 1
    assert shown["how"] == "the server states its rate budget: the rate limiter paces it"


def test_without_the_adaptive_limit_every_handler_keeps_its_ceiling_in_flight(conn, env, client, make_account):
    with FakeOpenAI(rpm=1_000_000) as fake:  # a stated limit the rate limiter never holds a call to
        fake.configure(latency_ms=40, latency_per_call_ms=80)
        use(env, fake, adaptive="false", urls=40)
        run_job(conn, 40)
        assert fake.stats()["max_in_flight"] == CEILING
    operator = client.as_account(make_account(operator=True))
    shown = body(operator.http.get("/api/metrics"))["concurrency"][deps.settings().openai_model]
    assert shown == {"adaptive": False, "ceiling_per_handler": CEILING}


def test_handlers_share_one_limit_through_redis(redis_client):
    """Two handlers (two gates) of one model: their parts add up to the one limit, and a handler
    not heard from no longer counts."""
    prefix = f"test:concurrency:{uuid.uuid4().hex}"
    clock = [1000.0]
    a = ConcurrencyGate(redis_client, prefix=prefix, ceiling=4, handler_id="a", clock=lambda: clock[0])
    b = ConcurrencyGate(redis_client, prefix=prefix, ceiling=4, handler_id="b", clock=lambda: clock[0])
    key = "{" + prefix + "}:m:m:inflight"
    redis_client.hset(key, mapping={"limit": 3, "min_rtt": 0.1, "decided_at": clock[0], "probing": 0})
    with a.slot("m"), b.slot("m"):
        clock[0] += 0.2
        a._maybe_sync(a._models["m"])
        b._maybe_sync(b._models["m"])
        assert (a._models["m"].share, b._models["m"].share) == (2, 1)
        shown = a.describe("m")
        assert (shown["limit"], shown["handlers"], shown["ceiling"]) == (3, 2, 8)
    clock[0] += 30  # b is gone
    a._maybe_sync(a._models["m"])
    assert a._models["m"].share == 3 and a.describe("m")["handlers"] == 1


def test_the_handlers_latency_histogram_is_pooled_and_emptied_by_each_decision(redis_client):
    """Each handler adds its answers' latencies to the window's histogram in the hash; the
    decision takes its first quartile and subtracts what it used, so the histogram holds only
    answers not yet decided on."""
    prefix = f"test:concurrency:{uuid.uuid4().hex}"
    clock = [1000.0]
    gates = [ConcurrencyGate(redis_client, prefix=prefix, ceiling=8, handler_id=h, clock=lambda: clock[0])
             for h in ("a", "b")]
    key = "{" + prefix + "}:m:m:inflight"
    redis_client.hset(key, mapping={"limit": 8, "min_rtt": 0.1, "rtt": 0.1, "weight": 24, "decided_at": clock[0],
                                    "probing": 0})
    for gate, latency in ((gates[0], 0.1), (gates[1], 0.3)):
        for _ in range(WARM_UP_CALLS + 6):  # a connection's first answers are not measured
            with gate.slot("m") as call:
                call.answered(latency)
    clock[0] += 0.15  # past the next sync, not yet past the window (2 × 0.1 s)
    gates[0]._maybe_sync(gates[0]._models["m"])  # pushes a's window: not yet due
    fields = {k.decode(): v.decode() for k, v in redis_client.hgetall(key).items()}
    assert fields.get("gen", "0") == "0"
    assert sum(int(v) for k, v in fields.items() if k.startswith("b:")) == 6
    clock[0] += 1.0
    gates[1]._maybe_sync(gates[1]._models["m"])  # pushes b's window, due: decides on both
    fields = {k.decode(): v.decode() for k, v in redis_client.hgetall(key).items()}
    assert fields["gen"] == "1" and int(fields["w_n"]) == 0
    assert not [k for k in fields if k.startswith("b:")]
    # 6 answers at 0.1 s and 6 at 0.3 s: the first quartile is 0.1 s, the latency the state took in
    assert float(fields["rtt"]) == pytest.approx(0.1, rel=0.05)


def test_a_probe_of_the_unloaded_latency_holds_every_handler_to_one_call_through_redis(redis_client):
    """A probe due: the decision holds the shared limit at one call in total (the parts add up to
    1) and /api/metrics says so; its steps go through the hash until the window measured at one
    call raises the baseline and gives the limit back."""
    prefix = f"test:concurrency:{uuid.uuid4().hex}"
    clock = [1000.0]
    a, b = (ConcurrencyGate(redis_client, prefix=prefix, ceiling=4, handler_id=h, clock=lambda: clock[0])
            for h in ("a", "b"))
    key = "{" + prefix + "}:m:m:inflight"
    redis_client.hset(key, mapping={"limit": 6, "min_rtt": 0.1, "rtt": 0.1, "weight": 24, "decided_at": clock[0],
                                    "probing": 0, "probe_at": clock[0] + 0.5})

    def window(latency: float, calls: int = 4) -> tuple[int, int]:
        for _ in range(calls):
            with a.slot("m") as call:
                call.answered(latency)
        clock[0] += 1.0
        for gate in (a, b):
            gate._maybe_sync(gate._entry("m"))
        return a._models["m"].share, b._models["m"].share

    window(0.1, WARM_UP_CALLS)  # a connection's first answers are not measured
    assert window(0.1) == (1, 0)  # the probe begins: one call in flight in total
    fields = {k.decode(): v.decode() for k, v in redis_client.hgetall(key).items()}
    assert fields["probe"] == "1" and float(fields["limit"]) == 6
    assert a.describe("m")["how"] == "probing the unloaded latency" and a.describe("m")["limit"] == 1
    assert window(0.4) == (1, 0)  # answers to calls sent before the drop: not measured
    assert float(redis_client.hget(key, "min_rtt")) == pytest.approx(0.1)
    assert window(0.2) == (3, 3)  # measured at one call: the baseline rises, the limit is back
    assert float(redis_client.hget(key, "min_rtt")) == pytest.approx(0.2, rel=0.05)
    assert redis_client.hget(key, "probe") == b"0" and a.describe("m")["how"] == "found from latency"
