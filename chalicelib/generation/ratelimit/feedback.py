"""What the shared limiter learns from the provider's answers and what it tells an operator: the
part of RateLimiter (a mixin of limiter.py, which holds the scripts, keys and settings) that reads
a success's or a 429's headers (stated limits, lua/learn.lua; remaining/reset of requests and of
tokens, lua/gauge.lua),
reports a success to the rate controller (lua/grow.lua), and describes the limits in force and
the calls admitted per minute (lua/limits.lua, lua/calls.lua). How it works, and why: the
package's docstring (chalicelib/generation/ratelimit/__init__.py)."""

from __future__ import annotations

import time
from collections.abc import Mapping

from chalicelib.adapters.redis_retry import UNAVAILABLE as _UNAVAILABLE
from chalicelib.generation.ratelimit.headers import DIMENSIONS, provider_limits, provider_remaining

START_RPM = 180  # before a model's provider has answered once: 3 requests at once, then 3 a second
LEARNED_TTL_S = 3600  # learned limits are forgotten after an hour without an answer
OBSERVE_EVERY_S = 20.0  # a process writes unchanged learned limits again at most this often
ZERO_EVERY_S = 0.02  # a process reports "none remaining" at most this often (each is a shared pause)

# how the request rate in force was set, as `limits` says it
HOW = {"stated": "stated", "429s": "found from 429s", "remaining-reset": "remaining-reset"}


class ProviderFeedback:
    """The provider-facing half of RateLimiter (see the module docstring)."""

    def observe(self, model: str | None, headers: Mapping[str, str], ok: bool = True, tokens: int = 0) -> None:
        """Learn ``model``'s limits from a provider answer's headers (``provider_limits``); the
        next reservation uses them. Cheap: a process writes only a change, or the same limits
        again after ``OBSERVE_EVERY_S`` (to keep them from expiring). For each budget (requests,
        tokens) whose limit the server does not state but whose ``x-ratelimit-remaining-*`` /
        ``-reset-*`` it sends, the rate is gauged from them (lua/gauge.lua: at most four times a
        period per process, and at once when none remain, which pauses every worker until one
        call fits); ``tokens``: what this answer's call was booked at (``estimate_tokens``), the
        part of the token budget it took. ``ok``: the answer was a success (not a 429), a signal
        for the rate controller to increase the rate (at most once per period: a process sends it
        at most four times a period). Best effort."""
        for dimension, stated in zip(DIMENSIONS, self._learn(model, headers), strict=True):
            if stated <= 0:
                self._gauge(model, headers, dimension, tokens)
        if ok:
            self._succeeded(model)

    def _learn(self, model: str | None, headers: Mapping[str, str]) -> tuple[int, int]:
        """Store the limits ``headers`` state (lua/learn.lua); (rpm, tpm) stated (-1: none)."""
        rpm, tpm = provider_limits(headers)
        key = model or ""
        seen = self._seen.get(key)
        now = time.monotonic()
        if seen is not None and seen[:2] == (rpm, tpm) and now - seen[2] < OBSERVE_EVERY_S:
            return rpm, tpm
        self._seen[key] = (rpm, tpm, now)
        try:
            first = self._learn_script(keys=self._keys(model),
                                       args=[rpm, tpm, LEARNED_TTL_S * 1000, self.start_rpm or START_RPM])
        except _UNAVAILABLE as exc:
            self._seen.pop(key, None)
            self._log.warning("Redis unreachable; provider limits not recorded (%s)", exc)
            return rpm, tpm
        if first or seen is None or seen[:2] != (rpm, tpm):
            self._log.info("provider limits for %s: %s requests/min, %s tokens/min", model or "the default model",
                           rpm if rpm > 0 else "not sent", tpm if tpm > 0 else "not sent")
        return rpm, tpm

    def _gauge(self, model: str | None, headers: Mapping[str, str], dimension: str, tokens: int) -> None:
        """Send ``x-ratelimit-remaining-<dimension>`` / ``-reset-<dimension>`` to lua/gauge.lua, if
        the answer has both: at most four times a period per process and budget, and at most every
        ``ZERO_EVERY_S`` when none remain (a pause for every worker)."""
        seen = provider_remaining(headers, dimension)
        if seen is None:
            return
        remaining, reset_s = seen
        key = (model or "", dimension)
        now = time.monotonic()
        every = ZERO_EVERY_S if remaining == 0 else self.aimd_period_ms / 4000.0
        if now - self._gauged.get(key, -1e9) < every:
            return
        self._gauged[key] = now
        unit = 1 if dimension == "requests" else max(1, int(tokens))
        try:
            self._gauge_script(keys=self._keys(model),
                               args=[self.rpm, self.tpm, self.start_rpm, remaining, reset_s * 1000.0,
                                     self.gauge_margin, self.gauge_window_ms, self.gauge_fresh_ms, dimension, unit])
        except _UNAVAILABLE as exc:
            self._log.warning("Redis unreachable; remaining/reset not reported to the rate controller (%s)", exc)

    def _succeeded(self, model: str | None) -> None:
        """Tell the rate controller a call succeeded (lua/grow.lua); skipped when this process
        told it less than a quarter period ago (it acts on one signal per period anyway)."""
        key = model or ""
        now = time.monotonic()
        if now - self._grown.get(key, -1e9) < self.aimd_period_ms / 4000.0:
            return
        self._grown[key] = now
        try:
            self._grow_script(keys=[self._keys(model)[3]],
                              args=[self.rpm, self.aimd_period_ms, self.aimd_step, self.gauge_fresh_ms, self.tpm])
        except _UNAVAILABLE as exc:
            self._log.warning("Redis unreachable; a success not reported to the rate controller (%s)", exc)

    def limits(self, model: str | None = None) -> dict:
        """What is known of ``model``'s limits: learned from the provider (None: not heard from
        yet; -1: not sent), the ceilings, the rate controller's state (``found``: None before the
        provider's first answer; ``estimate``: the rate gauged from remaining/reset while fresh,
        else None; ``tokens``: the token rate gauged from the provider's remaining/reset tokens and
        its fresh estimate, None without), the limits in force (0 = none) and how each was set
        (``how``: "stated" by the provider, "found from 429s", "remaining-reset", "ceiling",
        "cautious start" or "none")."""
        rpm, tpm, learned_rpm, learned_tpm, found, phase, by, est, t_found, t_est = (
            (v.decode() if isinstance(v, bytes) else v) for v in (
                list(self._limits_script(keys=[self._keys(model)[3]],
                                         args=[self.rpm, self.tpm, self.start_rpm, self.gauge_fresh_ms]))
                + [None] * 10)[:10])
        in_force = {"rpm": int(float(rpm)), "tpm": int(float(tpm))}
        learned = None if learned_rpm is None or learned_tpm is None else {"rpm": int(learned_rpm),
                                                                            "tpm": int(learned_tpm)}
        tokens = None if t_found is None else {"tpm": round(float(t_found), 1),
                                               "estimate": None if t_est is None else round(float(t_est), 1)}
        controller = None if found is None else {
            "rpm": round(float(found), 1), "phase": "slow start" if phase == "slow" else "additive increase",
            "estimate": None if est is None else round(float(est), 1), "tokens": tokens}
        return {"learned": learned, "ceiling": {"rpm": self.rpm, "tpm": self.tpm}, "found": controller,
                "in_force": in_force, "how": _how(learned, controller, by, self.rpm, self.tpm, in_force)}

    def calls_per_minute(self, models: list[str] = (), jobs: list[str] = ()) -> dict:
        """Calls admitted in the last minute (the last 59 whole seconds and the one under way) per
        model and per job: ``{"models": {m: n}, "jobs": {j: n}}``. One Redis call. Raises the
        client's error when Redis is unreachable (the caller describes it)."""
        models, jobs = list(models), list(jobs)
        keys = [f"{self._keys(m)[0].rsplit(':', 1)[0]}:calls" for m in models] + [self._job_calls_key(j) for j in jobs]
        if not keys:
            return {"models": {}, "jobs": {}}
        counts = [int(n) for n in self._calls_script(keys=keys, args=[60])]
        return {"models": dict(zip(models, counts[:len(models)], strict=True)),
                "jobs": dict(zip(jobs, counts[len(models):], strict=True))}


def _how(learned: dict | None, found: dict | None, by: str | None, ceil_rpm: int, ceil_tpm: int,
         in_force: dict) -> dict:
    """How each limit in force was set: "stated" (the provider's header), "found from 429s" (the
    rate controller: no limit stated, or a 429 cut the stated one), "remaining-reset" (gauged from
    the provider's remaining/reset headers; for tokens, the only rate found), "ceiling"
    (OPENAI_RPM / OPENAI_TPM is the lower), "cautious start" (the provider has not answered yet),
    "none"."""
    if learned is None:
        rpm = "ceiling" if ceil_rpm and in_force["rpm"] == ceil_rpm else "cautious start"
        return {"rpm": rpm, "tpm": "ceiling" if ceil_tpm else "none"}
    if ceil_rpm and found is not None and found["rpm"] >= ceil_rpm:
        rpm = "ceiling"
    elif learned["rpm"] > 0 and found is not None and found["rpm"] >= learned["rpm"]:
        rpm = "stated"
    elif found is not None:
        rpm = HOW.get(by or "", "found from 429s")
        if rpm == "stated":  # a 429 has cut it since (cooldown.lua sets by = 429s): stated no more
            rpm = "found from 429s"
    else:
        rpm = "ceiling" if ceil_rpm else "none"
    if learned["tpm"] > 0 and not (ceil_tpm and ceil_tpm < learned["tpm"]):
        tpm = "stated"
    elif learned["tpm"] <= 0 and found and found["tokens"] and not (ceil_tpm and ceil_tpm < found["tokens"]["tpm"]):
        tpm = "remaining-reset"
    else:
        tpm = "ceiling" if ceil_tpm else "none"
    return {"rpm": rpm, "tpm": tpm}
