"""Page fetching and summaries against a fake website on this machine (tests/support/fake_site.py),
with 127.0.0.1/32 allowed as OUTBOUND_ALLOW_NETWORKS would allow it, and the page cache in the
test Redis. Every test runs under `local_connections_only`: connections are recorded, and any to
an address off this machine is refused before a packet leaves (10.0.0.1, 169.254.169.254)."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
import unicodedata

import pytest
import redis
import trustme

from chalicelib.outbound import USER_AGENT, Fetcher
from chalicelib.outbound.summaries import PageCache, PageSummary, cache_key_url, summarize_html, summarize_page
from tests.support.fake_site import HUGE_BYTES, FakeSite, html, local_connections_only

ALLOW = ["127.0.0.1/32"]


@pytest.fixture(autouse=True)
def connections():
    with local_connections_only() as attempts:
        yield attempts


@pytest.fixture
def site():
    with FakeSite() as s:
        yield s


@pytest.fixture
def fetcher():
    return Fetcher(allow_networks=ALLOW)


def site_connections(connections, *sites):
    """The attempts that went to a fake site (the test's Redis connections are left out)."""
    ports = {s.port for s in sites}
    return [c for c in connections if c[1] in ports or c[1] in (80, 443)]


def wait_until(condition, timeout=3.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end and not condition():
        time.sleep(0.02)
    return condition()


# --- the summary --------------------------------------------------------------------------------


def test_a_page_is_summarised_from_its_head_headings_and_main_text(site, fetcher):
    summary, status, reason = summarize_page(site.url("/"), fetcher, None)
    assert (status, reason) == ("fetched", "ok")
    assert summary.splitlines() == [
        "Title: Acme Widgets",
        "Description: We make widgets for everyone.",
        "Open Graph: Acme on OG — The OG description.",
        "Headings: Widgets that work | Pricing",
        "Text: Pricing Our widgets are the best.",
    ]
    for chrome in ("tracking", "Menu item", "Footer links"):  # script, nav, footer
        assert chrome not in summary


def test_a_summary_is_bounded_whitespace_normalised_and_free_of_control_and_format_characters(site, fetcher):
    hostile = "Zero\u200bwidth \u202eevil\u202c bell\x07 nul\x00 tab\tnew\nline \u2028sep  "
    site.page("/long", html(title=hostile + "T" * 900, description=hostile * 40,
                            headings=tuple(f"Heading {i} " + hostile for i in range(40)),
                            body=(hostile + "word " * 50) * 200))
    summary, status, _ = summarize_page(site.url("/long"), fetcher, None)
    assert status == "fetched"
    assert len(summary) <= 1000
    assert {line.split(":")[0] for line in summary.splitlines()} == {"Title", "Description", "Headings", "Text",
                                                                      "Open Graph"}
    for line in summary.splitlines():
        assert line == " ".join(line.split())  # no runs, tabs or edges of whitespace
        assert not [c for c in line if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]
    assert "Zerowidth" in summary and "evil" in summary


def test_summarize_html_respects_a_declared_charset_and_says_nothing_for_an_empty_page():
    latin = "<html><head><title>Café Olé</title></head><body><p>Crème brûlée</p></body></html>".encode("latin-1")
    assert summarize_html(latin, "iso-8859-1").startswith("Title: Café Olé")
    meta = b"<meta charset='windows-1252'><title>Caf\xe9</title>"
    assert summarize_html(meta) == "Title: Café"
    assert summarize_html(b"<html><body><script>x()</script></body></html>") == ""
    assert len(summarize_html(html(body="x " * 5000), limit=200)) <= 200


def test_an_empty_page_is_an_error_not_an_empty_summary(site, fetcher):
    site.page("/empty", b"<!doctype html><html><body><script>app()</script></body></html>")
    assert summarize_page(site.url("/empty"), fetcher, None) == (None, "error", "no readable text")


# --- names, Host, User-Agent, TLS -----------------------------------------------------------------


def test_a_name_from_the_system_resolver_is_checked_like_any_other(site, fetcher, connections):
    """localhost comes from /etc/hosts: allowed here only because 127.0.0.1/32 is."""
    result = fetcher.get_page(site.url("/", host="localhost"))
    assert result.status == "fetched"
    assert [h.address for h in result.hops] == ["127.0.0.1"]
    request = next(r for r in site.requests if r["path"] == "/")
    assert request["host"] == f"localhost:{site.port}"
    assert request["user_agent"] == USER_AGENT == "CSVOpenerBot/1.0 (+https://csv-opener.example.com/bot)"

    blocked = Fetcher().get_page(site.url("/", host="localhost"))
    assert (blocked.status, blocked.reason) == ("blocked", "refused: localhost (loopback address)")
    assert set(site_connections(connections, site)) == {("127.0.0.1", site.port)}


@pytest.fixture(scope="module")
def tls_ca():
    return trustme.CA()


def _tls_site(ca: trustme.CA, name: str) -> FakeSite:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(server)
    return FakeSite(tls=server)


def _resolver(table):
    def resolve(host, port, *args):
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (table[host], port))]
    return resolve


def test_https_sends_the_name_as_sni_and_host_and_checks_the_certificate_against_it(tls_ca, connections):
    client = ssl.create_default_context()
    tls_ca.configure_trust(client)
    names = {"shop.test": "127.0.0.1", "other.test": "127.0.0.1"}
    with _tls_site(tls_ca, "shop.test") as site:
        fetcher = Fetcher(allow_networks=ALLOW, resolver=_resolver(names), ssl_context=client)
        result = fetcher.get_page(site.url("/", host="shop.test"))
        assert result.status == "fetched", result.reason
        assert set(site.sni_names) == {"shop.test"}
        assert {r["host"] for r in site.requests} == {f"shop.test:{site.port}"}

        wrong = fetcher.get_page(site.url("/", host="other.test"))  # same address, certificate for another name
        assert wrong.status == "error" and "TLS certificate not accepted" in wrong.reason
        untrusted = Fetcher(allow_networks=ALLOW, resolver=_resolver(names)).get_page(site.url("/", host="shop.test"))
        assert untrusted.status == "error" and "certificate" in untrusted.reason
        assert site.hits["/"] == 1
    assert set(site_connections(connections, site)) == {("127.0.0.1", site.port)}


# --- redirects ----------------------------------------------------------------------------------


@pytest.fixture
def other_sites():
    """Sites on 127.0.0.2 and [::1] that a redirect must never reach (not in the allow-list)."""
    with FakeSite("127.0.0.2") as second, FakeSite("::1") as v6:
        yield second, v6


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("target, reason", [
    ("http://10.0.0.1/", "refused: 10.0.0.1 (private address)"),
    ("http://169.254.169.254/latest/meta-data/", "refused: 169.254.169.254 (cloud metadata address)"),
    ("https://169.254.169.254/", "cloud metadata"),
    ("http://[fd00:ec2::254]/", "cloud metadata"),
    ("http://127.0.0.2:{second}/", "refused: 127.0.0.2 (loopback address)"),
    ("http://0x7f000002:{second}/", "refused: 0x7f000002 (loopback address)"),
    ("http://[::1]:{v6}/", "refused: ::1 (loopback address)"),
    ("http://[::ffff:127.0.0.1]:{port}/", "IPv4-mapped loopback address"),
    ("http://[::ffff:10.0.0.1]/", "IPv4-mapped private address"),
    ("http://100.64.0.1/", "CGNAT"),
    ("ftp://127.0.0.1:{port}/", "scheme ftp"),
])
def test_a_redirect_to_a_refused_address_is_blocked_before_connecting(code, target, reason, site, other_sites,
                                                                     fetcher, connections):
    second, v6 = other_sites
    location = target.format(second=second.port, v6=v6.port, port=site.port)
    site.redirect("/go", location, status=code)
    result = fetcher.get_page(site.url("/go"))
    assert (result.status, reason in result.reason) == ("blocked", True), result.reason
    assert [(h.address, h.http_status) for h in result.hops] == [("127.0.0.1", code)]
    assert second.hits.total() == 0 and v6.hits.total() == 0
    assert set(site_connections(connections, site, second, v6)) == {("127.0.0.1", site.port)}


def test_up_to_three_redirects_are_followed_and_a_fourth_is_an_error(site, fetcher):
    three = fetcher.get_page(site.url("/redirect/chain/3"))
    assert three.status == "fetched" and len(three.hops) == 4
    assert three.final_url == site.url("/")
    site.reset_counts()
    four = fetcher.get_page(site.url("/redirect/chain/4"))
    assert (four.status, four.reason) == ("error", "more than 3 redirects")
    assert site.hits["/"] == 0 and len(four.hops) == 4
    loop = fetcher.get_page(site.url("/redirect/self"))
    assert (loop.status, loop.reason) == ("error", "more than 3 redirects")


def test_a_redirect_to_another_allowed_place_is_followed(site, fetcher):
    site.redirect("/old", "/", status=301)
    site.redirect("/abs", site.url("/old", host="localhost"), status=308)
    result = fetcher.get_page(site.url("/abs"))
    assert result.status == "fetched"
    assert result.final_url == site.url("/", host="localhost")
    assert [(r["path"], r["host"]) for r in site.requests if r["path"] != "/robots.txt"] == [
        ("/abs", f"127.0.0.1:{site.port}"), ("/old", f"localhost:{site.port}"), ("/", f"localhost:{site.port}")]


# --- limits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/slow", "/slow-head"])
def test_a_slow_page_times_out_at_the_deadline(path, site, fetcher):
    """/slow trickles a byte every 0.5 s (each read would succeed: only a deadline over the whole
    exchange stops it); /slow-head sends nothing for 12 s."""
    started = time.monotonic()
    page = summarize_page(site.url(path), fetcher, None)
    elapsed = time.monotonic() - started
    assert page.context_status == "timeout", page
    assert 4.0 <= elapsed < 8.0


def test_the_deadline_covers_redirects_too(site, fetcher):
    for hop in range(3):
        site.add(f"/late/{hop}", b"", status=302, content_type=None, delay_s=2,
                 headers={"Location": f"/late/{hop + 1}" if hop < 2 else "/"})
    started = time.monotonic()
    result = fetcher.get_page(site.url("/late/0"))
    assert result.status == "timeout"
    assert 4.0 <= time.monotonic() - started < 8.0
    assert site.hits["/"] == 0


def test_at_most_one_megabyte_is_read(site, fetcher):
    result = fetcher.get_page(site.url("/huge"))
    assert (result.status, result.truncated, len(result.body)) == ("fetched", True, 1_000_000)
    assert result.reason == "truncated at 1,000,000 bytes"
    assert wait_until(lambda: site.in_flight == 0)  # the server saw the connection close
    assert site.sent["/huge"] < HUGE_BYTES / 2
    page = summarize_page(site.url("/huge"), fetcher, None)
    assert page.context_status == "fetched" and page.summary.startswith("Title: Huge")


@pytest.mark.parametrize("path, reason", [
    ("/pdf", "content type application/pdf"),
    ("/json", "content type application/json"),
    ("/binary-as-html", "PDF content"),
])
def test_only_html_is_summarised(path, reason, site, fetcher):
    assert summarize_page(site.url(path), fetcher, None) == (None, "not_html", reason)


def test_random_bytes_labelled_html_are_not_html_but_a_stray_control_character_is_fine(site, fetcher):
    site.add("/noise", bytes(range(256)) * 8, content_type="text/html")
    assert summarize_page(site.url("/noise"), fetcher, None) == (None, "not_html", "binary content")
    site.page("/stray", html(title="Stray\x00nul"))
    assert summarize_page(site.url("/stray"), fetcher, None).context_status == "fetched"


def test_html_without_a_content_type_is_sniffed(site, fetcher):
    assert summarize_page(site.url("/untyped"), fetcher, None).context_status == "fetched"
    site.add("/untyped-text", b"just some words", content_type=None)
    assert summarize_page(site.url("/untyped-text"), fetcher, None).context_status == "not_html"


def test_http_errors_are_errors(site, fetcher):
    assert summarize_page(site.url("/status/404"), fetcher, None) == (None, "error", "HTTP 404")
    assert summarize_page(site.url("/status/500"), fetcher, None) == (None, "error", "HTTP 500")


def test_a_closed_port_is_an_error(fetcher):
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    result = fetcher.get_page(f"http://127.0.0.1:{port}/")
    assert result.status == "error" and "refused" in result.reason


# --- robots.txt ---------------------------------------------------------------------------------


def test_robots_txt_is_honoured_and_read_once_per_origin(site, fetcher):
    assert summarize_page(site.url("/private/page"), fetcher, None) == (None, "robots", "disallowed by robots.txt")
    assert site.hits["/private/page"] == 0
    assert fetcher.get_page(site.url("/")).status == "fetched"
    assert fetcher.get_page(site.url("/status/404")).status == "error"
    assert site.hits["/robots.txt"] == 1


@pytest.mark.parametrize("robots, status", [
    (dict(body=b"User-agent: CSVOpenerBot\nDisallow: /\n\nUser-agent: *\nAllow: /\n", content_type="text/plain"),
     "robots"),
    (dict(body=b"User-agent: *\nDisallow: /\n", content_type="text/plain"), "robots"),
    (dict(body=b"User-agent: OtherBot\nDisallow: /\n", content_type="text/plain"), "fetched"),
    (dict(status=404, body=b"no robots here"), "fetched"),
    (dict(status=503, body=b"down"), "robots"),  # unreachable: stay away for now (RFC 9309)
])
def test_robots_rules(robots, status, site, fetcher):
    site.add("/robots.txt", **robots)
    assert summarize_page(site.url("/"), fetcher, None).context_status == status


def test_a_robots_txt_redirect_to_a_refused_address_counts_as_no_robots_txt(site, fetcher, connections):
    site.redirect("/robots.txt", "http://169.254.169.254/robots.txt")
    assert fetcher.get_page(site.url("/")).status == "fetched"
    assert set(site_connections(connections, site)) == {("127.0.0.1", site.port)}


# --- politeness ---------------------------------------------------------------------------------


def test_no_more_than_n_fetches_run_at_once_per_host(site):
    fetcher = Fetcher(allow_networks=ALLOW, host_concurrency=2)
    site.concurrency_path = "/concurrent"  # 0.4 s each
    results = []
    threads = [threading.Thread(target=lambda: results.append(fetcher.get_page(site.url("/concurrent"))))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert [r.status for r in results] == ["fetched"] * 8
    assert site.hits["/concurrent"] == 8
    assert site.max_concurrent == 2
    assert fetcher.pages.slots.active("127.0.0.1") == 0


def test_waiting_for_a_slot_counts_against_the_deadline(site):
    fetcher = Fetcher(allow_networks=ALLOW, host_concurrency=1, timeout_s=1.0)
    site.add("/hold", html(), delay_s=1.5)
    holder = fetcher.pages.submit(site.url("/hold"), timeout_s=5)  # a page with a longer deadline
    assert wait_until(lambda: site.hits["/hold"] == 1)
    started = time.monotonic()
    result = fetcher.get_page(site.url("/"))
    assert holder.result(5).ok
    assert result.status == "timeout" and "free connection" in result.reason
    assert time.monotonic() - started < 3


# --- the cache ----------------------------------------------------------------------------------


@pytest.fixture
def cache(redis_client, unique):
    return PageCache(redis_client, prefix=f"{os.environ['RATELIMIT_PREFIX']}:test:pages:{unique}", ttl_s=120,
                     failure_ttl_s=5)


def test_a_cached_summary_is_not_fetched_again(site, fetcher, cache, redis_client):
    first = summarize_page(site.url("/"), fetcher, cache, "account-a")
    assert first.context_status == "fetched"
    again = summarize_page(site.url("/"), fetcher, cache, "account-a")
    same_page = summarize_page(site.url("/#team").replace("http://", "HTTP://"), fetcher, cache, "account-a")
    assert first == again == same_page
    assert site.hits["/"] == 1
    ttl = redis_client.ttl(cache.key(site.url("/"), "account-a"))
    assert 100 < ttl <= 120


def test_the_cache_is_per_account_so_a_hit_never_tells_one_tenant_what_another_fetched(site, fetcher, cache):
    """Issue 19 item 12: A's fetch of a URL does not make B's first request for it a hit."""
    assert summarize_page(site.url("/"), fetcher, cache, "account-a").context_status == "fetched"
    assert site.hits["/"] == 1
    assert summarize_page(site.url("/"), fetcher, cache, "account-b").context_status == "fetched"
    assert site.hits["/"] == 2  # B's request reached the site
    summarize_page(site.url("/"), fetcher, cache, "account-b")
    summarize_page(site.url("/"), fetcher, cache, "account-a")
    assert site.hits["/"] == 2  # and each account's own cache still works
    assert cache.key(site.url("/"), "account-a") != cache.key(site.url("/"), "account-b")


def test_a_failed_fetch_is_cached_briefly(site, fetcher, cache, redis_client):
    first = summarize_page(site.url("/pdf"), fetcher, cache, "account-a")
    assert summarize_page(site.url("/pdf"), fetcher, cache, "account-a") == first == (
        None, "not_html", "content type application/pdf")
    assert site.hits["/pdf"] == 1
    assert 0 < redis_client.ttl(cache.key(site.url("/pdf"), "account-a")) <= 5


def test_the_cache_is_best_effort(site, fetcher):
    class Broken:
        def get(self, key):
            raise redis.ConnectionError("down")

        def set(self, *args, **kwargs):
            raise redis.ConnectionError("down")

    page = summarize_page(site.url("/"), fetcher, PageCache(Broken()), "account-a")
    assert page.context_status == "fetched"


def test_cache_keys_normalise_the_url():
    assert cache_key_url("HTTPS://Acme.COM:443/#x") == "https://acme.com/"
    assert cache_key_url("http://acme.com:8080?q=1") == "http://acme.com:8080/?q=1"
    assert cache_key_url("http://[::1]:80/a") == "http://[::1]/a"
    assert PageSummary("s", "fetched", "ok") == ("s", "fetched", "ok")


# --- webhooks (the same fetcher, POST) ------------------------------------------------------------


def test_post_json_sends_the_body_and_headers_and_does_not_follow_redirects(site, fetcher, connections):
    site.add("/hook", b"ok", content_type="text/plain")
    body = b'{"type": "job.completed", "job": {"id": "j1"}}'
    result = fetcher.post_json(site.url("/hook"), body, {"X-CSV-Opener-Signature": "t=1,v1=ab"})
    assert (result.status, result.http_status, result.body) == ("fetched", 200, b"ok")
    request = next(r for r in site.requests if r["method"] == "POST")
    assert request["body"] == body.decode()
    assert request["headers"]["content-type"] == "application/json"
    assert request["headers"]["x-csv-opener-signature"] == "t=1,v1=ab"
    assert request["user_agent"] == USER_AGENT

    moved = fetcher.post_json(site.url("/redirect/to?url=http://10.0.0.1/"), body)
    assert (moved.status, moved.http_status, len(moved.hops)) == ("fetched", 302, 1)
    refused = Fetcher().post_json("http://169.254.169.254/latest/", body)
    assert refused.status == "blocked"
    assert set(site_connections(connections, site)) == {("127.0.0.1", site.port)}
