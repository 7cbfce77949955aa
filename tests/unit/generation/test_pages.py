"""Where a chunk run's pages come from (chalicelib/generation/pages.py): the process's page
summaries, whose fetches not over when the run ends are cancelled, or a pool of threads."""

from __future__ import annotations

import threading
from concurrent.futures import Future

from chalicelib.generation.pages import RunPages, ThreadedPages, page_source


class Summaries:
    """A stand-in for outbound.summaries.PageSummaries: each submit a Future settled by the test."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, float]] = []
        self.futures: list[Future] = []

    def submit(self, url: str, account_id: str, start_by: float) -> Future:
        self.asked.append((url, account_id, start_by))
        self.futures.append(Future())
        return self.futures[-1]


def test_the_pages_not_over_when_a_run_ends_are_cancelled_and_the_others_left_alone():
    summaries = Summaries()
    pages = page_source(summaries, threads=4)
    assert isinstance(pages, RunPages)
    done, waiting, running = (pages.submit(f"https://{n}.example/", "acct", 9.0) for n in ("a", "b", "c"))
    assert summaries.asked[0] == ("https://a.example/", "acct", 9.0)
    done.set_result(("Title: A", "fetched"))
    running.set_running_or_notify_cancel()  # cannot be cancelled: it ends by itself
    pages.shutdown()
    assert waiting.cancelled() and not done.cancelled() and not running.cancelled()
    assert not pages.pending  # let go of: the run no longer holds them
    pages.shutdown()  # again: nothing left to do
    assert done.result() == ("Title: A", "fetched")


def test_a_plain_page_callable_runs_on_threads_and_no_source_without_one():
    seen = []
    pages = page_source(lambda url, account: seen.append(threading.current_thread().name) or ("s", "fetched"), 2)
    assert isinstance(pages, ThreadedPages)
    assert pages.submit("https://a.example/", "acct", float("inf")).result(5) == ("s", "fetched")
    assert seen[0].startswith("page")
    pages.shutdown()
    assert page_source(None, 2) is None
