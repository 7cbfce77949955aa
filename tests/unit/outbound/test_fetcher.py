"""The SSRF-safe fetcher's address rules, pinning and refusals (chalicelib/outbound/fetcher.py).

Nothing here leaves this machine: every test runs under `local_connections_only`, which records
each socket connect and refuses any to an address off the machine before a packet is sent. Names
go through an injected resolver (or the system's for numeric spellings, which getaddrinfo parses
itself without asking DNS)."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from chalicelib import outbound
from chalicelib.outbound import AddressPolicy, Fetcher, address_problem, embedded_ipv4
from chalicelib.settings import Settings, parse_networks
from tests.support.fake_site import FakeSite

PUBLIC_V4 = "93.184.215.14"  # an ordinary public address; never actually connected to here


def resolver_of(table: dict[str, list[str]], calls: list[str] | None = None):
    """A getaddrinfo stand-in answering from ``table`` (name -> addresses)."""
    def resolve(host, port, family=0, type=0, proto=0, flags=0):
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for address in table[host]:
            ip = ipaddress.ip_address(address)
            if ip.version == 4:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
            else:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
        return out
    return resolve


# --- the address classifier -------------------------------------------------------------------

HOSTILE_ADDRESSES = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.170.2", "cloud metadata"),
    ("169.254.1.1", "link-local"),
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.254", "CGNAT"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "private"),  # "this network"
    ("198.18.0.1", "benchmarking"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("192.0.0.8", "IETF protocol assignments"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fc00::1", "private"),
    ("fd12:3456::1", "private"),
    ("fd00:ec2::254", "cloud metadata"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:10.0.0.1", "IPv4-mapped private"),
    ("::ffff:169.254.169.254", "IPv4-mapped cloud metadata"),
    ("::127.0.0.1", "IPv4-compatible loopback"),
    ("::8.8.8.8", "IPv4-compatible"),  # deprecated form: refused even for a public address
    ("64:ff9b::a00:1", "NAT64 private"),
    ("64:ff9b::7f00:1", "NAT64 loopback"),
    ("64:ff9b::a9fe:a9fe", "NAT64 cloud metadata"),
    ("64:ff9b:1::a00:1", "local-use NAT64"),
    ("2002:0a00:0001::", "6to4 private"),
    ("2002:7f00:0001::1", "6to4 loopback"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "Teredo private"),
    ("fe80::1%eth0", "scoped"),
]
PUBLIC_ADDRESSES = ["8.8.8.8", "1.1.1.1", PUBLIC_V4, "2606:4700:4700::1111", "2a00:1450:4001::1",
                    "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:0808:0808::1", "100.128.0.1", "172.32.0.1"]


@pytest.mark.parametrize("address, label", HOSTILE_ADDRESSES)
def test_hostile_addresses_are_refused_with_their_kind(address, label):
    ip = ipaddress.ip_address(address)
    problem = address_problem(ip)
    assert problem is not None and label in problem
    reason = AddressPolicy().problem(ip, 80)
    assert label in reason and str(ip) not in reason and str(getattr(ip, "ipv4_mapped", None)) not in reason


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_public_addresses_are_allowed(address):
    assert address_problem(ipaddress.ip_address(address)) is None


def test_embedded_ipv4_forms():
    assert embedded_ipv4(ipaddress.IPv6Address("::ffff:10.0.0.1")) == ("IPv4-mapped", ipaddress.IPv4Address("10.0.0.1"))
    assert embedded_ipv4(ipaddress.IPv6Address("64:ff9b::a00:1")) == ("NAT64", ipaddress.IPv4Address("10.0.0.1"))
    assert embedded_ipv4(ipaddress.IPv6Address("2002:a00:1::")) == ("6to4", ipaddress.IPv4Address("10.0.0.1"))
    assert embedded_ipv4(ipaddress.IPv6Address("2606:4700::1")) is None
    assert embedded_ipv4(ipaddress.IPv6Address("::1")) is None


def test_the_allow_list_opens_its_networks_on_any_port_and_nothing_else():
    policy = AddressPolicy(outbound.parse_networks(["127.0.0.1/32"]))
    assert policy.problem(ipaddress.ip_address("127.0.0.1"), 8080) is None
    assert "loopback" in policy.problem(ipaddress.ip_address("127.0.0.2"), 80)
    assert "loopback" in policy.problem(ipaddress.ip_address("::1"), 80)
    assert "IPv4-mapped" in policy.problem(ipaddress.ip_address("::ffff:127.0.0.1"), 80)  # not the listed form
    assert policy.problem(ipaddress.ip_address(PUBLIC_V4), 443) is None
    assert "port 8080" in policy.problem(ipaddress.ip_address(PUBLIC_V4), 8080)


def test_metadata_addresses_stay_refused_inside_an_allowed_network():
    policy = AddressPolicy(outbound.parse_networks(["169.254.0.0/16", "fd00::/8"]))
    assert policy.problem(ipaddress.ip_address("169.254.1.1"), 80) is None
    assert "metadata" in policy.problem(ipaddress.ip_address("169.254.169.254"), 80)
    assert "metadata" in policy.problem(ipaddress.ip_address("fd00:ec2::254"), 80)


# --- URLs: refused before any connection --------------------------------------------------------

# (URL, what the refusal names). Numeric host spellings go to the system resolver, as in
# production: glibc's getaddrinfo reads decimal, octal and hex IPv4 forms itself.
HOSTILE_URLS = [
    ("http://127.0.0.1/", "loopback"),
    ("http://localhost/", "localhost (loopback address)"),
    ("http://2130706433/", "2130706433 (loopback address)"),
    ("http://0x7f.1/", "0x7f.1 (loopback address)"),
    ("http://017700000001/", "017700000001 (loopback address)"),
    ("http://0x7f000001/", "0x7f000001 (loopback address)"),
    ("http://127.1/", "127.1 (loopback address)"),
    ("http://0177.0.0.1/", "0177.0.0.1 (loopback address)"),
    ("http://10.0.0.1/", "private"),
    ("http://192.168.0.1:8080/admin", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://100.64.0.1/", "CGNAT"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "cloud metadata"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://0/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://255.255.255.255/", "reserved"),
    ("http://198.18.0.1/", "benchmarking"),
    ("http://192.0.2.1/", "documentation"),
    ("http://[::1]/", "loopback"),
    ("http://[::]/", "unspecified"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "scoped"),
    ("http://[fc00::1]/", "private"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped loopback"),
    ("http://[::ffff:7f00:1]/", "IPv4-mapped loopback"),
    ("http://[::ffff:10.0.0.1]/", "IPv4-mapped private"),
    ("http://[64:ff9b::a00:1]/", "NAT64 private"),
    ("http://[2002:0a00:0001::]/", "6to4 private"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata.google.internal (cloud metadata address)"),
    ("http://rebind.example/", "rebind.example (private address)"),
    ("http://mixed-private.example/", "mixed-private.example (loopback address)"),
    ("http://public.example:8080/", "port 8080"),
    ("https://public.example:8443/", "port 8443"),
    ("ftp://public.example/", "scheme ftp"),
    ("file:///etc/passwd", "scheme file"),
    ("gopher://public.example:70/", "scheme gopher"),
    ("dict://public.example:11211/", "scheme dict"),
    ("http://user:pass@public.example/", "passwords"),
]
RESOLVER_TABLE = {
    "metadata.google.internal": ["169.254.169.254"],
    "rebind.example": ["10.1.2.3"],
    "mixed-private.example": ["127.0.0.1", "::1"],
    "public.example": [PUBLIC_V4],
}
SYSTEM_RESOLVED = {"localhost", "2130706433", "0x7f.1", "017700000001", "0x7f000001", "127.1", "0177.0.0.1", "0"}


def _mixed_resolver(host, port, *args):
    if host in SYSTEM_RESOLVED:
        return socket.getaddrinfo(host, port, *args)
    return resolver_of(RESOLVER_TABLE)(host, port, *args)


@pytest.mark.parametrize("url, expected", HOSTILE_URLS)
def test_hostile_urls_are_blocked_without_a_connection(url, expected, connections):
    fetcher = Fetcher(resolver=_mixed_resolver)
    for result in (fetcher.get_page(url), fetcher.request("GET", url), fetcher.post_json(url, b"{}")):
        assert (result.status, expected in result.reason) == ("blocked", True), result.reason
        assert result.hops == ()
    assert connections == []


def test_decimal_octal_and_hex_spellings_are_loopback_to_getaddrinfo():
    """What the system resolver does with them (and so what an attacker would get)."""
    for spelling in ("2130706433", "0x7f.1", "017700000001", "0x7f000001", "127.1"):
        addresses = {info[4][0] for info in socket.getaddrinfo(spelling, 80, type=socket.SOCK_STREAM)}
        assert addresses == {"127.0.0.1"}, spelling


def test_an_unknown_name_is_an_error_not_an_exception(connections):
    result = Fetcher(resolver=resolver_of({})).get_page("http://nowhere.example/")
    assert result.status == "error" and "resolve" in result.reason
    assert connections == []


@pytest.mark.parametrize("url,status", [("http://", "error"), ("http:///path", "error"), ("http://[::1/", "error"),
                                        ("http://a..b/", "error"), ("not a url", "blocked"),
                                        ("http://public.example:99999/", "error")])
def test_malformed_urls_are_errors(url, status, connections):
    result = Fetcher(resolver=resolver_of(RESOLVER_TABLE)).get_page(url)
    assert result.status == status, result  # "blocked": no scheme is a scheme that is not allowed
    assert connections == []


# --- DNS rebinding: the checked address is the one connected to ----------------------------------


def test_rebinding_resolver_never_gets_a_connection_to_its_second_answer(connections):
    """First answer public, second 127.0.0.1: the fetcher looks up once and connects to what it
    checked (here the guard refuses the public connection, so nothing leaves the machine)."""
    calls: list[str] = []
    answers = iter([[PUBLIC_V4], ["127.0.0.1"], ["127.0.0.1"], ["127.0.0.1"]])

    def rebinding(host, port, *args):
        calls.append(host)
        return resolver_of({host: next(answers)})(host, port, *args)

    result = Fetcher(resolver=rebinding).request("GET", "http://rebind.example/")
    assert result.status == "error" and "refused" in result.reason
    assert calls == ["rebind.example"]
    assert connections == [(PUBLIC_V4, 80)]


def test_rebinding_against_a_live_site_keeps_to_the_checked_address(connections):
    """Allowed 127.0.0.1 first, then 10.0.0.1: robots.txt and the page both come from the pinned
    address, with one lookup."""
    calls: list[str] = []
    answers = iter([["127.0.0.1"], ["10.0.0.1"], ["10.0.0.1"]])

    def rebinding(host, port, *args):
        calls.append(host)
        return resolver_of({host: next(answers)})(host, port, *args)

    with FakeSite() as site:
        fetcher = Fetcher(allow_networks=["127.0.0.1/32"], resolver=rebinding)
        result = fetcher.get_page(site.url("/", host="shop.example"))
        assert result.status == "fetched", result.reason
        assert site.hits["/robots.txt"] == 1 and site.hits["/"] == 1
        assert {r["host"] for r in site.requests} == {f"shop.example:{site.port}"}
    assert calls == ["shop.example"]
    assert set(connections) == {("127.0.0.1", site.port)}


def test_a_name_with_a_refused_and_an_allowed_address_uses_only_the_allowed_one(connections):
    with FakeSite() as site:
        fetcher = Fetcher(allow_networks=["127.0.0.1/32"],
                          resolver=resolver_of({"both.example": ["10.0.0.1", "127.0.0.1"]}))
        assert fetcher.get_page(site.url("/", host="both.example")).status == "fetched"
    assert set(connections) == {("127.0.0.1", site.port)}


def test_each_redirect_is_resolved_and_checked_again(connections):
    with FakeSite() as site:
        site.redirect("/away", "http://internal.example/")
        fetcher = Fetcher(allow_networks=["127.0.0.1/32"],
                          resolver=resolver_of({"internal.example": ["10.0.0.1"]}))
        result = fetcher.get_page(site.url("/away"))
    assert result.status == "blocked" and "internal.example (private address)" in result.reason
    assert "10.0.0.1" not in result.reason
    assert [h.address for h in result.hops] == ["127.0.0.1"]
    assert set(connections) == {("127.0.0.1", site.port)}


@pytest.mark.parametrize("resolved, kind", [(["10.0.0.1"], "private address"), (["127.0.0.1"], "loopback address"),
                                             (["::ffff:10.0.0.1"], "IPv4-mapped private address"),
                                             (["169.254.169.254"], "cloud metadata address")])
def test_a_refusal_says_why_without_naming_the_address_the_name_resolved_to(resolved, kind, connections):
    """Issue 19 item 7: the reason reaches a row's context_status, a webhook's last error and
    logs a tenant may see; the address inside our network behind a name is not theirs to learn."""
    fetcher = Fetcher(resolver=resolver_of({"intranet.example": resolved}))
    for result in (fetcher.get_page("http://intranet.example/"), fetcher.post_json("http://intranet.example/h", b"{}")):
        assert (result.status, result.reason) == ("blocked", f"refused: intranet.example ({kind})")
        assert resolved[0] not in result.reason and "10.0.0.1" not in result.reason
    assert connections == []


def test_a_port_refusal_does_not_name_the_address_either(connections):
    result = Fetcher(resolver=resolver_of({"public.example": [PUBLIC_V4]})).get_page("http://public.example:8080/")
    assert (result.status, result.reason) == ("blocked", "refused: public.example (port 8080: 80 and 443 only)")
    assert PUBLIC_V4 not in result.reason


# --- settings ---------------------------------------------------------------------------------


def test_outbound_allow_networks_setting_parses_and_checks_cidrs():
    assert Settings.from_env({}).outbound_allow_networks == ()
    s = Settings.from_env({"OUTBOUND_ALLOW_NETWORKS": "127.0.0.1/32, ::1 ,10.1.0.0/16"})
    assert s.outbound_allow_networks == ("127.0.0.1/32", "::1/128", "10.1.0.0/16")
    assert parse_networks("") == ()
    with pytest.raises(ValueError, match="OUTBOUND_ALLOW_NETWORKS"):
        Settings.from_env({"OUTBOUND_ALLOW_NETWORKS": "localhost"})


def test_prod_stage_refuses_an_outbound_allow_list():
    base = {"STAGE": "prod", "CORS_ALLOW_ORIGIN": "https://app.example.com",
            "WEBHOOK_SECRET_KEYS": "ssm:/csv-opener/WEBHOOK_SECRET_KEYS"}
    Settings.from_env(base).check_stage()
    with pytest.raises(RuntimeError, match="OUTBOUND_ALLOW_NETWORKS"):
        Settings.from_env({**base, "OUTBOUND_ALLOW_NETWORKS": "127.0.0.1/32"}).check_stage()
    Settings.from_env({"OUTBOUND_ALLOW_NETWORKS": "127.0.0.1/32"}).check_stage()  # other stages: fine


def test_fetcher_from_settings():
    s = Settings.from_env({"OUTBOUND_ALLOW_NETWORKS": "127.0.0.1/32", "PAGE_FETCH_TIMEOUT_S": "3",
                           "PAGE_HOST_CONCURRENCY": "4", "PAGE_FETCH_CONCURRENCY": "300"})
    fetcher = Fetcher.from_settings(s)
    assert fetcher.timeout_s == 3.0 and fetcher.slots.per_host == fetcher.pages.slots.per_host == 4
    assert fetcher.pages.in_flight == 300
    assert fetcher.policy.problem(ipaddress.ip_address("127.0.0.1"), 1234) is None
    assert Fetcher.from_settings(Settings.from_env({})).policy.allow == ()
