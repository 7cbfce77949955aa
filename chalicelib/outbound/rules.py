"""What every outbound request shares, whatever carries it: the threaded client of webhooks
(:mod:`chalicelib.outbound.fetcher`) and the asynchronous page fetch (:mod:`.pagefetch`).

Statuses and results, the deadline, a URL split into what is sent and checked, the address
check of everything a name resolved to, the memory of failed hosts, short reasons. How an
answer is read (what counts as a page, Content-Encoding, robots.txt) is :mod:`.answers`.
Nothing here does I/O; :class:`HostFailures` holds state behind a lock, shared by the threads
and the event loop.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from chalicelib.outbound.addresses import AddressPolicy, IPAddress

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
DEFAULT_PAGES_IN_FLIGHT = 256  # page fetches at once on the event loop, per process
HOST_FAILURES_SIZE = 4096
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
ROBOTS_ACCEPT = "text/plain,*/*;q=0.1"

# socket.getaddrinfo's signature; tests inject their own to play a rebinding DNS server.
Resolver = Callable[..., Sequence[tuple[Any, ...]]]


class Stop(Exception):
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


def stopped(stop: Stop, url: str, current: str, hops: Sequence[Hop]) -> FetchResult:
    last = hops[-1] if hops else None
    return FetchResult(stop.status, stop.reason, url, final_url=current, hops=tuple(hops),
                       http_status=last.http_status if last else None, skipped=stop.skipped)


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.expires_at = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.expires_at - time.monotonic())

    def check(self, what: str) -> float:
        left = self.remaining()
        if left <= 0:
            raise Stop(TIMEOUT, f"timed out {what}")
        return left


def blamed(host: str, given_s: float, timeout_s: float) -> str | None:
    """``host``, to remember as failed, if it had at least half of a fetch's time: a fetch that
    waited most of its deadline for a free slot and then timed out says little about the host."""
    return host if given_s >= timeout_s / 2 else None


# --- the memory of failed hosts -----------------------------------------------------------------


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
            raise Stop(status, f"{reason} (a moment ago: not tried again for now)", skipped=True)


# --- a URL and its checked addresses -----------------------------------------------------------


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str  # ASCII, lower case, as sent in Host and SNI (IPv6 without brackets)
    port: int
    path: str  # path and query, percent-encoded, as sent on the request line
    addresses: tuple[IPAddress, ...] = ()  # checked, in the resolver's order

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    def robots(self) -> Target:
        """This origin's robots.txt, at the addresses already checked (no second lookup)."""
        return Target(f"{self.scheme}://{self.host_header}/robots.txt", self.scheme, self.host, self.port,
                      "/robots.txt", self.addresses)


def split_url(url: str) -> Target:
    """What a URL asks for, before any lookup (``addresses`` empty); refusals of its form here."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Stop(ERROR, f"not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise Stop(BLOCKED, f"scheme {scheme or '(none)'}: is not allowed (http and https only)")
    if parts.username is not None or parts.password is not None:
        raise Stop(BLOCKED, "user names or passwords in URLs are not allowed")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise Stop(ERROR, "URL has no host")
    port = DEFAULT_PORTS[scheme] if port is None else port
    if port == 0:
        raise Stop(ERROR, "invalid port 0")
    try:
        host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise Stop(ERROR, f"invalid host name {host!r}") from None
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if parts.query:
        path += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    return Target(url, scheme, host, port, path)


def ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def addresses_of(host: str, infos: Iterable[tuple[Any, ...]]) -> list[IPAddress]:
    """The distinct addresses of a getaddrinfo answer, in its order (an IPv6 scope kept: refused)."""
    addresses: list[IPAddress] = []
    for info in infos:
        sockaddr = info[4]
        ip = ipaddress.ip_address(sockaddr[0].split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and len(sockaddr) >= 4 and sockaddr[3]:
            ip = ipaddress.IPv6Address(f"{ip}%{sockaddr[3]}")
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise Stop(ERROR, f"cannot resolve {host} (no addresses)", host=host)
    return addresses


def checked(target: Target, resolved: Sequence[IPAddress], policy: AddressPolicy,
            log: Any = None) -> Target:
    """``target`` with the addresses it may connect to: every one it resolved to is asked about,
    and if none is allowed nothing is connected to (the refusal names the URL's host and the kind
    of address, never the address a name resolved to)."""
    allowed, refused = [], []
    for ip in resolved:
        problem = policy.problem(ip, target.port)
        (refused if problem else allowed).append(problem or ip)
    if not allowed:
        raise Stop(BLOCKED, f"refused: {target.host} ({refused[0]})")
    if refused and log is not None:
        log.info("outbound: %s also resolves to a refused address (%s); using an allowed one", target.host, refused[0])
    return Target(target.url, target.scheme, target.host, target.port, target.path, tuple(allowed))


def dns_blame(host: str, ran_s: float, bound_s: float) -> str | None:
    """The name is to blame for a lookup past its bound only if it ran for most of the bound: not
    one that waited for a resolver thread, nor one cut short by what was left of the deadline."""
    return host if ran_s >= bound_s / 2 else None


def redirect_url(current: str, location: str) -> str:
    url = urljoin(current, location.strip())
    return url.split("#", 1)[0]


# --- reasons -----------------------------------------------------------------------------------


def describe(exc: BaseException) -> str:
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
