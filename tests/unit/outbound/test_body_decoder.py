"""The Content-Encoding decoder (chalicelib/outbound/answers.py, BodyDecoder) against a hostile
page server: what a body costs stays bounded by the page's cap whatever it sends (bytes used and
memory, never wall time, are what the tests measure), and honest bodies decode as before.

The reader here is the page reader's loop (pagefetch `_finish`): 64 KB reads, each decoded into
at most what is left of the cap, until the cap is passed or the body ends."""

from __future__ import annotations

import gzip
import random
import tracemalloc
import zlib
from collections.abc import Iterable, Iterator

import pytest

from chalicelib.outbound import ERROR, FETCHED, Fetcher
from chalicelib.outbound.answers import MAX_ENCODINGS, BodyDecoder, _zlib_header
from chalicelib.outbound.rules import Stop
from tests.support.fake_site import FakeSite, html

CAP = 1_000_000
READ = 64 * 1024
EMPTY_STORED_BLOCKS = b"\x00\x00\x00\xff\xff" * (READ // 5)  # non-final stored blocks of length 0
GZIP_HEAD = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


class Reader:
    """The page reader's loop over a decoder, counting the encoded bytes it was handed."""

    def __init__(self, header: str, max_bytes: int = CAP) -> None:
        self.decoder = BodyDecoder(header, max_bytes)
        self.max_bytes, self.fed, self.total, self.chunks = max_bytes, 0, 0, []

    def read(self, reads: Iterable[bytes]) -> bytes:
        for data in reads:
            if self.total > self.max_bytes:
                break
            self.fed += len(data)
            piece = self.decoder.decode(data, self.max_bytes + 1 - self.total)
            assert len(piece) <= self.max_bytes + 1 - self.total or not self.decoder.names  # identity: as it came
            self.chunks.append(piece)
            self.total += len(piece)
        return b"".join(self.chunks)


def _reads(body: bytes, size: int = READ) -> Iterator[bytes]:
    return (body[i:i + size] for i in range(0, len(body), size))


def _endless(head: bytes, chunk: bytes) -> Iterator[bytes]:
    """As good as endless: 10 times the budget, so a decoder that never stops fails rather than hangs."""
    yield head
    for _ in range(10 * 2 * CAP // len(chunk)):
        yield chunk


def _raw_deflate(data: bytes, level: int = 6) -> bytes:
    squeeze = zlib.compressobj(level, wbits=-zlib.MAX_WBITS)
    return squeeze.compress(data) + squeeze.flush()


def _gzip_of_zeros(n: int) -> bytes:
    squeeze = zlib.compressobj(1, wbits=16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    return b"".join(squeeze.compress(zeros) for _ in range(n >> 20)) + squeeze.flush()


def _peak_memory(run) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- hostile bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize("head", [b"\x78\x9c", b""], ids=["zlib", "raw"])
def test_endless_empty_stored_blocks_end_in_an_error_within_the_budget_and_keep_nothing(head):
    """A deflate header then empty stored blocks forever: no output, so nothing may pile up while
    waiting for it, and the body stops once the budget of encoded bytes is used."""
    reader = Reader("deflate")

    def run():
        with pytest.raises(Stop) as stop:
            reader.read(_endless(head, EMPTY_STORED_BLOCKS))
        assert stop.value.status == ERROR and "encoded bytes for 0 decoded" in stop.value.reason

    assert _peak_memory(run) < 4 * READ
    assert reader.decoder.budget < reader.fed <= reader.decoder.budget + READ
    assert reader.decoder.budget == 2 * CAP + READ


def test_a_nested_gzip_bomb_comes_out_capped_without_inflating_the_middle_step():
    """gzip of gzip of 100 MB of zeros (a few hundred bytes on the wire): the middle step hands on
    64 KB at a time, so the page is its first 1 MB, and memory stays a few times that."""
    bomb = gzip.compress(_gzip_of_zeros(100 << 20), 9)
    assert len(bomb) < 2000
    reader = Reader("gzip, gzip")
    body = b""

    def run():
        nonlocal body
        body = reader.read(_reads(bomb))

    assert _peak_memory(run) < 4 * CAP
    assert body == bytes(CAP + 1)
    assert all(step.work < 20 * READ for step in reader.decoder._steps)


def test_a_nested_stream_that_inflates_to_nothing_ends_in_an_error_within_the_budget():
    """The outer gzip inflates ~1000x into empty stored blocks of the inner one: no page byte ever
    comes out, and the inner step's budget ends it after a bounded share of the outer stream."""
    inner = GZIP_HEAD + EMPTY_STORED_BLOCKS * 300  # ~20 MB of nothing
    outer = gzip.compress(inner, 9)
    assert len(outer) < len(inner) // 500
    reader = Reader("gzip, gzip")

    def run():
        with pytest.raises(Stop) as stop:
            reader.read(_reads(outer))
        assert "encoded bytes for 0 decoded" in stop.value.reason

    assert _peak_memory(run) < 8 * READ
    outer_step, inner_step = reader.decoder._steps
    assert reader.decoder.budget < inner_step.work <= reader.decoder.budget + READ
    assert outer_step.work < len(outer) // 4


def test_endless_empty_gzip_members_and_trailing_garbage_end_in_an_error():
    empty_members = Reader("gzip")
    with pytest.raises(Stop):
        empty_members.read(_endless(gzip.compress(b"<html>"), gzip.compress(b"") * (READ // 20)))
    assert empty_members.fed < 2 * READ  # each member counts as 4 KB: the first 64 KB of them end it
    garbage = Reader("gzip")
    with pytest.raises(Stop):
        garbage.read(_endless(gzip.compress(b"<html>"), b"garbage!" * (READ // 8)))
    assert garbage.fed <= garbage.decoder.budget + READ


def test_more_encodings_than_urllib3_decodes_are_refused_without_building_them():
    assert Reader(", ".join(["gzip"] * MAX_ENCODINGS)).read([b""]) == b""
    many = ", ".join(["gzip"] * 13_000)  # what a 64 KB header holds
    reader = Reader(many)
    with pytest.raises(Stop) as stop:
        reader.read([b"\x1f\x8b"])
    assert stop.value.reason.endswith(f"more than {MAX_ENCODINGS} encodings") and len(stop.value.reason) < 150
    assert reader.decoder._steps == []


# --- deflate: zlib-wrapped or raw ----------------------------------------------------------------


def test_zlib_or_raw_deflate_is_told_by_the_first_two_bytes():
    page = html(title="Deflate") * 50
    for level in range(10):
        for wbits in range(9, 16):
            squeeze = zlib.compressobj(level, wbits=wbits)
            assert _zlib_header(squeeze.compress(page) + squeeze.flush()), (level, wbits)
        for data in (b"", b"x", page, random.Random(level).randbytes(70_000)):
            assert not _zlib_header(_raw_deflate(data, level)), (level, len(data))
    assert not _zlib_header(b"\x78\x9d") and not _zlib_header(b"\x88\x98")  # not a multiple of 31; CINFO 8


@pytest.mark.parametrize("wrap", [zlib.compress, _raw_deflate], ids=["zlib", "raw"])
def test_deflate_decodes_when_its_first_two_bytes_come_apart(wrap):
    page = html(title="Split") * 200
    assert Reader("deflate").read(_reads(wrap(page), 1)) == page


# --- honest bodies -----------------------------------------------------------------------------

PAGE = html(title="Honest", body="some words " * 30_000) + random.Random(1).randbytes(200_000).hex().encode()
HONEST = {
    "gzip": ("gzip", gzip.compress(PAGE)),
    "x-gzip": ("x-gzip", gzip.compress(PAGE)),
    "deflate": ("deflate", zlib.compress(PAGE)),
    "deflate-raw": ("deflate", _raw_deflate(PAGE)),
    "stored": ("deflate", zlib.compress(PAGE, 0)),
    "gzip-members": ("gzip", b"".join(gzip.compress(PAGE[i:i + 10_000]) for i in range(0, len(PAGE), 10_000))),
    "gzip-then-garbage": ("gzip", gzip.compress(PAGE) + b"\r\n"),
    "gzip, deflate": ("gzip, deflate", zlib.compress(gzip.compress(PAGE))),
    "deflate, gzip, gzip": ("deflate, gzip, gzip", gzip.compress(gzip.compress(zlib.compress(PAGE)))),
    "identity": ("identity", PAGE),
}


@pytest.mark.parametrize("size", [1000, READ], ids=["1KB", "64KB"])
@pytest.mark.parametrize("name", sorted(HONEST))
def test_an_honest_body_decodes_whole_or_capped(name, size):
    header, body = HONEST[name]
    assert Reader(header, 2 * CAP).read(_reads(body, size)) == PAGE
    assert Reader(header, 100_000).read(_reads(body, size))[:100_001] == PAGE[:100_001]


def test_a_deflate_body_that_is_neither_is_an_error():
    with pytest.raises(Stop) as stop:
        Reader("deflate").read([b"<html><title>not deflate</title></html>"])
    assert stop.value.reason == "content-encoding deflate could not be decoded"


def test_a_page_server_sending_endless_nothing_gets_an_error_not_an_empty_page():
    """Through the page fetcher: 4 MB of empty stored blocks under a zlib header."""
    body = b"\x78\x9c" + EMPTY_STORED_BLOCKS * 64
    with FakeSite() as site:
        site.add("/nothing", body, headers={"Content-Encoding": "deflate"}, content_type="text/html")
        result = Fetcher(allow_networks=["127.0.0.1/32"]).get_page(site.url("/nothing"))
    assert result.status == ERROR and "encoded bytes for 0 decoded" in result.reason
    with FakeSite() as site:
        site.add("/page", HONEST["deflate-raw"][1], headers={"Content-Encoding": "deflate"}, content_type="text/html")
        result = Fetcher(allow_networks=["127.0.0.1/32"]).get_page(site.url("/page"))
    assert (result.status, result.body, result.truncated) == (FETCHED, PAGE, False)
