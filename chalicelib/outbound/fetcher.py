"""The one HTTP client for requests the app makes on a user's behalf (page fetching, webhooks).

A URL in a CSV or a webhook setting is chosen by whoever uploads it, so a request to it must never
reach our own network: the VPC, the Lambda runtime API, the cloud metadata service (SSRF). Checking
the URL's text is not enough (names resolve to anything, and resolve differently the next time),
so this module works the way `advocate` and `ssrf_filter` do, by construction:

1. resolve the host once (the system resolver, /etc/hosts included: ``socket.getaddrinfo``);
2. check every address: public only (:func:`address_problem`), unless inside the configured
   allow-list (OUTBOUND_ALLOW_NETWORKS; tests use 127.0.0.1/32; the prod stage refuses it);
   ports 80 and 443 only, unless the address is allow-listed;
3. connect to exactly the address that was checked (no second lookup, so a DNS answer that
   changes between check and use cannot reach anything else), sending the URL's host name as
   the Host header and as TLS SNI, with the certificate verified against that name;
4. on a redirect, go back to 1 for the new URL (at most 3 redirects).

Limits: one deadline over the whole exchange (connect, TLS, headers, body, every redirect, and
robots.txt for a page), enforced by a watchdog that shuts the socket down when it passes, so a
server trickling bytes cannot hold a worker; at most 1 MB of body is read. A page fetch also
wants HTML, honours robots.txt (fetched through this same path, cached per origin) and runs at
most N fetches per host at once. Those caches and limits live in one :class:`Fetcher`, so they
are per process: on Lambda, per container (two containers may each run N fetches to one host).

Pages that never answer must not set the pace. The name's lookup has a bound of its own, shorter
than the page's (``dns_timeout_s``: ``getaddrinfo`` has no timeout, so it runs in a pool of
resolver threads and is waited on at most that long), and a host whose page fetch timed out, or
whose name did not resolve, is remembered for ``host_failure_ttl_s`` (:class:`HostFailures`): the
next pages of that host in this process end at once with the same status, instead of each
waiting out its own deadline (a CSV often names one site many times); when that memory lapses,
one fetch probes the host while the others still skip it. Webhooks neither consult nor feed it.

Nothing here raises for a URL that cannot be fetched: every outcome is a :class:`FetchResult`
with a status (``fetched``, ``blocked``, ``timeout``, ``not_html``, ``robots``, ``error``) and a
short reason.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
import urllib.robotparser
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection

from chalicelib.outbound.addresses import AddressPolicy, IPAddress, IPNetwork, parse_networks

if TYPE_CHECKING:
    from chalicelib.settings import Settings

log = logging.getLogger(__name__)

USER_AGENT = "CSVOpenerBot/1.0 (+https://csv-opener.example.com/bot)"

FETCHED = "fetched"
BLOCKED = "blocked"
TIMEOUT = "timeout"
NOT_HTML = "not_html"
ROBOTS = "robots"
ERROR = "error"
STATUSES = (FETCHED, BLOCKED, TIMEOUT, NOT_HTML, ROBOTS, ERROR)

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_DNS_TIMEOUT_S = 1.0  # a name's lookup, within the page's deadline
DEFAULT_HOST_FAILURE_TTL_S = 60.0  # how long a host that timed out or did not resolve is skipped
HOST_FAILURES_SIZE = 4096
RESOLVER_THREADS = 128  # lookups at once per process; a lookup past its bound still holds its thread
MAX_BYTES = 1_000_000
MAX_REDIRECTS = 3
HOST_CONCURRENCY = 2
ROBOTS_MAX_BYTES = 500 * 1024  # what Google reads of a robots.txt
ROBOTS_TTL_S = 3600.0
ROBOTS_CACHE_SIZE = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
PAGE_ACCEPT = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1"

# socket.getaddrinfo's signature; tests inject their own to play a rebinding DNS server.
Resolver = Callable[..., Sequence[tuple[Any, ...]]]


class _Stop(Exception):
    """Ends a fetch with this status and reason (internal: callers get a FetchResult).
    ``host``: set when the host itself failed (its name did not resolve, or it did not answer in
    time), so a page fetch remembers it in :class:`HostFailures`."""

    def __init__(self, status: str, reason: str, host: str | None = None, skipped: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.host = host
        self.skipped = skipped


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hop:
    """One request sent: the URL, the address actually connected to, and the answer's code."""

    url: str
    address: str
    port: int
    http_status: int


@dataclass(frozen=True)
class FetchResult:
    status: str  # one of STATUSES
    reason: str  # short, for people and logs: "HTTP 404", "refused: db.internal (private address)"
    url: str  # as asked for
    final_url: str | None = None  # after redirects
    http_status: int | None = None
    content_type: str | None = None  # media type, lower case, without parameters
    charset: str | None = None  # from the Content-Type header
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    truncated: bool = False  # the body was longer than the limit and was cut there
    hops: tuple[Hop, ...] = ()
    elapsed_s: float = 0.0
    skipped: bool = False  # ended before trying: a host on the way failed a moment ago (HostFailures)

    @property
    def ok(self) -> bool:
        return self.status == FETCHED


# --- deadline and politeness ------------------------------------------------------------------


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.expires_at = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.expires_at - time.monotonic())

    def check(self, what: str) -> float:
        left = self.remaining()
        if left <= 0:
            raise _Stop(TIMEOUT, f"timed out {what}")
        return left


class _Watchdog:
    """Shuts a connection's socket down when the deadline passes, which ends any blocking call
    on it (connect is bounded by its own timeout, set to what is left)."""

    def __init__(self, conn: HTTPConnection, deadline: Deadline) -> None:
        self.conn = conn
        self.sock: socket.socket | None = None  # kept: http.client lets go of it once the answer is read
        self.fired = False
        self.given_s = deadline.remaining()  # the time this connection had
        self._timer = threading.Timer(self.given_s, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        sock = self.sock or self.conn.sock  # during connect, the TCP socket under the TLS handshake
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self) -> None:
        self._timer.cancel()


class HostSlots:
    """At most ``per_host`` holders per host name at once, in this process."""

    def __init__(self, per_host: int) -> None:
        self.per_host = max(1, per_host)
        self._active: dict[str, int] = {}
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, host: str, deadline: Deadline) -> Iterator[None]:
        with self._changed:
            while self._active.get(host, 0) >= self.per_host:
                left = deadline.remaining()
                if left <= 0:
                    raise _Stop(TIMEOUT, f"timed out waiting for a free connection to {host}")
                self._changed.wait(left)
            self._active[host] = self._active.get(host, 0) + 1
        try:
            yield
        finally:
            with self._changed:
                count = self._active.pop(host) - 1
                if count:
                    self._active[host] = count
                self._changed.notify_all()

    def active(self, host: str) -> int:
        with self._changed:
            return self._active.get(host, 0)


class HostFailures:
    """Hosts whose page fetch timed out or whose name did not resolve, remembered for ``ttl_s``
    in this process (at most ``size`` of them, the oldest forgotten first), with the status and
    reason of that failure. ``ttl_s`` 0 remembers nothing.

    When the memory of a host lapses, one fetch goes ahead as a probe and the others go on
    skipping the host for ``probe_s`` meanwhile: a host that still hangs costs one fetch's time
    per lapse, not a wave of every row of that host at once. The probe's failure is remembered
    again (``record``); a page it fetched clears the host (``forget``)."""

    def __init__(self, ttl_s: float, size: int = HOST_FAILURES_SIZE, probe_s: float = DEFAULT_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = max(0.0, ttl_s)
        self.size = max(1, size)
        self.probe_s = max(0.0, probe_s)
        self.clock = clock
        self._failed: dict[str, tuple[float, float, str, str]] = {}  # host -> (until, failed at, status, reason)
        self._lock = threading.Lock()

    def record(self, host: str, status: str, reason: str) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._failed.pop(host, None)  # re-inserted last: the dict stays in expiry order
            while len(self._failed) >= self.size:
                self._failed.pop(next(iter(self._failed)))
            now = self.clock()
            self._failed[host] = (now + self.ttl_s, now, status, reason)

    def forget(self, host: str) -> None:
        with self._lock:
            self._failed.pop(host, None)

    def get(self, host: str) -> tuple[str, str] | None:
        """(status, reason) of the host's failure while it is remembered, or None (no side effect)."""
        with self._lock:
            failed = self._failed.get(host)
            return (failed[2], failed[3]) if failed is not None and failed[0] > self.clock() else None

    def admit(self, host: str, failed_since: float | None = None) -> tuple[str, str] | None:
        """None: go ahead (the host is not remembered, or this caller is the probe of a lapsed
        memory); else (status, reason) to skip it with. ``failed_since``: only a failure recorded
        at or after that time counts (a fetch that waited for a slot while another failed), and
        a lapsed memory is then not probed again."""
        with self._lock:
            failed = self._failed.get(host)
            if failed is None:
                return None
            until, failed_at, status, reason = failed
            if failed_since is not None:
                return (status, reason) if failed_at >= failed_since and until > self.clock() else None
            now = self.clock()
            if until > now:
                return status, reason
            self._failed[host] = (now + self.probe_s, failed_at, status, reason)  # this caller probes
            return None

    def check(self, host: str, failed_since: float | None = None) -> None:
        failed = self.admit(host, failed_since)
        if failed is not None:
            status, reason = failed
            raise _Stop(status, f"{reason} (a moment ago: not tried again for now)", skipped=True)


@dataclass
class _Robots:
    parser: urllib.robotparser.RobotFileParser
    expires_at: float


# --- the fetcher ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    url: str
    scheme: str
    host: str  # ASCII, lower case, as sent in Host and SNI (IPv6 without brackets)
    port: int
    path: str  # path and query, percent-encoded, as sent on the request line
    addresses: tuple[IPAddress, ...]  # checked, in the resolver's order

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port


_resolver_pool: ThreadPoolExecutor | None = None
_resolver_pool_lock = threading.Lock()


def _resolve_in_thread(resolver: Resolver, host: str, port: int, deadline: Deadline,
                       bound_s: float) -> Sequence[tuple[Any, ...]]:
    """getaddrinfo has no timeout of its own: wait for it at most ``bound_s``, and never past the
    deadline. A lookup still waiting for a resolver thread then is dropped; one already running
    goes on in its thread (nothing can stop getaddrinfo), its answer unused."""
    global _resolver_pool
    with _resolver_pool_lock:
        if _resolver_pool is None:
            _resolver_pool = ThreadPoolExecutor(max_workers=RESOLVER_THREADS, thread_name_prefix="outbound-dns")
    wait_s = min(deadline.check(f"resolving {host}"), bound_s)
    started: list[float] = []

    def lookup() -> Sequence[tuple[Any, ...]]:
        started.append(time.monotonic())
        return resolver(host, port, 0, socket.SOCK_STREAM)

    future = _resolver_pool.submit(lookup)
    try:
        return future.result(timeout=wait_s)
    except FutureTimeout:
        future.cancel()
        # The name is to blame only if its lookup ran for most of the bound: not one that waited
        # for a resolver thread, nor one cut short by what was left of the page's deadline.
        ran_s = time.monotonic() - started[0] if started else 0.0
        raise _Stop(TIMEOUT, f"timed out resolving {host}", host=host if ran_s >= bound_s / 2 else None) from None


class Fetcher:
    """SSRF-safe HTTP client. Thread-safe: build one per process and share it.

    ``allow_networks``: CIDRs reachable besides public addresses, on any port (tests only).
    ``resolver``: ``socket.getaddrinfo`` or a function with its signature.
    ``ssl_context``: the TLS trust (default: the system's CAs, hostname checked).
    ``dns_timeout_s``: the bound on a name's lookup (within the request's own deadline).
    ``host_failure_ttl_s``: how long a page's host that timed out or did not resolve is skipped."""

    def __init__(
        self,
        *,
        allow_networks: Sequence[str | IPNetwork] = (),
        resolver: Resolver = socket.getaddrinfo,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_bytes: int = MAX_BYTES,
        max_redirects: int = MAX_REDIRECTS,
        host_concurrency: int = HOST_CONCURRENCY,
        user_agent: str = USER_AGENT,
        robots_ttl_s: float = ROBOTS_TTL_S,
        ssl_context: ssl.SSLContext | None = None,
        dns_timeout_s: float = DEFAULT_DNS_TIMEOUT_S,
        host_failure_ttl_s: float = DEFAULT_HOST_FAILURE_TTL_S,
    ) -> None:
        self.policy = AddressPolicy(parse_networks(allow_networks))
        self.resolver = resolver
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.user_agent = user_agent
        self.robots_ttl_s = robots_ttl_s
        self.slots = HostSlots(host_concurrency)
        self.dns_timeout_s = dns_timeout_s
        self.host_failures = HostFailures(host_failure_ttl_s, probe_s=timeout_s)
        self._ssl_context = ssl_context
        self._robots: dict[tuple[str, str, int], _Robots] = {}
        self._lock = threading.Lock()

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """Built on first use (loading the system's CAs takes a moment), then shared."""
        if self._ssl_context is None:
            with self._lock:
                if self._ssl_context is None:
                    self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Fetcher:
        options: dict[str, Any] = {
            "allow_networks": settings.outbound_allow_networks,
            "timeout_s": settings.page_fetch_timeout_s,
            "host_concurrency": settings.page_host_concurrency,
            "dns_timeout_s": settings.page_dns_timeout_s,
            "host_failure_ttl_s": settings.page_host_failure_ttl_s,
        }
        return cls(**{**options, **overrides})

    # -- public API ----------------------------------------------------------------------------

    def get_page(self, url: str) -> FetchResult:
        """GET an HTML page: robots.txt honoured, HTML only, redirects followed (each checked)."""
        return self._guarded(url, lambda: self._run(
            "GET", url, None, {"Accept": PAGE_ACCEPT}, Deadline(self.timeout_s), page=True, follow=True,
            max_bytes=self.max_bytes))

    def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        follow_redirects: bool = True,
        max_bytes: int | None = None,
        timeout_s: float | None = None,
    ) -> FetchResult:
        """Any method, same checks and limits, no robots.txt and no content-type rule. Status
        ``fetched`` means an answer arrived (``http_status`` says which); a redirect not
        followed is an answer too. Caller headers are dropped on a redirect to another origin."""
        deadline = Deadline(self.timeout_s if timeout_s is None else timeout_s)
        return self._guarded(url, lambda: self._run(
            method.upper(), url, body, dict(headers or {}), deadline, page=False, follow=follow_redirects,
            max_bytes=self.max_bytes if max_bytes is None else max_bytes))

    def post_json(self, url: str, body: bytes, headers: Mapping[str, str] | None = None, *,
                  timeout_s: float | None = None) -> FetchResult:
        """POST a JSON body (already serialised, so a signature covers exactly these bytes), as a
        webhook delivery: redirects are not followed, at most 64 KB of the answer is read."""
        return self.request("POST", url, body=body, headers={"Content-Type": "application/json", **(headers or {})},
                            follow_redirects=False, max_bytes=64 * 1024, timeout_s=timeout_s)

    # -- one fetch -----------------------------------------------------------------------------

    def _guarded(self, url: str, run: Callable[[], FetchResult]) -> FetchResult:
        started = time.monotonic()
        try:
            result = run()
        except Exception:  # never raise for a URL: a bug here must not fail a row either
            log.exception("outbound request to %r failed unexpectedly", url)
            result = FetchResult(ERROR, "internal error", url)
        return _with(result, elapsed_s=round(time.monotonic() - started, 3))

    def _run(self, method: str, url: str, body: bytes | None, headers: dict[str, str], deadline: Deadline, *,
             page: bool, follow: bool, max_bytes: int, first: _Target | None = None,
             use_slots: bool = True) -> FetchResult:
        hops: list[Hop] = []
        current = url
        try:
            for hop in range(self.max_redirects + 1):
                hop_started = self.host_failures.clock()
                target = (first if hop == 0 and first is not None
                          else self._target(current, deadline, skip_failed=page))
                slot = self.slots.hold(target.host, deadline) if use_slots else _no_slot()
                with slot:
                    if page:  # the host may have failed while we waited for the slot
                        self.host_failures.check(target.host, failed_since=hop_started)
                        self._check_robots(target, deadline)
                    with self._open(target, method, body, headers, deadline) as (conn, response, address, dog):
                        hops.append(Hop(current, address, target.port, response.status))
                        location = response.headers.get("location") if response.status in REDIRECT_CODES else None
                        if not (follow and location):
                            if page:
                                self.host_failures.forget(target.host)  # it answered
                            return self._finish(url, target, response, dog, hops, page=page, max_bytes=max_bytes)
                        if hop == self.max_redirects:
                            raise _Stop(ERROR, f"more than {self.max_redirects} redirects")
                        following = _redirect_url(current, location)
                        if (response.status == 303 or response.status in (301, 302)) and method != "GET":
                            method, body = ("HEAD", None) if method == "HEAD" else ("GET", None)
                        if urlsplit(following)[:2] != urlsplit(current)[:2]:
                            headers = {k: v for k, v in headers.items() if k.lower() == "accept"}
                        current = following
            raise AssertionError("unreachable")  # the loop returns or raises
        except _Stop as stop:
            if page and stop.host is not None:
                self.host_failures.record(stop.host, stop.status, stop.reason)
            last = hops[-1] if hops else None
            return FetchResult(stop.status, stop.reason, url, final_url=current, hops=tuple(hops),
                               http_status=last.http_status if last else None, skipped=stop.skipped)

    def _target(self, url: str, deadline: Deadline, *, skip_failed: bool = False) -> _Target:
        """Parse, resolve and check one URL: every refusal happens here, before any connection.
        ``skip_failed``: a host in :attr:`host_failures` ends the fetch before its lookup."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise _Stop(ERROR, f"not a valid URL ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise _Stop(BLOCKED, f"scheme {scheme or '(none)'}: is not allowed (http and https only)")
        if parts.username is not None or parts.password is not None:
            raise _Stop(BLOCKED, "user names or passwords in URLs are not allowed")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise _Stop(ERROR, "URL has no host")
        port = DEFAULT_PORTS[scheme] if port is None else port
        if port == 0:
            raise _Stop(ERROR, "invalid port 0")
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise _Stop(ERROR, f"invalid host name {host!r}") from None
        if skip_failed:
            self.host_failures.check(host)
        resolved = self._resolve(host, port, deadline)
        allowed, refused = [], []
        for ip in resolved:
            problem = self.policy.problem(ip, port)
            (refused if problem else allowed).append(problem or ip)
        if not allowed:
            # The URL's own host and the kind of address, never the address a name resolved to.
            raise _Stop(BLOCKED, f"refused: {host} ({refused[0]})")
        if refused:
            log.info("outbound: %s also resolves to a refused address (%s); using an allowed one", host, refused[0])
        path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
        if parts.query:
            path += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
        return _Target(url, scheme, host, port, path, tuple(allowed))

    def _resolve(self, host: str, port: int, deadline: Deadline) -> list[IPAddress]:
        literal = _ip_literal(host)
        if literal is not None:
            return [literal]
        try:
            infos = _resolve_in_thread(self.resolver, host, port, deadline, self.dns_timeout_s)
        except (OSError, UnicodeError) as exc:
            raise _Stop(ERROR, f"cannot resolve {host} ({_describe(exc)})", host=host) from None
        addresses: list[IPAddress] = []
        for info in infos:
            sockaddr = info[4]
            ip = ipaddress.ip_address(sockaddr[0].split("%")[0])
            if isinstance(ip, ipaddress.IPv6Address) and len(sockaddr) >= 4 and sockaddr[3]:
                ip = ipaddress.IPv6Address(f"{ip}%{sockaddr[3]}")  # keep a scope: it is refused
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise _Stop(ERROR, f"cannot resolve {host} (no addresses)", host=host)
        return addresses

    @contextmanager
    def _open(self, target: _Target, method: str, body: bytes | None, headers: Mapping[str, str],
              deadline: Deadline) -> Iterator[tuple[HTTPConnection, Any, str, _Watchdog]]:
        """Connect to the first checked address that answers, send the request, read the head."""
        request_headers = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
        request_headers.setdefault("User-Agent", self.user_agent)
        request_headers.setdefault("Accept-Encoding", "identity")
        request_headers["Host"] = target.host_header
        request_headers["Connection"] = "close"
        last_error: _Stop | None = None
        for ip in target.addresses:
            left = deadline.check(f"connecting to {target.host}")
            conn = self._connection(target, ip, left)
            dog = _Watchdog(conn, deadline)
            response = None
            try:
                try:
                    conn.connect()
                except (OSError, urllib3.exceptions.HTTPError) as exc:
                    if dog.fired or _is_timeout(exc):
                        raise _Stop(TIMEOUT, f"timed out connecting to {target.host}",
                                    host=self._blame(target.host, dog.given_s)) from None
                    last_error = _Stop(ERROR, _describe(exc))
                    if isinstance(exc, ssl.SSLError) or isinstance(exc.__cause__, ssl.SSLError):
                        raise last_error from None
                    continue
                dog.sock = conn.sock
                try:
                    conn.request(method, target.path, body=body, headers=request_headers, preload_content=False,
                                 decode_content=True)
                    response = conn.getresponse()
                except (OSError, urllib3.exceptions.HTTPError, http.client.HTTPException, ValueError) as exc:
                    if dog.fired or _is_timeout(exc):
                        raise _Stop(TIMEOUT, f"timed out waiting for {target.host}",
                                    host=self._blame(target.host, dog.given_s)) from None
                    raise _Stop(ERROR, _describe(exc)) from None
                yield conn, response, str(ip), dog
                return
            finally:
                dog.cancel()
                if response is not None:
                    response.close()
                conn.close()
                if dog.sock is not None:  # http.client hands the socket to the answer: close it now
                    dog.sock.close()
        raise last_error or _Stop(ERROR, f"cannot connect to {target.host}")

    def _connection(self, target: _Target, ip: IPAddress, timeout: float) -> HTTPConnection:
        # host= the checked address: urllib3 connects there and nowhere else (an IP literal is
        # not looked up). The name goes in the Host header (set by _open) and in SNI, and the
        # certificate is verified against it.
        if target.scheme == "https":
            return HTTPSConnection(str(ip), target.port, timeout=timeout, server_hostname=target.host,
                                   ssl_context=self.ssl_context)
        return HTTPConnection(str(ip), target.port, timeout=timeout)

    def _finish(self, url: str, target: _Target, response: Any, dog: _Watchdog, hops: list[Hop], *,
                page: bool, max_bytes: int) -> FetchResult:
        status = response.status
        content_type, charset = _content_type(response.headers.get("content-type", ""))
        headers = {k.lower(): v for k, v in response.headers.items()}
        common = {"final_url": target.url, "http_status": status, "content_type": content_type or None,
                  "charset": charset, "headers": headers, "hops": tuple(hops)}
        if page and not 200 <= status < 300:
            return FetchResult(ERROR, f"HTTP {status}", url, **common)
        if page and content_type and content_type not in HTML_TYPES:
            return FetchResult(NOT_HTML, f"content type {content_type}", url, **common)
        body, truncated = self._read(response, dog, max_bytes, target.host)
        if page:
            binary = _binary_kind(body)
            if binary:
                return FetchResult(NOT_HTML, f"{binary} content", url, **common)
            if not content_type and not _looks_like_html(body):
                return FetchResult(NOT_HTML, "no content type and not HTML", url, **common)
        reason = f"truncated at {max_bytes:,} bytes" if truncated else "ok"
        return FetchResult(FETCHED, reason, url, body=body, truncated=truncated, **common)

    def _read(self, response: Any, dog: _Watchdog, limit: int, host: str) -> tuple[bytes, bool]:
        chunks: list[bytes] = []
        total = 0
        try:
            while total <= limit:
                chunk = response.read(min(64 * 1024, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        except (OSError, urllib3.exceptions.HTTPError, http.client.HTTPException) as exc:
            if dog.fired or _is_timeout(exc):
                raise _Stop(TIMEOUT, f"timed out reading from {host}", host=self._blame(host, dog.given_s)) from None
            raise _Stop(ERROR, _describe(exc)) from None
        if dog.fired:  # the watchdog's shutdown looks like the end of the body
            raise _Stop(TIMEOUT, f"timed out reading from {host}", host=self._blame(host, dog.given_s))
        body = b"".join(chunks)
        return body[:limit], total > limit

    def _blame(self, host: str, given_s: float) -> str | None:
        """``host``, to remember as failed, if it had at least half of a fetch's time: a fetch that
        waited most of its deadline for a free slot and then timed out says little about the host."""
        return host if given_s >= self.timeout_s / 2 else None

    # -- robots.txt ----------------------------------------------------------------------------

    def _check_robots(self, target: _Target, deadline: Deadline) -> None:
        rules = self._robots_rules(target, deadline)
        if not rules.can_fetch(self.user_agent, target.url):
            raise _Stop(ROBOTS, "disallowed by robots.txt")

    def _robots_rules(self, target: _Target, deadline: Deadline) -> urllib.robotparser.RobotFileParser:
        now = time.monotonic()
        with self._lock:
            cached = self._robots.get(target.origin)
        if cached is not None and cached.expires_at > now:
            return cached.parser
        netloc = target.host_header
        robots_url = f"{target.scheme}://{netloc}/robots.txt"
        first = _Target(robots_url, target.scheme, target.host, target.port, "/robots.txt", target.addresses)
        given_s = deadline.remaining()
        result = self._run("GET", robots_url, None, {"Accept": "text/plain,*/*;q=0.1"}, deadline, page=False,
                           follow=True, max_bytes=ROBOTS_MAX_BYTES, first=first, use_slots=False)
        parser = urllib.robotparser.RobotFileParser(robots_url)
        if result.status == TIMEOUT:
            raise _Stop(TIMEOUT, "timed out reading robots.txt", host=self._blame(target.host, given_s))
        if result.status == ERROR and not result.hops:
            raise _Stop(ERROR, f"robots.txt: {result.reason}")
        code = result.http_status or 0
        # RFC 9309: a 2xx file is obeyed; 4xx (or one we may not follow) means no rules; an
        # unreachable one (5xx, 429) means stay away for now.
        if result.status == FETCHED and 200 <= code < 300:
            parser.parse(result.body.decode("utf-8", "replace").splitlines())
        elif code == 429 or code >= 500:
            parser.disallow_all = True
        else:
            parser.allow_all = True
        with self._lock:
            if len(self._robots) >= ROBOTS_CACHE_SIZE:
                self._robots.pop(next(iter(self._robots)))
            self._robots[target.origin] = _Robots(parser, now + self.robots_ttl_s)
        return parser


# --- helpers ----------------------------------------------------------------------------------


@contextmanager
def _no_slot() -> Iterator[None]:
    yield


def _with(result: FetchResult, **changes: Any) -> FetchResult:
    return replace(result, **changes)


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _redirect_url(current: str, location: str) -> str:
    url = urljoin(current, location.strip())
    return url.split("#", 1)[0]


def _content_type(value: str) -> tuple[str, str | None]:
    media, _, params = value.partition(";")
    charset = None
    for param in params.split(";"):
        name, _, val = param.partition("=")
        if name.strip().lower() == "charset" and val.strip():
            charset = val.strip().strip("\"'").lower()
    return media.strip().lower(), charset


_MAGIC = ((b"%PDF-", "PDF"), (b"\x89PNG", "PNG"), (b"GIF8", "GIF"), (b"\xff\xd8\xff", "JPEG"),
          (b"PK\x03\x04", "ZIP"), (b"\x1f\x8b", "gzip"), (b"RIFF", "RIFF"), (b"\x00\x00\x01\x00", "icon"))


_BINARY_BYTES = bytes([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x1B), *range(0x1C, 0x20)])  # WHATWG "binary data bytes"


def _binary_kind(body: bytes) -> str | None:
    """A short name when the body is binary whatever its Content-Type says: a known signature,
    or binary data bytes making up 3% of the first 1 KB (about 10% of random bytes are; an HTML
    page with a stray control character is not refused for it). UTF-16 is left alone."""
    head = body[:1024]
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return None
    if head and len(head) - len(head.translate(None, _BINARY_BYTES)) >= max(1, len(head) * 3 // 100):
        return "binary"
    return None


def _looks_like_html(body: bytes) -> bool:
    head = body[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<title", b"<meta", b"<!--"))


def _is_timeout(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, urllib3.exceptions.NewConnectionError):
            pass  # a subclass of ConnectTimeoutError for history's sake: look at its cause
        elif isinstance(seen, (TimeoutError, urllib3.exceptions.TimeoutError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(exc: BaseException) -> str:
    """A short reason from an exception chain: the innermost OS or TLS error if there is one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS certificate not accepted ({seen.verify_message or seen.reason})"
        if isinstance(seen, ssl.SSLError):
            return f"TLS error ({seen.reason or seen})"
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, ConnectionResetError):
            return "connection reset"
        if isinstance(seen, socket.gaierror):
            return seen.strerror or "name not found"
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror.lower()
        seen = seen.__cause__ or seen.__context__
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
