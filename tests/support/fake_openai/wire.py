"""HTTP/1.1 on asyncio streams, as much as the fake needs: request line and headers,
Content-Length and chunked bodies, ``Expect: 100-continue``, keep-alive."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from http import HTTPStatus

MAX_HEAD = 1 << 20  # request line + headers
MAX_BODY = 32 << 20  # except file uploads, see batches.MAX_UPLOAD
JSON = "application/json"
_REASONS = {s.value: s.phrase for s in HTTPStatus}


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def response(
    status: int,
    body: bytes,
    *,
    keep_alive: bool,
    headers: Iterable[tuple[str, str]] = (),
    content_type: str = JSON,
) -> bytes:
    """The bytes of a response; a ``content-type`` among ``headers`` replaces ``content_type``."""
    extra = list(headers)
    for i, (name, value) in enumerate(extra):
        if name == "content-type":
            content_type = value
            del extra[i]
            break
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        f"content-type: {content_type}",
        f"content-length: {len(body)}",
        "connection: keep-alive" if keep_alive else "connection: close",
        "server: fake-openai",
    ]
    lines.extend(f"{k}: {v}" for k, v in extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """-> (method, target, version, headers with lower-case names)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
        raise HTTPError(400, "Malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HTTPError(400, "Malformed header line")
        headers[name.lower()] = value.strip()
    return parts[0].upper(), parts[1], parts[2], headers


async def read_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str], max_body: int = MAX_BODY
) -> bytes:
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    length_text = headers.get("content-length")
    if not chunked and length_text is None:
        return b""
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
    if chunked:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HTTPError(400, "Malformed chunk size") from None
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return b"".join(chunks)
            total += size
            if total > max_body:
                raise HTTPError(413, "Request body too large")
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    assert length_text is not None
    if not length_text.isdigit():
        raise HTTPError(400, "Malformed Content-Length")
    length = int(length_text)
    if length > max_body:
        raise HTTPError(413, "Request body too large")
    return await reader.readexactly(length) if length else b""
