"""The in-flight limit of each model, shared by every chunk handler through Redis, and the gate
each call to the model passes (``ConcurrencyGate.slot``).

One controller per model for all handlers, not one per process: the server's capacity is shared
by every handler, and the controller's two measures need the total. The unloaded latency is
only seen when few calls are in flight in total (four handlers each starting at one call in
flight would never see it), and a limit per process cannot go under one call per handler (fifty
handlers would keep fifty calls in flight whatever the latency). So the handlers pool their
measures in one Redis hash per model and one decision per window is taken for all of them by
``inflight.decide`` (whichever handler syncs first once the window is due; a concurrent decision
loses the compare-and-set and is dropped). Each handler then takes its part of the limit
(``inflight.share``, at most CHUNK_CONCURRENCY) and holds its calls to it with a local
semaphore: waiting for a slot costs no Redis call.

Every handler syncs each model it calls at most every ``SYNC_EVERY_S``: one script adds its
measures since the last sync to the window, says it is alive (with its calls in flight, for
/api/metrics) and returns the hash; a second one commits a decision. A handler not heard from
for ``HANDLER_TTL_S`` no longer counts (its part goes to the others); the hash expires
``STATE_TTL_S`` after the last call, so a server that was idle is measured afresh.

Hash ``<P>:m:<model>:inflight`` (P the limiter's tagged prefix, one Redis Cluster slot):
``limit``, ``min_rtt``, ``rtt``, ``decided_at``, ``probing``, ``calm``, ``grew``, ``weight``, ``metered``,
``probe``, ``probe_at``, ``gen`` (the state); ``w_n``, ``w_sum``, ``w_sat``, ``w_drops``, ``w_st``, ``w_un``,
``b:<i>`` (the window, with its latency histogram by ``inflight.bucket`` and its answers that
stated a rate budget or none); ``h:<handler>`` = ``time,in_flight,ceiling``. While the unloaded
latency is probed (``probe``), ``limit`` keeps the limit to return to and every handler's part
adds up to one call.

A server that states its rate budget in its answers' headers is metered by rate (the rate
limiter paces it): every handler keeps its whole ceiling in flight (``inflight.State.metered``).

If Redis cannot be reached, a handler keeps its last part (the rate limiter, in front of the
gate, waits for Redis anyway).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from chalicelib import metrics
from chalicelib.generation.ratelimit import inflight
from chalicelib.generation.ratelimit.keys import model_key, tagged_prefix
from chalicelib.generation.ratelimit.limiter import LimiterStopped

log = logging.getLogger("csv_opener.ratelimit")

SYNC_EVERY_S = 0.1
HANDLER_TTL_S = 5.0
STATE_TTL_S = 600.0
WARM_UP_CALLS = 4  # a handler's first answers from a model are not measured (connections being set up)
METRIC_EVERY_S = 10.0  # the InflightLimit metric (EMF): this handler's part, at most this often per model
WAIT_SLICE_S = 0.1  # a waiting call looks again this often (a sync may have changed its part)

_PUSH = """
local key = KEYS[1]
local now = tonumber(ARGV[2])
redis.call('HINCRBY', key, 'w_n', ARGV[5])
redis.call('HINCRBYFLOAT', key, 'w_sum', ARGV[6])
if ARGV[7] == '1' then redis.call('HSET', key, 'w_sat', 1) end
redis.call('HINCRBY', key, 'w_drops', ARGV[8])
redis.call('HINCRBY', key, 'w_st', ARGV[11])
redis.call('HINCRBY', key, 'w_un', ARGV[12])
for i = 13, #ARGV, 2 do redis.call('HINCRBY', key, 'b:' .. ARGV[i], ARGV[i + 1]) end
redis.call('HSET', key, 'h:' .. ARGV[1], ARGV[2] .. ',' .. ARGV[3] .. ',' .. ARGV[4])
local all = redis.call('HGETALL', key)
for i = 1, #all, 2 do
  local name = all[i]
  if string.sub(name, 1, 2) == 'h:' then
    local seen = tonumber(string.match(all[i + 1], '^[^,]+'))
    if seen == nil or seen < now - tonumber(ARGV[9]) then redis.call('HDEL', key, name) end
  end
end
redis.call('PEXPIRE', key, ARGV[10])
return redis.call('HGETALL', key)
"""

_COMMIT = """
local key = KEYS[1]
if (redis.call('HGET', key, 'gen') or '0') ~= ARGV[1] then return 0 end
redis.call('HSET', key, 'limit', ARGV[2], 'min_rtt', ARGV[3], 'rtt', ARGV[4], 'decided_at', ARGV[5],
           'probing', ARGV[6], 'calm', ARGV[10], 'grew', ARGV[11], 'weight', ARGV[12], 'metered', ARGV[13],
           'gen', tostring(tonumber(ARGV[1]) + 1), 'w_sat', 0)
redis.call('HINCRBY', key, 'w_n', ARGV[7])
redis.call('HINCRBYFLOAT', key, 'w_sum', ARGV[8])
redis.call('HINCRBY', key, 'w_drops', ARGV[9])
redis.call('HINCRBY', key, 'w_st', ARGV[14])
redis.call('HINCRBY', key, 'w_un', ARGV[15])
redis.call('HSET', key, 'probe', ARGV[16], 'probe_at', ARGV[17])
for i = 18, #ARGV, 2 do
  if redis.call('HINCRBY', key, 'b:' .. ARGV[i], ARGV[i + 1]) <= 0 then redis.call('HDEL', key, 'b:' .. ARGV[i]) end
end
return 1
"""


def state_key(prefix: str, model: str) -> str:
    return f"{tagged_prefix(prefix)}:m:{model_key(model)}:inflight"


def _float(fields: dict[str, str], name: str, default: float = 0.0) -> float:
    try:
        return float(fields.get(name, default))
    except ValueError:
        return default


def parse(fields: dict[str, str], now: float) -> tuple[inflight.State, inflight.Window, int, dict[str, tuple]]:
    """The shared hash read back: (state, window, gen, live handlers {id: (in_flight, ceiling)})."""
    state = inflight.State(limit=_float(fields, "limit", inflight.INITIAL_LIMIT), min_rtt=_float(fields, "min_rtt"),
                           rtt=_float(fields, "rtt"), decided_at=_float(fields, "decided_at"),
                           probing=fields.get("probing", "1") == "1", calm=max(0, int(_float(fields, "calm"))),
                           grew=fields.get("grew") == "1", weight=max(0.0, _float(fields, "weight")),
                           metered=fields.get("metered") == "1", probe=max(0, int(_float(fields, "probe"))),
                           probe_at=_float(fields, "probe_at"))
    buckets = {int(name[2:]): int(_float(fields, name)) for name in fields
               if name.startswith("b:") and name[2:].isdigit() and _float(fields, name) > 0}
    window = inflight.Window(samples=max(0, int(_float(fields, "w_n"))), rtt_sum=max(0.0, _float(fields, "w_sum")),
                             saturated=fields.get("w_sat") == "1", drops=max(0, int(_float(fields, "w_drops"))),
                             buckets=buckets, stated=max(0, int(_float(fields, "w_st"))),
                             unstated=max(0, int(_float(fields, "w_un"))))
    handlers = {}
    for name, value in fields.items():
        if name.startswith("h:"):
            parts = value.split(",")
            if len(parts) == 3 and _float({"t": parts[0]}, "t") >= now - HANDLER_TTL_S:
                handlers[name[2:]] = (int(_float({"n": parts[1]}, "n")), int(_float({"c": parts[2]}, "c")))
    return state, window, int(_float(fields, "gen")), handlers


def describe(redis, prefix: str, model: str, now: float | None = None) -> dict:
    """What /api/metrics shows of a model's in-flight limit (read only)."""
    raw = redis.hgetall(state_key(prefix, model))
    fields = {_text(k): _text(v) for k, v in raw.items()}
    if not fields:
        return {"limit": None, "in_flight": 0, "handlers": 0, "how": "no call to this model lately"}
    state, _, _, handlers = parse(fields, time.time() if now is None else now)
    ceiling = sum(c for _, c in handlers.values())
    shown = {"in_flight": sum(n for n, _ in handlers.values()), "ceiling": ceiling, "handlers": len(handlers),
             "latency_ms": round(state.rtt * 1000)}
    if state.metered:
        return {"limit": ceiling or None, **shown,
                "how": "the server states its rate budget: the rate limiter paces it"}
    return {"limit": state.slots(), **shown, "unloaded_latency_ms": round(state.min_rtt * 1000),
            "target_latency_ms": round(state.target() * 1000),
            "how": "probing the unloaded latency" if state.probe else "slow start" if state.probing
            else "found from latency"}


def _pairs(buckets: Mapping[int, int], sign: int = 1) -> list[int]:
    """A histogram as the flat index, count list the scripts take (counts × `sign`)."""
    return [value for index, count in sorted(buckets.items()) for value in (index, sign * count)]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class _Model:
    key: str
    cond: threading.Condition = field(default_factory=threading.Condition)
    syncing: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    share: int = 1
    window: inflight.Window = field(default_factory=inflight.Window)
    next_sync: float = 0.0
    synced: bool = False
    warm: int = 0  # calls answered so far, up to WARM_UP_CALLS
    next_metric: float = 0.0


class Call:
    """One call through the gate: ``drop()`` says it was answered 429 or timed out,
    ``answered(latency, stated)`` that it was answered, the HTTP exchange having taken `latency` s
    (None: the time the slot was held, which adds the SDK's own work on a loaded machine), its
    headers stating the server's rate budget or not (`stated`; None: not known)."""

    def __init__(self) -> None:
        self.dropped = False
        self.ok = False
        self.latency: float | None = None
        self.stated: bool | None = None

    def drop(self) -> None:
        self.dropped = True

    def answered(self, latency: float | None = None, stated: bool | None = None) -> None:
        self.ok = True
        self.latency = latency if latency is not None and latency >= 0 else None
        self.stated = stated


class ConcurrencyGate:
    """Holds each model's calls in flight to this handler's part of the shared limit."""

    def __init__(self, redis, *, prefix: str, ceiling: int, enabled: bool = True,
                 clock: Callable[[], float] = time.time, handler_id: str | None = None,
                 params: inflight.Params | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ceiling = max(1, int(ceiling))
        self.enabled = enabled
        self.clock = clock
        self.me = handler_id or uuid.uuid4().hex[:12]
        self.params = params or inflight.Params()
        self._models: dict[str, _Model] = {}
        self._lock = threading.Lock()
        self._push = redis.register_script(_PUSH) if enabled else None
        self._commit = redis.register_script(_COMMIT) if enabled else None

    def describe(self, model: str) -> dict:
        """The model's in-flight limit for /api/metrics: the limit in force, the calls in flight
        and the handlers sharing them, the latencies it is found from."""
        if not self.enabled:
            return {"adaptive": False, "ceiling_per_handler": self.ceiling}
        return {"adaptive": True, "ceiling_per_handler": self.ceiling,
                **describe(self.redis, self.prefix, model, self.clock())}

    @contextmanager
    def slot(self, model: str, should_stop: Callable[[], bool] = lambda: False) -> Iterator[Call]:
        """Wait for a slot of `model` (LimiterStopped once should_stop()), hold it for the call.
        The call's latency is measured if it ends with ``answered()``; ``drop()`` counts a 429 or
        a timeout."""
        call = Call()
        if not self.enabled:
            yield call
            return
        entry = self._entry(model)
        self._take(entry, should_stop)
        started = time.monotonic()
        try:
            yield call
        finally:
            rtt = time.monotonic() - started if call.latency is None else call.latency
            with entry.cond:
                entry.in_flight -= 1
                if call.ok and call.stated is not None:
                    entry.window = entry.window.add(inflight.Window.told(call.stated))
                if call.ok and entry.warm < WARM_UP_CALLS:  # a connection's first calls: its set-up
                    entry.warm += 1
                elif call.ok:
                    entry.window = entry.window.add(inflight.Window.of(rtt))
                elif call.dropped:
                    entry.window = entry.window.add(inflight.Window(drops=1))
                entry.cond.notify()
            self._maybe_sync(entry)

    def _entry(self, model: str) -> _Model:
        with self._lock:
            entry = self._models.get(model)
            if entry is None:
                entry = self._models[model] = _Model(state_key(self.prefix, model))
            return entry

    def _take(self, entry: _Model, should_stop: Callable[[], bool]) -> None:
        if not entry.synced:
            self._maybe_sync(entry)
        with entry.cond:
            while entry.in_flight >= entry.share:
                entry.window = replace(entry.window, saturated=True)
                if should_stop():
                    raise LimiterStopped("stopped while waiting for a slot; the URL goes back to pending")
                entry.cond.wait(WAIT_SLICE_S)
                entry.cond.release()
                try:
                    self._maybe_sync(entry)
                finally:
                    entry.cond.acquire()
            entry.in_flight += 1
            if entry.in_flight >= entry.share:  # every slot busy: the limit is used
                entry.window = replace(entry.window, saturated=True)

    def _maybe_sync(self, entry: _Model) -> None:
        now = self.clock()
        if now < entry.next_sync or not entry.syncing.acquire(blocking=False):
            return
        try:
            with entry.cond:
                window, entry.window = entry.window, inflight.Window()
                in_flight = entry.in_flight
            try:
                share = self._sync(entry, window, in_flight, now)
            except Exception as exc:  # Redis unreachable: keep the last part
                log.warning("in-flight limit not synced (%s); keeping this handler's part",
                            f"{type(exc).__name__}: {exc}"[:200])
                share = None
            with entry.cond:
                if share is not None:
                    entry.share, entry.synced = share, True
                    if now >= entry.next_metric:
                        metrics.count(metrics.INFLIGHT_LIMIT, share, metrics.COUNT)
                        entry.next_metric = now + METRIC_EVERY_S
                entry.next_sync = now + SYNC_EVERY_S
                entry.cond.notify_all()
        finally:
            entry.syncing.release()

    def _sync(self, entry: _Model, window: inflight.Window, in_flight: int, now: float) -> int:
        raw = self._push(keys=[entry.key], args=[
            self.me, repr(now), in_flight, self.ceiling, window.samples, repr(window.rtt_sum),
            1 if window.saturated else 0, window.drops, HANDLER_TTL_S, int(STATE_TTL_S * 1000),
            window.stated, window.unstated, *_pairs(window.buckets)])
        fields = {_text(raw[i]): _text(raw[i + 1]) for i in range(0, len(raw), 2)}
        state, pooled, gen, handlers = parse(fields, now)
        ceiling = sum(c for _, c in handlers.values()) or self.ceiling
        params = replace(self.params, ceiling=ceiling)
        if inflight.due(state, pooled, now, params):
            new = inflight.decide(state, pooled, now, params)
            if self._commit(keys=[entry.key], args=[
                    gen, repr(new.limit), repr(new.min_rtt), repr(new.rtt), repr(new.decided_at),
                    1 if new.probing else 0, str(-pooled.samples), repr(-pooled.rtt_sum), str(-pooled.drops),
                    new.calm, 1 if new.grew else 0, repr(new.weight), 1 if new.metered else 0,
                    -pooled.stated, -pooled.unstated, new.probe, repr(new.probe_at),
                    *_pairs(pooled.buckets, sign=-1)]):
                state = new
        if state.metered:  # metered by rate: the handler's whole ceiling, whoever else is calling
            return self.ceiling
        return inflight.share(state.slots(), list(handlers), self.me, self.ceiling)
