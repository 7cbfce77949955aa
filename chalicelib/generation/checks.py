"""Every opener checked before it is stored (SPEC "Openers you can trust"): one row's answer asked
for, checked against the row's source, asked for again when something is wrong, and the verdict.

Why a module of its own: the worker, batch mode and preview check answers alike, and the order
matters. A row's answer is one opener or, with ``variants`` 2-3 (SPEC "variants"), that many in
the one call; each is checked as a lone opener is, and one loop serves both (a lone opener is one
variant). What is asked again is always the whole answer:

1. grounding first: an answer with an unsupported opener is asked again, at most ``max_calls``
   calls in all, telling the model what was not found (in which variant);
2. then, once, the flags (word limits, spam, wrong language, generic) or variants too alike one
   another (``alike``: the job-wide index's rule within the row), told what to avoid;
3. last, on the opener about to be kept (a row's first kept variant), the job-wide duplicate
   index, which stores what it accepts: a duplicate is asked again too, if the one re-ask of 2.
   was not spent, told the line it repeats.

After that: with grounding ``strict`` an opener still unsupported is dropped, and the row fails
(``Ungrounded``) when none is left (a user picking among variants expects each to be safe to send,
and one bad variant should not cost the row the good ones); with ``flag`` it is kept with the
``ungrounded`` flag. A variant still too alike an earlier one is kept with the ``duplicate`` flag.
A generic opener, or one that repeats another, is not asked again when its row has no source at
all (no page, no fields): there is nothing specific to ask for, so the new line would be as
generic as the first and the call wasted; it keeps its flags. The row's opener, evidence,
grounding, flags and words are those of its first kept variant (what is sent until a person picks
another).

Calls made again go through the same generator, so they count in tokens, cost and the limiter;
a row that fails (a re-ask that fails outright, strict grounding) still counts the tokens of every
call made for it (``GenerationFailed.prompt_tokens``/``completion_tokens``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from chalicelib.adapters.redis_retry import UNAVAILABLE, retry_while_unavailable
from chalicelib.generation.answers import GenerationFailed, Opener
from chalicelib.logs import get_logger
from chalicelib.outbound.summaries import declared_language_of
from chalicelib.quality import flags as quality_flags
from chalicelib.quality import grounding as quality_grounding
from chalicelib.quality.duplicates import is_near_duplicate
from chalicelib.quality.language import page_language

log = get_logger("checks")

STRICT = "strict"
FLAG = "flag"
AUTO = "auto"
DEFAULT_LANGUAGE = "en"
UNGROUNDED_MESSAGE = ("ungrounded: the model's openers for this row rested on details that are not in the "
                      "prospect's page or row, after {calls} tries")
ALIKE_REASK = "openers {a} and {b} are too alike: make each differ in its angle, its opening words and its wording"


class Generator(Protocol):
    def generate(self, url: str, instructions: str | None = ..., model: str | None = ...,
                 should_stop: Callable[[], bool] = ..., account: str | None = ..., **data: Any) -> Opener: ...


class Duplicates(Protocol):
    def check_and_add(self, job_id: str, opener: str) -> str | None: ...


class LocalDuplicates:
    """A duplicate index for a handful of openers in one process (a preview's): SPEC's rule,
    every opener compared with every one accepted before it."""

    def __init__(self) -> None:
        self._accepted: list[str] = []
        self._lock = threading.Lock()

    def check_and_add(self, job_id: str, opener: str) -> str | None:
        with self._lock:
            repeats = next((a for a in self._accepted if is_near_duplicate(opener, a)), None)
            if repeats is None:
                self._accepted.append(opener)
            return repeats


class Ungrounded(GenerationFailed):
    """Strict grounding: no answer for the row could be grounded (the row fails, ``ungrounded``)."""


@dataclass(frozen=True)
class Options:
    """A job's checks: ``grounding`` strict | flag, word limits, ``language`` auto | ISO 639-1."""

    grounding: str = STRICT
    min_words: int = quality_flags.DEFAULT_MIN_WORDS
    max_words: int = quality_flags.DEFAULT_MAX_WORDS
    language: str = AUTO
    variants: int = 1  # openers asked for per row (SPEC "variants")

    @classmethod
    def of(cls, job: dict) -> Options:
        return cls(job.get("grounding") or STRICT, job.get("min_words") or quality_flags.DEFAULT_MIN_WORDS,
                   job.get("max_words") or quality_flags.DEFAULT_MAX_WORDS, job.get("language") or AUTO,
                   int(job.get("variants") or 1))


@dataclass
class Checked:
    """The opener kept for a row and what the checks found; tokens and attempts summed over
    every call made for it (``regenerations``: the calls made again by the checks)."""

    text: str
    evidence: str | None
    grounding: str
    quality: list[str]
    words: int
    language: str
    regenerations: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    cached_tokens: int = 0
    reasks: list[str] = field(default_factory=list)
    # with variants: each opener kept, checked, in order ({"opener", "evidence", "grounding",
    # "quality", "words"}); the row's own fields are the first's. None for one opener.
    variants: list[dict] | None = None


def row_language(options: Options, page: str | None, declared: str | None = None) -> str:
    """The language to write a row in: the job's, or with ``auto`` the page's declared language
    (``declared``, else the summary's ``Language:`` line), else the one its summary reads as,
    else English."""
    if options.language != AUTO:
        return options.language
    return page_language(declared or declared_language_of(page), None, None, page) or DEFAULT_LANGUAGE


@dataclass(frozen=True)
class Row:
    """What a row's answers are checked against: its language, its values (the row's fields, its
    URL and host: names, left out of language detection), whether it has a source at all, its
    domain (a claim-free mention), and the grounding source."""

    language: str
    values: tuple[str, ...]
    has_source: bool
    domain: re.Pattern | None
    source: quality_grounding.Source


def row_of(options: Options, url: str, instructions: str | None, fields: dict[str, str] | None,
           page: str | None, declared_language: str | None = None) -> Row:
    language = row_language(options, page, declared_language)
    values = [v for v in (fields or {}).values() if v]
    has_source = bool(page) or bool(values)
    # The URL is the row's too: an opener may name the prospect's domain ("b2b-24.example.com")
    # without making a claim (its digits are no figure). It is no reason to ask a generic opener
    # again, though.
    host = (urlsplit(url if "://" in url else f"https://{url}").hostname or "").removeprefix("www.")
    domain = re.compile(rf"(?:https?://)?(?:www\.)?{re.escape(host)}/?", re.IGNORECASE) if host else None
    values += [url, host] if host else [url]
    return Row(language, tuple(values), has_source, domain,
               quality_grounding.Source.of(page, values, instructions))


def verdict(row: Row, options: Options, text: str, evidence: str | None,
            duplicate_of: str | None = None) -> tuple[quality_grounding.Grounding, quality_flags.Checked]:
    """One opener's grounding and flags."""
    claims = row.domain.sub(" ", text) if row.domain is not None else text
    found = quality_grounding.check(claims, evidence, row.source)
    checked = quality_flags.check(text, generic=found.status == quality_grounding.GENERIC, language=row.language,
                                  duplicate_of=duplicate_of, min_words=options.min_words,
                                  max_words=options.max_words, names=row.values)
    return found, checked


def generate_checked(generator: Generator, *, job_id: str, url: str, instructions: str | None,
                     model: str | None, options: Options, fields: dict[str, str] | None = None,
                     page: str | None = None, declared_language: str | None = None,
                     duplicates: Duplicates | None = None, max_calls: int = 3,
                     should_stop: Callable[[], bool] = lambda: False, account: str | None = None,
                     first: Opener | None = None, feedback: str | None = None) -> Checked:
    """The row's opener, checked (see the module docstring). Raises ``Ungrounded`` (strict mode),
    ``GenerationFailed`` or ``LimiterStopped`` as the generator does. ``first``: an answer already
    in hand (a Batch API result): checked before any live call is made. ``feedback``: the
    sender's words on the row's earlier opener (a regeneration), added to its prompt. With
    ``options.variants`` > 1 the one call asks for that many openers (``{"openers": [...]}``;
    a lone opener is asked as ``{"opener", "evidence"}``)."""
    marks = {"feedback": feedback} if feedback else {}  # generators that predate feedback keep working
    if options.variants > 1:
        marks["variants"] = options.variants
    row = row_of(options, url, instructions, fields, page, declared_language)
    max_calls = max(1, max_calls)
    total = {"prompt": 0, "completion": 0, "attempts": 0, "cached": 0, "calls": 0}

    def ask(reask: str | None) -> Opener:
        if first is not None and total["calls"] == 0:
            opener = first
        else:
            try:
                opener = generator.generate(url, instructions, model, should_stop=should_stop, account=account,
                                            fields=fields, page=page, language=row.language,
                                            min_words=options.min_words, max_words=options.max_words, reask=reask,
                                            cache_key=job_id, **marks)
            except GenerationFailed as exc:  # the calls made before it were paid: the failed row counts them
                exc.prompt_tokens += total["prompt"]
                exc.completion_tokens += total["completion"]
                raise
        total["calls"] += 1
        total["prompt"] += opener.prompt_tokens
        total["completion"] += opener.completion_tokens
        total["attempts"] += opener.attempts
        total["cached"] += opener.cached_tokens
        return opener

    reasked = False  # the one re-ask for flags, alike variants or a duplicate
    reask: str | None = None
    reasks: list[str] = []
    while True:
        opener = ask(reask)
        calls = total["calls"]
        items = list(opener.variants) or [(opener.text, opener.evidence)]
        seen = [verdict(row, options, text, evidence) for text, evidence in items]
        unsupported = {i for i, (found, _) in enumerate(seen) if not found.ok}
        if unsupported and calls < max_calls:
            reask = reask_message({i: seen[i] for i in unsupported}, {}, options.variants)
            reasks.append(reask or "")
            continue
        kept = [i for i in range(len(items)) if not (options.grounding == STRICT and i in unsupported)]
        if not kept:
            raise ungrounded(total)
        flagged = {i: [f for f in seen[i][1].flags if row.has_source or f != quality_flags.GENERIC] for i in kept}
        too_alike = {kept[later]: kept[earlier] for later, earlier in alike([items[k][0] for k in kept]).items()}
        if not unsupported and not reasked and calls <= max_calls and (any(flagged.values()) or too_alike):
            reasked = True
            reask = reask_message({i: (None, only(seen[i][1], f)) for i, f in flagged.items()}, too_alike,
                                  options.variants)
            reasks.append(reask or "")
            continue
        chosen = kept[0]
        repeated = _repeats(duplicates, job_id, items[chosen][0]) if duplicates is not None else None
        if repeated is not None and row.has_source and not reasked and calls <= max_calls:
            reasked = True
            reask = reask_message({chosen: (None, verdict(row, options, *items[chosen], duplicate_of=repeated)[1])},
                                  {}, options.variants)
            reasks.append(reask or "")
            continue
        kept_variants = []
        for i in kept:
            found, checked = seen[i]
            quality = list(checked.flags)
            if i in too_alike or (i == chosen and repeated is not None):
                quality.insert(duplicate_position(quality), quality_flags.DUPLICATE)
            if not found.ok:
                quality.append(quality_flags.UNGROUNDED)
            kept_variants.append({"opener": items[i][0], "evidence": items[i][1], "grounding": found.status,
                                  "quality": quality, "words": checked.words})
        first = kept_variants[0]
        return Checked(first["opener"], first["evidence"], first["grounding"], first["quality"], first["words"],
                       row.language, regenerations=calls - 1, prompt_tokens=total["prompt"],
                       completion_tokens=total["completion"], attempts=total["attempts"],
                       cached_tokens=total["cached"], reasks=reasks,
                       variants=kept_variants if options.variants > 1 else None)


def alike(texts: list[str]) -> dict[int, int]:
    """{index: the earlier index it is too alike} of a row's variants (0-based), by the rule the
    job-wide duplicate index applies across rows."""
    found: dict[int, int] = {}
    for later in range(1, len(texts)):
        earlier = next((i for i in range(later) if is_near_duplicate(texts[later], texts[i])), None)
        if earlier is not None:
            found[later] = earlier
    return found


def reask_message(fix: dict[int, tuple[quality_grounding.Grounding | None, quality_flags.Checked]],
                  too_alike: dict[int, int], variants: int) -> str | None:
    """One message asking for the answer again: what to fix in the opener, or with variants in
    each of them (1-based, ``fix``: index -> what grounding did not find, the flags) and which are
    too alike."""
    if variants == 1:
        return quality_flags.reask_message(*fix[0])
    said = [f"opener {i + 1}: {'; '.join(p)}" for i, (g, c) in sorted(fix.items())
            if (p := quality_flags.reask_parts(g, c))]
    said += [ALIKE_REASK.format(a=b + 1, b=a + 1) for a, b in sorted(too_alike.items())]
    return "Write the openers again, each with its own evidence: " + "; ".join(said) + "." if said else None


def ungrounded(total: dict) -> Ungrounded:
    """Strict grounding's failure of a row, counting every call made for it."""
    return Ungrounded(UNGROUNDED_MESSAGE.format(calls=total["calls"]), total["attempts"], total["prompt"],
                      total["completion"])


def _repeats(duplicates: Duplicates, job_id: str, text: str, attempts: int = 5) -> str | None:
    """The accepted opener `text` repeats, from the job's index; None when unique, or when the
    index stayed unreachable (logged). Redis failing over or restarting: a few seconds of retries
    (the backoff every Redis caller of ours uses, adapters/redis_retry.py), then the opener is
    kept unchecked for duplicates (a lost check costs a possible repeat; a failed row would cost
    the opener)."""
    try:
        return retry_while_unavailable(lambda: duplicates.check_and_add(job_id, text), initial=0.25, maximum=2.0,
                                       attempts=attempts)[0]
    except UNAVAILABLE as exc:
        log.warning("duplicate index unreachable; opener kept without the duplicate check",
                    extra={"job_id": job_id, "error": type(exc).__name__})
    return None


def only(checked: quality_flags.Checked, kept: list[str]) -> quality_flags.Checked:
    """``checked`` with only the ``kept`` flags (and their re-ask instructions)."""
    pairs = [(f, r) for f, r in zip(checked.flags, checked.reasks, strict=True) if f in kept]
    return quality_flags.Checked(tuple(f for f, _ in pairs), checked.words, tuple(r for _, r in pairs))


def duplicate_position(found: list[str]) -> int:
    """Where ``duplicate`` goes in SPEC's order of flags."""
    order = quality_flags.FLAGS
    return sum(1 for f in found if order.index(f) < order.index(quality_flags.DUPLICATE))
