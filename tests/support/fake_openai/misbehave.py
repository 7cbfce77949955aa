"""Bad first answers on demand, per row: the model the app's quality checks exist for.

``misbehave`` maps a rule to the rows it hits: a fraction of all URLs, or a list of substrings
of the URLs it hits (case-insensitive). Rules (see writing.py for the texts):

``invent``
    a fact that is in no source ("Congratulations on 25 years of ..."), with evidence that is
    not in the source either;
``repeat``
    the same generic line for every such row, evidence null;
``long``
    a grounded opener padded to 90 words;
``spam``
    "Act now!!! Limited time offer, guaranteed results ...", evidence null;
``wrong_language``
    a grounded opener in German when English was asked for, in English otherwise;
``no_json``
    plain text (the well-behaved opener) when JSON was asked for; no effect on a plain request.

Selection is deterministic: a URL's point in [0, 1) is a hash of ``misbehave_seed`` and the URL;
fraction rules take consecutive ranges of [0, 1) in :data:`RULES` order (so their shares add up
and never overlap; their sum is at most 1), and a list rule hits its URLs before any fraction
rule is looked at. Only a URL's first delivered answer misbehaves: once the fake has answered a
URL (200), a later request about it is a re-ask and behaves. A request that failed (5xx, 429,
malformed, hang) delivered nothing, so its retry is still a first answer. Two requests about
the same URL in flight at once are both first answers; a file naming one URL twice has its
second row answered as a re-ask.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

RULES: tuple[str, ...] = ("invent", "repeat", "long", "spam", "wrong_language", "no_json")


def point(url: str, seed: int) -> float:
    """The URL's place in [0, 1), the same on every run with the same seed."""
    digest = hashlib.sha256(f"{seed}\x00{url}".encode("utf-8", "replace")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def rule_for(url: str | None, rules: Mapping[str, float | tuple[str, ...]], seed: int) -> str | None:
    """The rule the first answer about ``url`` breaks, or None."""
    if url is None or not rules:
        return None
    lowered = url.lower()
    for rule in RULES:
        hit = rules.get(rule)
        if isinstance(hit, tuple) and any(part.lower() in lowered for part in hit):
            return rule
    place = point(url, seed)
    start = 0.0
    for rule in RULES:
        share = rules.get(rule)
        if isinstance(share, float):
            if start <= place < start + share:
                return rule
            start += share
    return None


class Tracker:
    """Which URLs were answered, and the counters of ``/_fake/stats``. Not thread-safe: the
    server calls it under its lock."""

    def __init__(self) -> None:
        self.answered: set[str] = set()
        self.misbehaved = 0
        self.by_rule: dict[str, int] = dict.fromkeys(RULES, 0)
        self.reasks = 0

    def choose(self, url: str | None, rules: Mapping[str, float | tuple[str, ...]], seed: int) -> str | None:
        """The rule this request's answer breaks: None for a re-ask (the URL was answered before)."""
        if url is not None and url in self.answered:
            return None
        return rule_for(url, rules, seed)

    def delivered(self, url: str | None, rule: str | None) -> None:
        """An answer about ``url`` was sent (``rule``: the rule it broke, if any)."""
        if url is not None:
            if url in self.answered:
                self.reasks += 1
            else:
                self.answered.add(url)
        if rule is not None:
            self.misbehaved += 1
            self.by_rule[rule] += 1

    def stats(self) -> dict[str, object]:
        return {"misbehaved": self.misbehaved, "misbehaved_by_rule": dict(self.by_rule), "reasks": self.reasks}
