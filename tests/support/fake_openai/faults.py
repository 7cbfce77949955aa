"""Misbehaviour on demand: each admitted chat request draws its fate from the seeded RNG.

One uniform draw decides: ``[0, hang_rate)`` hang, ``[hang_rate, hang_rate + error_rate)``
error (a status from ``error_statuses``), then ``malformed_rate`` (a kind from
``malformed_kinds``), otherwise a proper answer. So the rates are exclusive and their sum is
capped at 1. Everything but a hang then waits ``latency_ms`` (a number, or ``[min, max]``
drawn uniformly). A hang never answers: it waits until the client disconnects, the server stops
or ``hang_seconds`` pass (then the connection is closed without a response); other requests are
not blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from typing import Literal

from .config import FakeConfig

Outcome = Literal["ok", "hang", "error", "malformed"]


@dataclass(frozen=True)
class Fate:
    outcome: Outcome
    delay_s: float = 0.0
    status: int = 200  # outcome "error": the status to answer
    malformed_kind: str = ""  # outcome "malformed": which kind


def draw(rng: random.Random, config: FakeConfig) -> Fate:
    """The fate of one request (call with the server's lock held: the RNG is shared)."""
    value = rng.random()
    h, e, m = config.hang_rate, config.error_rate, config.malformed_rate
    if value < h:
        return Fate("hang")
    outcome: Outcome = "error" if value < h + e else "malformed" if value < h + e + m else "ok"
    lat = config.latency_ms
    delay = (rng.uniform(*lat) if isinstance(lat, tuple) else lat) / 1000.0
    if outcome == "error":
        return Fate(outcome, delay, status=rng.choice(config.error_statuses))
    if outcome == "malformed":
        return Fate(outcome, delay, malformed_kind=rng.choice(config.malformed_kinds))
    return Fate(outcome, delay)


async def hang(reader: asyncio.StreamReader, seconds: float) -> None:
    """Never answer: wait until the client disconnects (EOF), the task is
    cancelled (server stop), or ``seconds`` elapse."""

    async def until_eof() -> None:
        while await reader.read(65536):
            pass  # discard anything else the client sends; this request never gets answered

    with contextlib.suppress(TimeoutError, ConnectionError):
        await asyncio.wait_for(until_eof(), seconds)
