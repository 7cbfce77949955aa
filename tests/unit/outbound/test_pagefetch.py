"""Pages on the event loop (chalicelib/outbound/pagefetch.py): hundreds in flight on one loop and
no thread each, the deadline over a trickling answer, the turn bound, cancellation, body decoding
as the webhooks' client does it, and the summaries' Future for a chunk handler.

Nothing here leaves this machine (`local_connections_only`); names go through injected resolvers."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import zlib
from concurrent.futures import Future

import pytest

from chalicelib.outbound import ERROR, FETCHED, NOT_HTML, TIMEOUT, Fetcher, FetchResult
from chalicelib.outbound.answers import BodyDecoder
from chalicelib.outbound.rules import Stop
from chalicelib.outbound.summaries import PageSummaries
from tests.support.fake_site import FakeSite, html
from tests.support.hang_server import HangServer
from tests.support.util import wait_for

ALLOW = ["127.0.0.1/32"]


def _wait_for(condition) -> bool:
    return bool(wait_for(condition, timeout=10, every=0.01))


# --- many at once ------------------------------------------------------------------------------


def test_hundreds_of_hanging_pages_are_in_flight_at_once_on_one_loop_without_a_thread_each():
    """300 pages on a server that answers robots.txt (404) and never the page: all 300 wait on
    the server at once, the process gains no thread for them, and each ends at its deadline."""
    n = 300
    with HangServer("127.0.0.1", robots=b"") as server:
        fetcher = Fetcher(allow_networks=ALLOW, timeout_s=6.0, host_concurrency=n, pages_in_flight=n)
        assert fetcher.get_page(f"http://127.0.0.1:{server.port}/robots.txt").status == ERROR  # loop started
        fetcher.host_failures.forget("127.0.0.1")
        threads_before = threading.active_count()
        futures = [fetcher.submit_page(f"http://127.0.0.1:{server.port}/p{i}") for i in range(n)]
        assert _wait_for(lambda: server.open >= n)
        threads_during = threading.active_count()
        in_flight = fetcher.pages.running
        results = [f.result() for f in futures]
    assert server.max_open >= n and in_flight == n
    assert threads_during <= threads_before + 2, (threads_before, threads_during)
    assert {r.status for r in results} == {TIMEOUT}
    assert all(r.reason.startswith("timed out waiting for 127.0.0.1") for r in results), {r.reason for r in results}


def test_no_more_than_the_pages_in_flight_run_at_once_and_a_late_turn_is_a_skipped_timeout():
    with HangServer("127.0.0.1", robots=b"") as server:
        fetcher = Fetcher(allow_networks=ALLOW, timeout_s=1.0, host_concurrency=10, pages_in_flight=2)
        held = [fetcher.submit_page(f"http://127.0.0.1:{server.port}/hold{i}") for i in range(2)]
        assert _wait_for(lambda: fetcher.pages.running == 2)
        late = fetcher.submit_page(f"http://127.0.0.1:{server.port}/late", start_by=time.monotonic() + 0.1)
        queued = fetcher.submit_page(f"http://127.0.0.1:{server.port}/queued")
        assert fetcher.pages.running == 2
        late_result = late.result()
        assert (late_result.status, late_result.skipped) == (TIMEOUT, True)
        assert [f.result().status for f in held] == [TIMEOUT, TIMEOUT]
        assert queued.result().skipped  # its turn came after the host had timed out: skipped at once
        # the late and queued ones never connected (robots.txt is asked once or twice: the second
        # held page may find the first one's answer cached)
        assert sorted(p for p in server.paths if p != "/robots.txt") == ["/hold0", "/hold1"]


def test_cancelling_a_page_ends_its_fetch_and_closes_its_connection():
    with HangServer("127.0.0.1", robots=b"") as server:
        fetcher = Fetcher(allow_networks=ALLOW, timeout_s=3600)
        future = fetcher.submit_page(f"http://127.0.0.1:{server.port}/")
        assert _wait_for(lambda: server.open == 1 and server.accepted == 2)
        assert future.cancel()
        assert _wait_for(lambda: server.open == 0 and fetcher.pages.running == 0)
    assert fetcher.host_failures.get("127.0.0.1") is None  # a cancelled page blames nobody


# --- the deadline ------------------------------------------------------------------------------


def test_a_trickling_answer_is_cut_at_the_deadline_over_the_whole_exchange():
    """/slow sends its head, then a byte every 0.5 s for 12 s: every read succeeds, only the
    deadline over the whole fetch ends it (and the host is remembered as failed)."""
    with FakeSite() as site:
        fetcher = Fetcher(allow_networks=ALLOW, timeout_s=1.2)
        result = fetcher.get_page(site.url("/slow"))
        assert (result.status, result.reason) == (TIMEOUT, "timed out reading from 127.0.0.1")
        assert site.sent["/slow"] <= 4
        assert fetcher.host_failures.get("127.0.0.1") == (TIMEOUT, "timed out reading from 127.0.0.1")


def test_robots_txt_that_hangs_times_out_as_robots_txt():
    with HangServer("127.0.0.1") as server:  # robots.txt hangs too
        result = Fetcher(allow_networks=ALLOW, timeout_s=0.5).get_page(f"http://127.0.0.1:{server.port}/")
    assert (result.status, result.reason) == (TIMEOUT, "timed out reading robots.txt")


def test_a_tls_handshake_that_never_comes_ends_at_the_deadline_and_lets_go_of_the_connection():
    with HangServer("127.0.0.1") as server:
        fetcher = Fetcher(allow_networks=ALLOW, timeout_s=0.5)
        result = fetcher.get_page(f"https://127.0.0.1:{server.port}/")
        assert (result.status, result.reason) == (TIMEOUT, "timed out reading robots.txt")
        assert _wait_for(lambda: server.accepted == 1 and server.open == 0)


def test_many_names_that_never_resolve_end_at_the_dns_bound_each():
    release = threading.Event()

    def dead(host, port, family=0, type=0, proto=0, flags=0):
        release.wait()
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    fetcher = Fetcher(resolver=dead, timeout_s=3600, dns_timeout_s=0.2)
    try:
        futures = [fetcher.submit_page(f"http://n{i}.dead.example/") for i in range(20)]
        results = [f.result(timeout=60) for f in futures]
    finally:
        release.set()
    assert {(r.status, r.reason.split(" n")[0]) for r in results} == {(TIMEOUT, "timed out resolving")}


# --- the body ----------------------------------------------------------------------------------


def _deflate_raw(data: bytes) -> bytes:
    squeeze = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return squeeze.compress(data) + squeeze.flush()


PAGE = html(title="Encoded")
ENCODED = {
    "gzip": gzip.compress(PAGE),
    "x-gzip": gzip.compress(PAGE),
    "deflate": zlib.compress(PAGE),
    "deflate-raw": _deflate_raw(PAGE),
    "gzip-members": gzip.compress(PAGE[:100]) + gzip.compress(PAGE[100:]),
    "gzip, deflate": zlib.compress(gzip.compress(PAGE)),
    "GZIP": gzip.compress(PAGE),
    "identity": PAGE,
    "br": b"\x8b\x03\x80not brotli",  # unknown here: left as it came, as urllib3 does without brotli
    "gzip-broken": b"\x1f\x8b\x08\x00broken",
}


@pytest.mark.parametrize("name", sorted(ENCODED))
def test_a_content_encoding_is_undone_as_the_webhooks_client_does(name):
    """The same answer through the page path (h11 and BodyDecoder) and the webhooks' client
    (urllib3, decode_content): the same bytes, or both an error."""
    header = {"deflate-raw": "deflate", "gzip-members": "gzip", "gzip-broken": "gzip"}.get(name, name)
    with FakeSite() as site:
        site.add("/enc", ENCODED[name], headers={"Content-Encoding": header}, content_type="text/html")
        fetcher = Fetcher(allow_networks=ALLOW)
        page = fetcher.get_page(site.url("/enc"))
        webhook_client = fetcher.request("GET", site.url("/enc"))
    if webhook_client.status == ERROR:
        assert page.status == ERROR and "could not be decoded" in page.reason
    elif page.status == FETCHED:
        assert page.body == webhook_client.body
    else:
        assert page.status == NOT_HTML and webhook_client.body == ENCODED[name]  # left encoded: binary


def test_a_compressed_body_is_capped_after_decoding_without_inflating_all_of_it():
    bomb = gzip.compress(b"<html><title>zeros</title>" + b" " * 50_000_000)
    with FakeSite() as site:
        site.add("/bomb", bomb, headers={"Content-Encoding": "gzip"})
        result = Fetcher(allow_networks=ALLOW).get_page(site.url("/bomb"))
    assert (result.status, result.truncated, len(result.body)) == (FETCHED, True, 1_000_000)


def test_the_decoder_caps_what_each_call_gives():
    decoder = BodyDecoder("gzip", 1_000_000)
    assert len(decoder.decode(gzip.compress(b"x" * 100_000), 10)) == 10
    with pytest.raises(Stop):
        BodyDecoder("deflate", 1_000_000).decode(b"\xff\xff not deflate at all", 100)


def test_an_answer_that_is_not_http_is_an_error():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def garbage() -> None:
        for _ in range(2):  # robots.txt, then the page
            conn, _ = listener.accept()
            conn.recv(65536)
            conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
            conn.close()

    server = threading.Thread(target=garbage, daemon=True)
    server.start()
    try:
        result = Fetcher(allow_networks=ALLOW, timeout_s=5).get_page(f"http://127.0.0.1:{port}/")
    finally:
        listener.close()
    assert result.status == ERROR and result.reason.startswith("robots.txt: bad answer")


# --- summaries for a chunk handler -------------------------------------------------------------


class Store:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.threads: set[str] = set()

    def get(self, key):
        self.threads.add(threading.current_thread().name)
        return self.data.get(key)

    def set(self, key, value, ex=None):
        self.threads.add(threading.current_thread().name)
        self.data[key] = value


def test_summaries_submit_fetches_on_the_loop_and_caches_and_summarises_on_their_own_threads():
    from chalicelib.outbound.summaries import PageCache

    store = Store()
    with FakeSite() as site:
        summaries = PageSummaries(Fetcher(allow_networks=ALLOW), PageCache(store, prefix="t"), threads=2)
        summary, status = summaries.submit(site.url("/"), "acct").result(10)
        assert status == FETCHED and summary.startswith("Title: Acme Widgets")
        assert summaries.submit(site.url("/"), "acct").result(10) == (summary, status)  # from the cache
        assert site.hits["/"] == 1
        assert summaries(site.url("/"), "acct") == (summary, status)
    assert store.threads & {"page-summary_0", "page-summary_1"}  # submit: the summaries' own threads
    assert store.threads <= {"page-summary_0", "page-summary_1", threading.current_thread().name}


def test_cancelling_a_summary_cancels_its_fetch():
    with HangServer("127.0.0.1", robots=b"") as server:
        fetcher = Fetcher(allow_networks=ALLOW, timeout_s=3600)
        future = PageSummaries(fetcher, None).submit(f"http://127.0.0.1:{server.port}/", "acct")
        assert _wait_for(lambda: server.open == 1 and server.accepted == 2)
        assert future.cancel()
        assert _wait_for(lambda: server.open == 0 and fetcher.pages.running == 0)


class _DoneAtOnce(Future):
    """A fetch already over when its caller adds its callback (a host remembered as failed, a
    refused address): the callback runs on the caller's thread at once, and here the caller then
    lingers (up to 3 s) as a busy summary thread would."""

    def __init__(self, url: str, settled: threading.Event) -> None:
        super().__init__()
        self.settled = settled
        self.set_result(FetchResult(TIMEOUT, "host timed out a moment ago", url, skipped=True))

    def add_done_callback(self, fn):
        super().add_done_callback(fn)
        self.settled.wait(3)


def test_a_fetch_over_before_its_summary_task_returns_still_settles_the_row():
    """The summary of a fetch that ends at once is finished on another summary thread while the
    first is still in the caller's log context: each task has its own copy (one context cannot be
    entered by two threads; the second raised before anything settled the row, which then waited
    for good, and a chunk handler waiting on it never finished)."""
    settled = threading.Event()

    class Stub:
        def submit_page(self, url, start_by=None):
            return _DoneAtOnce(url, settled)

    summaries = PageSummaries(Stub(), None, threads=2)
    future = summaries.submit("http://slow.example/", "acct")
    future.add_done_callback(lambda f: settled.set())
    assert future.result(10) == (None, TIMEOUT)
    assert settled.is_set()


def test_a_summary_handed_on_after_the_pool_has_shut_down_is_an_error_not_a_wait():
    release = threading.Event()

    class Later:
        def submit_page(self, url, start_by=None):
            fetched: Future = Future()
            threading.Thread(target=lambda: release.wait(5) and fetched.set_result(
                FetchResult(TIMEOUT, "late", url)), daemon=True).start()
            return fetched

    summaries = PageSummaries(Later(), None, threads=1)
    future = summaries.submit("http://slow.example/", "acct")
    assert _wait_for(lambda: summaries.pool._work_queue.empty())
    summaries.pool.shutdown(wait=True)
    release.set()
    assert future.result(10) == (None, ERROR)
