"""A server that accepts every connection, reads whatever comes and never answers: sites that
hang, by the hundred (one asyncio loop in a thread: thousands of connections are cheap).

    server = HangServer("127.0.0.1", robots=b"")   # robots.txt answered 404 at once, pages hang
    server.port, server.accepted, server.open, server.max_open, server.paths (each request's)
    server.close()
"""

from __future__ import annotations

import asyncio
import threading


class HangServer:
    """``robots``: None, robots.txt hangs too; bytes (b"": a 404), it is answered with them."""

    def __init__(self, host: str = "127.0.0.1", robots: bytes | None = None) -> None:
        self.host = host
        self.robots = robots
        self.accepted = 0
        self.open = 0
        self.max_open = 0
        self.paths: list[str] = []  # the path of each request line read, in order
        self.port = 0
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True, name="hang-server").start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._hold, self.host, 0, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            first = await reader.readline()
            self.paths.append(first.split(b" ")[1].decode("latin-1") if first.count(b" ") >= 2 else "")
            if self.robots is not None and first.split(b" ")[1:2] == [b"/robots.txt"]:
                status = b"200 OK" if self.robots else b"404 Not Found"
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                             b"Content-Length: " + str(len(self.robots)).encode() + b"\r\n\r\n" + self.robots)
                await writer.drain()
                return
            while await reader.read(65536):
                pass
        except OSError:
            pass
        finally:
            self.open -= 1
            writer.close()

    def reset_counts(self) -> None:
        self.accepted = self.max_open = 0

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)

    def __enter__(self) -> HangServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
