"""A wrapper around the opener generator for worker tests: counts calls per URL and overlaps."""

from __future__ import annotations

import collections
import threading
import time

from chalicelib.generation.answers import GenerationFailed


class CountingGenerator:
    """The real generator (dummy transport, Redis limiter), counting calls per URL."""

    def __init__(self, inner, fail_urls=(), delay_s: float = 0.0):
        self.inner = inner
        self.calls = collections.Counter()
        self.fail_urls = set(fail_urls)
        self.delay_s = delay_s
        self.active: set[str] = set()
        self.peak = 0  # most calls in flight at once
        self.overlaps = 0
        self.lock = threading.Lock()

    def generate(self, url, instructions=None, model=None, should_stop=lambda: False, account=None, **data):
        with self.lock:
            self.calls[url] += 1
            if url in self.active:
                self.overlaps += 1
            self.active.add(url)
            self.peak = max(self.peak, len(self.active))
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            if url in self.fail_urls:
                raise GenerationFailed("HTTP 500 from the model API: boom", attempts=3)
            return self.inner.generate(url, instructions, model, should_stop, account, **data)
        finally:
            with self.lock:
                self.active.discard(url)
