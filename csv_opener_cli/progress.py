"""Waiting for a job: poll GET /api/jobs/{id} and show processed / failed / total, the rate and
the ETA on stderr (a rich progress bar on a terminal, a plain line every few seconds otherwise,
nothing with --quiet). A 429 while polling waits for its Retry-After; a short outage of the API
(no answer, 5xx) is waited out; anything else ends the wait with the error."""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from typing import IO, Protocol

from csv_opener_cli.api import Api, ApiError

FINISHED = ("completed", "failed", "canceled")
POLL_INTERVAL_S = 1.0
MAX_OUTAGE_S = 120.0  # how long the API may be unreachable (or 5xx) before the wait gives up
RATE_WINDOW_S = 30.0


class RateMeter:
    """URLs per second over the last `window` seconds of samples, and the time left at that rate."""

    def __init__(self, window: float = RATE_WINDOW_S) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, at: float, done: int) -> None:
        self.samples.append((at, done))
        while len(self.samples) > 2 and at - self.samples[1][0] >= self.window:
            self.samples.popleft()

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    def eta(self, remaining: int) -> float | None:
        rate = self.rate()
        if remaining <= 0:
            return 0.0
        return remaining / rate if rate else None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_rate(rate: float | None) -> str:
    return "– URLs/s" if rate is None else f"{rate:.1f} URLs/s"


def counts(job: dict) -> tuple[int, int, int]:
    return job.get("processed_rows") or 0, job.get("failed_rows") or 0, job.get("total_rows") or 0


def progress_line(job: dict, meter: RateMeter) -> str:
    """`processing 120/400 (117 processed, 3 failed) 30% · 12.3 URLs/s · ETA 0:23`"""
    processed, failed, total = counts(job)
    done = processed + failed
    return (f"{job.get('status', '?')} {done}/{total} ({processed} processed, {failed} failed) "
            f"{job.get('progress', 0)}% · {format_rate(meter.rate())} · ETA {format_duration(meter.eta(total - done))}")


class Display(Protocol):
    def start(self, job_id: str) -> None: ...
    def update(self, job: dict) -> None: ...
    def note(self, text: str) -> None: ...
    def stop(self) -> None: ...


class QuietDisplay:
    def start(self, job_id: str) -> None: ...
    def update(self, job: dict) -> None: ...
    def note(self, text: str) -> None: ...
    def stop(self) -> None: ...


class LineDisplay:
    """For a stderr that is not a terminal: a line when the counters changed, at most every
    `every` seconds, and always the last one."""

    def __init__(self, stream: IO[str], every: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.every, self.clock = stream, every, clock
        self.meter = RateMeter()
        self.last_shown: tuple | None = None
        self.last_at = float("-inf")
        self.job_id = ""

    def start(self, job_id: str) -> None:
        self.job_id = job_id

    def update(self, job: dict) -> None:
        now = self.clock()
        self.meter.add(now, sum(counts(job)[:2]))
        state = (job.get("status"), *counts(job))
        finished = job.get("status") in FINISHED
        if state != self.last_shown and (finished or now - self.last_at >= self.every):
            self.stream.write(f"job {self.job_id}: {progress_line(job, self.meter)}\n")
            self.stream.flush()
            self.last_shown, self.last_at = state, now

    def note(self, text: str) -> None:
        self.stream.write(f"job {self.job_id}: {text}\n")
        self.stream.flush()

    def stop(self) -> None: ...


class RichDisplay:
    """A rich progress bar on stderr: bar, processed / failed / total, percent, rate, ETA."""

    def __init__(self, stream: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn

        self.console = Console(file=stream)
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[counts]}"), TextColumn("{task.fields[rate]}"),
            TextColumn("ETA {task.fields[eta]}"), console=self.console, transient=False)
        self.meter = RateMeter()
        self.task = None

    def start(self, job_id: str) -> None:
        self.progress.start()
        self.task = self.progress.add_task(f"job {job_id[:8]}", total=None, counts="", rate="", eta="–")

    def update(self, job: dict) -> None:
        processed, failed, total = counts(job)
        self.meter.add(time.monotonic(), processed + failed)
        self.progress.update(
            self.task, total=total or None, completed=processed + failed,
            description=f"job {str(job.get('id', ''))[:8]} {job.get('status', '')}",
            counts=f"{processed} processed · {failed} failed · {total} total",
            rate=format_rate(self.meter.rate()), eta=format_duration(self.meter.eta(total - processed - failed)))

    def note(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)

    def stop(self) -> None:
        self.progress.stop()


def make_display(quiet: bool, stream: IO[str] | None = None) -> Display:
    stream = stream or sys.stderr
    if quiet:
        return QuietDisplay()
    if stream.isatty():
        return RichDisplay(stream)
    return LineDisplay(stream)


def wait_for_job(api: Api, job_id: str, display: Display, *, interval: float = POLL_INTERVAL_S,
                 max_outage: float = MAX_OUTAGE_S, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, last: dict | None = None) -> dict:
    """Poll until the job is completed, failed or canceled; returns it. `last` (a dict) is kept
    up to date with the newest job seen, for a caller interrupted by Ctrl-C."""
    outage_since: float | None = None
    while True:
        try:
            job = api.job(job_id)
        except ApiError as exc:
            if exc.status == 429:
                wait = exc.retry_after if exc.retry_after is not None else 5 * interval
                display.note(f"{exc.message} (waiting {wait:g} s)")
                sleep(wait)
                continue
            if not exc.transient:
                raise
            outage_since = clock() if outage_since is None else outage_since
            if clock() - outage_since > max_outage:
                raise
            display.note(f"{exc.message}; asking again")
            sleep(max(interval, 2.0))
            continue
        outage_since = None
        if last is not None:
            last.clear()
            last.update(job)
        display.update(job)
        if job.get("status") in FINISHED:
            return job
        sleep(interval)


# ---------------------------------------------------------------- upload progress (one bar per file)

class LineUploadBar:
    """For a stderr that is not a terminal: a line at every tenth of the file (parts finish on
    several threads; they count under one lock)."""

    def __init__(self, stream: IO[str]) -> None:
        import threading

        self.stream = stream
        self.lock = threading.Lock()
        self.total = self.done = self.shown = 0
        self.label = ""

    def start(self, label: str, total: int) -> None:
        self.label, self.total, self.done, self.shown = label, max(1, total), 0, 0
        self.stream.write(f"{label}: 0% of {total:,} bytes\n")
        self.stream.flush()

    def advance(self, done: int) -> None:
        with self.lock:
            self.done += done
            tenth = min(10, self.done * 10 // self.total)
            if tenth > self.shown:
                self.shown = tenth
                self.stream.write(f"{self.label}: {tenth * 10}% ({self.done:,} of {self.total:,} bytes)\n")
                self.stream.flush()

    def note(self, text: str) -> None:
        with self.lock:
            self.stream.write(f"{self.label}: {text}\n")
            self.stream.flush()

    def stop(self) -> None: ...


class RichUploadBar:
    """A rich bar on stderr: bytes sent of the file, speed, time left."""

    def __init__(self, stream: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), console=Console(file=stream))
        self.task = None

    def start(self, label: str, total: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task(label, total=total)

    def advance(self, done: int) -> None:
        self.progress.advance(self.task, done)

    def note(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)

    def stop(self) -> None:
        self.progress.stop()


def make_upload_bar(quiet: bool, stream: IO[str] | None = None):
    from csv_opener_cli.parts import NoBar

    stream = stream or sys.stderr
    if quiet:
        return NoBar()
    return RichUploadBar(stream) if stream.isatty() else LineUploadBar(stream)
