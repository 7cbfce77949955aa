"""`csv-opener review ID` and `csv-opener regenerate ID`: the review loop in a terminal.

`review` shows the job's results as a table (rich): number, row, status, review mark, flags,
opener and evidence; then reads commands, one a line, from stdin (a person at a terminal, or a
script: the loop is the same, and ends at end of input):

    a N…  approve      r N…  reject      u N…  unmark
    e N   edit the opener in $VISUAL / $EDITOR
    p N V pick variant V (1-3) of row N (a job with several openers per row)
    g N…  regenerate these rows (asks for feedback)
    l     list again (reloaded)      q  quit

N… is table numbers: `1 3`, `2-5`, `1,4` or `all`. Every text from the API is shown as text
(rich markup in an opener is not interpreted; control characters are made visible). A row with
variants lists them under its opener, numbered, the picked one marked with *.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from csv_opener_cli.api import ApiError, printable

QUALITY_FLAGS = ("too_long", "too_short", "duplicate", "spammy", "wrong_language", "generic", "ungrounded", "edited")
URL_STATUSES = ("pending", "processing", "completed", "failed")
REVIEWS = ("approved", "rejected", "none")
COMMAND_HELP = ("a N… approve", "r N… reject", "u N… unmark", "e N edit in $EDITOR", "p N V pick variant V",
                "g N… regenerate with feedback", "l list again", "q quit")
HELP = "commands: " + " · ".join(COMMAND_HELP) + "   (N…: 1 3, 2-5, 1,4 or all)"
MARKS = {"a": "approved", "r": "rejected", "u": None}


def add_commands(command: Callable[..., argparse.ArgumentParser], job_id_arg, count_arg) -> None:
    """The `review` and `regenerate` subcommands, on main's parser."""
    review = command("review", "review a job's openers: approve, reject, edit, regenerate with feedback",
                     "Show the job's results as a table (flags and evidence beside each opener), then read\n"
                     "commands from stdin, one a line (N…: table numbers such as 1 3, 2-5, 1,4 or all):\n\n  "
                     + "\n  ".join(COMMAND_HELP) + "\n\nWith --json, print the rows and stop.")
    review.add_argument("job_id", metavar="ID", type=job_id_arg)
    add_filters(review)
    review.add_argument("--limit", type=count_arg(1, 1000), default=50, metavar="N", help="at most N rows (50)")

    regenerate = command("regenerate", "generate rows of a finished job again, with feedback",
                         "Rows named by --ids, or matching --quality/--status/--review (rows a person edited\n"
                         "are left alone unless named by id), go back through the model with your feedback.")
    regenerate.add_argument("job_id", metavar="ID", type=job_id_arg)
    regenerate.add_argument("--ids", metavar="ID,ID", help="these result ids (as `results --json` shows them)")
    add_filters(regenerate)
    regenerate.add_argument("--feedback", metavar="TEXT", help="what to do better (up to 500 characters)")
    regenerate.add_argument("--instructions", metavar="TEXT", help="new instructions for the job")
    regenerate.add_argument("--wait", action="store_true", help="follow the job until it is finished")
    regenerate.add_argument("-o", "--output", metavar="FILE", help="with --wait: download the result when completed")


def add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quality", choices=QUALITY_FLAGS, metavar="FLAG",
                        help=f"rows with this quality flag ({', '.join(QUALITY_FLAGS)})")
    parser.add_argument("--status", choices=URL_STATUSES)
    parser.add_argument("--review", choices=REVIEWS, help="rows so reviewed (none: not yet)")


def filters_of(args: argparse.Namespace) -> dict[str, str]:
    return {name: getattr(args, name) for name in ("quality", "status", "review") if getattr(args, name)}


# ---------------------------------------------------------------- regenerate


def cmd_regenerate(ctx, follow, finish) -> int:
    args = ctx.args
    ids = None
    if args.ids:
        if filters_of(args):
            raise ctx_usage("--ids names the rows: leave out --quality, --status and --review")
        ids = [part.strip() for part in args.ids.split(",") if part.strip()]
    body = ctx.api.regenerate(args.job_id, ids=ids, filters=filters_of(args), feedback=args.feedback,
                              instructions=args.instructions)
    job = body["job"]
    if not (args.wait or args.output):
        ctx.emit(body, lambda: ctx.out(f"Job {job['id']}: {body['regenerating']} row(s) regenerating; "
                                       f"follow it with csv-opener status {job['id']}"))
        return 0
    ctx.info(f"Job {job['id']}: {body['regenerating']} row(s) regenerating")
    final = follow(ctx, job)
    if final is None:
        return ctx.exit_code
    return finish(ctx, final, args.output, {"regenerating": body["regenerating"]})


def ctx_usage(message: str) -> Exception:
    from csv_opener_cli.main import UsageError  # main imports this module

    return UsageError(message)


# ---------------------------------------------------------------- review


def cmd_review(ctx) -> int:
    session = Session(ctx)
    session.load()
    if ctx.json:
        ctx.emit({"results": session.rows})
        return 0
    session.show()
    ctx.info(HELP)
    while True:
        ctx.stderr.write("review> ")
        ctx.stderr.flush()
        line = ctx.stdin.readline()
        if not line:  # end of input
            ctx.stderr.write("\n")
            return 0
        command, _, rest = line.strip().partition(" ")
        if command in ("q", "quit", "exit"):
            return 0
        try:
            session.run(command.lower(), rest.strip())
        except ApiError as exc:
            ctx.warn(f"{exc.message} [{exc.status} {exc.code}]")
            if exc.code in ("stale_version", "regenerating"):
                session.load()
                session.show()
        except ValueError as exc:
            ctx.warn(str(exc))


def opener_cell(row: dict) -> str:
    """The opener (or the error), and a row's variants under it: numbered, the picked one with *."""
    text = row.get("opener") or row.get("error") or ""
    variants = row.get("variants") or ()
    if len(variants) < 2:
        return text
    picked = row.get("variant") or 1
    lines = [f"{'*' if n == picked else ' '}{n} {(v or {}).get('opener') or ''}" for n, v in enumerate(variants, 1)]
    return "\n".join([text, *lines])


class Session:
    """The rows under review (as the table numbers them) and the commands on them."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.job_id = ctx.args.job_id
        self.rows: list[dict] = []

    def load(self) -> None:
        args = self.ctx.args
        self.rows = self.ctx.api.results(self.job_id, args.status, args.limit, args.quality, args.review)["results"]

    def show(self) -> None:
        if not self.rows:
            self.ctx.out("No results to review.")
            return
        width = int(self.ctx.environ.get("COLUMNS", "") or 0) if (self.ctx.environ.get("COLUMNS") or "").isdigit() \
            else 0
        console = Console(file=self.ctx.stdout, width=width or 160, highlight=False, soft_wrap=False,
                          force_terminal=False, no_color=True)
        table = Table(show_lines=False, expand=False)
        for name in ("#", "ROW", "STATUS", "REVIEW", "FLAGS", "OPENER / ERROR", "EVIDENCE"):
            table.add_column(name, overflow="fold")
        for number, row in enumerate(self.rows, start=1):
            table.add_row(*(Text(printable(str(cell))) for cell in (
                number, row.get("row", ""), row.get("status", ""), row.get("review") or "–",
                ",".join(row.get("quality") or ()) or "–",
                opener_cell(row), row.get("evidence") or "")))
        console.print(table)

    def pick(self, text: str) -> list[dict]:
        """The rows named by table numbers (`1 3`, `2-5`, `1,4`, `all`)."""
        if text.strip().lower() == "all":
            return list(self.rows)
        chosen: list[int] = []
        for part in text.replace(",", " ").split():
            low, _, high = part.partition("-")
            if not (low.isascii() and low.isdigit() and (not high or (high.isascii() and high.isdigit()))):
                raise ValueError(f"{part!r} is not a row number of the table (1 to {len(self.rows)})")
            for number in range(int(low), int(high or low) + 1):
                if not 1 <= number <= len(self.rows):
                    raise ValueError(f"{number} is not a row number of the table (1 to {len(self.rows)})")
                if number not in chosen:
                    chosen.append(number)
        if not chosen:
            raise ValueError("name rows by their numbers in the table, e.g. `a 1 3` or `g 2-4`")
        return [self.rows[n - 1] for n in chosen]

    def run(self, command: str, rest: str) -> None:
        if command in MARKS:
            rows = self.pick(rest)
            done = self.ctx.api.review(self.job_id, MARKS[command], ids=[r["id"] for r in rows])
            self.ctx.out(f"{done['reviewed']} row(s) {MARKS[command] or 'unmarked'}.")
            self.load()
        elif command == "e":
            self.edit(self.pick(rest))
        elif command == "p":
            self.pick_variant(rest)
        elif command == "g":
            self.regenerate(self.pick(rest))
        elif command in ("l", "list"):
            self.load()
            self.show()
        elif command in ("?", "h", "help"):
            self.ctx.out(HELP)
        elif command:
            raise ValueError(f"unknown command {command!r}; {HELP}")

    def edit(self, rows: list[dict]) -> None:
        if len(rows) != 1:
            raise ValueError("edit one row at a time: e N")
        row = rows[0]
        text = self.editor(row.get("opener") or "")
        if not text or text == row.get("opener"):
            self.ctx.out("Unchanged.")
            return
        updated = self.ctx.api.edit(self.job_id, row["id"], opener=text, version=row.get("version"))
        self.rows[self.rows.index(row)] = updated
        self.ctx.out(f"Row {updated.get('row')} saved: {printable(updated.get('opener') or '')}")

    def pick_variant(self, rest: str) -> None:
        """`p N V`: variant V of the row numbered N becomes its opener."""
        parts = rest.split()
        if len(parts) != 2 or not (parts[1].isascii() and parts[1].isdigit()):
            raise ValueError("pick one variant of one row: p N V (e.g. `p 2 3`)")
        row = self.pick(parts[0])
        if len(row) != 1:
            raise ValueError("pick one variant of one row: p N V (e.g. `p 2 3`)")
        count = len(row[0].get("variants") or ())
        if count < 2:
            raise ValueError(f"row {row[0].get('row')} has no variants to pick from")
        number = int(parts[1])
        if not 1 <= number <= count:
            raise ValueError(f"row {row[0].get('row')} has {count} variants: V is 1 to {count}")
        updated = self.ctx.api.edit(self.job_id, row[0]["id"], variant=number, version=row[0].get("version"))
        self.rows[self.rows.index(row[0])] = updated
        self.ctx.out(f"Row {updated.get('row')}: variant {number} picked: {printable(updated.get('opener') or '')}")

    def editor(self, text: str) -> str:
        """`text` edited in $VISUAL / $EDITOR (vi): what the file holds afterwards, stripped."""
        command = self.ctx.environ.get("VISUAL") or self.ctx.environ.get("EDITOR") or "vi"
        with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="csv-opener-", delete=False,
                                         encoding="utf-8") as file:
            file.write(text + "\n")
        path = Path(file.name)
        try:
            finished = subprocess.run([*shlex.split(command), str(path)], check=False)
            if finished.returncode != 0:
                raise ValueError(f"the editor ({command}) exited with status {finished.returncode}; nothing saved")
            return " ".join(path.read_text(encoding="utf-8").split())
        finally:
            path.unlink(missing_ok=True)

    def regenerate(self, rows: list[dict]) -> None:
        self.ctx.stderr.write("Feedback for these rows (empty for none): ")
        self.ctx.stderr.flush()
        feedback = (self.ctx.stdin.readline() or "").strip()
        body: dict[str, Any] = self.ctx.api.regenerate(self.job_id, ids=[r["id"] for r in rows],
                                                       feedback=feedback or None)
        self.ctx.out(f"{body['regenerating']} row(s) regenerating; `l` lists them again "
                     f"(csv-opener status {self.job_id} follows the job).")
        self.load()
