"""Near-duplicate openers across a whole job, however many chunks and handlers write it.

SPEC: an opener is a ``duplicate`` when it has the same first 8 words (normalised) as an opener
already accepted for the job, or a token-set similarity ≥ 0.85 with one (rapidfuzz's
``token_set_ratio``). A job's chunks run in many Lambdas at once, so the accepted openers live
in Redis, per job, and the work per opener must not grow with the job:

* Same first words: one hash field per accepted opener, one ``HGET``.
* Similarity: MinHash over the opener's words (``BANDS`` bands of ``ROWS`` hashes, stable across
  processes), locality-sensitive hashing into band buckets: two openers whose word sets overlap
  (Jaccard ≥ ~0.6) share a bucket with probability > 0.97, unrelated ones rarely. Only the
  openers of the new opener's buckets are compared with rapidfuzz, and a bucket keeps at most
  ``bucket_cap`` members, so at most ``BANDS × bucket_cap`` candidates are ever examined.
* Two round trips per opener: ``lookup.lua`` returns the candidates and each bucket's count of
  adds (its stamp); the comparison runs here; ``add.lua`` stores the opener only if no bucket
  changed meanwhile, else the caller looks again. So two handlers adding near-identical openers
  at once cannot both be accepted (optimistic concurrency, like WATCH/MULTI, in one script: it
  also works on Redis Cluster, all of a job's keys sharing one hash tag). A third, one ``HGET``,
  only when an opener is found similar: the line it repeats.
* Each accepted opener is stored with its compared words (normalised once, when it is added):
  a lookup returns only the candidates' words, and comparing up to ``BANDS × bucket_cap`` of
  them is one rapidfuzz call, with no text normalised again. So a lookup in a job of 100,000
  openers, whose buckets are full, costs about what one in a job of 1,000 does.

Keys, with J the job's tagged prefix (``{<prefix>:<job_id>}``, or ``<prefix>:<job_id>`` when the
prefix holds a hash tag already): ``J:first8``, ``J:texts``, ``J:bands``, ``J:seq``, each kept
``ttl_s`` after the job's last accepted opener. ``seed`` rebuilds a job's index (e.g. from the
database, when a job is regenerated after its keys expired); ``forget`` deletes it.

Redis errors are raised to the caller, who decides whether an unchecked opener may go on.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rapidfuzz import fuzz, process

from chalicelib.quality.text import normalise, words

FIRST_WORDS = 8
THRESHOLD = 85.0  # rapidfuzz scores 0..100: SPEC's 0.85
BANDS = 8
ROWS = 2
BUCKET_CAP = 8
DEFAULT_TTL_S = 86_400
MAX_TRIES = 5
MIN_SHINGLE_CHARS = 3  # "a", "of", "de" say nothing about what an opener is about
RECORD_BREAK = "\n"  # between an indexed opener's compared words and the opener itself

_MERSENNE = (1 << 61) - 1
_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
LUA_DIR = Path(__file__).with_name("lua")


def _stable_hash(text: str, salt: str = "") -> int:
    """A 64-bit hash that is the same in every process (``hash()`` is salted per process)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, person=salt.encode()[:16])
    return int.from_bytes(digest.digest(), "big")


# Universal hashing (a·x + b mod p) gives the MinHash permutations from one hash per word.
_PERMUTATIONS = [(_stable_hash(f"a{i}", "minhash") | 1, _stable_hash(f"b{i}", "minhash"))
                 for i in range(BANDS * ROWS)]


# -- the pure part: what is compared ----------------------------------------------------------------


def tokens(opener: str) -> list[str]:
    """The words compared: normalised, punctuation dropped."""
    return words(normalise(opener))


def first_words_key(opener: str) -> str:
    """The key of an opener's first ``FIRST_WORDS`` words (hashed: short and of fixed size)."""
    return _first_words_key(tokens(opener))


def _first_words_key(found: list[str]) -> str:
    return hashlib.blake2b(" ".join(found[:FIRST_WORDS]).encode("utf-8", "surrogatepass"),
                           digest_size=12).hexdigest()


def shingles(opener: str) -> set[str]:
    """What MinHash sees: words of ``MIN_SHINGLE_CHARS`` or more; text written without spaces
    (Chinese, Japanese) as pairs of characters."""
    return _shingles(tokens(opener))


def _shingles(found: list[str]) -> set[str]:
    result: set[str] = set()
    for word in found:
        if _CJK.search(word):
            result.update(word[i:i + 2] for i in range(max(1, len(word) - 1)))
        elif len(word) >= MIN_SHINGLE_CHARS:
            result.add(word)
    return result


def band_buckets(opener: str) -> list[str]:
    """The LSH bucket of each band ("<band>:<hash of its MinHash rows>"); none for an opener
    without shingles (it is then compared by its first words only)."""
    return _band_buckets(tokens(opener))


def _band_buckets(found: list[str]) -> list[str]:
    hashes = [_stable_hash(s) for s in _shingles(found)]
    if not hashes:
        return []
    signature = [min((a * h + b) % _MERSENNE for h in hashes) for a, b in _PERMUTATIONS]
    return [f"{band}:{_stable_hash(repr(signature[band * ROWS:(band + 1) * ROWS])):x}" for band in range(BANDS)]


def similarity(a: str, b: str) -> float:
    """rapidfuzz's token-set similarity (0..100) of two openers' normalised words."""
    return fuzz.token_set_ratio(" ".join(tokens(a)), " ".join(tokens(b)), processor=None)


def is_near_duplicate(a: str, b: str, threshold: float = THRESHOLD) -> bool:
    """SPEC's rule for two openers, without any index."""
    return first_words_key(a) == first_words_key(b) or similarity(a, b) >= threshold


# -- the job-wide index in Redis -----------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """``duplicate_of``: the accepted opener this one repeats (None: accepted and stored);
    ``reason``: ``first_words`` or ``similar``; ``candidates``: openers compared; ``tries``:
    lookups made (more than one when another handler added to a shared bucket meanwhile)."""

    duplicate_of: str | None
    reason: str | None
    candidates: int
    tries: int


def _tagged(prefix: str, job_id: str) -> str:
    start = prefix.find("{")
    if start >= 0 and prefix.find("}", start + 2) > start:  # the prefix holds a tag already
        return f"{prefix}:{job_id}"
    return f"{{{prefix}:{job_id}}}"


class DuplicateIndex:
    """The accepted openers of each job, in Redis (see the module docstring).

    ``after_lookup`` is called between the lookup and the add (tests use it to make two handlers
    look up before either adds)."""

    def __init__(self, redis_client: Any, prefix: str = "csv-opener:dup", ttl_s: int = DEFAULT_TTL_S,
                 threshold: float = THRESHOLD, bucket_cap: int = BUCKET_CAP, max_tries: int = MAX_TRIES,
                 after_lookup: Callable[[], None] | None = None) -> None:
        self.redis = redis_client
        self.prefix = prefix
        self.ttl_s = max(1, int(ttl_s))
        self.threshold = threshold
        self.bucket_cap = max(1, int(bucket_cap))
        self.max_tries = max(1, int(max_tries))
        self.after_lookup = after_lookup
        self._lookup = redis_client.register_script((LUA_DIR / "lookup.lua").read_text())
        self._add = redis_client.register_script((LUA_DIR / "add.lua").read_text())

    def keys(self, job_id: str) -> list[str]:
        base = _tagged(self.prefix, str(job_id))
        return [f"{base}:first8", f"{base}:texts", f"{base}:bands", f"{base}:seq"]

    def check_and_add(self, job_id: str, opener: str) -> str | None:
        """The accepted opener of the job that ``opener`` repeats, or None after storing
        ``opener`` as accepted."""
        return self.check(job_id, opener).duplicate_of

    def check(self, job_id: str, opener: str) -> Verdict:
        """``check_and_add`` with what it took (see ``Verdict``)."""
        keys = self.keys(job_id)
        found = tokens(opener)
        first8, buckets = _first_words_key(found), _band_buckets(found)
        mine = " ".join(found)
        record = _record(mine, opener)
        examined = 0
        for attempt in range(1, self.max_tries + 1):
            looked = self._lookup(keys=keys[:3], args=[first8, *buckets])
            if int(looked[0]) == 1:
                return Verdict(_opener_of(looked[2]), "first_words", examined, attempt)
            stamps, ids, texts = looked[1], looked[2], looked[3]
            examined += len(ids)
            compared = [_compared_words(text) for text in texts]
            match = process.extractOne(mine, compared, scorer=fuzz.token_set_ratio, processor=None,
                                       score_cutoff=self.threshold) if mine and compared else None
            if match is not None:
                repeated = self._opener(keys[1], ids[match[2]]) or compared[match[2]]
                return Verdict(repeated, "similar", examined, attempt)
            if self.after_lookup is not None:
                self.after_lookup()
            # The last try stores the opener whatever changed: under a storm of adds to one
            # bucket we prefer progress to an endless loop (first words are still checked).
            force = attempt == self.max_tries
            seen = [] if force else [_text(stamp) for stamp in stamps]
            added = self._add(keys=keys, args=[self.ttl_s, self.bucket_cap, "1" if force else "0",
                                               first8, record, len(buckets), *buckets, *seen])
            if int(added[0]) == 1:
                return Verdict(_opener_of(added[2]), "first_words", examined, attempt)
            if int(added[0]) == 0:
                return Verdict(None, None, examined, attempt)
        raise AssertionError("unreachable: the last try is forced")

    def _opener(self, texts_key: str, member: Any) -> str:
        """The accepted opener stored under ``member`` (a similar one: the lookup returned only
        its words, so it is read once more, on this rare path)."""
        return _opener_of(self.redis.hget(texts_key, member) or "")

    def seed(self, job_id: str, openers: Iterable[str], batch: int = 200) -> None:
        """Store openers already accepted for the job (no checks among them but first words),
        ``batch`` to a script call: an index lost to its TTL is rebuilt from the database this way.
        One script call, not a pipeline: Redis Cluster clients refuse scripts in pipelines."""
        keys = self.keys(job_id)
        records: list[Any] = []
        count = 0
        for opener in openers:
            found = tokens(opener)
            buckets = _band_buckets(found)
            records += [_first_words_key(found), _record(" ".join(found), opener), len(buckets), *buckets]
            count += 1
            if count == batch:
                self._add(keys=keys, args=[self.ttl_s, self.bucket_cap, "1", *records])
                records, count = [], 0
        if records:
            self._add(keys=keys, args=[self.ttl_s, self.bucket_cap, "1", *records])

    def forget(self, job_id: str) -> None:
        """Delete the job's index (its job is finished, canceled or deleted)."""
        self.redis.delete(*self.keys(job_id))


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else str(value)


# What the index stores per opener: its compared words, a line break, the opener. Neither part
# holds a line break (words are runs of letters and digits; an opener's whitespace is collapsed
# by the cleaning every answer goes through, and by _record for any other caller).


def _record(compared: str, opener: str) -> str:
    return f"{compared}{RECORD_BREAK}{' '.join(opener.split())}"


def _opener_of(value: Any) -> str:
    """The opener of a stored record (a record of an index written before the words were
    stored, the opener alone, is its own opener)."""
    return _text(value).split(RECORD_BREAK, 1)[-1]


def _compared_words(value: Any) -> str:
    """The compared words of a record as lookup.lua returns it: the words and the line break
    (the opener left in Redis), or, from an older index, the whole opener, normalised here."""
    text = _text(value)
    if text.endswith(RECORD_BREAK):
        return text[:-1]
    return " ".join(tokens(text))
