"""A local webhook receiver for tests: answers `status` to every POST and records each request's
headers (lower-case names) and raw body. Reached through OUTBOUND_ALLOW_NETWORKS=127.0.0.1/32.
With `on_request(headers, body)`, what it returns is recorded in `seen` before the answer goes
(what the world looked like to a receiver at the moment the webhook arrived)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self, status: int = 200, on_request: Callable[[dict, bytes], object] | None = None) -> None:
        self.status = status
        self.requests: list[tuple[dict, bytes]] = []
        self.seen: list[object] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.requests.append((headers, data))
                if on_request is not None:
                    try:
                        receiver.seen.append(on_request(headers, data))
                    except Exception as exc:  # recorded for the test to see, and answered all the same
                        receiver.seen.append(exc)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/csv-opener"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
