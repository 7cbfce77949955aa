"""Big files by parts: the S3 multipart upload `POST /api/upload/url` answers for a file above the
API's multipart threshold. Parts are PUT in parallel (`THREADS` at once) straight to S3 through
their presigned URLs, with one progress bar over the whole file; a part that fails (a dropped
connection, a 5xx, a body cut short) is sent again with backoff; after each round S3 is asked
which parts it holds (`GET /api/upload/{job_id}/parts`, which also gives fresh URLs for the
others), so an upload resumes where it stopped rather than from the start. Then
`POST /api/upload/complete` joins the parts.

A part is read from the file when it is sent (at most THREADS parts in memory at once)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Protocol

import httpx

THREADS = 4
ATTEMPTS = 4  # sends of one part within a round
ROUNDS = 3  # rounds of "send what S3 lacks", each after asking S3 what it holds
SLICE = 256 * 1024  # progress granularity within a part
RETRYABLE = (408, 429, 500, 502, 503, 504)


class Bar(Protocol):
    def start(self, label: str, total: int) -> None: ...
    def advance(self, done: int) -> None: ...
    def note(self, text: str) -> None: ...
    def stop(self) -> None: ...


class NoBar:
    def start(self, label: str, total: int) -> None: ...
    def advance(self, done: int) -> None: ...
    def note(self, text: str) -> None: ...
    def stop(self) -> None: ...


def backoff(attempt: int) -> float:
    """Seconds before send number `attempt + 1` of a part: 0.5, 1, 2, ... at most 8."""
    return min(8.0, 0.5 * 2 ** (attempt - 1))


def upload_parts(api, path: Path, created: dict, bar: Bar, *, threads: int = THREADS, attempts: int = ATTEMPTS,
                 rounds: int = ROUNDS, sleep: Callable[[float], None] = time.sleep) -> dict:
    """PUT every part of `created` (the answer of POST /api/upload/url), resuming from what S3
    holds, then complete; returns the complete call's answer. `api` is a csv_opener_cli.api.Api."""
    job_id = created["job"]["id"]
    part_size = created["part_size"]
    todo = created["parts"]
    etags: dict[int, str] = {}
    bar.start(f"Uploading {path.name}", sum(p["size"] for p in todo))
    try:
        for round_number in range(1, rounds + 1):
            error = _send_round(api, path, part_size, todo, etags, bar, threads, attempts, sleep)
            status = api.call("GET", f"/api/upload/{job_id}/parts")  # what S3 really holds
            if status.get("completed"):
                return api.call("POST", "/api/upload/complete", json={"job_id": job_id, "parts": []})
            etags.update({p["number"]: p["etag"] for p in status["uploaded"]})
            todo = status["parts"]
            if not todo:
                break
            if round_number == rounds:
                raise error or _incomplete(len(todo))
            bar.note(f"{len(todo)} part(s) not stored yet ({error.message if error else 'no answer'}); resuming")
            sleep(backoff(round_number + 1))
    finally:
        bar.stop()
    parts = [{"number": n, "etag": etags[n]} for n in sorted(etags)]
    return api.call("POST", "/api/upload/complete", json={"job_id": job_id, "parts": parts})


def _incomplete(missing: int):
    from csv_opener_cli.api import ApiError

    return ApiError(0, "upload_incomplete", f"{missing} part(s) of the file could not be stored; run the command "
                                            "again to upload it anew")


def _send_round(api, path: Path, part_size: int, todo: list[dict], etags: dict[int, str], bar: Bar,
                threads: int, attempts: int, sleep: Callable[[float], None]):
    """Send the parts in parallel; returns the last error (None when all were stored)."""
    error = None
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = {pool.submit(_send_part, api, path, part_size, part, bar, attempts, sleep): part for part in todo}
        for future in as_completed(futures):
            try:
                etags[futures[future]["number"]] = future.result()
            except Exception as exc:  # ApiError, or the file unreadable: S3 is asked what it holds
                error = exc if hasattr(exc, "message") else _as_error(exc)
    return error


def _as_error(exc: Exception):
    from csv_opener_cli.api import ApiError

    return ApiError(0, "upload_error", f"{type(exc).__name__}: {exc}")


def _send_part(api, path: Path, part_size: int, part: dict, bar: Bar, attempts: int,
               sleep: Callable[[float], None]) -> str:
    """PUT one part, retried with backoff; returns the ETag S3 answered."""
    with path.open("rb") as file:
        file.seek((part["number"] - 1) * part_size)
        data = file.read(part["size"])
    error = None
    for attempt in range(1, attempts + 1):
        sent = [0]
        try:
            response = api.storage.put(part["url"], content=_counted(data, sent, bar),
                                       headers={"Content-Length": str(len(data))})
        except httpx.TransportError as exc:
            error = api._unreachable(api.storage, exc)
        else:
            etag = response.headers.get("etag")
            if response.is_success and etag:
                return etag
            error = api.error(response)
            if response.status_code not in RETRYABLE and response.is_error and response.status_code != 403:
                bar.advance(-sent[0])
                raise error
        bar.advance(-sent[0])  # sent again from its start
        if attempt < attempts:
            sleep(backoff(attempt))
    raise error


def _counted(data: bytes, sent: list[int], bar: Bar) -> Iterator[bytes]:
    for start in range(0, len(data), SLICE):
        piece = data[start:start + SLICE]
        yield piece
        sent[0] += len(piece)
        bar.advance(len(piece))
