"""A small website on this machine for the outbound fetcher's tests (stdlib http.server, threaded).

    with FakeSite() as site:                       # 127.0.0.1, a free port
        site.page("/about", html(title="Acme"))   # or .add(path, body, content_type=..., ...)
        fetcher.get_page(site.url("/about"))
        site.hits["/about"], site.max_concurrent

Every response can be delayed, trickled or cut short, and the site counts hits per path, the
requests in flight at once (and the most ever), and remembers each request's headers (Host,
User-Agent) and, over TLS, the SNI name it was asked for. Defaults (see `_defaults`): `/`
(a full page), `/huge` (20 MB of HTML), `/slow` (headers, then a byte every 0.5 s for 12 s),
`/slow-head` (nothing for 12 s), `/pdf`, `/json`, `/binary-as-html`, `/untyped`, `/robots.txt`
(disallowing `/private/`), `/private/page`, `/concurrent` (0.4 s per request), redirects
`/redirect/self`, `/redirect/chain/N` (N hops to `/`), `/redirect/to?url=...`, `/status/N`.
"""

from __future__ import annotations

import html as html_lib
import ipaddress
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HUGE_BYTES = 20 * 1024 * 1024


@contextmanager
def local_connections_only() -> Iterator[list[tuple[str, int]]]:
    """Record every socket connect in this process, and refuse (ConnectionRefusedError, nothing
    sent) any to an address off this machine: a fetcher bug can then never reach 10.0.0.1 or the
    metadata service from a test. Yields the list of (address, port) attempted."""
    attempts: list[tuple[str, int]] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def local(address: object) -> bool:
        if not isinstance(address, tuple):
            return True  # a Unix socket
        attempts.append((address[0], address[1]))
        try:
            return ipaddress.ip_address(str(address[0]).split("%")[0]).is_loopback
        except ValueError:
            return False

    def connect(sock: socket.socket, address: object) -> None:
        if not local(address):
            raise ConnectionRefusedError(111, f"test guard: no connection to {address} off this machine")
        return real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: object) -> int:
        if not local(address):
            return 111
        return real_connect_ex(sock, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex  # type: ignore[method-assign]
    try:
        yield attempts
    finally:
        socket.socket.connect, socket.socket.connect_ex = real_connect, real_connect_ex  # type: ignore[method-assign]


def html(title: str = "Acme Widgets", description: str = "We make widgets for everyone.",
         og_title: str = "Acme on OG", og_description: str = "The OG description.",
         headings: tuple[str, ...] = ("Widgets that work", "Pricing"), body: str = "Our widgets are the best.",
         extra_head: str = "") -> bytes:
    e = html_lib.escape
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{e(title)}</title><meta name='description' content='{e(description)}'>"
        f"<meta property='og:title' content='{e(og_title)}'><meta property='og:description' "
        f"content='{e(og_description)}'>{extra_head}<script>var tracking = 'not content';</script></head>"
        "<body><header><nav><a href='/'>Home</a> <a href='/x'>Menu item</a></nav>"
        f"<h1>{e(headings[0]) if headings else ''}</h1></header><main>"
        + "".join(f"<h2>{e(h)}</h2>" for h in headings[1:])
        + f"<p>{e(body)}</p></main><footer>Footer links</footer></body></html>"
    ).encode()


@dataclass
class Response:
    body: bytes = b""
    status: int = 200
    content_type: str | None = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the status line
    trickle_s: float = 0.0  # after the headers, one byte every trickle_s (until trickle_for_s)
    trickle_for_s: float = 0.0
    chunk: int = 64 * 1024  # bytes per write for large bodies
    filler: bytes = b""  # written after body, repeated, up to filler_bytes (big bodies, never in memory)
    filler_bytes: int = 0


class FakeSite:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Response] = {}
        self.hits: Counter[str] = Counter()
        self.requests: list[dict] = []  # path, method, host, user_agent (POST: body, headers)
        self.sent: Counter[str] = Counter()  # body bytes written per path
        self.in_flight = 0
        self.max_concurrent = 0
        self.concurrency_path: str | None = None  # count concurrency for this path only (None: all)
        self.sni_names: list[str | None] = []
        self._lock = threading.Lock()
        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        self.server = server_class((host, port), _handler(self))
        self.server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            tls.sni_callback = self._sni
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True, do_handshake_on_connect=False)
            self.scheme = "https"
        self.host = host
        self.port = self.server.server_address[1]
        self._defaults()
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> FakeSite:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- configuration -----------------------------------------------------------------------

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def url(self, path: str = "/", host: str | None = None) -> str:
        """This site's URL for ``path``; ``host`` replaces the address (e.g. a name for it)."""
        if host is None:
            return self.origin + path
        return f"{self.scheme}://{host}:{self.port}{path}"

    def add(self, path: str, body: bytes = b"", **options: object) -> None:
        self.routes[path] = Response(body=body, **options)  # type: ignore[arg-type]

    def page(self, path: str, body: bytes) -> None:
        self.add(path, body)

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.add(path, b"", status=status, content_type=None, headers={"Location": location})

    def reset_counts(self) -> None:
        with self._lock:
            self.hits.clear()
            self.sent.clear()
            self.requests.clear()
            self.max_concurrent = 0

    def _defaults(self) -> None:
        self.page("/", html())
        self.add("/huge", b"<!doctype html><html><head><title>Huge</title></head><body>",
                 filler=b"<p>lorem ipsum dolor sit amet</p>\n" * 1024, filler_bytes=HUGE_BYTES)
        self.add("/slow", b"<!doctype html><html><head><title>Slow</title>" + b" " * 100, trickle_s=0.5,
                 trickle_for_s=12)
        self.add("/slow-head", html(title="Late"), delay_s=12)
        self.add("/pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", content_type="application/pdf")
        self.add("/json", b'{"name": "acme"}', content_type="application/json")
        self.add("/binary-as-html", b"%PDF-1.7\n\x00\x01\x02binary", content_type="text/html")
        self.add("/untyped", html(title="No type"), content_type=None)
        self.add("/robots.txt", b"User-agent: *\nDisallow: /private/\n", content_type="text/plain")
        self.page("/private/page", html(title="Private"))
        self.add("/concurrent", html(title="Busy"), delay_s=0.4)
        self.redirect("/redirect/self", "/redirect/self")

    # -- serving -----------------------------------------------------------------------------

    def _sni(self, sock: ssl.SSLSocket, name: str | None, context: ssl.SSLContext) -> None:
        with self._lock:
            self.sni_names.append(name)

    def _route(self, path: str) -> Response:
        route = self.routes.get(path)
        if route is not None:
            return route
        parts = urlsplit(path)
        if parts.path.startswith("/redirect/chain/"):
            left = int(parts.path.rsplit("/", 1)[1])
            return Response(status=302, content_type=None,
                            headers={"Location": f"/redirect/chain/{left - 1}" if left > 1 else "/"})
        if parts.path == "/redirect/to":
            target = parse_qs(parts.query)["url"][0]
            code = int(parse_qs(parts.query).get("code", ["302"])[0])
            return Response(status=code, content_type=None, headers={"Location": target})
        if parts.path.startswith("/status/"):
            return Response(status=int(parts.path.rsplit("/", 1)[1]), body=b"status page")
        return Response(status=404, body=b"<!doctype html><title>Not found</title>")

    def _enter(self, path: str) -> None:
        with self._lock:
            self.hits[path] += 1
            if self.concurrency_path in (None, path):
                self.in_flight += 1
                self.max_concurrent = max(self.max_concurrent, self.in_flight)

    def _leave(self, path: str) -> None:
        with self._lock:
            if self.concurrency_path in (None, path):
                self.in_flight -= 1


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _handler(site: FakeSite) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            self._serve(send_body=True)

        def do_HEAD(self) -> None:
            self._serve(send_body=False)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with site._lock:
                site.requests.append({"path": self.path, "method": "POST", "body": body.decode("utf-8", "replace"),
                                      "host": self.headers.get("Host", ""),
                                      "user_agent": self.headers.get("User-Agent", ""),
                                      "headers": {k.lower(): v for k, v in self.headers.items()}})
            self._serve(send_body=True, record=False)

        def _serve(self, send_body: bool, record: bool = True) -> None:
            path = self.path
            site._enter(path)
            left = False
            try:
                if record:
                    with site._lock:
                        site.requests.append({"path": path, "method": self.command,
                                              "host": self.headers.get("Host", ""),
                                              "user_agent": self.headers.get("User-Agent", "")})
                route = site._route(path)
                if route.delay_s:
                    time.sleep(route.delay_s)
                # A request stops counting as in flight before its answer goes out: once the client
                # has it, it may start the next, sooner than this thread gets to `finally`.
                site._leave(path)
                left = True
                self.send_response(route.status)
                if route.content_type:
                    self.send_header("Content-Type", route.content_type)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(route.body) + route.filler_bytes))
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                if send_body:
                    self._write_body(path, route)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
                pass  # the client stopped reading: what a capped or timed-out fetch does
            finally:
                if not left:
                    site._leave(path)

        def _write_body(self, path: str, route: Response) -> None:
            body = route.body
            if route.trickle_s:
                end = time.monotonic() + route.trickle_for_s
                for byte in body:  # Content-Length says the whole body is coming
                    if time.monotonic() >= end:
                        break
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    with site._lock:
                        site.sent[path] += 1
                    time.sleep(route.trickle_s)
                return
            for start in range(0, len(body), route.chunk):
                piece = body[start:start + route.chunk]
                self.wfile.write(piece)
                with site._lock:
                    site.sent[path] += len(piece)
            left = route.filler_bytes
            while left > 0:
                piece = route.filler[:left]
                self.wfile.write(piece)
                left -= len(piece)
                with site._lock:
                    site.sent[path] += len(piece)

    return Handler
