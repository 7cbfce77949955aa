"""Where a chunk handler's pages come from: ``page_summary.submit(url, account_id, start_by)``
(a Future of ``(summary or None, context_status)``) when the page callable has it, as
:class:`chalicelib.outbound.summaries.PageSummaries` does (fetched on the process's event loop,
no thread per page); else the plain callable on a pool of threads (tests, stand-ins). Either way a
chunk run's pages end with it (``shutdown``): a released row's fetch does not run on into a
frozen container, nor hold a turn another run's rows wait for."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from chalicelib.generation import reuse


class ThreadedPages:
    """``fetch(url, account_id) -> (summary, context_status)`` on ``threads`` threads, the
    submitting thread's log context kept; a fetch not started by ``start_by`` is a ``timeout``."""

    def __init__(self, fetch: Callable[[str, str], tuple], threads: int) -> None:
        self.fetch = fetch
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="page")

    def submit(self, url: str, account_id: str, start_by: float) -> Future:
        return self.pool.submit(contextvars.copy_context().run, reuse.in_time(self.fetch, start_by), url, account_id)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class RunPages:
    """One chunk run's pages from the process's ``page_summary.submit`` (shared by every run):
    the ones not over yet are cancelled when the run ends (a cancelled fetch is not cached)."""

    def __init__(self, page_summary: Any) -> None:
        self.page_summary = page_summary
        self.pending: set[Future] = set()
        self.lock = threading.Lock()

    def submit(self, url: str, account_id: str, start_by: float) -> Future:
        future = self.page_summary.submit(url, account_id, start_by)
        with self.lock:
            self.pending.add(future)
        future.add_done_callback(self._over)
        return future

    def _over(self, future: Future) -> None:
        with self.lock:
            self.pending.discard(future)

    def shutdown(self) -> None:
        with self.lock:
            pending, self.pending = list(self.pending), set()
        for future in pending:
            future.cancel()


def page_source(page_summary: Any, threads: int) -> ThreadedPages | RunPages | None:
    """What to submit a row's page to (None: no page context here); ``shutdown()`` when the run ends."""
    if page_summary is None:
        return None
    if callable(getattr(page_summary, "submit", None)):
        return RunPages(page_summary)
    return ThreadedPages(page_summary, threads)
