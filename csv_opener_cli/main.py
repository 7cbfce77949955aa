"""`csv-opener`: upload a CSV of URLs, start the job, follow it, download the CSV with openers.

Manners after httpie and gh: results on stdout (one JSON document with --json), progress and
notes on stderr, errors as the API's message in words, and exit status 0 (done), 1 (the job
failed or was canceled), 2 (usage or API error), 130 (Ctrl-C, job left running).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from csv_opener_cli import __version__, review
from csv_opener_cli.api import Api, ApiError, Upload, key_label, printable
from csv_opener_cli.progress import make_display, make_upload_bar, wait_for_job

OK, JOB_FAILED, ERROR, INTERRUPTED = 0, 1, 2, 130
DEFAULT_API = "http://127.0.0.1:8000"
JOB_STATUSES = ("pending", "ingesting", "processing", "completed", "failed", "canceled")
URL_STATUSES = ("pending", "processing", "completed", "failed")
REVIEW_FILTERS = ("approved", "rejected", "none")
QUALITY_FLAGS = ("too_long", "too_short", "duplicate", "spammy", "wrong_language", "generic", "ungrounded", "edited")

DESCRIPTION = """\
Write outreach openers for a CSV of URLs with the CSV Opener API.

  csv-opener run leads.csv --instructions "We are Acme; we help ops teams cut reporting time."

uploads leads.csv, starts the job, shows its progress and writes leads-openers.csv (your rows plus
opener, opener_status, opener_error, context_status, opener_evidence, opener_quality and
opener_language) and prints what the quality checks found. Ctrl-C asks whether to cancel the job or leave it running."""

EPILOG = """\
environment:
  CSV_OPENER_API   the API's base URL (default http://127.0.0.1:8000, `make dev`; on AWS the
                   stage's invoke URL, https://<api-id>.execute-api.<region>.amazonaws.com/api)
  CSV_OPENER_KEY   your API key (cso_<prefix>_<secret>). Prefer it to --key: a --key value is
                   visible to other users of the machine in `ps` and stays in your shell history.
                   Only the key's cso_<prefix> is ever printed.

exit status:
  0    done: the job completed (some URLs may have failed), or the request succeeded
  1    the job failed or was canceled
  2    usage error, or an error from the API (unauthorized, not found, rate limited, ...)
  130  interrupted (Ctrl-C) and the job left running

examples:
  export CSV_OPENER_KEY=cso_...
  csv-opener run leads.csv --instructions-file pitch.txt -o out.csv
  csv-opener jobs --status processing
  csv-opener status JOB_ID --json | jq .job.progress
  csv-opener results JOB_ID --status failed
  csv-opener results JOB_ID --quality duplicate
  csv-opener retry JOB_ID --wait -o leads-openers.csv
  csv-opener review JOB_ID --quality duplicate
  csv-opener regenerate JOB_ID --quality duplicate --feedback "Shorter; mention their product"
  csv-opener download JOB_ID --approved"""


# ---------------------------------------------------------------- arguments


def job_id_arg(text: str) -> str:
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a job id (a UUID, as `csv-opener jobs` lists)") from None


def count_arg(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.strip().isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}, not {text!r}")
        return int(text)

    return parse


def language_arg(text: str) -> str:
    value = text.strip().lower()
    if value != "auto" and not (len(value) == 2 and value.isascii() and value.isalpha()):
        raise argparse.ArgumentTypeError(f"must be auto or a two-letter ISO 639-1 code such as de, not {text!r}")
    return value


def add_quality_options(parser: argparse.ArgumentParser) -> None:
    """The quality options of process and preview (sent only when given: the API has the defaults)."""
    group = parser.add_argument_group("quality checks")
    group.add_argument("--grounding", choices=("strict", "flag"),
                       help="an opener whose detail is not in the page or row: strict fails the row (API "
                            "default), flag keeps it flagged ungrounded")
    group.add_argument("--min-words", type=count_arg(1, 200), metavar="N", help="fewer words is flagged (default 8)")
    group.add_argument("--max-words", type=count_arg(1, 200), metavar="N", help="more words is flagged (default 40)")
    group.add_argument("--language", type=language_arg, metavar="CODE",
                       help="auto (each prospect's language, the default) or an ISO 639-1 code such as de")
    group.add_argument("--variants", type=count_arg(1, 3), metavar="N",
                       help="write N openers per row (1-3, default 1; live jobs only): the first is used until "
                            "you pick another (csv-opener review: p N V)")
    group.add_argument("--no-reuse", dest="reuse", action="store_false", default=None,
                       help="call the model for every row, even one an earlier job of the account already "
                            "has an opener for (reuse is the default)")


def quality_options(args: argparse.Namespace) -> dict[str, Any]:
    names = ("grounding", "min_words", "max_words", "language", "reuse", "variants")
    options = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if options.get("min_words", 0) > options.get("max_words", 200):
        raise UsageError("--min-words must not be greater than --max-words")
    return options


def build_parser() -> argparse.ArgumentParser:
    # The global options work before and after the command (`csv-opener --json jobs` and
    # `csv-opener jobs --json`): SUPPRESS keeps a subparser from resetting what the main one read.
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument("--api", metavar="URL", default=argparse.SUPPRESS,
                       help=f"the API's base URL (default: $CSV_OPENER_API or {DEFAULT_API})")
    group.add_argument("--key", metavar="KEY", default=argparse.SUPPRESS,
                       help="API key (default: $CSV_OPENER_KEY; prefer the variable: --key is visible in `ps`)")
    group.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print one JSON document on stdout, for scripts")
    group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="no progress or notes on stderr (errors are still shown)")

    parser = argparse.ArgumentParser(prog="csv-opener", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common])
    parser.add_argument("--version", action="version", version=f"csv-opener {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=description or help_text, parents=[common],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)

    run = command("run", "upload a CSV, start the job, follow it and download the result",
                  "Upload FILE (directly, or through a presigned URL when it is big), start the job, show its\n"
                  "progress on stderr and write the CSV with openers (default: FILE-openers.csv beside FILE).\n"
                  "Ctrl-C asks whether to cancel the job or leave it running (without a terminal on stdin it\n"
                  "is left running and the commands to follow it are printed).")
    run.add_argument("file", metavar="FILE", help="the CSV of URLs")
    instructions = run.add_mutually_exclusive_group(required=True)
    instructions.add_argument("--instructions", metavar="TEXT",
                              help="who you are, what you offer, the tone (steers every opener)")
    instructions.add_argument("--instructions-file", metavar="PATH", help="read the instructions from a file")
    run.add_argument("--url-column", metavar="COLUMN", help="the column with the URLs (default: found by the API)")
    run.add_argument("--model", metavar="MODEL", help="the LLM model (default: the API's)")
    run.add_argument("--mode", choices=("live", "batch"),
                     help="batch: through the provider's Batch API, half the price, done within 24 hours "
                          "(default: the API's, live for most files)")
    run.add_argument("-o", "--output", metavar="OUT", help="where to write the result ('-' for stdout)")
    add_quality_options(run)

    status = command("status", "show a job's status and counters")
    status.add_argument("job_id", metavar="ID", type=job_id_arg)

    jobs = command("jobs", "list your jobs, newest first")
    jobs.add_argument("--status", choices=JOB_STATUSES)
    jobs.add_argument("--limit", type=count_arg(1, 10_000), default=20, metavar="N", help="at most N jobs (20)")

    results = command("results", "show a job's per-URL results in file order")
    results.add_argument("job_id", metavar="ID", type=job_id_arg)
    results.add_argument("--status", choices=URL_STATUSES)
    results.add_argument("--quality", choices=QUALITY_FLAGS, metavar="FLAG",
                         help=f"only rows with this quality flag ({', '.join(QUALITY_FLAGS)})")
    results.add_argument("--review", choices=REVIEW_FILTERS, help="only rows so reviewed (none: not yet)")
    results.add_argument("--limit", type=count_arg(1, 1_000_000), default=50, metavar="N",
                         help="at most N rows (50)")

    download = command("download", "download a job's CSV with the opener columns (at any time)")
    download.add_argument("job_id", metavar="ID", type=job_id_arg)
    download.add_argument("-o", "--output", metavar="FILE",
                          help="where to write it ('-' for stdout; default: the name the API gives, here)")
    download.add_argument("--approved", action="store_true",
                          help="only the rows approved in review (default name: <name>-approved.csv)")

    cancel = command("cancel", "cancel a pending or processing job (what is done is kept)")
    cancel.add_argument("job_id", metavar="ID", type=job_id_arg)

    retry = command("retry", "process a job's failed (or, if canceled, unfinished) URLs again")
    retry.add_argument("job_id", metavar="ID", type=job_id_arg)
    retry.add_argument("--wait", action="store_true", help="follow the job until it is finished")
    retry.add_argument("-o", "--output", metavar="FILE", help="with --wait: download the result when completed")

    preview = command("preview", "openers for a job's first rows with these instructions (nothing is stored)")
    preview.add_argument("job_id", metavar="ID", type=job_id_arg)
    preview.add_argument("--instructions", metavar="TEXT", required=True)
    preview.add_argument("--rows", type=count_arg(1, 5), metavar="N", help="how many rows, 1 to 5 (API default 3)")
    preview.add_argument("--model", metavar="MODEL")
    add_quality_options(preview)
    review.add_commands(command, job_id_arg, count_arg)
    return parser


# ---------------------------------------------------------------- context


class UsageError(Exception):
    pass


class Context:
    """The parsed options, the API client and the three streams."""

    def __init__(self, args: argparse.Namespace, api: Api, key: str, stdin: IO[str], stdout: IO[str],
                 stderr: IO[str], sleep: Callable[[float], None]) -> None:
        self.args, self.api, self.key = args, api, key
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.json = bool(getattr(args, "json", False))
        self.quiet = bool(getattr(args, "quiet", False))
        self.sleep = sleep
        self.emitted = False
        self.job_id: str | None = None  # the job a `run` created, for messages after an error
        self.exit_code = OK  # set by `follow` when Ctrl-C ended the wait
        self.environ: dict[str, str] = {}  # the environment (review's $EDITOR, $COLUMNS)

    def info(self, text: str) -> None:
        """A note on stderr (not with --quiet)."""
        if not self.quiet:
            self.stderr.write(text + "\n")
            self.stderr.flush()

    def warn(self, text: str) -> None:
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def emit(self, document: Any, human: Callable[[], None] | None = None) -> None:
        """The command's result: one JSON document with --json, else what `human` prints."""
        if self.emitted:
            return
        self.emitted = True
        if self.json:
            self.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        elif human is not None:
            human()
        self.stdout.flush()

    def out(self, text: str = "") -> None:
        self.stdout.write(text + "\n")

    def interactive(self) -> bool:
        """A person at the keyboard (stdin a terminal) who can answer a question."""
        try:
            return self.stdin.isatty()
        except (AttributeError, ValueError):
            return False

    def ask(self, question: str) -> str:
        self.stderr.write(question)
        self.stderr.flush()
        try:
            return (self.stdin.readline() or "").strip().lower()
        except (KeyboardInterrupt, EOFError):
            self.stderr.write("\n")
            return ""


# ---------------------------------------------------------------- formatting


def when(value: str | None) -> str:
    """`2025-01-02T03:04:05.678Z` -> `2025-01-02 03:04 UTC`."""
    if not value:
        return "–"
    return value[:16].replace("T", " ") + " UTC" if value.endswith("Z") else value


def table(rows: list[list[str]], header: list[str]) -> list[str]:
    """Left-aligned columns; the last one is never padded."""
    cells = [header, *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header) - 1)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip() for row in cells]


def job_summary(job: dict) -> str:
    processed, failed, total = job.get("processed_rows", 0), job.get("failed_rows", 0), job.get("total_rows", 0)
    return f"{processed} processed · {failed} failed · {total} total"


def quality_summary(job: dict) -> str | None:
    """One line of what the quality checks found (None from a server that does not report it)."""
    quality = job.get("quality")
    if not isinstance(quality, dict):
        return None
    flagged = quality.get("flagged") or {}
    parts = [f"{quality.get('verified', 0)} verified", f"{quality.get('generic', 0)} generic",
             "flagged: " + (", ".join(f"{n} {printable(str(flag))}" for flag, n in sorted(flagged.items()))
                            if flagged else "none")]
    if quality.get("duplicate_rate"):
        parts.append(f"duplicates {quality['duplicate_rate']:.1%}")
    if quality.get("median_words") is not None:
        parts.append(f"median {quality['median_words']:g} words")
    parts += [f"{quality.get('regenerated', 0)} regenerated", f"{quality.get('reused', 0)} reused"]
    return " · ".join(parts)


BASIS = {"heuristic": "from the prompt", "preview": "corrected by the preview", "first_chunk": "from the first rows"}


def dollars(value: object) -> str:
    return f"${value:.4f}" if isinstance(value, int | float) and not isinstance(value, bool) else "–"


def cost_summary(job: dict) -> str | None:
    """One line of what the job costs beside what it was estimated to cost, with the rows reused
    from earlier jobs and the prompt tokens the provider served from its cache (None from a
    server that reports no cost)."""
    if "cost_usd" not in job:
        return None
    estimate = job.get("estimate") if isinstance(job.get("estimate"), dict) else {}
    line = dollars(job.get("cost_usd"))
    if isinstance(estimate.get("cost_usd"), int | float):
        basis = printable(str(BASIS.get(estimate.get("basis"), estimate.get("basis") or "")))
        line += f" (estimate {dollars(estimate['cost_usd'])}{f', {basis}' if basis else ''}"
        start = estimate.get("at_start") if isinstance(estimate.get("at_start"), dict) else {}
        if estimate.get("basis") == "first_chunk" and isinstance(start.get("cost_usd"), int | float):
            line += f"; {dollars(start['cost_usd'])} at the start"
        line += ")"
    reused = (job.get("quality") or {}).get("reused") if isinstance(job.get("quality"), dict) else None
    parts = [line, f"{job.get('mode') or 'live'} mode"]
    if isinstance(reused, int) and reused:
        parts.append(f"{reused:,} reused")
    if isinstance(job.get("cached_tokens"), int) and job["cached_tokens"]:
        parts.append(f"{job['cached_tokens']:,} cached tokens")
    return " · ".join(parts)


def human_status(ctx: Context, job: dict) -> None:
    lines = [
        ("job", job["id"]),
        ("file", printable(job.get("file_name") or "")),
        ("status", f"{job['status']}, {job.get('progress', 0)}%"),
        ("urls", job_summary(job) + (f" · {job['invalid_rows']} invalid rows" if job.get("invalid_rows") else "")),
        ("url column", printable(str(job.get("url_column") or "–"))),
        ("model", job.get("model") or "–"),
        ("created", when(job.get("created_at"))),
        ("started", when(job.get("started_at"))),
        ("finished", when(job.get("finished_at"))),
    ]
    if quality_summary(job):
        lines.append(("quality", quality_summary(job)))
    if cost_summary(job):
        lines.append(("cost", cost_summary(job)))
    if job.get("error"):
        lines.append(("error", printable(job["error"])))
    for label, value in lines:
        ctx.out(f"{label:<11}{value}")


def human_size(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


# ---------------------------------------------------------------- downloading


def building_note(ctx: Context) -> Callable[[float], None]:
    """What the CLI says (on stderr, not with --quiet) while the server builds a big CSV."""
    def note(waited: float) -> None:
        ctx.info("The server is building the CSV" + (f" (waited {waited:.0f} s)" if waited else "") + "…")
    return note


def save_download(ctx: Context, job_id: str, output: str | None, default_dir: Path = Path("."),
                  review: str | None = None) -> tuple[str, int]:
    """Download into `output` ('-' = stdout; None = the API's file name in `default_dir`), through
    a temporary file renamed at the end, so a broken download leaves no half-written CSV. With
    `review` ("approved"), only those rows (the default name then ends in -approved.csv)."""
    if output == "-":
        target = getattr(ctx.stdout, "buffer", None)
        written = 0

        def to_stdout(chunk: bytes) -> None:
            nonlocal written
            written += len(chunk)
            target.write(chunk) if target is not None else ctx.stdout.write(chunk.decode("utf-8", "replace"))

        ctx.api.download(job_id, to_stdout, review, sleep=ctx.sleep, waiting=building_note(ctx))
        ctx.stdout.flush()
        return "-", written
    directory = Path(output).parent if output else default_dir
    temp = tempfile.NamedTemporaryFile(dir=directory, prefix=".csv-opener-", suffix=".part", delete=False)
    try:
        with temp:
            name = ctx.api.download(job_id, temp.write, review, sleep=ctx.sleep,
                                    waiting=building_note(ctx)) or f"{job_id}-openers.csv"
        if review:
            name = f"{name.removesuffix('.csv')}-{review}.csv"
        final = Path(output) if output else directory / name
        os.replace(temp.name, final)
    except BaseException:
        Path(temp.name).unlink(missing_ok=True)
        raise
    return str(final), final.stat().st_size


# ---------------------------------------------------------------- following a job


def follow(ctx: Context, job: dict) -> dict | None:
    """Wait for the job with a progress display; None when Ctrl-C left it running or canceled it
    (the answer is then already emitted and ctx.exit_code set)."""
    display = make_display(ctx.quiet, ctx.stderr)
    last = dict(job)
    display.start(job["id"])
    try:
        return wait_for_job(ctx.api, job["id"], display, sleep=ctx.sleep, last=last)
    except KeyboardInterrupt:
        display.stop()
        ctx.exit_code = interrupted(ctx, job["id"], last)
        return None
    finally:
        display.stop()


def interrupted(ctx: Context, job_id: str, last: dict) -> int:
    ctx.warn("")
    if ctx.interactive():
        answer = ctx.ask(f"Cancel job {job_id}? [y/N] (N leaves it running) ")
        if answer in ("y", "yes"):
            job = ctx.api.cancel(job_id)["job"]
            ctx.warn(f"Canceled job {job_id}; what was generated is kept: csv-opener download {job_id}")
            ctx.emit({"job": job, "interrupted": True, "canceled": True})
            return JOB_FAILED
    ctx.warn(f"Job {job_id} keeps running. Follow it with `csv-opener status {job_id}`; "
             f"get the CSV with `csv-opener download {job_id}`.")
    ctx.emit({"job": last, "interrupted": True, "canceled": False})
    return INTERRUPTED


def finish(ctx: Context, job: dict, output: str | None, extra: dict | None = None) -> int:
    """A finished job: download it if completed (and wanted), say what happened, the exit status."""
    job_id, document = job["id"], {"job": job, **(extra or {})}
    if job["status"] != "completed":
        reason = f": {printable(job['error'])}" if job.get("error") else ""
        ctx.warn(f"Job {job_id} {job['status']}{reason} ({job_summary(job)}).")
        if job["status"] == "canceled":
            ctx.warn(f"What was generated is kept: csv-opener download {job_id}; go on with csv-opener retry {job_id}")
        ctx.emit({**document, "output": None})
        return JOB_FAILED
    written = None
    if output is not None:
        written, size = save_download(ctx, job_id, output)
        document["output"] = None if written == "-" else written
        document["bytes"] = size
    if job.get("failed_rows"):
        ctx.info(f"{job['failed_rows']} URL(s) failed: csv-opener results {job_id} --status failed; "
                 f"try them again: csv-opener retry {job_id} --wait")

    summary, cost = quality_summary(job), cost_summary(job)
    if written == "-":  # stdout holds the CSV
        for label, line in (("Quality", summary), ("Cost", cost)):
            if line:
                ctx.info(f"{label}: {line}")
    if (job.get("quality") or {}).get("flagged"):
        ctx.info(f"Flagged openers: csv-opener results {job_id} --quality FLAG")

    def human() -> None:
        if written != "-":
            target = f" → {written}" if written else ""
            ctx.out(f"Job {job_id} completed: {job_summary(job)}{target}")
            if summary:
                ctx.out(f"Quality: {summary}")
            if cost:
                ctx.out(f"Cost: {cost}")

    ctx.emit(document, human)
    return OK


# ---------------------------------------------------------------- commands


def read_instructions(args: argparse.Namespace) -> str:
    if args.instructions_file is None:
        return args.instructions
    try:
        return Path(args.instructions_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the instructions file {args.instructions_file}: {exc}") from None


def cmd_run(ctx: Context) -> int:
    args = ctx.args
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{path}: not readable")
    output = args.output or str(path.with_name(f"{path.stem}-openers.csv"))
    if output != "-" and Path(output).resolve() == path.resolve():
        raise UsageError(f"-o {output} would overwrite the input file")
    if output != "-" and not Path(output).resolve().parent.is_dir():
        raise UsageError(f"-o {output}: no such directory")
    instructions = read_instructions(args)
    options = quality_options(args)  # a usage error before anything is uploaded

    size = path.stat().st_size
    ctx.info(f"Uploading {path.name} ({human_size(size)}) to {ctx.api.base_url} with key {key_label(ctx.key)}")
    upload: Upload = ctx.api.upload(path, args.url_column, note=ctx.info,
                                    bar=make_upload_bar(ctx.quiet, ctx.stderr))
    ctx.job_id = job_id = upload.job["id"]
    if upload.summary:
        summary = upload.summary
        ctx.info(f"Job {job_id}: {summary['total_rows']} URLs in column '{printable(str(summary['url_column']))}', "
                 f"{summary['invalid_rows']} invalid row(s)")
        for error in (summary.get("errors") or [])[:3]:
            ctx.info(f"  row {error.get('row')}: {printable(str(error.get('value')))!r}: "
                     f"{printable(str(error.get('message')))}")
    else:
        ctx.info(f"Job {job_id}: uploaded through a presigned URL" + (" by parts" if upload.how == "multipart" else ""))
    show_url_choice(ctx, (upload.summary or upload.choice or {}).get("url_choice"))
    started = ctx.api.process(job_id, instructions, args.model, args.mode, options)
    job = started["job"]
    ctx.info(f"Job {job_id} started: {job['total_rows']} URLs in {started.get('chunks', '?')} chunk(s)"
             + (f", {job['invalid_rows']} invalid row(s) kept as they are" if job.get("invalid_rows") else "")
             + (" (batch mode: results within 24 hours)" if job.get("mode") == "batch" else ""))
    estimate = started.get("estimate")
    if isinstance(estimate, dict) and isinstance(estimate.get("cost_usd"), int | float):
        batch = estimate.get("batch_cost_usd")
        ctx.info(f"Estimated cost: ${estimate['cost_usd']:.2f} live"
                 + (f", ${batch:.2f} in batch mode" if isinstance(batch, int | float) else ""))
    if isinstance(estimate, dict) and isinstance(estimate.get("reused_rows"), int) and estimate["reused_rows"]:
        ctx.info(f"{estimate['reused_rows']} row(s) have an opener from an earlier job: reused with no call")
    extra = {"upload": {"how": upload.how, **({k: upload.summary[k] for k in
                                                 ("url_column", "total_rows", "invalid_rows", "errors")}
                                              if upload.summary else {}),
                        **upload_choice(upload)}}
    final = follow(ctx, job)
    if final is None:
        return ctx.exit_code
    return finish(ctx, final, output, extra)


def show_url_choice(ctx: Context, choice: object) -> None:
    """Which URL column the API chose in a wide file, why, and what --url-column could say instead."""
    if not isinstance(choice, dict) or not choice.get("alternatives"):
        return
    others = ", ".join(repr(printable(str(name))) for name in choice["alternatives"][:5])
    ctx.info(f"URL column '{printable(str(choice.get('column')))}' ({printable(str(choice.get('why')))}); "
             f"other URL columns: {others} (choose one with --url-column)")


def upload_choice(upload: Upload) -> dict:
    """The URL column choice an upload answered (direct: validated; by parts: from its first bytes)."""
    choice = (upload.summary or upload.choice or {}).get("url_choice")
    return {"url_choice": choice} if isinstance(choice, dict) else {}


def cmd_status(ctx: Context) -> int:
    job = ctx.api.job(ctx.args.job_id)
    ctx.emit({"job": job}, lambda: human_status(ctx, job))
    return OK


def cmd_jobs(ctx: Context) -> int:
    body = ctx.api.jobs(ctx.args.status, ctx.args.limit)

    def human() -> None:
        if not body["jobs"]:
            ctx.out("No jobs" + (f" {ctx.args.status}" if ctx.args.status else "") + ".")
            return
        rows = [[j["id"], j["status"], f"{j.get('progress', 0)}%",
                 f"{j.get('processed_rows', 0)}/{j.get('failed_rows', 0)}/{j.get('total_rows', 0)}",
                 when(j.get("created_at")), printable(j.get("file_name") or "")] for j in body["jobs"]]
        for line in table(rows, ["ID", "STATUS", "PROGRESS", "OK/FAILED/TOTAL", "CREATED", "FILE"]):
            ctx.out(line)

    ctx.emit(body, human)
    return OK


def cmd_results(ctx: Context) -> int:
    args = ctx.args
    body = ctx.api.results(args.job_id, args.status, args.limit, args.quality, args.review)

    def human() -> None:
        if not body["results"]:
            which = " ".join(x for x in (args.status, args.quality and f"flagged {args.quality}") if x)
            ctx.out("No results" + (f" {which}" if which else "") + ".")
            return
        rows = [[str(r.get("row", "")), r.get("status", ""), printable(r.get("url") or ""),
                 printable(",".join(r.get("quality") or ()) or "–"),
                 printable(r.get("opener") or r.get("error") or "").replace("\n", " ")] for r in body["results"]]
        for line in table(rows, ["ROW", "STATUS", "URL", "FLAGS", "OPENER / ERROR"]):
            ctx.out(line)
        for r in body["results"]:
            if args.quality and r.get("evidence"):
                ctx.out(f"  row {r.get('row')} evidence: {printable(r['evidence'])}")

    ctx.emit(body, human)
    return OK


def cmd_download(ctx: Context) -> int:
    args = ctx.args
    if args.output not in (None, "-") and not Path(args.output).resolve().parent.is_dir():
        raise UsageError(f"-o {args.output}: no such directory")
    written, size = save_download(ctx, args.job_id, args.output, review="approved" if args.approved else None)
    if written != "-":
        ctx.emit({"job_id": args.job_id, "output": written, "bytes": size},
                 lambda: ctx.out(f"Wrote {written} ({human_size(size)})"))
    return OK


def cmd_cancel(ctx: Context) -> int:
    body = ctx.api.cancel(ctx.args.job_id)
    job = body["job"]
    ctx.emit(body, lambda: ctx.out(f"Job {job['id']} {job['status']} ({job_summary(job)}); "
                                   f"what was generated is kept: csv-opener download {job['id']}"))
    return OK


def cmd_retry(ctx: Context) -> int:
    args = ctx.args
    body = ctx.api.retry(args.job_id)
    job = body["job"]
    if not (args.wait or args.output):
        ctx.emit(body, lambda: ctx.out(f"Job {job['id']}: {body.get('retried', '?')} URL(s) queued again; "
                                       f"follow it with csv-opener status {job['id']}"))
        return OK
    ctx.info(f"Job {job['id']}: {body.get('retried', '?')} URL(s) queued again")
    final = follow(ctx, job)
    if final is None:
        return ctx.exit_code
    return finish(ctx, final, args.output, {"retried": body.get("retried")})


def cmd_preview(ctx: Context) -> int:
    args = ctx.args
    body = ctx.api.preview(args.job_id, args.instructions, args.rows, args.model, quality_options(args))

    def human() -> None:
        for item in body.get("previews") or []:
            context = f"context {item['context_status']}" if item.get("context_status") else ""
            tokens = (f"{item['prompt_tokens']}+{item['completion_tokens']} tokens"
                      if item.get("prompt_tokens") is not None else "")
            details = ", ".join(x for x in (context, tokens) if x)
            url = printable(item.get("url") or "")
            ctx.out(f"row {item.get('row')}  {url}" + (f"  ({details})" if details else ""))
            ctx.out(f"  {printable(item.get('opener') or item.get('error') or '')}")
            if item.get("quality"):
                ctx.out(f"  flags: {printable(', '.join(item['quality']))}")
            if item.get("evidence"):
                ctx.out(f"  evidence: {printable(item['evidence'])}")
        estimate = body.get("estimate")
        if isinstance(estimate, dict):
            cost = estimate.get("cost_usd")
            batch = estimate.get("batch_cost_usd")
            ctx.out(f"estimate for the job: {estimate.get('urls', '?')} URLs"
                    + (f", about ${cost:.2f}" if isinstance(cost, int | float) else "")
                    + (f" (${batch:.2f} in batch mode)" if isinstance(batch, int | float) else ""))

    ctx.emit(body, human)
    return OK


COMMANDS: dict[str, Callable[[Context], int]] = {
    "run": cmd_run, "status": cmd_status, "jobs": cmd_jobs, "results": cmd_results, "download": cmd_download,
    "cancel": cmd_cancel, "retry": cmd_retry, "preview": cmd_preview,
    "review": review.cmd_review, "regenerate": lambda ctx: review.cmd_regenerate(ctx, follow, finish),
}


# ---------------------------------------------------------------- main


def connection(args: argparse.Namespace, environ: dict[str, str]) -> tuple[str, str]:
    api = (getattr(args, "api", None) or environ.get("CSV_OPENER_API") or DEFAULT_API).strip()
    key = (getattr(args, "key", None) or environ.get("CSV_OPENER_KEY") or "").strip()
    url = httpx.URL(api) if api.startswith(("http://", "https://")) else None
    if url is None or not url.host:
        raise UsageError(f"--api / CSV_OPENER_API must be an http(s) URL such as {DEFAULT_API}, not {api!r}")
    if not key:
        raise UsageError("no API key: set CSV_OPENER_KEY (or pass --key, which other users can see in `ps`)")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in key):
        raise UsageError("the API key contains spaces or control characters; check CSV_OPENER_KEY / --key")
    return api, key


def main(argv: Sequence[str] | None = None, *, transport: httpx.BaseTransport | None = None,
         environ: dict[str, str] | None = None, stdin: IO[str] | None = None, stdout: IO[str] | None = None,
         stderr: IO[str] | None = None, sleep: Callable[[float], None] = time.sleep) -> int:
    """The command; returns the exit status. Keyword arguments are for tests."""
    environ = dict(os.environ) if environ is None else environ
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2)
        return int(exc.code or 0)

    def fail_usage(message: str) -> int:
        stderr.write(f"{parser.prog} {args.command}: error: {message}\n")
        return ERROR

    try:
        base, key = connection(args, environ)
    except UsageError as exc:
        return fail_usage(str(exc))
    host = httpx.URL(base).host
    if base.startswith("http://") and host not in ("127.0.0.1", "localhost", "::1") and not args.__dict__.get("quiet"):
        stderr.write(f"warning: {base} is plain HTTP: your key travels unencrypted\n")

    with Api(base, key, transport=transport) as api:
        ctx = Context(args, api, key, stdin, stdout, stderr, sleep)
        ctx.environ = environ
        try:
            if ctx.json and getattr(args, "output", None) == "-":
                raise UsageError("-o - writes the CSV to stdout, where --json writes its document: use one")
            return COMMANDS[args.command](ctx)
        except UsageError as exc:
            return fail_usage(str(exc))
        except ApiError as exc:
            report(ctx, exc)
            return ERROR
        except KeyboardInterrupt:
            stderr.write("\nInterrupted.")
            if ctx.job_id:
                stderr.write(f" Job {ctx.job_id}: see `csv-opener status {ctx.job_id}`.")
            stderr.write("\n")
            return INTERRUPTED
        except OSError as exc:  # writing the output file, reading the input
            stderr.write(f"{parser.prog} {args.command}: error: {exc}\n")
            return ERROR


def report(ctx: Context, exc: ApiError) -> None:
    """An API error in words on stderr (and as the JSON document with --json)."""
    detail = f"{exc.status} {exc.code}" if exc.status else exc.code
    if exc.status == 401:
        detail += f"; key {key_label(ctx.key)}"
    if exc.retry_after is not None:
        detail += f"; retry after {exc.retry_after:g} s"
    where = f" (job {ctx.job_id})" if ctx.job_id else ""
    ctx.warn(f"csv-opener {ctx.args.command}: {exc.message} [{detail}]{where}")
    if exc.status == 0:
        ctx.warn(f"Is the API running at {ctx.api.base_url}? Set CSV_OPENER_API or --api.")
    ctx.emit(exc.as_json())
