"""Managing accounts and keys (what the admin command wraps): create, list, disable, limits,
keys created and revoked, and the day's usage. Every input is checked here, not in the command."""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Callable, Collection, Iterable
from typing import Any

import psycopg

from chalicelib.accounts.keys import (
    KEY_TAG,
    LIMIT_NAMES,
    MAX_LIMIT,
    PREFIX_HEX_CHARS,
    ROLES,
    display_prefix,
    generate_key,
    hash_key,
    parse_key,
)
from chalicelib.errors import BadRequest, NotFound
from chalicelib.logs import get_logger

log = get_logger("accounts")

_PREFIX_RE = re.compile(rf"(?:{KEY_TAG}_)?([0-9a-f]{{{PREFIX_HEX_CHARS}}})", re.ASCII)
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", re.ASCII)
_MODEL_RE = re.compile(r"[!-~]{1,100}", re.ASCII)  # printable ASCII without space (commas: checked apart)
MAX_NAME_CHARS = 200


# ---------------------------------------------------------------- validation

def valid_uuid(value: object, what: str = "account id") -> str:
    """The id in canonical lowercase form, or BadRequest (before any query sees it)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str) or not _UUID_RE.fullmatch(value):
        raise BadRequest(f"Not a valid {what} (expected a UUID like 123e4567-e89b-12d3-a456-426614174000): "
                         f"{str(value)[:60]!r}", code="invalid_id")
    return value.lower()


def _text(value: object, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"The {what} must be text.", code="invalid_name")
    if not value.strip() and not (allow_empty and value == ""):
        raise BadRequest(f"The {what} must not be empty.", code="invalid_name")
    if len(value) > MAX_NAME_CHARS:
        raise BadRequest(f"The {what} is longer than {MAX_NAME_CHARS} characters.", code="invalid_name")
    if any(unicodedata.category(c) in {"Cc", "Cs", "Zl", "Zp"} for c in value):
        raise BadRequest(f"The {what} must not contain control characters or line breaks.", code="invalid_name")
    return value


def _role(value: object) -> str:
    if value not in ROLES:
        raise BadRequest(f"The role must be one of {', '.join(ROLES)}.", code="invalid_role")
    return value


def _limit(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
        raise BadRequest(f"The limit {name} must be a whole number from 0 to {MAX_LIMIT}.", code="invalid_limit")
    return value


def _models(value: object) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise BadRequest("The models must be a list of model names.", code="invalid_limit")
    models = list(dict.fromkeys(value))  # dedupe, keep order
    if not models:
        raise BadRequest("The models list is empty: reset it to allow the default model.", code="invalid_limit")
    for model in models:
        if not isinstance(model, str) or not _MODEL_RE.fullmatch(model) or "," in model:
            raise BadRequest(f"Not a valid model name (1-100 printable ASCII characters, no spaces or commas): "
                             f"{str(model)[:60]!r}", code="invalid_limit")
    return models


def normalize_prefix(text: object) -> str:
    """A key's prefix from `abcd1234`, `cso_abcd1234` or the whole key."""
    prefix = parse_key(text)
    if prefix:
        return prefix
    match = _PREFIX_RE.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise BadRequest("Not a key prefix: expected 8 lowercase hex characters, e.g. cso_1a2b3c4d.",
                         code="invalid_prefix")
    return match.group(1)


# ---------------------------------------------------------------- accounts

ACCOUNT_COLUMNS = "id, name, created_at, disabled_at, operator, rpm, urls_per_day, max_jobs, models"
KEY_COLUMNS = "k.id, k.prefix, k.name, k.role, k.created_at, k.last_used_at, k.revoked_at, k.account_id"


def create_account(conn: psycopg.Connection, name: str, *, operator: bool = False) -> dict:
    """A new account; an `operator` account's keys see platform-wide figures (SPEC "Roles")."""
    name = _text(name, "account name")
    if not isinstance(operator, bool):
        raise BadRequest("operator must be true or false.", code="invalid_operator")
    account = conn.execute(f"INSERT INTO accounts (name, operator) VALUES (%s, %s) RETURNING {ACCOUNT_COLUMNS}",
                           (name, operator)).fetchone()
    log.info("account created", extra={"account_id": str(account["id"]), "operator": operator})
    return account


def get_account(conn: psycopg.Connection, account_id: str) -> dict | None:
    return conn.execute(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = %s", (valid_uuid(account_id),)).fetchone()


def require_account(conn: psycopg.Connection, account_id: str) -> dict:
    """The account, or NotFound."""
    account = get_account(conn, account_id)
    if account is None:
        raise NotFound(f"No account with id {account_id}.", code="account_not_found")
    return account


def find_account_by_name(conn: psycopg.Connection, name: str) -> dict | None:
    """The oldest account of that name (names are not unique; `default` is the first)."""
    return conn.execute(
        f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE name = %s ORDER BY created_at, id LIMIT 1", (name,)
    ).fetchone()


def ensure_account(conn: psycopg.Connection, name: str, *, operator: bool = False, **limits) -> dict:
    """The account of that name, created (an `operator` one if asked, with `limits` as set_limits
    takes them) if missing."""
    account = find_account_by_name(conn, name)
    if account is None:
        account = create_account(conn, name, operator=operator)
        if limits:
            account = set_limits(conn, str(account["id"]), **limits)
    return account


def list_accounts(conn: psycopg.Connection) -> list[dict]:
    """Every account, oldest first, with how many of its keys are active."""
    return conn.execute(
        f"""SELECT {', '.join(f'a.{c}' for c in ACCOUNT_COLUMNS.split(', '))},
                   (SELECT count(*) FROM api_keys k WHERE k.account_id = a.id AND k.revoked_at IS NULL)
                       AS active_keys
            FROM accounts a ORDER BY a.created_at, a.id"""
    ).fetchall()


def _update_account(conn: psycopg.Connection, account_id: str, assignments: str, params: tuple = ()) -> dict:
    account = conn.execute(
        f"UPDATE accounts SET {assignments} WHERE id = %s RETURNING {ACCOUNT_COLUMNS}",
        (*params, valid_uuid(account_id)),
    ).fetchone()
    if account is None:
        raise NotFound(f"No account with id {account_id}.", code="account_not_found")
    return account


def disable_account(conn: psycopg.Connection, account_id: str) -> dict:
    """Its keys stop working (within the authentication cache's TTL); its data stays."""
    account = _update_account(conn, account_id, "disabled_at = coalesce(disabled_at, now())")
    log.info("account disabled", extra={"account_id": str(account["id"])})
    return account


def set_operator(conn: psycopg.Connection, account_id: str, operator: bool = True) -> dict:
    """Make the account an operator account (its keys see platform-wide figures) or a customer
    again; its keys follow within the authentication cache's TTL."""
    if not isinstance(operator, bool):
        raise BadRequest("operator must be true or false.", code="invalid_operator")
    account = _update_account(conn, account_id, "operator = %s", (operator,))
    log.info("account operator flag set", extra={"account_id": str(account["id"]), "operator": operator})
    return account


def enable_account(conn: psycopg.Connection, account_id: str) -> dict:
    account = _update_account(conn, account_id, "disabled_at = NULL")
    log.info("account enabled", extra={"account_id": str(account["id"])})
    return account


def set_limits(conn: psycopg.Connection, account_id: str, *, rpm: int | None = None,
               urls_per_day: int | None = None, max_jobs: int | None = None,
               models: Iterable[str] | None = None, reset: Collection[str] = ()) -> dict:
    """Change the limits given (None leaves one as it is); the names in `reset` go back to the
    setting's default."""
    reset = (reset,) if isinstance(reset, str) else tuple(reset)
    unknown = sorted(set(reset) - set(LIMIT_NAMES))
    if unknown:
        raise BadRequest(f"Unknown limit {', '.join(unknown)}; limits are {', '.join(LIMIT_NAMES)}.",
                         code="invalid_limit")
    changes: dict[str, Any] = {}
    for name, value in {"rpm": rpm, "urls_per_day": urls_per_day, "max_jobs": max_jobs}.items():
        if value is not None:
            changes[name] = _limit(name, value)
    if models is not None:
        changes["models"] = _models(models)
    clash = sorted(set(reset) & set(changes))
    if clash:
        raise BadRequest(f"Limit {', '.join(clash)} is both set and reset.", code="invalid_limit")
    values = {**changes, **{name: None for name in reset}}
    if not values:
        raise BadRequest("No limit to change.", code="invalid_limit")
    assignments = ", ".join(f"{name} = %s" for name in values)  # names are ours, checked above
    account = _update_account(conn, account_id, assignments, tuple(values.values()))
    log.info("account limits set", extra={"account_id": str(account["id"]), "limits": sorted(values)})
    return account


# ---------------------------------------------------------------- keys in the database

def create_key(conn: psycopg.Connection, account_id: str, *, role: str = "member", name: str = "",
               attempts: int = 5, draw: Callable[[], tuple[str, str]] = generate_key) -> tuple[str, dict]:
    """A new key for the account: (the full key, shown once; its row, without the hash).
    `draw` makes a (key, prefix) pair; a prefix already taken draws again."""
    account_id, role, name = valid_uuid(account_id), _role(role), _text(name, "key name", allow_empty=True)
    for _ in range(attempts):
        full_key, prefix = draw()
        row = _insert_key(conn, account_id, prefix, hash_key(full_key), name, role)
        if row is not None:
            log.info("api key created", extra={"account_id": account_id, "key_prefix": prefix, "role": role})
            return full_key, row
    raise RuntimeError(f"No free key prefix in {attempts} draws; is the random source broken?")


def _insert_key(conn: psycopg.Connection, account_id: str, prefix: str, secret_hash: bytes, name: str,
                role: str) -> dict | None:
    """The new key's row; None when the prefix is taken (1 in 4 billion per existing key)."""
    try:
        with conn.transaction():  # a savepoint when the caller holds a transaction
            return conn.execute(
                """INSERT INTO api_keys (account_id, prefix, secret_hash, name, role) VALUES (%s, %s, %s, %s, %s)
                   RETURNING id, prefix, name, role, created_at, last_used_at, revoked_at, account_id""",
                (account_id, prefix, secret_hash, name, role),
            ).fetchone()
    except psycopg.errors.UniqueViolation:
        return None
    except psycopg.errors.ForeignKeyViolation:
        raise NotFound(f"No account with id {account_id}.", code="account_not_found") from None


def revoke_key(conn: psycopg.Connection, prefix: str) -> dict:
    """Revoke the key (idempotent: the first revocation time stays)."""
    prefix = normalize_prefix(prefix)
    row = conn.execute(
        f"""UPDATE api_keys k SET revoked_at = coalesce(k.revoked_at, now()) FROM accounts a
            WHERE k.prefix = %s AND a.id = k.account_id
            RETURNING {KEY_COLUMNS}, a.name AS account_name""",
        (prefix,),
    ).fetchone()
    if row is None:
        raise NotFound(f"No key with prefix {display_prefix(prefix)}.", code="key_not_found")
    log.info("api key revoked", extra={"account_id": str(row["account_id"]), "key_prefix": prefix})
    return row


def list_keys(conn: psycopg.Connection, account_id: str | None = None) -> list[dict]:
    """Keys (never their hashes), oldest first; of one account when given."""
    where, params = "", ()
    if account_id is not None:
        where, params = "WHERE k.account_id = %s", (valid_uuid(account_id),)
    rows = conn.execute(
        f"""SELECT {KEY_COLUMNS}, a.name AS account_name
            FROM api_keys k JOIN accounts a ON a.id = k.account_id {where}
            ORDER BY k.created_at, k.id""",
        params,
    ).fetchall()
    if not rows and account_id is not None:
        require_account(conn, account_id)
    return rows


# ---------------------------------------------------------------- usage

# What usage is priced from (generation/pricing.py usage_cost), summed per model and mode: tokens,
# cached prompt tokens, and the part of a batch job's paid live (its re-asks; sql/0021).
TOKEN_COUNTERS = ("prompt_tokens", "completion_tokens", "cached_tokens", "live_prompt_tokens",
                  "live_completion_tokens", "live_cached_tokens")


def token_sums(table: str = "") -> str:
    """SQL summing TOKEN_COUNTERS (of `table`'s alias, when given), each named as its counter."""
    prefix = f"{table}." if table else ""
    return ", ".join(f"coalesce(sum({prefix}{name}), 0) AS {name}" for name in TOKEN_COUNTERS)


def usage_today(conn: psycopg.Connection, account_id: str) -> dict:
    """Today's (UTC) usage: URLs counted against the daily quota (starts, retries and
    previews), and tokens of URLs finished today plus today's previews (live calls), in total and
    per job model (None: the default model) and mode (live or batch), with the counters
    ``pricing.usage_cost`` prices (TOKEN_COUNTERS).

    Only jobs updated today are joined: a URL finishing moves its job's counters in the same
    statement (the counters' invariant), so its job's updated_at is at least its finished_at."""
    account_id = valid_uuid(account_id)
    rows = conn.execute(
        f"""WITH today AS (SELECT (now() AT TIME ZONE 'UTC')::date AS day,
                                 date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS since),
           used AS (
               SELECT j.model, j.mode, u.prompt_tokens, u.completion_tokens, u.cached_tokens,
                      u.live_prompt_tokens, u.live_completion_tokens, u.live_cached_tokens
               FROM today, jobs j JOIN urls u ON u.job_id = j.id
               WHERE j.account_id = %(account)s AND j.updated_at >= today.since AND u.finished_at >= today.since
               UNION ALL
               SELECT p.model, 'live', p.prompt_tokens, p.completion_tokens, p.cached_tokens, 0, 0, 0
               FROM today, preview_usage p WHERE p.account_id = %(account)s AND p.day = today.day
           )
           SELECT model, mode, {token_sums()}
           FROM used GROUP BY model, mode ORDER BY model NULLS FIRST, mode""",
        {"account": account_id},
    ).fetchall()
    quota = conn.execute(
        """SELECT (now() AT TIME ZONE 'UTC')::date AS day,
                  coalesce((SELECT urls FROM account_usage
                            WHERE account_id = %s AND day = (now() AT TIME ZONE 'UTC')::date), 0) AS urls""",
        (account_id,),
    ).fetchone()
    by_model = [{"model": r["model"], "mode": r["mode"], **{name: int(r[name]) for name in TOKEN_COUNTERS}}
                for r in rows]
    return {
        "day": quota["day"],
        "urls": int(quota["urls"]),
        "prompt_tokens": sum(m["prompt_tokens"] for m in by_model),
        "completion_tokens": sum(m["completion_tokens"] for m in by_model),
        "cached_tokens": sum(m["cached_tokens"] for m in by_model),
        "by_model": by_model,
    }
