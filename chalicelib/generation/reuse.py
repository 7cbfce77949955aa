"""Paying once (SPEC "Paying once"): a row whose fingerprint matches an opener the same account's
model wrote in the last ``REUSE_DAYS`` gets that opener with no call and no cost.

The fingerprint is two hashes. ``fingerprint`` (sha256) covers everything that made the opener
but the page: the account, the normalised URL, the instructions as rendered for the row (the
instructions, the row's ``{{column}}`` values and a reviewer's feedback), the model, the job's
language option, its word limits and variants. ``page_hash`` (sha256 of the page summary the
prompt carried; None without one) covers the page. A row matches when both are equal: a page
that changed is generated again. The account is hashed in, and the lookup checks it again.

Why two hashes: the page is known only once fetched, while the lookup must be one query per
claimed batch of rows (``Reuse.lookup``, before any page is fetched): it returns every earlier
opener of the batch's fingerprints, page hash and all, and a row's generation compares its page
hash with them in memory once its page is in (``Candidates.match``), with no query of its own.
The same ``fingerprint`` lets the estimate count, from a job's stored rows, the rows that will
be reused (an upper bound with page context on: a page may have changed since).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass

from chalicelib.adapters import db
from chalicelib.outbound.summaries import cache_key_url

VARIANTS = 1  # openers per row (SPEC "variants"), the job's option: a variants=3 row is no variants=1 row
REUSED_COLUMNS = ("opener", "evidence", "grounding", "quality", "words", "language", "context_status", "variants")
NOT_REUSED_FLAGS = frozenset({"edited"})  # a person's mark, not the model's


# A URL already in the one spelling ``cache_key_url`` gives (lower-case http(s), a plain host, a
# path, maybe a query; what ingest stores): its own key, without parsing it again.
_NORMALISED = re.compile(r"https?://[a-z0-9-]+(?:\.[a-z0-9-]+)*/[^#?\s]*(?:\?[^#\s]+)?")


def _dump(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@functools.lru_cache(maxsize=256)
def _job_parts(account_id: str, instructions: str, model: str, language: str, min_words: int | None,
               max_words: int | None, variants: int) -> tuple[str, str, str]:
    """The fingerprint's JSON pieces that are the same for every row of a job (dumped once)."""
    return _dump(account_id), _dump(instructions), ",".join(_dump(p) for p in (model, language, min_words, max_words,
                                                                                variants))


def fingerprint(*, account_id: str, url: str, instructions: str | None, fields: dict | None, model: str | None,
                language: str | None, min_words: int | None, max_words: int | None,
                feedback: str | None = None, variants: int = VARIANTS) -> bytes:
    """The row's fingerprint but its page (see the module docstring): 32 bytes. sha256 of the JSON
    list [account, URL key, instructions, fields, feedback, model, language, min_words,
    max_words, variants], its job's pieces dumped once per job (``_job_parts``)."""
    account, rules, tail = _job_parts(str(account_id), (instructions or "").strip(), model or "",
                                      language or "auto", min_words, max_words, variants)
    key = url if _NORMALISED.fullmatch(url) else cache_key_url(url)
    text = (f"[{account},{_dump(key)},{rules},{_dump(sorted((fields or {}).items()))},"
            f"{_dump((feedback or '').strip())},{tail}]")
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def page_hash(page: str | None) -> bytes | None:
    """sha256 of the page summary the prompt carries; None without one."""
    return hashlib.sha256(page.encode("utf-8", "surrogatepass")).digest() if page else None


def job_fingerprint(job: dict, row: dict) -> bytes:
    """A claimed or stored row's fingerprint under its job's options."""
    return fingerprint(account_id=str(job["account_id"]), url=row["url"], instructions=job["instructions"],
                       fields=row.get("fields"), model=job["model"], language=job.get("language"),
                       min_words=job.get("min_words"), max_words=job.get("max_words"),
                       feedback=row.get("feedback"), variants=int(job.get("variants") or VARIANTS))


@dataclass(frozen=True)
class Candidates:
    """Earlier openers of one fingerprint, by page hash (None: written without a page)."""

    fingerprint: bytes
    by_page: dict

    def match(self, page: str | None) -> dict | None:
        """The result to save for a row whose prompt carries ``page``, or None: generate it."""
        found = self.by_page.get(page_hash(page))
        return None if found is None else dict(found)


def in_time(fetch: Callable[[str, str], tuple], until: float) -> Callable[[str, str], tuple]:
    """`fetch(url, account_id)`, started only before `until` (monotonic): a row waiting for its
    page on the fetch thread (``when_page``) waits no longer for a fetch thread than one waiting
    in a generator did; later, it goes without its page (``timeout``)."""
    def fetch_in_time(url: str, account_id: str) -> tuple:
        return fetch(url, account_id) if time.monotonic() < until else (None, "timeout")
    return fetch_in_time


def when_page(fetched: Future, candidates: Candidates, row_id, call: Callable[[Future], Future]) -> Future:
    """A row with earlier openers, once its page is in (`fetched`: its (summary, context_status)):
    the one written from that page, right there on the fetch thread (one hand-off for a reused
    row, not two); else what ``call(fetched)`` (its generation) gives. None: the row is given
    back (stopped before its call)."""
    out: Future = Future()

    def relay(done: Future) -> None:
        if done.cancelled():
            out.set_result(None)
        elif done.exception() is not None:
            out.set_exception(done.exception())
        else:
            out.set_result(done.result())

    def chain(done: Future) -> None:
        if done.cancelled():
            out.set_result(None)
            return
        found = None if done.exception() is not None else candidates.match(done.result()[0])
        if found is not None:
            out.set_result(reused_result(row_id, found))
            return
        try:
            call(done).add_done_callback(relay)
        except RuntimeError:  # the generators were shut down meanwhile
            out.set_result(None)

    fetched.add_done_callback(chain)
    return out


def reused_result(row_id, earlier: dict) -> dict:
    """A row's result taken from an earlier opener: no call, no tokens, no cost."""
    return {"id": row_id, "status": "completed", "error": None, "retry_count": 0, "prompt_tokens": 0,
            "completion_tokens": 0, "cached_tokens": 0, "reused": True, "regenerations": 0,
            **{c: earlier.get(c) for c in REUSED_COLUMNS},
            "quality": [f for f in earlier.get("quality") or () if f not in NOT_REUSED_FLAGS]}


def lookup(conn, job: dict, rows: Iterable[dict], days: int) -> dict:
    """{row id: Candidates} for the rows of a claimed batch that may be reused: one indexed query
    for the whole batch. Empty when the job's ``reuse`` is off or ``days`` is 0; a row marked
    ``no_reuse`` (a regeneration) is never looked up."""
    if days <= 0 or not job.get("reuse", True):
        return {}
    wanted = {row["id"]: job_fingerprint(job, row) for row in rows if not row.get("no_reuse")}
    if not wanted:
        return {}
    found: dict[bytes, dict] = {}
    for earlier in db.reusable_openers(conn, str(job["account_id"]), list(set(wanted.values())), days):
        found.setdefault(bytes(earlier["fingerprint"]), {})[
            None if earlier["page_hash"] is None else bytes(earlier["page_hash"])] = earlier
    return {row_id: Candidates(fp, found[fp]) for row_id, fp in wanted.items() if fp in found}


def expected_reused(conn, job: dict, days: int, batch: int = 5000) -> int | None:
    """How many of the job's stored rows have an earlier opener of the same fingerprint (the
    estimate's ``reused_rows``): exact without page context (an opener written without a page);
    with it, an upper bound (any page: a row whose page changed since is generated again).
    None when the job's rows are not stored yet."""
    if days <= 0 or not job.get("reuse", True):
        return 0
    count, after, seen = 0, 0, False
    while True:
        rows = db.stored_rows(conn, job["id"], after, batch)
        if not rows:
            return count if seen else None
        seen = True
        fingerprints = [job_fingerprint(job, row) for row in rows]
        known = db.reusable_fingerprints(conn, str(job["account_id"]), list(set(fingerprints)), days,
                                         any_page=bool(job.get("page_context")))
        count += sum(1 for fp in fingerprints if fp in known)
        if len(rows) < batch:
            return count
        after = rows[-1]["row_number"]
