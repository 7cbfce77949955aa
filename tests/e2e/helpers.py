"""Helpers for the end-to-end tests: plain HTTP against `chalice local` and the fake OpenAI
server, CSV files to upload, the checks every test ends with, and the LLM-call figures."""

from __future__ import annotations

import csv
import io
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg.rows import dict_row

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
EXTRA_COLUMNS = ["opener", "opener_status", "opener_error"]


# ---------------------------------------------------------------- HTTP


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def http(method: str, url: str, body: bytes | dict | None = None, headers: dict[str, str] | None = None,
         timeout: float = 30) -> Reply:
    """One request; any HTTP status comes back as a Reply (only network errors raise)."""
    headers = {"Accept": "*/*", **(headers or {})}
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


def wait_for(predicate: Callable, timeout: float, every: float = 0.2, what: str = "condition"):
    """Poll until `predicate()` is truthy (its value is returned); AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(every)


class Api:
    """The CSV Opener HTTP API as a client sees it: every call carries the account's key."""

    def __init__(self, base: str, key: str | None = None) -> None:
        self.base = base.rstrip("/")
        self.key = key

    def call(self, method: str, path: str, body=None, headers=None, timeout: float = 30) -> Reply:
        headers = dict(headers or {})
        if self.key:
            headers.setdefault("Authorization", f"Bearer {self.key}")
        return http(method, self.base + path, body, headers, timeout)

    def upload(self, file_name: str, data: bytes, url_column: str | None = None) -> dict:
        boundary = f"----e2e{uuid.uuid4().hex}"
        parts = [
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n"
            "Content-Type: text/csv\r\n\r\n".encode() + data + b"\r\n",
        ]
        if url_column:
            parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"url_column\"\r\n\r\n"
                         f"{url_column}\r\n".encode())
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        reply = self.call("POST", "/api/upload", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert reply.status == 201, (reply.status, reply.body[:500])
        return reply.json()

    def process(self, job_id: str, **options) -> dict:
        reply = self.call("POST", "/api/upload/process", {"job_id": job_id, **options})
        assert reply.status == 202, (reply.status, reply.body[:500])
        return reply.json()

    def job(self, job_id: str) -> dict:
        reply = self.call("GET", f"/api/jobs/{job_id}")
        assert reply.status == 200, (reply.status, reply.body[:500])
        return reply.json()["job"]

    def job_tolerant(self, job_id: str) -> dict | None:
        """The job, or None while the API cannot answer (a fault is being injected)."""
        try:
            reply = self.call("GET", f"/api/jobs/{job_id}", timeout=10)
        except OSError:
            return None
        return reply.json()["job"] if reply.status == 200 else None

    def wait_done_fraction(self, job_id: str, fraction: float, timeout: float = 60) -> dict:
        def reached():
            job = self.job_tolerant(job_id)
            if not job or not job["total_rows"]:
                return None
            return job if job["processed_rows"] + job["failed_rows"] >= fraction * job["total_rows"] else None

        return wait_for(reached, timeout, every=0.05, what=f"job {job_id} {fraction:.0%} done")

    def wait_status(self, job_id: str, statuses: tuple[str, ...] = ("completed",), timeout: float = 90) -> dict:
        def reached():
            job = self.job_tolerant(job_id)
            return job if job and job["status"] in statuses else None

        return wait_for(reached, timeout, every=0.2, what=f"job {job_id} in {statuses}")

    def download(self, job_id: str) -> list[list[str]]:
        reply = self.call("GET", f"/api/upload/{job_id}/download")
        assert reply.status == 200, (reply.status, reply.body[:500])
        assert reply.headers["content-type"].startswith("text/csv")
        assert reply.headers["content-disposition"].startswith("attachment")
        return list(csv.reader(io.StringIO(reply.body.decode("utf-8"), newline="")))


class Fake:
    """Control of the fake OpenAI server (its /_fake endpoints)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def reset(self, **config) -> None:
        assert http("POST", f"{self.url}/_fake/reset", {}).status == 200
        if config:
            self.configure(**config)

    def configure(self, **config) -> dict:
        reply = http("POST", f"{self.url}/_fake/config", config)
        assert reply.status == 200, reply.body
        return reply.json()

    def stats(self) -> dict:
        return http("GET", f"{self.url}/_fake/stats").json()

    def wait_quiet(self, timeout: float = 15) -> dict:
        """Stats once nothing is in flight any more."""
        return wait_for(lambda: (s := self.stats())["in_flight"] == 0 and s, timeout, every=0.2,
                        what="fake server idle")


# ---------------------------------------------------------------- CSV


@dataclass
class CsvFile:
    name: str
    data: bytes
    rows: list[list[str]]  # header first, as a CSV reader returns them
    valid: int
    invalid: int
    invalid_rows: set[int] = field(default_factory=set)  # indexes into rows[1:]


def make_csv(tag: str, n_urls: int, invalid_every: int = 0, name: str | None = None) -> CsvFile:
    """A CSV of `n_urls` distinct public URLs in assorted spellings (bare domain, www, http,
    path), quoted cells with commas, quotes and newlines, formula-like cells, and every
    `invalid_every`-th row a URL we must not process."""
    bad_values = ["ftp://files.example.org/x", "http://localhost/admin", "not a url", "", "http://10.0.0.7/",
                  "javascript:alert(1)"]
    header = ["company", "website", "notes"]
    rows = [header]
    invalid_rows: set[int] = set()
    valid = i = 0
    while valid < n_urls:
        i += 1
        host = f"{tag}-{i:05d}"
        if invalid_every and i % invalid_every == 0:
            website = bad_values[(i // invalid_every) % len(bad_values)]
            invalid_rows.add(len(rows) - 1)
        else:
            website = (f"{host}.com", f"https://www.{host}.io/about", f"http://{host}.net", f"www.{host}.co.uk",
                       f"HTTPS://{host.upper()}.ORG/team/")[i % 5]
            valid += 1
        notes = ("plain", "with, comma", 'say "hi"', "two\nlines", "=SUM(A1:A2)", "-dash", "ünïcödé ✓")[i % 7]
        rows.append([f"Company {i}", website, notes])
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return CsvFile(name or f"{tag}.csv", out.getvalue().encode("utf-8"), rows, valid, len(invalid_rows),
                   invalid_rows)


def neutralize(cell: str) -> str:
    return "'" + cell if cell.startswith(FORMULA_PREFIXES) else cell


# ---------------------------------------------------------------- database


def connect(database_url: str) -> psycopg.Connection:
    return psycopg.connect(database_url, autocommit=True, row_factory=dict_row, connect_timeout=5)


def url_rows(database_url: str, job_id: str) -> list[dict]:
    with connect(database_url) as conn:
        return conn.execute(
            """SELECT url, row_number, status, opener, error, retry_count FROM urls
               WHERE job_id = %s ORDER BY row_number""",
            (job_id,),
        ).fetchall()


def job_row(database_url: str, job_id: str) -> dict:
    with connect(database_url) as conn:
        return conn.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()


def status_counts(database_url: str, job_id: str) -> dict[str, int]:
    with connect(database_url) as conn:
        rows = conn.execute("SELECT status, count(*) AS n FROM urls WHERE job_id = %s GROUP BY status",
                            (job_id,)).fetchall()
    return {r["status"]: r["n"] for r in rows}


def assert_counters_consistent(job: dict, counts: dict[str, int]) -> None:
    """The SPEC invariant: counters equal the rows, progress follows them."""
    unfinished = counts.get("pending", 0) + counts.get("processing", 0)
    assert job["processed_rows"] == counts.get("completed", 0), (job, counts)
    assert job["failed_rows"] == counts.get("failed", 0), (job, counts)
    assert job["processed_rows"] + job["failed_rows"] + unfinished == job["total_rows"], (job, counts)
    done = job["processed_rows"] + job["failed_rows"]
    assert job["progress"] == progress_percent(done, job["total_rows"]), job


def progress_percent(done: int, total: int) -> int:
    """SPEC's progress, rounded half up as PostgreSQL's round() does (Python's round() rounds
    half to even: 305 of 1,000 is 31 here, 30 there). Integer arithmetic, no float ties."""
    return (200 * done + total) // (2 * total) if total else 0


def assert_finished_cleanly(database_url: str, job_id: str, expected_total: int) -> list[dict]:
    """After a run: the job is completed, every URL is completed or failed with an error, the
    counters equal the rows and nothing is left processing. Returns the URL rows."""
    job = job_row(database_url, job_id)
    rows = url_rows(database_url, job_id)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    assert job["status"] == "completed", job
    assert job["total_rows"] == expected_total == len(rows), (job["total_rows"], expected_total, len(rows))
    assert set(counts) <= {"completed", "failed"}, counts
    assert_counters_consistent(job, counts)
    assert job["progress"] == 100
    for row in rows:
        if row["status"] == "completed":
            assert row["opener"], row
        else:
            assert row["error"], row
    with connect(database_url) as conn:
        stuck = conn.execute("SELECT count(*) AS n FROM jobs WHERE status = 'processing'").fetchone()["n"]
    assert stuck == 0, f"{stuck} job(s) still processing"
    return rows


# ---------------------------------------------------------------- LLM call figures


@dataclass
class Figures:
    urls: int
    completed: int
    failed: int
    requests: int
    ok: int
    rate_limited: int
    errors: int
    hangs: int
    duplicates: int
    seconds: float
    duplicated_urls: list[str] = field(default_factory=list)

    def line(self, name: str) -> str:
        return (f"[e2e] {name}: {self.urls} URLs ({self.completed} completed, {self.failed} failed) in "
                f"{self.seconds:.1f} s; LLM requests {self.requests}, ok {self.ok}, 429 {self.rate_limited}, "
                f"5xx {self.errors}, hangs {self.hangs}, duplicate generations {self.duplicates} "
                f"({100 * self.duplicates / max(1, self.urls):.2f} %)"
                + (f", e.g. {self.duplicated_urls[:3]}" if self.duplicated_urls else ""))


def figures(stats: dict, rows: list[dict], seconds: float, allowed_extra: dict[str, int] | None = None) -> Figures:
    """Per-job figures from the fake's counters. A duplicate generation is a successful answer
    for a URL beyond its first (retries after a 429, 5xx or hang are not duplicates);
    `allowed_extra` lifts that allowance for URLs whose answer was lost with a killed process."""
    allowed_extra = allowed_extra or {}
    by_url, ok_by_url = stats["by_url"], stats["ok_by_url"]
    urls = [r["url"] for r in rows]
    extra = {u: ok_by_url.get(u, 0) - 1 - allowed_extra.get(u, 0) for u in urls}
    duplicated = [u for u, n in extra.items() if n > 0]
    return Figures(
        urls=len(rows),
        completed=sum(r["status"] == "completed" for r in rows),
        failed=sum(r["status"] == "failed" for r in rows),
        requests=sum(by_url.get(u, 0) for u in urls),
        ok=sum(ok_by_url.get(u, 0) for u in urls),
        rate_limited=stats["rate_limited"],
        errors=stats["errors"],
        hangs=stats["hangs"],
        duplicates=sum(extra[u] for u in duplicated),
        seconds=seconds,
        duplicated_urls=duplicated,
    )


def assert_openers_came_from_the_llm(stats: dict, rows: list[dict]) -> None:
    """Every completed URL got at least one successful answer from the fake for that URL."""
    missing = [r["url"] for r in rows if r["status"] == "completed" and not stats["ok_by_url"].get(r["url"])]
    assert not missing, f"{len(missing)} completed URL(s) never answered by the LLM, e.g. {missing[:3]}"
