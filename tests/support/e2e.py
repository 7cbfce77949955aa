"""Helpers for the end-to-end tests: plain HTTP against `chalice local` and the fake OpenAI
server, CSV files to upload, waits that fail fast when a job is stuck, the checks every test ends
with, the LLM-call figures and the shared limiter's figures (429s, cooldown pauses)."""

from __future__ import annotations

import csv
import io
import json
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
EXTRA_COLUMNS = ["opener", "opener_status", "opener_error", "context_status", "opener_evidence", "opener_quality",
                 "opener_language"]


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


def wait_for(predicate: Callable, timeout: float, every: float = 0.2, what: str = "condition",
             diagnose: Callable[[], str] | None = None):
    """Poll until `predicate()` is truthy (its value is returned); AssertionError after `timeout` s,
    with `diagnose()` (what the stack looks like) in the message."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout:.0f} s" + (f"\n{diagnose()}" if diagnose else ""))
        time.sleep(every)


# How long a job may take: a fixed allowance plus its URLs at a rate far below what the stack does
# (100-200 URLs/s here, 50-150 with two CPU hogs; 6-8 when every URL waited 5 s on DNS for page
# context), so a slow run passes. A stuck job is caught long before by the stall check (STALL_S
# without progress); this deadline only ends a job that crawls on forever.
SETUP_ALLOWANCE_S = 20.0
FLOOR_URLS_PER_S = 5.0
STALL_S = 20.0  # no counter moved for this long: the job is stuck (LEASE_SECONDS is 15)


def time_for(urls: int, extra_s: float = 0.0) -> float:
    """The wait a job of `urls` URLs gets (see FLOOR_URLS_PER_S)."""
    return SETUP_ALLOWANCE_S + urls / FLOOR_URLS_PER_S + extra_s


def wait_progress(read: Callable[[], dict | None], reached: Callable[[dict], bool], *, timeout: float,
                  stall_s: float = STALL_S, what: str, diagnose: Callable[[], str] | None = None,
                  every: float = 0.1) -> dict:
    """Poll `read()` (a job, or None while it cannot be read) until `reached(job)`. Fails fast:
    when the job's status and counters have not changed for `stall_s` s it is stuck, and the
    AssertionError says so with `diagnose()`; `timeout` bounds the whole wait."""
    began = last_change = time.monotonic()
    last = None
    while True:
        job = read()
        now = time.monotonic()
        if job is not None:
            if reached(job):
                return job
            state = (job["status"], job["processed_rows"], job["failed_rows"])
            if state != last:
                last, last_change = state, now
        why = None
        if now - last_change > stall_s:
            why = f"stuck: no progress for {now - last_change:.0f} s"
        elif now - began > timeout:
            why = f"too slow: not reached within {timeout:.0f} s"
        if why:
            seen = (f"last seen {last[0]}, {last[1]} processed + {last[2]} failed" if last
                    else "the job could not be read at all")
            raise AssertionError(f"{what}: {why} ({seen}; waited {now - began:.0f} s)"
                                 + (f"\n{diagnose()}" if diagnose else ""))
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

    def misbehave(self, rules: dict, seed: int = 0) -> dict:
        """Bad first answers per row: ``{rule: fraction of URLs | [URL substrings]}`` with rules ``invent``,
        ``repeat``, ``long``, ``spam``, ``wrong_language``, ``no_json`` (tests/support/fake_openai/misbehave.py);
        ``{}`` turns it off."""
        return self.configure(misbehave=rules, misbehave_seed=seed)

    def refuse(self, *, response_format: bool = False, prompt_cache_key: bool = False) -> dict:
        """Answer requests carrying these parameters with OpenAI's 400 naming them (as a server without
        structured outputs / prompt cache keys does); ``refuse()`` accepts both again."""
        return self.configure(response_format_supported=not response_format,
                              prompt_cache_key_supported=not prompt_cache_key)

    def prompt_cache(self, min_tokens: int = 1024, ttl_s: float = 300.0) -> dict:
        """Size and lifetime of the fake's prompt cache (``usage.prompt_tokens_details.cached_tokens``)."""
        return self.configure(prompt_cache_min_tokens=min_tokens, prompt_cache_ttl_s=ttl_s)

    def quality_stats(self) -> dict:
        """The counters of misbehaviour and caching: ``misbehaved``, ``misbehaved_by_rule``, ``reasks``,
        ``cache_hits``, ``cached_tokens``."""
        stats = self.stats()
        return {key: stats[key] for key in ("misbehaved", "misbehaved_by_rule", "reasks", "cache_hits",
                                            "cached_tokens")}

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
            """SELECT url, row_number, status, opener, error, retry_count, context_status, prompt_tokens FROM urls
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


# ---------------------------------------------------------------- the shared limiter's figures

COOLDOWN_LINE = re.compile(r"rate-limit cooldown: every worker pauses for ([0-9.]+)s \(until ([0-9.]+)\)")
# A request the limiter let through just before another worker's 429 set the cooldown may still
# reach the provider just after it: it was in flight. Later than this into a pause is a worker
# that did not pause.
IN_FLIGHT_GRACE_S = 0.25


def log_time(ts: str) -> float:
    """A log line's `ts` ("2026-11-29T01:01:20.564Z") as time.time() seconds."""
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def log_entries(path: Path, since: float = 0.0) -> list[dict]:
    """The JSON log lines of `path` written at or after `since` (time.time())."""
    entries = []
    if not path.exists():
        return entries
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
            entry["_t"] = log_time(entry["ts"])
        except (ValueError, KeyError):
            continue
        if entry["_t"] >= since:
            entries.append(entry)
    return entries


def cooldown_windows(entries: list[dict]) -> list[tuple[float, float]]:
    """The shared pauses the runner logged ("every worker pauses for X s (until T)"), as (start,
    end): the end is the server clock's (the same machine's), not the line's time, which may be
    written late on a loaded machine."""
    windows = []
    for entry in entries:
        match = COOLDOWN_LINE.search(entry.get("message", ""))
        if match:
            until = float(match.group(2))
            windows.append((until - float(match.group(1)), until))
    return sorted(windows)


def merge_windows(windows: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for start, end in sorted(windows):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


@dataclass
class LimiterFigures:
    """What reached the provider, from the recording proxy, against the pauses the runner logged."""
    requests: int
    rate_limited: int
    cooldowns: int  # "every worker pauses" log lines: one per 429 the workers got
    paused_s: float  # how long pauses were in force, in total
    after_first: int  # requests handed to the provider after the first pause ended
    limited_after_first: int
    max_offset: float  # latest any request reached the provider into a pause (in-flight ones included)
    late: list[tuple[float, float]]  # (pause start, offset) of requests beyond IN_FLIGHT_GRACE_S into a pause
    achieved_rps: float
    peak_1s: int  # most requests handed over in any one second

    @property
    def share_after_first(self) -> float:
        return self.limited_after_first / self.after_first if self.after_first else 0.0

    def line(self) -> str:
        return (f"limiter: {self.requests} requests at {self.achieved_rps:.0f}/s (peak {self.peak_1s} in 1 s), "
                f"429 {self.rate_limited} "
                f"({100 * self.rate_limited / max(1, self.requests):.1f} %), {self.cooldowns} cooldowns "
                f"pausing {self.paused_s:.1f} s in all; after the first pause "
                f"{self.limited_after_first}/{self.after_first} = {100 * self.share_after_first:.1f} % 429; "
                f"requests into a pause: latest {1000 * self.max_offset:.0f} ms in, "
                f"{len(self.late)} beyond the {1000 * IN_FLIGHT_GRACE_S:.0f} ms in-flight grace")


def limiter_figures(exchanges: list, entries: list[dict]) -> LimiterFigures:
    """`exchanges`: the proxy's records of one test; `entries`: the runner's log lines since its start."""
    windows = merge_windows(cooldown_windows(entries))
    max_offset, late = 0.0, []
    for exchange in exchanges:
        for start, end in windows:
            if start < exchange.sent < end:
                offset = exchange.sent - start
                max_offset = max(max_offset, offset)
                if offset > IN_FLIGHT_GRACE_S:
                    late.append((start, offset))
    after = [e for e in exchanges if windows and e.sent >= windows[0][1]]
    span = exchanges[-1].sent - exchanges[0].sent if len(exchanges) > 1 else 0.0
    times, peak, j = [e.sent for e in exchanges], 0, 0
    for i, t in enumerate(times):  # sliding one-second window (times are in order)
        while times[j] <= t - 1.0:
            j += 1
        peak = max(peak, i - j + 1)
    return LimiterFigures(
        requests=len(exchanges),
        rate_limited=sum(e.status == 429 for e in exchanges),
        cooldowns=len(cooldown_windows(entries)),
        paused_s=sum(e - s for s, e in windows),
        after_first=len(after),
        limited_after_first=sum(e.status == 429 for e in after),
        max_offset=max_offset,
        late=late,
        achieved_rps=len(exchanges) / span if span else 0.0,
        peak_1s=peak,
    )


def assert_limiter_kept_its_promises(lim: LimiterFigures, max_share_after_first: float) -> None:
    """Every 429 paused every worker (one cooldown per 429, and no request reached the provider
    inside a pause beyond the in-flight grace), and after the first pause the 429 share stays
    under the stated bound."""
    assert lim.cooldowns == lim.rate_limited, (
        f"{lim.rate_limited} 429s but {lim.cooldowns} cooldowns logged: a 429 did not pause the workers", lim)
    assert not lim.late, f"{len(lim.late)} request(s) reached the provider during a cooldown: {lim.late[:5]}"
    assert lim.share_after_first <= max_share_after_first, (
        f"429 share after the first cooldown {100 * lim.share_after_first:.1f} % > "
        f"{100 * max_share_after_first:.0f} %", lim)
