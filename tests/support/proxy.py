"""A recording HTTP/1.1 proxy between the event runner and the fake OpenAI server.

Why: the rate-limit tests must show *when* each LLM request reached the provider (to prove a
shared cooldown paused every worker) and what it was answered. The fake server counts requests
but keeps no per-request timestamps (`/_fake/stats` has only `first_request_at` and
`last_request_at`), so this proxy, run in the pytest process, writes down for every chat request
the wall-clock time (`time.time()`, comparable with the runner's log lines) at which it was handed
to the fake, and the status (and rate-limit headers) of the answer.

It forwards bytes unchanged on one upstream connection per client connection, so keep-alive,
hangs and client timeouts behave as without it: a client that gives up closes its connection and
the proxy closes the upstream one (the fake's hang ends), and the other way round. Requests are
framed by Content-Length (what the OpenAI SDK sends); anything else closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass, field

RATE_LIMIT_HEADERS = ("retry-after", "retry-after-ms", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")


@dataclass
class Exchange:
    sent: float  # time.time() when the whole request had been read and was handed to the fake
    path: str
    status: int | None = None  # None: never answered (a hang the client gave up on)
    answered: float | None = None
    headers: dict[str, str] = field(default_factory=dict)  # the rate-limit headers of a 429


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


class RecordingProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------ records

    def exchanges(self, since: float = 0.0) -> list[Exchange]:
        """Chat requests handed to the fake at or after `since` (time.time()), in order."""
        with self._lock:
            return [e for e in self._exchanges if e.sent >= since]

    def clear(self) -> None:
        with self._lock:
            self._exchanges.clear()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> RecordingProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # noqa: BLE001 - re-raised by start()
                failure.append(exc)
                ready.set()
                return
            self._loop = loop
            ready.set()
            try:
                loop.run_forever()
            finally:
                self._server.close()
                for task in list(self._tasks):
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*self._tasks, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name="e2e-recording-proxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = self._thread = None

    # ------------------------------------------------------------ forwarding

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        upstream_writer = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            pending: deque[Exchange] = deque()
            pumps = [asyncio.create_task(self._requests(client_reader, upstream_writer, pending)),
                     asyncio.create_task(self._responses(upstream_reader, client_writer, pending))]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    writer.close()
            self._tasks.discard(task)

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        pending: deque[Exchange]) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, headers = _headers(head)
                length = headers.get("content-length", "0")
                if not length.isdigit() or "chunked" in headers.get("transfer-encoding", "").lower():
                    return  # not framed the way the SDK frames requests: give up on this connection
                body = await reader.readexactly(int(length)) if int(length) else b""
                parts = line.split(" ")
                exchange = Exchange(sent=time.time(), path=parts[1] if len(parts) > 1 else "")
                pending.append(exchange)
                if exchange.path.rstrip("/").endswith("/chat/completions"):
                    with self._lock:
                        self._exchanges.append(exchange)
                writer.write(head + body)
                await writer.drain()

    async def _responses(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         pending: deque[Exchange]) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, headers = _headers(head)
                status = int(line.split(" ")[1])
                length = headers.get("content-length", "0")
                body = await reader.readexactly(int(length)) if length.isdigit() and int(length) else b""
                if status != 100 and pending:
                    exchange = pending.popleft()
                    exchange.status, exchange.answered = status, time.time()
                    if status == 429:
                        exchange.headers = {k: headers[k] for k in RATE_LIMIT_HEADERS if k in headers}
                writer.write(head + body)
                await writer.drain()
