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
  also works on Redis Cluster, all of a job's keys sharing one hash tag).

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

from rapidfuzz import fuzz

from chalicelib.quality.text import normalise, words

FIRST_WORDS = 8
THRESHOLD = 85.0  # rapidfuzz scores 0..100: SPEC's 0.85
BANDS = 8
ROWS = 2
BUCKET_CAP = 8
DEFAULT_TTL_S = 86_400
MAX_TRIES = 5
MIN_SHINGLE_CHARS = 3  # "a", "of", "de" say nothing about what an opener is about

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
    return hashlib.blake2b(" ".join(tokens(opener)[:FIRST_WORDS]).encode("utf-8", "surrogatepass"),
                           digest_size=12).hexdigest()


def shingles(opener: str) -> set[str]:
    """What MinHash sees: words of ``MIN_SHINGLE_CHARS`` or more; text written without spaces
    (Chinese, Japanese) as pairs of characters."""
    found: set[str] = set()
    for word in tokens(opener):
        if _CJK.search(word):
            found.update(word[i:i + 2] for i in range(max(1, len(word) - 1)))
        elif len(word) >= MIN_SHINGLE_CHARS:
            found.add(word)
    return found


def band_buckets(opener: str) -> list[str]:
    """The LSH bucket of each band ("<band>:<hash of its MinHash rows>"); none for an opener
    without shingles (it is then compared by its first words only)."""
    hashes = [_stable_hash(s) for s in shingles(opener)]
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
        first8, buckets = first_words_key(opener), band_buckets(opener)
        mine = " ".join(tokens(opener))
        examined = 0
        for attempt in range(1, self.max_tries + 1):
            found = self._lookup(keys=keys[:3], args=[first8, *buckets])
            if int(found[0]) == 1:
                return Verdict(_text(found[2]), "first_words", examined, attempt)
            stamps, ids, texts = found[1], found[2], found[3]
            examined += len(ids)
            for text in map(_text, texts):
                if text and fuzz.token_set_ratio(mine, " ".join(tokens(text)), processor=None,
                                                 score_cutoff=self.threshold):
                    return Verdict(text, "similar", examined, attempt)
            if self.after_lookup is not None:
                self.after_lookup()
            # The last try stores the opener whatever changed: under a storm of adds to one
            # bucket we prefer progress to an endless loop (first words are still checked).
            force = attempt == self.max_tries
            seen = [] if force else [_text(stamp) for stamp in stamps]
            added = self._add(keys=keys, args=[self.ttl_s, self.bucket_cap, "1" if force else "0",
                                               first8, opener, len(buckets), *buckets, *seen])
            if int(added[0]) == 1:
                return Verdict(_text(added[2]), "first_words", examined, attempt)
            if int(added[0]) == 0:
                return Verdict(None, None, examined, attempt)
        raise AssertionError("unreachable: the last try is forced")

    def seed(self, job_id: str, openers: Iterable[str], batch: int = 200) -> None:
        """Store openers already accepted for the job (no checks among them but first words),
        ``batch`` to a script call: an index lost to its TTL is rebuilt from the database this way.
        One script call, not a pipeline: Redis Cluster clients refuse scripts in pipelines."""
        keys = self.keys(job_id)
        records: list[Any] = []
        count = 0
        for opener in openers:
            buckets = band_buckets(opener)
            records += [first_words_key(opener), opener, len(buckets), *buckets]
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
