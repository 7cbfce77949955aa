"""Redis key names of the shared limiter: the prefix as a hash tag (every key of one limiter in
one Redis Cluster slot) and a model's name made safe for a key."""

from __future__ import annotations

import re


def hash_tag(key: str) -> str | None:
    """What Redis Cluster hashes instead of the whole key: the text between the first ``{`` and
    the next ``}``, if that is not empty; else None (the whole key is hashed)."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1:end] if end > start + 1 else None


def tagged_prefix(prefix: str) -> str:
    """The prefix every key of a limiter starts with: ``prefix`` if it holds a hash tag already,
    else ``{prefix}``, so that all keys built on it hash to one slot."""
    if hash_tag(prefix) is not None:
        return prefix
    if hash_tag(f"{{{prefix}}}") is None:  # empty, or starting with '}'
        raise ValueError(f"rate-limit prefix {prefix!r} cannot be made into a Redis hash tag")
    return f"{{{prefix}}}"


MODEL_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9._:/-]")


def model_key(model: str) -> str:
    """A model name as a key part: ASCII letters, digits and ._:/- only, at most 100 characters."""
    return MODEL_KEY_UNSAFE.sub("_", model)[:100]
