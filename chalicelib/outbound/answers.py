"""How an answer is read, whatever carried it (:mod:`.fetcher` for webhooks, :mod:`.pagefetch`
for pages): its fields in a :class:`~chalicelib.outbound.rules.FetchResult`, what counts as a
page (2xx, HTML only, binary refused whatever its label, HTML sniffed when untyped), the
decoding of a ``Content-Encoding`` the server sent although we asked for ``identity`` (for pages,
at a cost bounded by the page's cap; urllib3 decodes the webhooks' answers), and robots.txt
(RFC 9309 on its answer, a cache per origin). Pure, but for the cache's lock.
"""

from __future__ import annotations

import itertools
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
MAX_ENCODINGS = 5  # a longer list is refused, as urllib3 refuses it (MultiDecoder.max_decode_links)
ENCODED_PER_BYTE = 2  # the input each decoding step may use, per byte of the page's cap (see BodyDecoder)
_MEMBER_WORK = 4096  # what a gzip member after the first counts as, in input bytes (see _Inflate)
_STEP_OUT = 64 * 1024  # what a step of a list hands the next at a time
_GZIP_WBITS = 16 + zlib.MAX_WBITS


class _TooMuch(Exception):
    pass


class BodyDecoder:
    """Undoes the ``Content-Encoding`` a server sent although we asked for ``identity``, as the
    webhooks' client (urllib3, ``decode_content``) does: gzip (several members too), x-gzip,
    deflate (zlib-wrapped, or raw as some servers send it), a list of up to MAX_ENCODINGS of them
    applied in reverse; an encoding it does not know alone is left as it came (the binary check
    then refuses it).

    A page server is hostile input and a page shares one event loop with hundreds of others, so
    the memory and CPU a body costs are bounded by the page's cap (``max_bytes``), whatever the
    server sends: at most ``max_length`` bytes come out of a call, every step's output included (a
    step of a list hands the next 64 KB at a time, once the next has used what it had; input not
    needed yet waits in the step for the next call); no step uses or throws away more than
    ``budget`` (ENCODED_PER_BYTE × ``max_bytes`` + 64 KB a step) of input, or the body is an error:
    empty stored blocks, empty gzip members or trailing garbage, sent or inflated by an outer step,
    give nothing for their bytes. An honest body stays far below: deflate grows incompressible
    bytes by 0.03%, and the reader stops once ``max_bytes`` came out. Pure: no I/O."""

    def __init__(self, header: str, max_bytes: int) -> None:
        value = header.strip().lower()
        names = [n.strip() for n in value.split(",")] if "," in value else [value]
        known = value in DECODED_ENCODINGS or ("," in value and any(n in DECODED_ENCODINGS for n in names))
        # as urllib3: in a list with a known one, an unknown name is decoded as deflate
        self.names = [n for n in reversed(names) if n and n != "identity"] if known else []
        self.too_many = known and len(names) > MAX_ENCODINGS  # a 64 KB header lists 13,000
        self.budget = ENCODED_PER_BYTE * max_bytes + len(self.names) * _STEP_OUT
        self._steps = [] if self.too_many else [_Inflate(n in ("gzip", "x-gzip"), self.budget) for n in self.names]
        self.header = header if len(header) <= 80 else f"{header[:77]}..."  # as it is shown
        self.decoded = 0

    def decode(self, data: bytes, max_length: int) -> bytes:
        """At most ``max_length`` (≥ 1) more bytes of the decoded body (with no encoding to undo,
        ``data`` as it came); Stop if it cannot be decoded or costs more than its budget."""
        if self.too_many:
            raise Stop(ERROR, f"content-encoding {self.header}: more than {MAX_ENCODINGS} encodings")
        if not self._steps:
            return data
        try:
            self._steps[0].give(data)
            out = self._run(max_length)
        except zlib.error:
            raise Stop(ERROR, f"content-encoding {self.header} could not be decoded") from None
        except _TooMuch:
            raise Stop(ERROR, f"content-encoding {self.header}: more than {self.budget:,} encoded bytes "
                              f"for {self.decoded:,} decoded") from None
        self.decoded += len(out)
        return out

    def _run(self, room: int) -> bytes:
        out = bytearray()
        while len(out) < room and any(step.pending for step in self._steps):
            for step, after in itertools.pairwise(self._steps):
                if step.pending and not after.pending:
                    after.give(step.take(_STEP_OUT))
            out += self._steps[-1].take(room - len(out))
        return bytes(out)


def _zlib_header(head: bytes) -> bool:
    """RFC 1950's header (CM 8, a window of at most 32 KB, a multiple of 31): no raw deflate
    stream starts so but a stored block with odd padding bits, which zlib itself never writes."""
    cmf, flg = head[0], head[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf * 256 + flg) % 31 == 0


class _Inflate:
    """One step: zlib over the input it was given and has not used yet (zlib's unconsumed_tail
    after a capped call, or what follows a gzip member), and ``work``, the input it used or threw
    away. Deflate is zlib-wrapped or raw by its first two bytes, so nothing is kept while waiting
    to see. A gzip member after the first counts as _MEMBER_WORK more: starting one copies the rest
    of the input (zlib's unused_data), so 64 KB of empty 20-byte members cost far more than 64 KB."""

    def __init__(self, gzip: bool, budget: int) -> None:
        self.gzip, self.budget, self.work = gzip, budget, 0
        self._z = zlib.decompressobj(_GZIP_WBITS) if gzip else None
        self._in = b""
        self._more = False  # the last call filled its cap: zlib may hold more output
        self._done = False  # a deflate stream ended, or garbage followed a gzip member: the rest is ignored
        self._members = 1

    @property
    def pending(self) -> bool:
        return not self._done and (self._more or len(self._in) >= (1 if self._z is not None else 2))

    def give(self, data: bytes) -> None:
        if self._done:
            self._spend(len(data))
        else:
            self._in += data

    def take(self, cap: int) -> bytes:
        out = bytearray()
        while self.pending and len(out) < cap:
            if self._z is None:
                self._z = zlib.decompressobj(zlib.MAX_WBITS if _zlib_header(self._in) else -zlib.MAX_WBITS)
            elif self._z.eof:  # gzip: the next member
                self._spend(_MEMBER_WORK)
                self._z, self._members = zlib.decompressobj(_GZIP_WBITS), self._members + 1
            data, want = self._in, cap - len(out)
            try:
                piece = self._z.decompress(data, want)
            except zlib.error:
                if self._members == 1:
                    raise
                self._done, self._in = True, b""  # trailing garbage after a member: ignored, as urllib3 does
                self._spend(len(data))
                break
            out += piece
            self._more = len(piece) == want and not self._z.eof
            self._in = self._z.unused_data if self._z.eof else self._z.unconsumed_tail
            if self._z.eof and not self.gzip:  # what follows a deflate stream is ignored, as urllib3 does
                self._done, self._in = True, b""
            self._spend(len(data) - len(self._in))
        return bytes(out)

    def _spend(self, n: int) -> None:
        self.work += n
        if self.work > self.budget:
            raise _TooMuch


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
