"""Row values for worker tests with the fake model server."""

from __future__ import annotations

SYLLABLES = ["ka", "lo", "mi", "ne", "pu", "ra", "si", "to", "vu", "ze", "ba", "do", "fe", "gi", "ho", "ju"]


def about(i: int) -> str:
    """A description no other row shares a word with (so good openers are never near-duplicates)."""
    words = [SYLLABLES[(i + k) % 16] + SYLLABLES[(3 * i + 5 * k) % 16] + SYLLABLES[(i // 16 + k) % 16]
             for k in range(8)]
    return f"{' '.join(words)} bakery"
