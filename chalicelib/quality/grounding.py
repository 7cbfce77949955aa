"""Is an opener's detail the prospect's own, or did the model invent it?

SPEC's three answers: ``verified`` (the evidence is found in the source, the page summary plus
the row's field values, and every figure of the opener is in the source or the instructions),
``generic`` (no evidence and no specific claim) and ``unsupported`` (anything else: the worker
asks again, telling the model what was not found). Texts are compared in ``text.normalise``'s
form, so typography, case, spacing and the way a number is written do not matter.

The evidence may leave words out with an ellipsis ("family-owned … since 1998"): each part
must then be found, in order. A figure counts as a specific claim: a year, a count, a
percentage, an amount ("$2M" is found as 2 or as 2000000).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from chalicelib.quality.text import figure_values, figures, normalise

VERIFIED = "verified"
GENERIC = "generic"
UNSUPPORTED = "unsupported"

MIN_EVIDENCE_CHARS = 3  # shorter evidence ("a", "in") is found everywhere and proves nothing
QUOTE_CHARS = 80  # the most of the model's evidence a re-ask message repeats back
_ELLIPSIS = re.compile(r"\s*(?:\.{3,}|…|\[\.\.\.\]|\(\.\.\.\))\s*")
_EDGE_PUNCTUATION = " .,;:!?\"'()[]"
_SEPARATOR = "\n"  # between source pieces: evidence never spans two fields


@dataclass(frozen=True)
class Grounding:
    """The check's result; ``evidence_found`` is None when there was no evidence."""

    status: str
    evidence_found: bool | None = None
    missing_figures: tuple[str, ...] = ()
    evidence: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != UNSUPPORTED

    def not_found(self) -> str:
        """What was not found, for the re-ask message ("" when nothing was missing)."""
        parts = []
        if self.evidence_found is False and self.evidence:
            quoted = self.evidence if len(self.evidence) <= QUOTE_CHARS else self.evidence[:QUOTE_CHARS - 1] + "…"
            parts.append(f'the evidence "{quoted}" is not in the page or the row: copy it exactly')
        elif self.evidence_found is None and self.status == UNSUPPORTED:
            parts.append("no evidence was given for the opener's specific detail")
        if self.missing_figures:
            parts.append("these figures are not in the source: " + ", ".join(self.missing_figures))
        return "; ".join(parts)


@dataclass(frozen=True)
class Source:
    """The normalised source of one row, built once and checked against every answer for it."""

    text: str
    figure_values: frozenset[Decimal]
    instruction_values: frozenset[Decimal] = frozenset()

    @classmethod
    def of(cls, summary: str | None, fields: Iterable[str | None] = (), instructions: str | None = None) -> Source:
        pieces = [normalise(p) for p in (summary, *fields) if p]
        text = _SEPARATOR.join(p for p in pieces if p)
        # Figures may come from the instructions ("mention our 30-day trial"), evidence may not.
        told = figure_values(normalise(instructions)) if instructions else set()
        return cls(_SEPARATOR + text + _SEPARATOR, frozenset(figure_values(text) | told), frozenset(told))


def check(opener: str, evidence: str | None, source: Source) -> Grounding:
    """How well ``opener`` with ``evidence`` rests on ``source`` (see the module docstring)."""
    missing = _missing_figures(opener, source)
    if not evidence or not evidence.strip():
        # The sender's own figures ("our 30-day trial", from the instructions) say nothing
        # about the prospect: an opener with only those is still generic.
        about_prospect = [w for w, values in figures(normalise(opener)) if not values & source.instruction_values]
        if about_prospect:
            return Grounding(UNSUPPORTED, None, missing)
        return Grounding(GENERIC)
    found = evidence_in_source(evidence, source)
    status = VERIFIED if found and not missing else UNSUPPORTED
    return Grounding(status, found, missing, evidence)


def evidence_in_source(evidence: str, source: Source) -> bool:
    """Whether every part of ``evidence`` (split at ellipses) is in the source, in order and
    within one piece of it."""
    parts = [normalise(p).strip(_EDGE_PUNCTUATION) for p in _ELLIPSIS.split(evidence)]
    parts = [p for p in parts if p]
    if not parts or sum(len(p) for p in parts) < MIN_EVIDENCE_CHARS:
        return False
    for piece in source.text.split(_SEPARATOR):
        start = 0
        for part in parts:
            at = piece.find(part, start)
            if at < 0:
                break
            start = at + len(part)
        else:
            return True
    return False


def _missing_figures(opener: str, source: Source) -> tuple[str, ...]:
    """The figures of ``opener`` (as written, each once) none of whose values is in the source."""
    missing: list[str] = []
    for written, values in figures(normalise(opener)):
        if not values & source.figure_values and written not in missing:
            missing.append(written)
    return tuple(missing)
