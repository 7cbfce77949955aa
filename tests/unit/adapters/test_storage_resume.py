"""A long S3 read that breaks is resumed with a ranged GET of the same version (Storage.iter_chunks)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ResponseStreamingError

from chalicelib.adapters.storage import STREAM_RESUMES, Storage

DATA = bytes(range(256)) * 40  # 10,240 bytes


class Body:
    def __init__(self, data: bytes, break_after: int | None) -> None:
        self.data, self.break_after, self.closed = data, break_after, False

    def iter_chunks(self, size: int):
        sent = 0
        while sent < len(self.data):
            if self.break_after is not None and sent >= self.break_after:
                raise ResponseStreamingError(error="Connection reset by peer")
            chunk = self.data[sent:sent + size]
            sent += len(chunk)
            yield chunk

    def close(self) -> None:
        self.closed = True


class S3:
    """get_object over DATA: each GET's stream breaks after `breaks[i]` bytes (None: it does not)."""

    def __init__(self, breaks: list[int | None]) -> None:
        self.breaks, self.calls = list(breaks), []

    def get_object(self, **kwargs):
        self.calls.append(kwargs)
        start = int(kwargs["Range"].removeprefix("bytes=").rstrip("-")) if "Range" in kwargs else 0
        return {"ETag": '"v1"', "Body": Body(DATA[start:], self.breaks.pop(0) if self.breaks else None)}


def test_a_broken_stream_resumes_from_the_byte_where_it_broke_with_the_same_version():
    s3 = S3([3000, 1000, None])
    assert b"".join(Storage(s3, "b").iter_chunks("k", chunk_size=500)) == DATA
    assert [c.get("Range") for c in s3.calls] == [None, "bytes=3000-", "bytes=4000-"]
    assert [c.get("IfMatch") for c in s3.calls] == [None, '"v1"', '"v1"']  # pinned to the first answer's version


def test_a_stream_that_keeps_breaking_without_progress_gives_up():
    s3 = S3([0] * (STREAM_RESUMES + 1))
    with pytest.raises(ResponseStreamingError):
        b"".join(Storage(s3, "b").iter_chunks("k", etag='"v1"', chunk_size=500))
    assert len(s3.calls) == STREAM_RESUMES + 1
