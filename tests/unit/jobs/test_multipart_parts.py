"""How a multipart upload is cut into parts, and the complete call's parts checked (pure code of
chalicelib/jobs/multipart.py)."""

from __future__ import annotations

import pytest

from chalicelib.errors import BadRequest
from chalicelib.jobs.multipart import MAX_PARTS, clean_parts, part_size_for, part_sizes

MiB = 1024 * 1024


@pytest.mark.parametrize(("size", "preferred", "expected"), [
    (105_000_000, 16 * MiB, 16 * MiB),
    (1024 * MiB, 16 * MiB, 16 * MiB),
    (100 * 1024 * MiB, 5 * MiB, 11 * MiB),  # 100 GiB in 5 MiB parts would be 20,480 parts
    (10 * MiB, 1 * MiB, 5 * MiB),  # never below S3's smallest part
])
def test_part_size_keeps_parts_at_least_5_mib_and_at_most_10000(size, preferred, expected):
    got = part_size_for(size, preferred)
    assert got == expected and -(-size // got) <= MAX_PARTS and got >= 5 * MiB


def test_part_sizes_cover_the_file_exactly():
    assert part_sizes(11 * MiB, 5 * MiB) == [5 * MiB, 5 * MiB, MiB]
    assert part_sizes(10 * MiB, 5 * MiB) == [5 * MiB, 5 * MiB]
    assert part_sizes(1, 5 * MiB) == [1]
    assert sum(part_sizes(105_000_000, 16 * MiB)) == 105_000_000


def test_clean_parts_orders_them_and_keeps_each_etag():
    got = clean_parts([{"number": 2, "etag": '"b"'}, {"number": 1, "etag": '"a"'}], 2)
    assert got == [{"number": 1, "etag": '"a"'}, {"number": 2, "etag": '"b"'}]


@pytest.mark.parametrize("parts", [
    None, "x", [], [{"number": 1, "etag": '"a"'}],
    [{"number": 1, "etag": '"a"'}, {"number": 1, "etag": '"a"'}],
    [{"number": 1, "etag": '"a"'}, {"number": 3, "etag": '"a"'}],
    [{"number": 1, "etag": '"a"'}, {"number": "2", "etag": '"a"'}],
    [{"number": 1, "etag": '"a"'}, {"number": 2.0, "etag": '"a"'}],
    [{"number": 1, "etag": '"a"'}, {"number": 2, "etag": ""}],
    [{"number": 1, "etag": '"a"'}, {"number": 2, "etag": "\u00e9"}],
    [{"number": 1, "etag": '"a"'}, {"number": 2, "etag": "a\nb"}],
    [{"number": 1, "etag": '"a"'}, {"number": 2, "etag": "x" * 129}],
    [{"number": 1, "etag": '"a"'}, ["number", 2]],
])
def test_bad_parts_are_refused(parts):
    with pytest.raises(BadRequest) as caught:
        clean_parts(parts, 2)
    assert caught.value.code == "bad_parts"
