"""Where a chunk handler's pages come from: ``page_summary.submit(url, account_id, start_by)``
(a Future of ``(summary or None, context_status)``) when the page callable has it, as
:class:`chalicelib.outbound.summaries.PageSummaries` does (fetched on the process's event loop,
no thread per page); else the plain callable on a pool of threads (tests, stand-ins)."""

from __future__ import annotations

import contextvars
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


def page_source(page_summary: Any, threads: int) -> Any:
    """What to submit a row's page to (None: no page context here)."""
    if page_summary is None:
        return None
    if callable(getattr(page_summary, "submit", None)):
        return page_summary
    return ThreadedPages(page_summary, threads)
