"""API keys and who is calling: key format and hashing, the caller and its limits, and
authentication with a short cache. No HTTP in here.

A key is `cso_<prefix>_<secret>`: 8 public hex characters that find the row, then 32 random
bytes. Only SHA-256 of the whole key is stored. A slow password hash would add nothing for a
key of 256 random bits (GitHub and Stripe do the same), and it would cost every request.

Authentication caches what it read per prefix (found or not) for `ttl_s` seconds, so most
requests make no query; revoking a key or disabling an account therefore takes effect within
`ttl_s`, which must stay at or under the 60 s the specification allows.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from chalicelib.errors import DomainError
from chalicelib.logs import get_logger

log = get_logger("accounts")

KEY_TAG = "cso"
PREFIX_HEX_CHARS = 8
SECRET_BYTES = 32
SECRET_CHARS = 43  # len(secrets.token_urlsafe(32)): base64url without padding
KEY_LENGTH = len(KEY_TAG) + 1 + PREFIX_HEX_CHARS + 1 + SECRET_CHARS
_KEY_RE = re.compile(rf"{KEY_TAG}_([0-9a-f]{{{PREFIX_HEX_CHARS}}})_[A-Za-z0-9_-]{{{SECRET_CHARS}}}", re.ASCII)

ROLES = ("member", "admin")
LIMIT_NAMES = ("rpm", "urls_per_day", "max_jobs", "models")
MAX_LIMIT = 2**31 - 1  # PostgreSQL integer
DEFAULT_ACCOUNT_NAME = "default"


class Unauthorized(DomainError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


# ---------------------------------------------------------------- keys

def generate_key() -> tuple[str, str]:
    """A new key and its public prefix: (`cso_<prefix>_<secret>`, `<prefix>`)."""
    prefix = secrets.token_hex(PREFIX_HEX_CHARS // 2)
    return f"{KEY_TAG}_{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}", prefix


def parse_key(text: object) -> str | None:
    """The prefix of a well-formed key; None for anything else (wrong length, characters,
    whitespace, control or non-ASCII characters). The length is checked before any regex."""
    if not isinstance(text, str) or len(text) != KEY_LENGTH or not text.isascii():
        return None
    match = _KEY_RE.fullmatch(text)
    return match.group(1) if match else None


def hash_key(full_key: str) -> bytes:
    return hashlib.sha256(full_key.encode("utf-8")).digest()


def key_matches(full_key: str, secret_hash: bytes) -> bool:
    return hmac.compare_digest(hash_key(full_key), bytes(secret_hash))


def display_prefix(prefix: str) -> str:
    """How a key is named in messages and logs: its public part, never the secret."""
    return f"{KEY_TAG}_{prefix}"


# ---------------------------------------------------------------- callers and limits

@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's id, prefix and role, its account (an operator account's keys see
    platform-wide figures), and the account's own limits (None: the setting's default applies)."""

    key_id: str
    key_prefix: str
    role: str
    account_id: str
    account_name: str
    rpm: int | None = None
    urls_per_day: int | None = None
    max_jobs: int | None = None
    models: tuple[str, ...] | None = None
    operator: bool = False

    @property
    def is_admin(self) -> bool:
        """Admin of its own account; says nothing about other accounts or the platform."""
        return self.role == "admin"

    @property
    def is_operator(self) -> bool:
        """A key of an operator account (any role): may see platform-wide figures."""
        return self.operator


@dataclass(frozen=True)
class Limits:
    rpm: int
    urls_per_day: int
    max_jobs: int
    models: tuple[str, ...]


def _field(source: Any, name: str) -> Any:
    return source.get(name) if isinstance(source, dict) else getattr(source, name)


def effective_limits(source: Caller | dict, *, default_rpm: int, default_urls_per_day: int,
                     default_max_jobs: int, default_model: str) -> Limits:
    """The limits that apply to a caller or account row: its own where set, else the defaults."""
    def pick(name: str, default: int) -> int:
        value = _field(source, name)
        return default if value is None else value

    models = _field(source, "models")
    return Limits(
        rpm=pick("rpm", default_rpm),
        urls_per_day=pick("urls_per_day", default_urls_per_day),
        max_jobs=pick("max_jobs", default_max_jobs),
        models=(default_model,) if models is None else tuple(models),
    )


# ---------------------------------------------------------------- authentication

_LOOKUP_SQL = """
SELECT k.id AS key_id, k.prefix, k.secret_hash, k.role, k.revoked_at,
       a.id AS account_id, a.name AS account_name, a.disabled_at, a.operator, a.rpm, a.urls_per_day, a.max_jobs,
       a.models
FROM api_keys k JOIN accounts a ON a.id = k.account_id
WHERE k.prefix = %s"""


@dataclass(frozen=True)
class _KeyRecord:
    """What the database said about one prefix, as cached."""

    secret_hash: bytes
    revoked: bool
    disabled: bool
    caller: Caller


def _record(row: dict) -> _KeyRecord:
    caller = Caller(
        key_id=str(row["key_id"]), key_prefix=row["prefix"], role=row["role"], account_id=str(row["account_id"]),
        account_name=row["account_name"], rpm=row["rpm"], urls_per_day=row["urls_per_day"],
        max_jobs=row["max_jobs"], models=None if row["models"] is None else tuple(row["models"]),
        operator=row["operator"],
    )
    return _KeyRecord(bytes(row["secret_hash"]), row["revoked_at"] is not None, row["disabled_at"] is not None,
                      caller)


class Authenticator:
    """Turns a presented key into a Caller, or raises Unauthorized.

    Lookups are cached per prefix, found or not, for `ttl_s` seconds and at most `max_entries`
    prefixes (the oldest go first): a hit makes no query. The secret is checked on every call,
    cached or not, so a cached prefix never lets a wrong secret through."""

    def __init__(self, get_conn: Callable[[], psycopg.Connection], ttl_s: float = 30.0,
                 max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 <= ttl_s <= 60:
            raise ValueError("ttl_s must be between 0 and 60: revocation must take effect within 60 s")
        self._get_conn = get_conn
        self._ttl_s = ttl_s
        self._max_entries = max(1, max_entries)
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[float, _KeyRecord | None]] = OrderedDict()

    @property
    def ttl_s(self) -> float:
        """How long a lookup is trusted: the longest a revoked key keeps working in this process."""
        return self._ttl_s

    def authenticate(self, raw_key: str | None) -> Caller:
        if not raw_key:
            raise Unauthorized("An API key is required: send `Authorization: Bearer <key>` or `X-Api-Key: <key>`.")
        prefix = parse_key(raw_key)
        if prefix is None:
            raise Unauthorized("The API key is malformed: keys look like cso_<8 hex characters>_<secret>.")
        found, record = self._cached(prefix)
        if not found:
            record = self._load(prefix, raw_key)
        return self._check(record, prefix, raw_key)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def _cached(self, prefix: str) -> tuple[bool, _KeyRecord | None]:
        with self._lock:
            entry = self._cache.get(prefix)
            if entry is None:
                return False, None
            if entry[0] <= self._clock():
                del self._cache[prefix]
                return False, None
            return True, entry[1]

    def _store(self, prefix: str, record: _KeyRecord | None) -> None:
        with self._lock:
            self._cache.pop(prefix, None)
            self._cache[prefix] = (self._clock() + self._ttl_s, record)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)

    def _load(self, prefix: str, raw_key: str) -> _KeyRecord | None:
        """One query for the prefix; for a key that is accepted, also note when it was used."""
        conn = self._get_conn()
        row = conn.execute(_LOOKUP_SQL, (prefix,)).fetchone()
        record = _record(row) if row else None
        if record and not record.revoked and not record.disabled and key_matches(raw_key, record.secret_hash):
            conn.execute("UPDATE api_keys SET last_used_at = now() WHERE id = %s", (record.caller.key_id,))
        self._store(prefix, record)
        return record

    @staticmethod
    def _check(record: _KeyRecord | None, prefix: str, raw_key: str) -> Caller:
        # The secret first: only its holder learns that a key was revoked or an account disabled.
        if record is None or not key_matches(raw_key, record.secret_hash):
            raise Unauthorized(f"The API key starting {display_prefix(prefix)} is not valid: check it, or ask for "
                               "a new one.")
        if record.revoked:
            raise Unauthorized(f"The API key starting {display_prefix(prefix)} was revoked: ask for a new one.")
        if record.disabled:
            raise Unauthorized(f"The account of the API key starting {display_prefix(prefix)} is disabled.")
        return record.caller
