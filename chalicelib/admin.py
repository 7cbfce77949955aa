"""The operators' command for accounts and API keys, over chalicelib.accounts:

    python -m chalicelib.admin create-account NAME [--operator]
    python -m chalicelib.admin set-operator ACCOUNT_ID [--off]
    python -m chalicelib.admin create-key ACCOUNT_ID [--role admin] [--name N]
    python -m chalicelib.admin revoke-key PREFIX
    python -m chalicelib.admin disable-account ACCOUNT_ID | enable-account ACCOUNT_ID
    python -m chalicelib.admin set-limits ACCOUNT_ID [--rpm N] [--urls-per-day N] [--jobs N] [--models a,b]
    python -m chalicelib.admin list-accounts [--json] | list-keys [ACCOUNT_ID] [--json] | show-account ACCOUNT_ID
    python -m chalicelib.admin redrive-dlq [--limit N] [--json]
    python -m chalicelib.admin stuck-jobs [--minutes N] [--json]
    python -m chalicelib.admin usage [ACCOUNT_ID] [--days N] [--json]

(`make admin ARGS="…"` runs the same), against the database DATABASE_URL names; `ssm:`
references are read from SSM. Scripts rely on the last line: `create-account` prints the new
account's id alone on it, `create-key` the new key. Exit status: 0 done, 2 bad input (arguments,
ids, an unknown account or prefix), 1 anything else. A key is printed once, by create-key, and
never logged. An operator account's keys (any role) see platform-wide figures (queue depths,
provider limits, /health details); every other account sees its own figures only.
The last three are the runbook's (docs/operations.md, chalicelib/operations.py); they also use
the chunk queue and its dead-letter queue of the settings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import psycopg

from chalicelib import accounts, operations
from chalicelib.adapters import db
from chalicelib.errors import DomainError
from chalicelib.settings import get_secret_settings, get_settings

RESET = "default"  # a limit given as `default` goes back to the setting's default


# ---------------------------------------------------------------- argument types

def _account_id(text: str) -> str:
    try:
        return accounts.valid_uuid(text)
    except DomainError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _prefix(text: str) -> str:
    try:
        return accounts.normalize_prefix(text)
    except DomainError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _limit(text: str) -> int | str:
    if text == RESET:
        return RESET
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0 or value > accounts.MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {accounts.MAX_LIMIT} or "
                                         f"'{RESET}', got {text!r}")
    return value


def _models(text: str) -> list[str] | str:
    if text == RESET:
        return RESET
    models = [m.strip() for m in text.split(",")]
    if not all(models):
        raise argparse.ArgumentTypeError(f"expected model names separated by commas (or '{RESET}'), got {text!r}")
    return models


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 100000, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chalicelib.admin",
                                     description="Manage CSV Opener accounts and API keys (DATABASE_URL).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("create-account", help="create an account; prints its id on the last line")
    p.add_argument("name")
    p.add_argument("--operator", action="store_true",
                   help="the platform's own account: its keys see queue depths, provider limits, /health details")
    p = commands.add_parser("set-operator", help="make an account an operator account (--off: a customer again)")
    p.add_argument("account_id", type=_account_id, metavar="ACCOUNT_ID")
    p.add_argument("--off", action="store_true")
    p = commands.add_parser("create-key", help="create an API key; prints the key (once) on the last line")
    p.add_argument("account_id", type=_account_id, metavar="ACCOUNT_ID")
    p.add_argument("--role", choices=accounts.ROLES, default="member")
    p.add_argument("--name", default="", help="a label for the key, e.g. who or what uses it")
    p = commands.add_parser("revoke-key", help="revoke a key by its prefix (takes effect within 60 s)")
    p.add_argument("prefix", type=_prefix, metavar="PREFIX")
    for name, text in (("disable-account", "its keys stop working (within 60 s)"),
                       ("enable-account", "its keys work again")):
        p = commands.add_parser(name, help=text)
        p.add_argument("account_id", type=_account_id, metavar="ACCOUNT_ID")
    p = commands.add_parser("set-limits", help=f"set an account's limits ('{RESET}' resets one)")
    p.add_argument("account_id", type=_account_id, metavar="ACCOUNT_ID")
    p.add_argument("--rpm", type=_limit, help="API requests per minute")
    p.add_argument("--urls-per-day", type=_limit, help="URLs accepted per UTC day")
    p.add_argument("--jobs", type=_limit, help="jobs processing at once")
    p.add_argument("--models", type=_models, help="allowed models, comma-separated")
    p = commands.add_parser("list-accounts", help="every account with its limits")
    p.add_argument("--json", action="store_true")
    p = commands.add_parser("list-keys", help="keys (prefixes, never the keys), of one account or all")
    p.add_argument("account_id", type=_account_id, nargs="?", metavar="ACCOUNT_ID")
    p.add_argument("--json", action="store_true")
    p = commands.add_parser("show-account", help="an account, its limits and today's usage")
    p.add_argument("account_id", type=_account_id, metavar="ACCOUNT_ID")
    p.add_argument("--json", action="store_true")
    p = commands.add_parser("redrive-dlq", help="send dead-lettered chunk messages back to the chunk queue "
                                                "(after the cause is fixed); reports what it moved")
    p.add_argument("--limit", type=_positive, help="move at most N messages")
    p.add_argument("--json", action="store_true")
    p = commands.add_parser("stuck-jobs", help="processing jobs without progress, why, and the fix")
    p.add_argument("--minutes", type=_positive, default=15, help="without progress for this long (default 15)")
    p.add_argument("--json", action="store_true")
    p = commands.add_parser("usage", help="URLs, tokens and cost per UTC day, of one account or all")
    p.add_argument("account_id", type=_account_id, nargs="?", metavar="ACCOUNT_ID")
    p.add_argument("--days", type=_positive, default=7, help="the last N days, today included (default 7)")
    p.add_argument("--json", action="store_true")
    return parser


# ---------------------------------------------------------------- output

def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def table(rows: Sequence[dict], columns: Sequence[tuple[str, Callable[[dict], Any]]]) -> str:
    """A plain table: a header, then one line per row, columns aligned."""
    cells = [[header for header, _ in columns]] + [[_cell(get(row)) for _, get in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells)


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, indent=2)


def _limit_cell(name: str) -> Callable[[dict], Any]:
    return lambda row: RESET if row[name] is None else row[name]


ACCOUNT_TABLE = (
    ("ID", lambda a: a["id"]),
    ("NAME", lambda a: a["name"]),
    ("STATUS", lambda a: "disabled" if a["disabled_at"] else "active"),
    ("RPM", _limit_cell("rpm")),
    ("URLS/DAY", _limit_cell("urls_per_day")),
    ("JOBS", _limit_cell("max_jobs")),
    ("MODELS", _limit_cell("models")),
    ("KEYS", lambda a: a.get("active_keys")),
    ("OPERATOR", lambda a: "yes" if a["operator"] else "no"),
    ("CREATED", lambda a: a["created_at"]),
)
KEY_TABLE = (
    ("PREFIX", lambda k: k["prefix"]),
    ("NAME", lambda k: k["name"] or "-"),
    ("ROLE", lambda k: k["role"]),
    ("STATUS", lambda k: "revoked" if k["revoked_at"] else "active"),
    ("ACCOUNT", lambda k: k["account_name"]),
    ("ACCOUNT ID", lambda k: k["account_id"]),
    ("CREATED", lambda k: k["created_at"]),
    ("LAST USED", lambda k: k["last_used_at"]),
)


def _limits_line(account: dict) -> str:
    return ", ".join(f"{name} {_cell(_limit_cell(name)(account))}" for name in accounts.LIMIT_NAMES)


# ---------------------------------------------------------------- commands

def create_account(conn, args, out: TextIO) -> None:
    account = accounts.create_account(conn, args.name, operator=args.operator)
    print(f"created {'operator ' if account['operator'] else ''}account {account['name']!r}", file=out)
    print(account["id"], file=out)


def create_key(conn, args, out: TextIO) -> None:
    account = accounts.require_account(conn, args.account_id)
    full_key, row = accounts.create_key(conn, args.account_id, role=args.role, name=args.name)
    print(f"created {row['role']} key {row['prefix']} for account {account['name']!r} ({account['id']})", file=out)
    print("This key is shown only once (only its hash is stored); keep it somewhere safe:", file=out)
    print(full_key, file=out)


def revoke_key(conn, args, out: TextIO) -> None:
    row = accounts.revoke_key(conn, args.prefix)
    print(f"revoked key {row['prefix']} of account {row['account_name']!r} ({row['account_id']}); "
          "the API refuses it within 60 s", file=out)


def set_operator(conn, args, out: TextIO) -> None:
    account = accounts.set_operator(conn, args.account_id, not args.off)
    kind = "an operator account" if account["operator"] else "a customer account"
    print(f"account {account['name']!r} ({account['id']}) is now {kind}; its keys follow within 60 s", file=out)


def disable_account(conn, args, out: TextIO) -> None:
    account = accounts.disable_account(conn, args.account_id)
    print(f"disabled account {account['name']!r} ({account['id']}); its keys stop working within 60 s", file=out)


def enable_account(conn, args, out: TextIO) -> None:
    account = accounts.enable_account(conn, args.account_id)
    print(f"enabled account {account['name']!r} ({account['id']})", file=out)


def set_limits(conn, args, out: TextIO) -> None:
    given = {"rpm": args.rpm, "urls_per_day": args.urls_per_day, "max_jobs": args.jobs, "models": args.models}
    reset = [name for name, value in given.items() if value == RESET]
    changes = {name: value for name, value in given.items() if value is not None and value != RESET}
    account = accounts.set_limits(conn, args.account_id, **changes, reset=reset)
    print(f"limits of account {account['name']!r} ({account['id']}): {_limits_line(account)}", file=out)


def list_accounts(conn, args, out: TextIO) -> None:
    rows = accounts.list_accounts(conn)
    print(_dumps(rows) if args.json else table(rows, ACCOUNT_TABLE), file=out)


def list_keys(conn, args, out: TextIO) -> None:
    rows = accounts.list_keys(conn, args.account_id)
    print(_dumps(rows) if args.json else table(rows, KEY_TABLE), file=out)


def show_account(conn, args, out: TextIO) -> None:
    account = accounts.require_account(conn, args.account_id)
    usage = accounts.usage_today(conn, args.account_id)
    if args.json:
        print(_dumps({"account": account, "usage_today": usage}), file=out)
        return
    print(table([account], ACCOUNT_TABLE[:3] + ACCOUNT_TABLE[-2:]), file=out)
    print(f"limits: {_limits_line(account)}", file=out)
    print(f"today ({usage['day']}, UTC): {usage['urls']} URLs accepted, {usage['prompt_tokens']} prompt tokens "
          f"({usage['cached_tokens']} cached), {usage['completion_tokens']} completion tokens", file=out)


REDRIVE_TABLE = (
    ("JOB", lambda m: m["job_id"]),
    ("CHUNK", lambda m: m["chunk"]),
    ("ROWS REOPENED", lambda m: m["reopened_rows"]),
    ("ACTION", lambda m: m["action"]),
)
STUCK_TABLE = (
    ("JOB", lambda j: j["id"]),
    ("ACCOUNT", lambda j: j["account_name"]),
    ("SINCE", lambda j: j["updated_at"]),
    ("DONE", lambda j: f"{j['processed_rows'] + j['failed_rows']}/{j['total_rows']}"),
    ("WHY", lambda j: j["why"]),
)
USAGE_TABLE = (
    ("DAY", lambda u: u["day"]),
    ("ACCOUNT", lambda u: u["account_id"]),
    ("ACCEPTED", lambda u: u["accepted"]),
    ("COMPLETED", lambda u: u["completed"]),
    ("FAILED", lambda u: u["failed"]),
    ("PROMPT TOKENS", lambda u: u["prompt_tokens"]),
    ("COMPLETION TOKENS", lambda u: u["completion_tokens"]),
    ("CACHED TOKENS", lambda u: u["cached_tokens"]),
    ("COST USD", lambda u: None if u["cost_usd"] is None else f"{u['cost_usd']:.4f}"),
)


def _chunk_queue():
    from chalicelib import deps  # the entry point's clients (LocalStack endpoint or AWS), built on use

    return deps.chunk_queue()


def redrive_dlq(conn, args, out: TextIO, queue=None) -> None:
    moved = operations.redrive_dlq(conn, queue or _chunk_queue(), limit=args.limit)
    if args.json:
        print(_dumps({"moved": sum(m["action"] == "redriven" for m in moved), "messages": moved}), file=out)
        return
    if moved:
        print(table(moved, REDRIVE_TABLE), file=out)
    print(f"redriven {sum(m['action'] == 'redriven' for m in moved)} of {len(moved)} dead-lettered message(s)",
          file=out)


def stuck_jobs(conn, args, out: TextIO, queue=None) -> None:
    jobs = operations.stuck_jobs(conn, queue or _chunk_queue(), args.minutes)
    if args.json:
        print(_dumps(jobs), file=out)
        return
    if jobs:
        print(table(jobs, STUCK_TABLE), file=out)
        for job in jobs:
            print(f"{job['id']}: {job['fix']}", file=out)
    print(f"{len(jobs)} processing job(s) without progress for {args.minutes} minute(s)", file=out)


def usage(conn, args, out: TextIO) -> None:
    s = get_settings()
    if args.account_id is not None:
        accounts.require_account(conn, args.account_id)
    lines = operations.usage(conn, s.prices, s.openai_model, args.account_id, args.days)
    print(_dumps(lines) if args.json else table(lines, USAGE_TABLE), file=out)


COMMANDS = {
    "create-account": create_account,
    "set-operator": set_operator,
    "create-key": create_key,
    "revoke-key": revoke_key,
    "disable-account": disable_account,
    "enable-account": enable_account,
    "set-limits": set_limits,
    "list-accounts": list_accounts,
    "list-keys": list_keys,
    "show-account": show_account,
    "redrive-dlq": redrive_dlq,
    "stuck-jobs": stuck_jobs,
    "usage": usage,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: 2 for bad arguments (message printed), 0 for --help
        return 0 if exc.code is None else int(exc.code)
    try:
        conn = db.connect(get_secret_settings().database_url)
    except psycopg.Error as exc:
        print(f"error: cannot connect to the database: {exc}", file=sys.stderr)
        return 1
    try:
        COMMANDS[args.command](conn, args, sys.stdout)
        return 0
    except DomainError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except Exception as exc:  # an operator gets one line, not a traceback
        print(f"error: {args.command} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
