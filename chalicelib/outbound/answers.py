"""How an answer is read, whatever carried it (:mod:`.fetcher` for webhooks, :mod:`.pagefetch`
for pages): its fields in a :class:`~chalicelib.outbound.rules.FetchResult`, what counts as a
page (2xx, HTML only, binary refused whatever its label, HTML sniffed when untyped), the
decoding of a ``Content-Encoding`` the server sent although we asked for ``identity``, and
robots.txt (RFC 9309 on its answer, a cache per origin). Pure, but for the cache's lock.
"""

from __future__ import annotations

import threading
import time
import urllib.robotparser
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chalicelib.outbound.rules import (
    ERROR,
    FETCHED,
    HTML_TYPES,
    NOT_HTML,
    ROBOTS,
    ROBOTS_CACHE_SIZE,
    ROBOTS_TTL_S,
    TIMEOUT,
    FetchResult,
    Hop,
    Stop,
    Target,
    blamed,
)

# --- what counts as a page ---------------------------------------------------------------------


def content_type(value: str) -> tuple[str, str | None]:
    media, _, params = value.partition(";")
    charset = None
    for param in params.split(";"):
        name, _, val = param.partition("=")
        if name.strip().lower() == "charset" and val.strip():
            charset = val.strip().strip("\"'").lower()
    return media.strip().lower(), charset


def answer_fields(target: Target, status: int, headers: Mapping[str, str], hops: Sequence[Hop]) -> dict[str, Any]:
    """The FetchResult fields of an answer (``headers`` with lower-case names)."""
    media, charset = content_type(headers.get("content-type", ""))
    return {"final_url": target.url, "http_status": status, "content_type": media or None, "charset": charset,
            "headers": dict(headers), "hops": tuple(hops)}


def page_head_refusal(url: str, fields: Mapping[str, Any]) -> FetchResult | None:
    """A page's answer refused by its head alone (before its body is read), or None."""
    status, media = fields["http_status"], fields["content_type"]
    if not 200 <= status < 300:
        return FetchResult(ERROR, f"HTTP {status}", url, **fields)
    if media and media not in HTML_TYPES:
        return FetchResult(NOT_HTML, f"content type {media}", url, **fields)
    return None


def page_body_refusal(url: str, fields: Mapping[str, Any], body: bytes) -> FetchResult | None:
    binary = binary_kind(body)
    if binary:
        return FetchResult(NOT_HTML, f"{binary} content", url, **fields)
    if not fields["content_type"] and not looks_like_html(body):
        return FetchResult(NOT_HTML, "no content type and not HTML", url, **fields)
    return None


def body_result(url: str, fields: Mapping[str, Any], body: bytes, truncated: bool, max_bytes: int) -> FetchResult:
    reason = f"truncated at {max_bytes:,} bytes" if truncated else "ok"
    return FetchResult(FETCHED, reason, url, body=body, truncated=truncated, **fields)


_MAGIC = ((b"%PDF-", "PDF"), (b"\x89PNG", "PNG"), (b"GIF8", "GIF"), (b"\xff\xd8\xff", "JPEG"),
          (b"PK\x03\x04", "ZIP"), (b"\x1f\x8b", "gzip"), (b"RIFF", "RIFF"), (b"\x00\x00\x01\x00", "icon"))


_BINARY_BYTES = bytes([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x1B), *range(0x1C, 0x20)])  # WHATWG "binary data bytes"


def binary_kind(body: bytes) -> str | None:
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


def looks_like_html(body: bytes) -> bool:
    head = body[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<title", b"<meta", b"<!--"))


# --- Content-Encoding --------------------------------------------------------------------------

DECODED_ENCODINGS = ("gzip", "x-gzip", "deflate")  # what urllib3 decodes without optional packages


class BodyDecoder:
    """Undoes the ``Content-Encoding`` a server sent although we asked for ``identity``, as the
    webhooks' client (urllib3, ``decode_content``) does: gzip (several members too), x-gzip,
    deflate (zlib-wrapped, or raw as some servers send it), a list of them applied in reverse;
    an encoding it does not know alone is left as it came (the binary check then refuses it).
    At most ``max_length`` bytes come out of each call, so a small body cannot grow past the cap."""

    def __init__(self, header: str) -> None:
        value = header.strip().lower()
        names = [n.strip() for n in value.split(",")] if "," in value else [value]
        known = value in DECODED_ENCODINGS or ("," in value and any(n in DECODED_ENCODINGS for n in names))
        # as urllib3: in a list with a known one, an unknown name is decoded as deflate
        self.names = [n for n in reversed(names) if n and n != "identity"] if known else []
        self._steps = [_Inflate(n in ("gzip", "x-gzip")) for n in self.names]
        self.header = header

    def decode(self, data: bytes, max_length: int) -> bytes:
        try:
            for n, step in enumerate(self._steps):  # only the last step's output is capped
                data = step.feed(data, max_length if n == len(self._steps) - 1 else 0)
        except zlib.error:
            raise Stop(ERROR, f"content-encoding {self.header} could not be decoded") from None
        return data


class _Inflate:
    def __init__(self, gzip: bool) -> None:
        self.gzip = gzip
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS)
        self._seen: bytes | None = None if gzip else b""  # deflate: zlib-wrapped, or raw if that fails at first
        self._garbage = False

    def feed(self, data: bytes, max_length: int) -> bytes:
        if not data:
            return data
        if self._seen is not None:
            self._seen += data
            try:
                out = self._z.decompress(data, max_length)
            except zlib.error:
                seen, self._seen = self._seen, None
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
                return self._z.decompress(seen, max_length)
            if out:
                self._seen = None
            return out
        if self._garbage:
            return b""
        out = self._z.decompress(data, max_length)
        while self.gzip and self._z.eof and self._z.unused_data and (not max_length or len(out) < max_length):
            rest = self._z.unused_data  # the next gzip member
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                out += self._z.decompress(rest, max_length - len(out) if max_length else 0)
            except zlib.error:  # trailing garbage after a member: ignored, as urllib3 does
                self._garbage = True
                break
        return out


# --- robots.txt --------------------------------------------------------------------------------


def robots_rules(result: FetchResult) -> urllib.robotparser.RobotFileParser:
    """RFC 9309 on a fetched robots.txt: a 2xx file is obeyed; 4xx (or one we may not follow)
    means no rules; an unreachable one (5xx, 429) means stay away for now. A timeout or an error
    before any answer is the caller's to raise (:func:`robots_stop`)."""
    parser = urllib.robotparser.RobotFileParser(result.url)
    code = result.http_status or 0
    if result.status == FETCHED and 200 <= code < 300:
        parser.parse(result.body.decode("utf-8", "replace").splitlines())
    elif code == 429 or code >= 500:
        parser.disallow_all = True
    else:
        parser.allow_all = True
    return parser


def robots_stop(result: FetchResult, host: str, given_s: float, timeout_s: float) -> Stop | None:
    if result.status == TIMEOUT:
        return Stop(TIMEOUT, "timed out reading robots.txt", host=blamed(host, given_s, timeout_s))
    if result.status == ERROR and not result.hops:
        return Stop(ERROR, f"robots.txt: {result.reason}")
    return None


@dataclass
class _Robots:
    parser: urllib.robotparser.RobotFileParser
    expires_at: float


class RobotsCache:
    """Rules per origin for ``ttl_s``, at most ROBOTS_CACHE_SIZE origins (the oldest dropped)."""

    def __init__(self, ttl_s: float = ROBOTS_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._rules: dict[tuple[str, str, int], _Robots] = {}
        self._lock = threading.Lock()

    def get(self, origin: tuple[str, str, int]) -> urllib.robotparser.RobotFileParser | None:
        with self._lock:
            cached = self._rules.get(origin)
        return cached.parser if cached is not None and cached.expires_at > time.monotonic() else None

    def put(self, origin: tuple[str, str, int], parser: urllib.robotparser.RobotFileParser) -> None:
        with self._lock:
            if len(self._rules) >= ROBOTS_CACHE_SIZE:
                self._rules.pop(next(iter(self._rules)))
            self._rules[origin] = _Robots(parser, time.monotonic() + self.ttl_s)


def check_robots(parser: urllib.robotparser.RobotFileParser, user_agent: str, url: str) -> None:
    if not parser.can_fetch(user_agent, url):
        raise Stop(ROBOTS, "disallowed by robots.txt")
