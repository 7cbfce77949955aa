"""The command's multipart upload (csv_opener_cli/parts.py) against a scripted API and S3 behind
httpx.MockTransport: parts in parallel with one progress bar, a failed part sent again, a
dropped connection resumed from what S3 holds, and the complete call with every ETag."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import httpx
import pytest

from csv_opener_cli.api import Api, ApiError
from csv_opener_cli.parts import backoff, upload_parts
from csv_opener_cli.progress import LineUploadBar

JOB_ID = "7d4f3c1e-0000-4000-8000-000000000001"
PART = 1000


class FakeS3Api:
    """POST /api/upload/url answers 4 parts; S3 stores PUT parts; `fail` scripts answers per part
    ("drop": the connection drops, "500", "403"), used up in order."""

    def __init__(self, size: int, fail: dict[int, list[str]] | None = None) -> None:
        self.size = size
        self.fail = {n: list(v) for n, v in (fail or {}).items()}
        self.stored: dict[int, bytes] = {}
        self.puts: list[int] = []
        self.completed: list[dict] | None = None
        self.lock = threading.Lock()

    def sizes(self) -> list[int]:
        count = -(-self.size // PART)
        return [PART] * (count - 1) + [self.size - PART * (count - 1)]

    def part_urls(self, numbers) -> list[dict]:
        return [{"number": n, "size": self.sizes()[n - 1], "url": f"https://s3.test/up?partNumber={n}"}
                for n in numbers]

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "s3.test":
            number = int(request.url.params["partNumber"])
            body = b"".join(request.stream)  # the whole body is sent before any answer
            with self.lock:
                self.puts.append(number)
                script = self.fail.get(number)
                action = script.pop(0) if script else "ok"
            if action == "drop":
                raise httpx.ReadError("connection reset by peer", request=request)
            if action != "ok":
                return httpx.Response(int(action), text="<Error><Code>Nope</Code><Message>no</Message></Error>")
            assert len(body) == self.sizes()[number - 1] == int(request.headers["content-length"])
            with self.lock:
                self.stored[number] = body
            return httpx.Response(200, headers={"ETag": f'"etag-{number}"'})
        path = request.url.path
        job = {"id": JOB_ID, "status": "pending"}
        if path == "/api/upload/url":
            return httpx.Response(201, json={"job": job, "method": "PUT", "part_size": PART,
                                             "part_count": len(self.sizes()),
                                             "parts": self.part_urls(range(1, len(self.sizes()) + 1))})
        if path == f"/api/upload/{JOB_ID}/parts":
            with self.lock:
                held = dict(self.stored)
            missing = [n for n in range(1, len(self.sizes()) + 1) if n not in held]
            return httpx.Response(200, json={
                "job": job, "part_size": PART, "parts": self.part_urls(missing), "completed": False,
                "uploaded": [{"number": n, "etag": f'"etag-{n}"', "size": len(held[n])} for n in sorted(held)]})
        if path == "/api/upload/complete":
            self.completed = json.loads(request.content)["parts"]
            return httpx.Response(200, json={"job": job, "completed": True, "size": self.size,
                                             "url_choice": {"column": "Website", "why": "w", "alternatives": []}})
        return httpx.Response(404, json={"error": {"code": "not_found", "message": path}})


@pytest.fixture
def big(tmp_path) -> Path:
    path = tmp_path / "big.csv"
    path.write_bytes(bytes(range(256)) * 14 + b"tail")  # 3,588 bytes: parts of 1,000, 1,000, 1,000, 588
    return path


def run(fake: FakeS3Api, path: Path, **options) -> tuple[dict, str, list[float]]:
    waits: list[float] = []
    stream = io.StringIO()
    with Api("http://api.test", "cso_00000000_secret", transport=httpx.MockTransport(fake.handle)) as api:
        created = api.call("POST", "/api/upload/url", json={"file_name": path.name, "size": path.stat().st_size})
        answer = upload_parts(api, path, created, LineUploadBar(stream), sleep=waits.append, **options)
    return answer, stream.getvalue(), waits


def test_parts_go_in_parallel_with_one_bar_and_complete_with_every_etag(big):
    fake = FakeS3Api(big.stat().st_size)
    answer, shown, waits = run(fake, big)
    assert answer["completed"] and waits == []
    assert b"".join(fake.stored[n] for n in sorted(fake.stored)) == big.read_bytes()
    assert sorted(fake.puts) == [1, 2, 3, 4]
    assert fake.completed == [{"number": n, "etag": f'"etag-{n}"'} for n in (1, 2, 3, 4)]
    lines = shown.splitlines()
    assert lines[0] == "Uploading big.csv: 0% of 3,588 bytes" and lines[-1].startswith("Uploading big.csv: 100% (3,588")


def test_a_failed_part_is_sent_again_with_backoff(big):
    fake = FakeS3Api(big.stat().st_size, fail={2: ["500", "drop"]})
    answer, shown, waits = run(fake, big)
    assert answer["completed"] and fake.puts.count(2) == 3
    assert waits == [backoff(1), backoff(2)] == [0.5, 1.0]
    assert b"".join(fake.stored[n] for n in sorted(fake.stored)) == big.read_bytes()
    assert "100% (3,588 of 3,588 bytes)" in shown  # what the failed sends counted was taken back


def test_a_part_that_keeps_failing_is_resumed_from_what_s3_holds(big):
    fake = FakeS3Api(big.stat().st_size, fail={3: ["drop", "drop"]})
    answer, shown, waits = run(fake, big, attempts=2)
    assert answer["completed"]
    assert fake.puts.count(3) == 3 and fake.puts.count(1) == 1  # only the missing part went again
    assert "1 part(s) not stored yet" in shown and "resuming" in shown
    assert fake.completed == [{"number": n, "etag": f'"etag-{n}"'} for n in (1, 2, 3, 4)]


def test_a_part_refused_for_good_ends_with_the_storage_error(big):
    fake = FakeS3Api(big.stat().st_size, fail={4: ["drop"] * 20})
    with pytest.raises(ApiError) as caught:
        run(fake, big, attempts=2, rounds=2)
    assert caught.value.code == "connection_error" and fake.completed is None
