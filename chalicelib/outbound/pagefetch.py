"""Pages fetched with asynchronous I/O: one event loop per process, on a daemon thread, runs
hundreds of page fetches at once (a socket and a coroutine each, no thread each), so pages that
never answer cost a chunk handler memory, not its pace. Callers on any thread get a
``concurrent.futures.Future`` (:meth:`PageFetcher.submit`), never a coroutine.

The SSRF rules are those of every outbound request (:mod:`chalicelib.outbound.fetcher`'s
docstring; the pure parts in :mod:`chalicelib.outbound.rules`), kept by construction:

1. the name is resolved once: the resolver (``socket.getaddrinfo``, /etc/hosts included) runs on
   the process's resolver threads (``loop.run_in_executor``; getaddrinfo blocks and has no
   timeout), waited for at most ``dns_timeout_s`` (``asyncio.timeout``), within the page's deadline;
2. every address it gave is checked (:func:`rules.checked`), before any connection;
3. a socket is connected to exactly a checked address (``loop.sock_connect`` with the IP
   literal: no lookup on the way), and TLS runs over that socket with ``server_hostname`` the
   URL's name (SNI, and the certificate verified against it); the Host header is that name;
4. a redirect goes back to 1; robots.txt is fetched the same way (its first request to the
   addresses already checked).

One deadline, ``asyncio.timeout``, covers the whole fetch: a turn's wait for a per-host slot,
robots.txt, connect, TLS, every redirect, the body (a server trickling bytes is cut there).
HTTP/1.1 is read by h11 (the parser under httpx): headers up to 64 KB, Content-Length, chunked or
read-until-close bodies, at most 1 MB kept, a ``Content-Encoding`` undone as urllib3 would
(:class:`answers.BodyDecoder`, its work bounded by that cap whatever the server sends). Only
CPU-light work runs on the loop; summarising a page with selectolax and the Redis cache belong
to the caller's threads (:mod:`.summaries`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import h11

from chalicelib.outbound import answers, rules
from chalicelib.outbound.addresses import IPAddress
from chalicelib.outbound.rules import (
    ERROR,
    PAGE_ACCEPT,
    REDIRECT_CODES,
    ROBOTS_ACCEPT,
    ROBOTS_MAX_BYTES,
    TIMEOUT,
    Deadline,
    FetchResult,
    Hop,
    Stop,
    Target,
)

if TYPE_CHECKING:
    from chalicelib.outbound.fetcher import Fetcher

log = logging.getLogger(__name__)

RESOLVER_THREADS = 128  # lookups at once per process; a lookup past its bound still holds its thread
READ_SIZE = 64 * 1024
MAX_HEAD_BYTES = 64 * 1024  # status line and headers

_loop: asyncio.AbstractEventLoop | None = None
_resolver_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def resolver_pool() -> ThreadPoolExecutor:
    """The process's resolver threads, started as needed: the event loop's lookups (its default
    executor) and the webhooks' alike."""
    global _resolver_pool
    with _lock:
        if _resolver_pool is None:
            _resolver_pool = ThreadPoolExecutor(max_workers=RESOLVER_THREADS, thread_name_prefix="outbound-dns")
        return _resolver_pool


def event_loop() -> asyncio.AbstractEventLoop:
    """The process's page loop, started on first use on a daemon thread of its own."""
    global _loop
    pool = resolver_pool()
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            loop.set_default_executor(pool)
            threading.Thread(target=loop.run_forever, name="outbound-pages", daemon=True).start()
            _loop = loop
        return _loop


@dataclass
class _Host:
    semaphore: asyncio.Semaphore
    users: int = 0  # holding or waiting
    active: int = 0  # holding


class HostSlots:
    """At most ``per_host`` page fetches per host name at once (on the loop; in this process)."""

    def __init__(self, per_host: int) -> None:
        self.per_host = max(1, per_host)
        self._hosts: dict[str, _Host] = {}

    @asynccontextmanager
    async def hold(self, host: str) -> AsyncIterator[None]:
        entry = self._hosts.get(host)
        if entry is None:
            entry = self._hosts[host] = _Host(asyncio.Semaphore(self.per_host))
        entry.users += 1
        try:
            async with entry.semaphore:
                entry.active += 1
                try:
                    yield
                finally:
                    entry.active -= 1
        finally:
            entry.users -= 1
            if not entry.users:
                del self._hosts[host]

    def active(self, host: str) -> int:
        entry = self._hosts.get(host)
        return entry.active if entry is not None else 0


def _nobody() -> str | None:
    return None


@dataclass
class _Exchange:
    """One page fetch: its deadline, the URL reached and its hops so far, and what it is doing
    now (the reason given, and the host blamed, if the deadline passes then). While robots.txt
    is read (``held``), its steps do not change that: its time out is robots.txt's."""

    deadline: Deadline
    current: str
    hops: list[Hop] = field(default_factory=list)
    doing: str = "fetching"
    blame: Callable[[], str | None] = _nobody
    held: bool = False

    def now(self, doing: str, blame: Callable[[], str | None] = _nobody) -> None:
        if not self.held:
            self.doing, self.blame = doing, blame

    def expired(self) -> Stop:
        return Stop(TIMEOUT, f"timed out {self.doing}", host=self.blame())


@dataclass
class _Answer:
    status: int
    headers: dict[str, str]  # lower-case names; repeated ones joined with ", "
    address: str
    conn: h11.Connection
    reader: asyncio.StreamReader
    blame: Callable[[], str | None]


class PageFetcher:
    """The page fetches of one :class:`~chalicelib.outbound.fetcher.Fetcher` (its policy,
    resolver, limits, robots.txt cache and memory of failed hosts), on the process's loop.
    ``in_flight``: fetches at once (PAGE_FETCH_CONCURRENCY); the others wait for a turn."""

    def __init__(self, owner: Fetcher, *, host_concurrency: int, in_flight: int) -> None:
        self.owner = owner
        self.slots = HostSlots(host_concurrency)
        self.in_flight = max(1, in_flight)
        self._turns = asyncio.Semaphore(self.in_flight)
        self.running = 0  # fetches in flight now

    def submit(self, url: str, *, start_by: float | None = None, timeout_s: float | None = None) -> Future[FetchResult]:
        """The page's FetchResult, to come (the future never raises; cancelling it ends the fetch).
        ``start_by`` (monotonic): not started by then (waiting for a turn), it ends as a skipped
        timeout. ``timeout_s``: this fetch's deadline instead of the fetcher's."""
        if url[:6].lower() == "https:":
            _ = self.owner.ssl_context  # the CAs are loaded on this thread, not on the loop
        return asyncio.run_coroutine_threadsafe(self.fetch(url, start_by=start_by, timeout_s=timeout_s), event_loop())

    async def fetch(self, url: str, *, start_by: float | None = None, timeout_s: float | None = None) -> FetchResult:
        async with self._turns:
            if start_by is not None and time.monotonic() > start_by:
                return FetchResult(TIMEOUT, "timed out waiting for a turn to fetch", url, skipped=True)
            started = time.monotonic()
            self.running += 1
            try:
                result = await self._page(url, self.owner.timeout_s if timeout_s is None else timeout_s)
            except Exception:  # never raise for a URL: a bug here must not fail a row either
                log.exception("page fetch of %r failed unexpectedly", url)
                result = FetchResult(ERROR, "internal error", url)
            finally:
                self.running -= 1
        return replace(result, elapsed_s=round(time.monotonic() - started, 3))

    async def _page(self, url: str, timeout_s: float) -> FetchResult:
        ex = _Exchange(Deadline(timeout_s), url)
        try:
            try:
                async with asyncio.timeout(timeout_s):
                    return await self._get(ex, page=True, max_bytes=self.owner.max_bytes)
            except TimeoutError:
                raise ex.expired() from None
        except Stop as stop:
            if stop.host is not None:
                self.owner.host_failures.record(stop.host, stop.status, stop.reason)
            return rules.stopped(stop, url, ex.current, ex.hops)

    async def _get(self, ex: _Exchange, *, page: bool, max_bytes: int, first: Target | None = None) -> FetchResult:
        """GET ``ex.current``, following redirects; a page also wants a slot, robots.txt's leave
        and HTML. Raises Stop."""
        owner, url = self.owner, ex.current
        for hop in range(owner.max_redirects + 1):
            hop_started = owner.host_failures.clock()
            target = first if hop == 0 and first is not None else await self._target(ex, ex.current, page)
            ex.now(f"waiting for a free connection to {target.host}")
            async with self.slots.hold(target.host) if page else _no_slot():
                if page:  # the host may have failed while we waited for the slot
                    owner.host_failures.check(target.host, failed_since=hop_started)
                    await self._check_robots(ex, target)
                async with self._exchange(ex, target, PAGE_ACCEPT if page else ROBOTS_ACCEPT) as answer:
                    ex.hops.append(Hop(ex.current, answer.address, target.port, answer.status))
                    location = answer.headers.get("location") if answer.status in REDIRECT_CODES else None
                    if not location:
                        if page:
                            owner.host_failures.forget(target.host)  # it answered
                        return await self._finish(ex, url, target, answer, page=page, max_bytes=max_bytes)
                    if hop == owner.max_redirects:
                        raise Stop(ERROR, f"more than {owner.max_redirects} redirects")
                    ex.current = rules.redirect_url(ex.current, location)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _target(self, ex: _Exchange, url: str, page: bool) -> Target:
        """Parse, resolve and check one URL: every refusal happens here, before any connection.
        A page's host in the memory of failed hosts ends the fetch before its lookup."""
        target = rules.split_url(url)
        if page:
            self.owner.host_failures.check(target.host)
        literal = rules.ip_literal(target.host)
        resolved = [literal] if literal is not None else await self._resolve(ex, target)
        return rules.checked(target, resolved, self.owner.policy, log)

    async def _resolve(self, ex: _Exchange, target: Target) -> list[IPAddress]:
        host, bound_s, resolver = target.host, self.owner.dns_timeout_s, self.owner.resolver
        started: list[float] = []

        def lookup() -> object:
            started.append(time.monotonic())
            return resolver(host, target.port, 0, socket.SOCK_STREAM)

        def blame() -> str | None:
            return rules.dns_blame(host, time.monotonic() - started[0] if started else 0.0, bound_s)

        ex.now(f"resolving {host}", blame)
        try:
            async with asyncio.timeout(min(bound_s, ex.deadline.remaining())):
                infos = await asyncio.get_running_loop().run_in_executor(None, lookup)
        except TimeoutError:
            raise Stop(TIMEOUT, f"timed out resolving {host}", host=blame()) from None
        except (OSError, UnicodeError) as exc:
            raise Stop(ERROR, f"cannot resolve {host} ({rules.describe(exc)})", host=host) from None
        return rules.addresses_of(host, infos)  # type: ignore[arg-type]

    async def _check_robots(self, ex: _Exchange, target: Target) -> None:
        owner = self.owner
        parser = owner.robots.get(target.origin)
        if parser is None:
            first = target.robots()
            given_s = ex.deadline.remaining()
            ex.now("reading robots.txt", lambda: rules.blamed(target.host, given_s, owner.timeout_s))
            robots = _Exchange(ex.deadline, first.url)
            ex.held = True
            try:
                result = await self._get(robots, page=False, max_bytes=ROBOTS_MAX_BYTES, first=first)
            except Stop as stop:
                result = rules.stopped(stop, first.url, robots.current, robots.hops)
            finally:
                ex.held = False
            stop = answers.robots_stop(result, target.host, given_s, owner.timeout_s)
            if stop is not None:
                raise stop
            parser = answers.robots_rules(result)
            owner.robots.put(target.origin, parser)
        answers.check_robots(parser, owner.user_agent, target.url)

    @asynccontextmanager
    async def _exchange(self, ex: _Exchange, target: Target, accept: str) -> AsyncIterator[_Answer]:
        """Connect to the first checked address that answers, send the request, read the head."""
        last_error: Stop | None = None
        for ip in target.addresses:
            given_s = ex.deadline.remaining()

            def blame(given_s: float = given_s) -> str | None:
                return rules.blamed(target.host, given_s, self.owner.timeout_s)

            ex.now(f"connecting to {target.host}", blame)
            try:
                reader, writer = await self._connect(target, ip)
            except ssl.SSLError as exc:
                raise Stop(ERROR, rules.describe(exc)) from None
            except TimeoutError:  # the system's own (ETIMEDOUT)
                raise Stop(TIMEOUT, f"timed out connecting to {target.host}", host=blame()) from None
            except OSError as exc:
                last_error = Stop(ERROR, rules.describe(exc))
                continue
            try:
                ex.now(f"waiting for {target.host}", blame)
                conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
                headers = [("Host", target.host_header), ("User-Agent", self.owner.user_agent), ("Accept", accept),
                           ("Accept-Encoding", "identity"), ("Connection", "close")]
                try:
                    writer.write(conn.send(h11.Request(method="GET", target=target.path, headers=headers)))
                    writer.write(conn.send(h11.EndOfMessage()))
                    await writer.drain()
                except h11.LocalProtocolError as exc:
                    raise Stop(ERROR, f"cannot send this request ({exc})") from None
                except OSError as exc:
                    raise Stop(ERROR, rules.describe(exc)) from None
                head = await _next_event(conn, reader)
                while isinstance(head, h11.InformationalResponse):
                    head = await _next_event(conn, reader)
                if not isinstance(head, h11.Response):
                    raise Stop(ERROR, "connection closed without an answer")
                fields: dict[str, str] = {}
                for name, value in head.headers:
                    key, text = name.decode("latin-1"), value.decode("latin-1")
                    fields[key] = f"{fields[key]}, {text}" if key in fields else text
                yield _Answer(head.status_code, fields, str(ip), conn, reader, blame)
                return
            finally:
                writer.transport.abort()  # never reused (Connection: close); nothing to wait for
        raise last_error or Stop(ERROR, f"cannot connect to {target.host}")

    async def _connect(self, target: Target, ip: IPAddress) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to exactly ``ip`` (an address literal: nothing is looked up), TLS over it
        with the URL's name as SNI and as the name the certificate must carry."""
        sock = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (str(ip), target.port))
            tls = target.scheme == "https"
            return await asyncio.open_connection(sock=sock, ssl=self.owner.ssl_context if tls else None,
                                                 server_hostname=target.host if tls else None, limit=READ_SIZE)
        except BaseException:
            sock.close()
            raise

    async def _finish(self, ex: _Exchange, url: str, target: Target, answer: _Answer, *, page: bool,
                      max_bytes: int) -> FetchResult:
        fields = answers.answer_fields(target, answer.status, answer.headers, ex.hops)
        refusal = answers.page_head_refusal(url, fields) if page else None
        if refusal is not None:
            return refusal
        ex.now(f"reading from {target.host}", answer.blame)
        decoder = answers.BodyDecoder(answer.headers.get("content-encoding", ""), max_bytes)
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:
            event = await _next_event(answer.conn, answer.reader)
            if isinstance(event, h11.Data):
                piece = decoder.decode(bytes(event.data), max_bytes + 1 - total)
                chunks.append(piece)
                total += len(piece)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        body = b"".join(chunks)
        truncated = total > max_bytes
        body = body[:max_bytes]
        refusal = answers.page_body_refusal(url, fields, body) if page else None
        return refusal or answers.body_result(url, fields, body, truncated, max_bytes)


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    """h11's next event, reading as much as it needs (an error of the server's is a Stop)."""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise Stop(ERROR, f"bad answer ({exc})") from None
        if event is not h11.NEED_DATA:
            return event
        try:
            data = await reader.read(READ_SIZE)
        except OSError as exc:
            raise Stop(ERROR, rules.describe(exc)) from None
        conn.receive_data(data)  # b"": the server closed the connection


@asynccontextmanager
async def _no_slot() -> AsyncIterator[None]:
    yield
