"""Pages that never answer do not set the pace (chalicelib/outbound/fetcher.py): a name's lookup
has a bound of its own, shorter than the page's, and a host whose page timed out or whose name
did not resolve is skipped for a while by the same process, pages only (webhooks are not).

Nothing here leaves this machine (`local_connections_only`); names go through injected resolvers."""

from __future__ import annotations

import socket
import threading

import pytest

from chalicelib.outbound import ERROR, TIMEOUT, Fetcher, HostFailures
from chalicelib.settings import Settings
from tests.support.fake_site import FakeSite

ALLOW = ["127.0.0.1/32"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counting_resolver(table: dict[str, str], calls: list[str]):
    def resolve(host, port, family=0, type=0, proto=0, flags=0):
        calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (table[host], port))]
    return resolve


@pytest.fixture
def hanging_resolver():
    """A resolver that never answers until the test ends (as a dead DNS server): its calls."""
    release = threading.Event()
    calls: list[str] = []

    def resolve(host, port, family=0, type=0, proto=0, flags=0):
        calls.append(host)
        release.wait()
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    yield resolve, calls
    release.set()


# --- the memory of failed hosts ----------------------------------------------------------------


def test_a_failed_host_is_remembered_for_its_ttl_then_forgotten():
    clock = Clock()
    failures = HostFailures(60, clock=clock)
    failures.record("dead.example", TIMEOUT, "timed out connecting to dead.example")
    assert failures.get("dead.example") == (TIMEOUT, "timed out connecting to dead.example")
    assert failures.get("other.example") is None
    clock.now += 59.9
    assert failures.get("dead.example") is not None
    clock.now += 0.2
    assert failures.get("dead.example") is None


def test_when_the_memory_lapses_one_fetch_probes_while_the_others_still_skip():
    clock = Clock()
    failures = HostFailures(60, probe_s=5, clock=clock)
    failures.record("dead.example", TIMEOUT, "timed out")
    assert failures.admit("dead.example") == (TIMEOUT, "timed out")
    clock.now += 61
    assert failures.admit("dead.example") is None  # the probe
    assert failures.admit("dead.example") == (TIMEOUT, "timed out")  # the others, meanwhile
    clock.now += 5.1
    assert failures.admit("dead.example") is None  # the probe never reported: another one
    failures.forget("dead.example")  # it answered
    assert failures.admit("dead.example") is None and failures.admit("dead.example") is None


def test_a_failure_recorded_while_a_fetch_waited_counts_for_it_an_older_one_does_not():
    clock = Clock()
    failures = HostFailures(60, clock=clock)
    failures.record("dead.example", TIMEOUT, "timed out")
    clock.now += 1
    assert failures.admit("dead.example", failed_since=clock.now - 2) == (TIMEOUT, "timed out")
    assert failures.admit("dead.example", failed_since=clock.now) is None


def test_the_memory_is_bounded_oldest_first_and_a_zero_ttl_remembers_nothing():
    failures = HostFailures(60, size=3, clock=Clock())
    for n in range(5):
        failures.record(f"h{n}.example", ERROR, "cannot resolve")
    assert [failures.get(f"h{n}.example") is not None for n in range(5)] == [False, False, True, True, True]
    nothing = HostFailures(0)
    nothing.record("dead.example", TIMEOUT, "timed out")
    assert nothing.get("dead.example") is None


# --- the DNS bound -----------------------------------------------------------------------------


def test_a_lookup_that_never_answers_ends_at_the_dns_bound_not_the_page_deadline(hanging_resolver):
    """The page's deadline is far beyond the test's own timeout: only the DNS bound ends this."""
    resolve, calls = hanging_resolver
    fetcher = Fetcher(resolver=resolve, timeout_s=3600, dns_timeout_s=0.1)
    result = fetcher.get_page("http://dead-resolver.example/")
    assert result.status == TIMEOUT and result.reason == "timed out resolving dead-resolver.example"
    assert calls == ["dead-resolver.example"]


def test_the_settings_carry_the_dns_bound_and_the_failure_ttl():
    fetcher = Fetcher.from_settings(Settings(page_dns_timeout_s=0.25, page_host_failure_ttl_s=7.0))
    assert fetcher.dns_timeout_s == 0.25 and fetcher.host_failures.ttl_s == 7.0
    assert Settings.from_env({"PAGE_DNS_TIMEOUT_S": "0.5", "PAGE_HOST_FAILURE_TTL_S": "0"}).page_dns_timeout_s == 0.5
    assert Settings.from_env({"PAGE_HOST_FAILURE_TTL_S": "0"}).page_host_failure_ttl_s == 0.0


# --- pages of a failed host --------------------------------------------------------------------


def test_a_host_whose_lookup_timed_out_is_not_looked_up_again_for_its_next_pages(hanging_resolver):
    resolve, calls = hanging_resolver
    fetcher = Fetcher(resolver=resolve, dns_timeout_s=0.1)
    first = fetcher.get_page("http://dead-resolver.example/a")
    second = fetcher.get_page("http://Dead-Resolver.example./b?x=1")
    assert first.status == second.status == TIMEOUT
    assert second.reason.startswith("timed out resolving dead-resolver.example (a moment ago")
    assert calls == ["dead-resolver.example"]


def test_a_name_that_does_not_resolve_is_skipped_by_pages_but_not_by_other_hosts_or_webhooks():
    calls: list[str] = []
    fetcher = Fetcher(resolver=counting_resolver({}, calls))
    for path in ("/", "/about", "/contact"):
        result = fetcher.get_page(f"http://nowhere.example{path}")
        assert result.status == ERROR and "cannot resolve nowhere.example" in result.reason
    assert calls == ["nowhere.example"]
    fetcher.get_page("http://elsewhere.example/")
    fetcher.request("POST", "http://nowhere.example/hook", body=b"{}")  # a webhook tries every time
    assert calls == ["nowhere.example", "elsewhere.example", "nowhere.example"]


def test_after_the_ttl_the_host_is_tried_again():
    calls: list[str] = []
    clock = Clock()
    fetcher = Fetcher(resolver=counting_resolver({}, calls), host_failure_ttl_s=30)
    fetcher.host_failures.clock = clock
    fetcher.get_page("http://nowhere.example/")
    fetcher.get_page("http://nowhere.example/")
    clock.now += 31
    fetcher.get_page("http://nowhere.example/")  # the probe: still nothing
    fetcher.get_page("http://nowhere.example/")  # remembered again
    assert calls == ["nowhere.example", "nowhere.example"]


def test_a_site_that_never_answers_is_waited_on_once_then_skipped():
    with FakeSite() as site:
        site.add("/hang", b"<html><title>late</title></html>", delay_s=30)
        site.page("/fine", b"<html><title>fine</title></html>")
        fetcher = Fetcher(allow_networks=ALLOW, timeout_s=0.5)
        first = fetcher.get_page(site.url("/hang"))
        later = [fetcher.get_page(site.url(p)) for p in ("/hang", "/fine", "/other")]
        assert first.status == TIMEOUT and first.reason == "timed out waiting for 127.0.0.1"
        assert all(r.status == TIMEOUT and "a moment ago" in r.reason for r in later)
        assert site.hits["/hang"] == 1 and site.hits["/fine"] == 0 and site.hits["/other"] == 0
        assert fetcher.request("GET", site.url("/fine")).http_status == 200  # not a page: not skipped
        fetcher.host_failures.forget("127.0.0.1")  # as a probe that got a page does
        assert fetcher.get_page(site.url("/fine")).ok


def test_a_probe_that_gets_a_page_clears_the_host():
    with FakeSite() as site:
        site.add("/hang", b"<html><title>late</title></html>", delay_s=30)
        site.page("/fine", b"<html><title>fine</title></html>")
        clock = Clock()
        fetcher = Fetcher(allow_networks=ALLOW, timeout_s=0.5, host_failure_ttl_s=60)
        fetcher.host_failures.clock = clock
        assert fetcher.get_page(site.url("/hang")).status == TIMEOUT
        assert fetcher.get_page(site.url("/fine")).skipped
        clock.now += 61
        assert fetcher.get_page(site.url("/fine")).ok  # the probe
        assert fetcher.host_failures.get("127.0.0.1") is None and fetcher.get_page(site.url("/fine")).ok
        assert site.hits["/fine"] == 2


def test_with_a_zero_ttl_every_page_tries_again():
    calls: list[str] = []
    fetcher = Fetcher(resolver=counting_resolver({}, calls), host_failure_ttl_s=0)
    fetcher.get_page("http://nowhere.example/")
    fetcher.get_page("http://nowhere.example/")
    assert calls == ["nowhere.example", "nowhere.example"]


def test_a_page_that_timed_out_waiting_for_a_free_connection_does_not_condemn_the_host():
    """Our own queue, not the host: the holder's fetch answers, and so do the next pages."""
    with FakeSite() as site:
        site.add("/hold", b"<html><title>held</title></html>", delay_s=1.5)
        site.page("/next", b"<html><title>next</title></html>")
        fetcher = Fetcher(allow_networks=ALLOW, host_concurrency=1, timeout_s=1.0)
        holder = fetcher.pages.submit(site.url("/hold"), timeout_s=5)  # a page with a longer deadline
        try:
            assert _wait_for(lambda: site.hits["/hold"] == 1 and fetcher.pages.slots.active("127.0.0.1") == 1)
            waited = fetcher.get_page(site.url("/next"))
        finally:
            assert holder.result().ok
        assert waited.status == TIMEOUT and "free connection" in waited.reason
        assert fetcher.host_failures.get("127.0.0.1") is None
        assert fetcher.get_page(site.url("/next")).ok


def _wait_for(condition, attempts: int = 300) -> bool:
    done = threading.Event()
    for _ in range(attempts):
        if condition():
            return True
        done.wait(0.01)
    return condition()


def test_a_page_skipped_for_its_host_is_not_cached_for_its_url_but_one_that_was_tried_is():
    """The Redis cache is per URL: a URL never tried (its host failed a moment ago) must be tried
    once the host memory lapses, not be kept as a failure for the cache's failure TTL."""
    from chalicelib.outbound.summaries import PageCache, summarize_page

    class Store:
        def __init__(self) -> None:
            self.data: dict[str, str] = {}

        def get(self, key):
            return self.data.get(key)

        def set(self, key, value, ex=None):
            self.data[key] = value

    store = Store()
    cache = PageCache(store, prefix="t")
    calls: list[str] = []
    fetcher = Fetcher(resolver=counting_resolver({}, calls))
    tried = summarize_page("http://nowhere.example/a", fetcher, cache, "acct")
    skipped = summarize_page("http://nowhere.example/b", fetcher, cache, "acct")
    assert tried.context_status == skipped.context_status == ERROR and "a moment ago" in skipped.reason
    assert cache.get("http://nowhere.example/a", "acct") == tried
    assert cache.get("http://nowhere.example/b", "acct") is None
    assert fetcher.get_page("http://nowhere.example/c").skipped and calls == ["nowhere.example"]
