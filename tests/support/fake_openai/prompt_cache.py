"""Provider prompt caching, as OpenAI reports it in ``usage.prompt_tokens_details.cached_tokens``.

OpenAI keeps the processed prefix of a prompt for a few minutes; a later request of the same
model that starts with the same bytes is billed less for that prefix. Only prompts of at least
1,024 tokens are cached, and the cached part grows in steps of 128 tokens. Requests are routed
by a hash of the prefix combined with ``prompt_cache_key``, so requests with different keys do
not share a cache.

The fake's model of it, at message granularity: a prefix is the first k messages of a request,
byte-identical (as JSON); its tokens are the tokens those messages count in ``prompt_tokens``.
When a request is answered, the longest of its prefixes that an earlier answered request of the
same model and ``prompt_cache_key`` (or the same absence of one) had, within ``ttl_s`` seconds,
counts as cached if it has at least ``min_tokens`` tokens: ``cached_tokens = min_tokens + 128 *
floor((prefix_tokens - min_tokens) / 128)``. Then every prefix of the request of at least
``min_tokens`` tokens is remembered (or refreshed). A request's first prefixes are never cached
on the request itself, so the first of a kind reports 0.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from .tokens import REPLY_PRIMING

STEP = 128
MAX_ENTRIES = 200_000


class PromptCache:
    """Remembered prefixes, oldest first. Not thread-safe: the server calls it under its lock."""

    def __init__(self) -> None:
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # prefix key -> last used (monotonic)
        self.hits = 0
        self.cached_tokens = 0

    def use(self, model: str, cache_key: str | None, messages: Sequence[Any], message_tokens: Sequence[int],
            now: float, min_tokens: int, ttl_s: float) -> int:
        """The cached tokens of a request answered now (see the module docstring); remembers its prefixes.
        ``message_tokens``: each message's tokens (tokens.message_tokens)."""
        while self._seen:  # forget what has expired (oldest first)
            key, when = next(iter(self._seen.items()))
            if now - when <= ttl_s and len(self._seen) <= MAX_ENTRIES:
                break
            self._seen.popitem(last=False)
        if REPLY_PRIMING + sum(message_tokens) < min_tokens:
            return 0  # too short to be cached, or to cache anything (most requests of the tests)
        digest = hashlib.sha256(json.dumps([model, cache_key]).encode())
        prefixes: list[tuple[bytes, int]] = []
        tokens = REPLY_PRIMING
        for message, count in zip(messages, message_tokens, strict=True):
            digest.update(json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
            tokens += count
            if tokens >= min_tokens:
                prefixes.append((digest.copy().digest(), tokens))
        cached = 0
        for key, prefix_tokens in reversed(prefixes):
            if key in self._seen:
                cached = min_tokens + STEP * ((prefix_tokens - min_tokens) // STEP)
                break
        for key, _ in prefixes:
            self._seen[key] = now
            self._seen.move_to_end(key)
        if cached:
            self.hits += 1
            self.cached_tokens += cached
        return cached
