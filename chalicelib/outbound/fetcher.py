"""The one HTTP client for requests the app makes on a user's behalf (page fetching, webhooks).

A URL in a CSV or a webhook setting is chosen by whoever uploads it, so a request to it must never
reach our own network: the VPC, the Lambda runtime API, the cloud metadata service (SSRF). Checking
the URL's text is not enough (names resolve to anything, and resolve differently the next time),
so every request here works the way `advocate` and `ssrf_filter` do, by construction:

1. resolve the host once (the system resolver, /etc/hosts included: ``socket.getaddrinfo``);
2. check every address: public only (:func:`address_problem`), unless inside the configured
   allow-list (OUTBOUND_ALLOW_NETWORKS; tests use 127.0.0.1/32; the prod stage refuses it);
   ports 80 and 443 only, unless the address is allow-listed;
3. connect to exactly the address that was checked (no second lookup, so a DNS answer that
   changes between check and use cannot reach anything else), sending the URL's host name as
   the Host header and as TLS SNI, with the certificate verified against that name;
4. on a redirect, go back to 1 for the new URL (at most 3 redirects).

Limits: one deadline over the whole exchange (connect, TLS, headers, body, every redirect, and
robots.txt for a page); at most 1 MB of body is read.

Two transports share those rules (:mod:`chalicelib.outbound.rules`) and one :class:`Fetcher`
(its settings, address policy, robots.txt cache and memory of failed hosts, per process):

- pages (:meth:`Fetcher.get_page`, :meth:`Fetcher.submit_page`) are fetched with asynchronous
  I/O on one event loop per process (:mod:`chalicelib.outbound.pagefetch`): hundreds in flight
  at little memory, HTML only, robots.txt honoured, at most N per host, a name's lookup bound
  shorter than the page's, and a host that timed out or did not resolve skipped for a while;
- webhooks (:meth:`Fetcher.request`, :meth:`Fetcher.post_json`) stay synchronous, here, with
  urllib3 on the caller's thread and a watchdog timer that shuts the socket down at the deadline
  (so a server trickling bytes cannot hold the caller); the lookup is bound the same way.

Nothing here raises for a URL that cannot be fetched: every outcome is a :class:`FetchResult`
with a status (``fetched``, ``blocked``, ``timeout``, ``not_html``, ``robots``, ``error``) and a
short reason.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection

from chalicelib.outbound import answers, rules
from chalicelib.outbound.addresses import AddressPolicy, IPAddress, IPNetwork, parse_networks
from chalicelib.outbound.pagefetch import PageFetcher, resolver_pool
from chalicelib.outbound.rules import (
    DEFAULT_DNS_TIMEOUT_S,
    DEFAULT_HOST_FAILURE_TTL_S,
    DEFAULT_PAGES_IN_FLIGHT,
    DEFAULT_TIMEOUT_S,
    ERROR,
    HOST_CONCURRENCY,
    MAX_BYTES,
    MAX_REDIRECTS,
    REDIRECT_CODES,
    ROBOTS_TTL_S,
    TIMEOUT,
    USER_AGENT,
    Deadline,
    FetchResult,
    Hop,
    HostFailures,
    Resolver,
    Stop,
    Target,
)

if TYPE_CHECKING:
    from chalicelib.settings import Settings

log = logging.getLogger(__name__)

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
                    raise Stop(TIMEOUT, f"timed out waiting for a free connection to {host}")
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


def _resolve_in_thread(resolver: Resolver, host: str, port: int, deadline: Deadline,
                       bound_s: float) -> Sequence[tuple[Any, ...]]:
    """Wait for a lookup at most ``bound_s``, and never past the deadline. A lookup still waiting
    for a resolver thread then is dropped; one already running goes on in its thread (nothing can
    stop getaddrinfo), its answer unused. (Webhooks keep no memory of failed hosts: no blame.)"""
    wait_s = min(deadline.check(f"resolving {host}"), bound_s)
    future = resolver_pool().submit(resolver, host, port, 0, socket.SOCK_STREAM)
    try:
        return future.result(timeout=wait_s)
    except FutureTimeout:
        future.cancel()
        raise Stop(TIMEOUT, f"timed out resolving {host}") from None


class Fetcher:
    """SSRF-safe HTTP client. Thread-safe: build one per process and share it.

    ``allow_networks``: CIDRs reachable besides public addresses, on any port (tests only).
    ``resolver``: ``socket.getaddrinfo`` or a function with its signature.
    ``ssl_context``: the TLS trust (default: the system's CAs, hostname checked).
    ``dns_timeout_s``: the bound on a name's lookup (within the request's own deadline).
    ``host_failure_ttl_s``: how long a page's host that timed out or did not resolve is skipped.
    ``pages_in_flight``: page fetches at once on the event loop (more wait for a turn)."""

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
        pages_in_flight: int = DEFAULT_PAGES_IN_FLIGHT,
    ) -> None:
        self.policy = AddressPolicy(parse_networks(allow_networks))
        self.resolver = resolver
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.user_agent = user_agent
        self.slots = HostSlots(host_concurrency)  # webhooks'; pages have theirs on the event loop
        self.dns_timeout_s = dns_timeout_s
        self.host_failures = HostFailures(host_failure_ttl_s, probe_s=timeout_s)
        self.robots = answers.RobotsCache(robots_ttl_s)
        self.pages = PageFetcher(self, host_concurrency=host_concurrency, in_flight=pages_in_flight)
        self._ssl_context = ssl_context
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
            "pages_in_flight": settings.page_fetch_concurrency,
        }
        return cls(**{**options, **overrides})

    # -- public API ----------------------------------------------------------------------------

    def submit_page(self, url: str, start_by: float | None = None) -> Future[FetchResult]:
        """GET an HTML page on the event loop: robots.txt honoured, HTML only, redirects followed
        (each checked). The future never raises; cancelling it ends the fetch. ``start_by``
        (monotonic): a fetch still waiting for its turn then ends as a skipped timeout."""
        return self.pages.submit(url, start_by=start_by)

    def get_page(self, url: str) -> FetchResult:
        """:meth:`submit_page`, waited for."""
        return self.submit_page(url).result()

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
        """Any method, on this thread, same checks and limits, no robots.txt and no content-type
        rule, no memory of failed hosts. Status ``fetched`` means an answer arrived
        (``http_status`` says which); a redirect not followed is an answer too. Caller headers are
        dropped on a redirect to another origin."""
        started = time.monotonic()
        deadline = Deadline(self.timeout_s if timeout_s is None else timeout_s)
        try:
            result = self._run(method.upper(), url, body, dict(headers or {}), deadline, follow=follow_redirects,
                               max_bytes=self.max_bytes if max_bytes is None else max_bytes)
        except Exception:  # never raise for a URL: a bug here must not fail a caller either
            log.exception("outbound request to %r failed unexpectedly", url)
            result = FetchResult(ERROR, "internal error", url)
        return replace(result, elapsed_s=round(time.monotonic() - started, 3))

    def post_json(self, url: str, body: bytes, headers: Mapping[str, str] | None = None, *,
                  timeout_s: float | None = None) -> FetchResult:
        """POST a JSON body (already serialised, so a signature covers exactly these bytes), as a
        webhook delivery: redirects are not followed, at most 64 KB of the answer is read."""
        return self.request("POST", url, body=body, headers={"Content-Type": "application/json", **(headers or {})},
                            follow_redirects=False, max_bytes=64 * 1024, timeout_s=timeout_s)

    # -- one request (webhooks) ----------------------------------------------------------------

    def _run(self, method: str, url: str, body: bytes | None, headers: dict[str, str], deadline: Deadline, *,
             follow: bool, max_bytes: int) -> FetchResult:
        hops: list[Hop] = []
        current = url
        try:
            for hop in range(self.max_redirects + 1):
                target = self._target(current, deadline)
                with self.slots.hold(target.host, deadline), \
                        self._open(target, method, body, headers, deadline) as (conn, response, address, dog):
                    hops.append(Hop(current, address, target.port, response.status))
                    location = response.headers.get("location") if response.status in REDIRECT_CODES else None
                    if not (follow and location):
                        fields = answers.answer_fields(target, response.status,
                                                     {k.lower(): v for k, v in response.headers.items()}, hops)
                        data, truncated = self._read(response, dog, max_bytes, target.host)
                        return answers.body_result(url, fields, data, truncated, max_bytes)
                    if hop == self.max_redirects:
                        raise Stop(ERROR, f"more than {self.max_redirects} redirects")
                    following = rules.redirect_url(current, location)
                    if (response.status == 303 or response.status in (301, 302)) and method != "GET":
                        method, body = ("HEAD", None) if method == "HEAD" else ("GET", None)
                    if urlsplit(following)[:2] != urlsplit(current)[:2]:
                        headers = {k: v for k, v in headers.items() if k.lower() == "accept"}
                    current = following
            raise AssertionError("unreachable")  # the loop returns or raises
        except Stop as stop:
            return rules.stopped(stop, url, current, hops)

    def _target(self, url: str, deadline: Deadline) -> Target:
        """Parse, resolve and check one URL: every refusal happens here, before any connection."""
        target = rules.split_url(url)
        literal = rules.ip_literal(target.host)
        if literal is not None:
            return rules.checked(target, [literal], self.policy, log)
        try:
            infos = _resolve_in_thread(self.resolver, target.host, target.port, deadline, self.dns_timeout_s)
        except (OSError, UnicodeError) as exc:
            raise Stop(ERROR, f"cannot resolve {target.host} ({rules.describe(exc)})") from None
        return rules.checked(target, rules.addresses_of(target.host, infos), self.policy, log)

    @contextmanager
    def _open(self, target: Target, method: str, body: bytes | None, headers: Mapping[str, str],
              deadline: Deadline) -> Iterator[tuple[HTTPConnection, Any, str, _Watchdog]]:
        """Connect to the first checked address that answers, send the request, read the head."""
        request_headers = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
        request_headers.setdefault("User-Agent", self.user_agent)
        request_headers.setdefault("Accept-Encoding", "identity")
        request_headers["Host"] = target.host_header
        request_headers["Connection"] = "close"
        last_error: Stop | None = None
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
                        raise Stop(TIMEOUT, f"timed out connecting to {target.host}") from None
                    last_error = Stop(ERROR, rules.describe(exc))
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
                        raise Stop(TIMEOUT, f"timed out waiting for {target.host}") from None
                    raise Stop(ERROR, rules.describe(exc)) from None
                yield conn, response, str(ip), dog
                return
            finally:
                dog.cancel()
                if response is not None:
                    response.close()
                conn.close()
                if dog.sock is not None:  # http.client hands the socket to the answer: close it now
                    dog.sock.close()
        raise last_error or Stop(ERROR, f"cannot connect to {target.host}")

    def _connection(self, target: Target, ip: IPAddress, timeout: float) -> HTTPConnection:
        # host= the checked address: urllib3 connects there and nowhere else (an IP literal is
        # not looked up). The name goes in the Host header (set by _open) and in SNI, and the
        # certificate is verified against it.
        if target.scheme == "https":
            return HTTPSConnection(str(ip), target.port, timeout=timeout, server_hostname=target.host,
                                   ssl_context=self.ssl_context)
        return HTTPConnection(str(ip), target.port, timeout=timeout)

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
                raise Stop(TIMEOUT, f"timed out reading from {host}") from None
            raise Stop(ERROR, rules.describe(exc)) from None
        if dog.fired:  # the watchdog's shutdown looks like the end of the body
            raise Stop(TIMEOUT, f"timed out reading from {host}")
        body = b"".join(chunks)
        return body[:limit], total > limit


def _is_timeout(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, urllib3.exceptions.NewConnectionError):
            pass  # a subclass of ConnectTimeoutError for history's sake: look at its cause
        elif isinstance(seen, (TimeoutError, urllib3.exceptions.TimeoutError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
