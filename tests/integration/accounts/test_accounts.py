"""Accounts and API keys against the real PostgreSQL: only hashes stored, authentication and its
cache (no query on a hit, revocation within the TTL), management functions, today's usage, and
the 0002 migration's backfill of existing jobs."""

from __future__ import annotations

import hashlib
import logging
import shutil
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from chalicelib import accounts, admin
from chalicelib.accounts import Authenticator, Unauthorized
from chalicelib.adapters import db
from chalicelib.errors import BadRequest, NotFound
from infra.migrate import SQL_DIR, migrate


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingConn:
    """A connection that records every statement it runs."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.statements: list[str] = []

    def execute(self, query, params=None):
        self.statements.append(" ".join(str(query).split()))
        return self.conn.execute(query, params)


class OneConnection:
    """A get_conn that hands out one counting connection, and fails if it is asked again."""

    def __init__(self, conn) -> None:
        self.conn = CountingConn(conn)
        self.calls = 0

    def __call__(self) -> CountingConn:
        self.calls += 1
        if self.calls > 1:
            raise AssertionError("a second database round trip where the cache should have answered")
        return self.conn


@pytest.fixture
def account(pg, tag):
    return accounts.create_account(pg, f"{tag}-acme")


def last_used(pg, prefix):
    return pg.execute("SELECT last_used_at FROM api_keys WHERE prefix = %s", (prefix,)).fetchone()["last_used_at"]


# ---------------------------------------------------------------- storage

def test_the_database_holds_only_a_hash_of_the_key(pg, account):
    key, row = accounts.create_key(pg, account["id"], name="ci")
    secret = key.split("_", 2)[2]
    assert "secret_hash" not in row and row["prefix"] == accounts.parse_key(key)

    columns = pg.execute(
        """SELECT column_name FROM information_schema.columns
           WHERE table_schema = 'public' AND table_name = 'api_keys' AND data_type IN ('text', 'bytea')"""
    ).fetchall()
    names = [c["column_name"] for c in columns]
    assert {"prefix", "secret_hash", "name", "role"} <= set(names)
    stored = pg.execute("SELECT * FROM api_keys WHERE id = %s", (row["id"],)).fetchone()
    for name in names:
        value = stored[name]
        blob = bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
        for needle in (key, secret, secret[:12]):
            assert needle.encode() not in blob, f"api_keys.{name} holds (part of) the key"
            assert needle.encode().hex() not in blob.hex()
    # and nowhere in any row of either table, as PostgreSQL prints them (bytea as hex)
    for table in ("api_keys", "accounts"):
        hits = pg.execute(f"SELECT count(*) AS n FROM {table} t WHERE strpos(t::text, %s) > 0", (secret,)).fetchone()
        assert hits["n"] == 0
    assert bytes(stored["secret_hash"]) == hashlib.sha256(key.encode()).digest()


def test_the_migration_leaves_a_default_account(pg):
    default = accounts.find_account_by_name(pg, accounts.DEFAULT_ACCOUNT_NAME)
    assert default is not None and default["disabled_at"] is None and default["rpm"] is None


# ---------------------------------------------------------------- authentication

def test_a_valid_key_authenticates_to_its_account_and_role(pg, account):
    accounts.set_limits(pg, account["id"], rpm=7, models=["gpt-4o"])
    key, row = accounts.create_key(pg, account["id"], role="admin", name="ops")
    caller = Authenticator(lambda: pg).authenticate(key)
    assert caller.account_id == str(account["id"]) and caller.account_name == account["name"]
    assert caller.role == "admin" and caller.is_admin
    assert caller.key_id == str(row["id"]) and caller.key_prefix == row["prefix"]
    assert (caller.rpm, caller.urls_per_day, caller.max_jobs, caller.models) == (7, None, None, ("gpt-4o",))

    member_key, _ = accounts.create_key(pg, account["id"])
    assert not Authenticator(lambda: pg).authenticate(member_key).is_admin


def test_an_unknown_prefix_of_the_right_shape_is_refused(pg):
    key, prefix = accounts.generate_key()
    with pytest.raises(Unauthorized) as info:
        Authenticator(lambda: pg).authenticate(key)
    assert info.value.status == 401 and info.value.headers["WWW-Authenticate"] == "Bearer"
    assert key.split("_", 2)[2] not in info.value.message and prefix in info.value.message


def test_a_wrong_secret_for_a_real_prefix_is_refused_cached_or_not(pg, account):
    key, row = accounts.create_key(pg, account["id"])
    forged = f"cso_{row['prefix']}_{accounts.generate_key()[0].split('_', 2)[2]}"
    with pytest.raises(Unauthorized, match="not valid"):
        Authenticator(lambda: pg).authenticate(forged)
    assert last_used(pg, row["prefix"]) is None  # a refused attempt is not a use

    auth = Authenticator(lambda: pg)
    auth.authenticate(key)  # the prefix is now cached
    with pytest.raises(Unauthorized, match="not valid"):
        auth.authenticate(forged)
    assert auth.authenticate(key).key_prefix == row["prefix"]


def test_revocation_takes_effect_when_the_cache_entry_expires(pg, account):
    """The 60 s rule: a process that saw the key before it was revoked keeps accepting it from
    its cache for at most ttl_s (30 s by default, never over 60), then refuses it."""
    key, row = accounts.create_key(pg, account["id"])
    clock = FakeClock()
    auth = Authenticator(lambda: pg, ttl_s=30, clock=clock)
    auth.authenticate(key)
    accounts.revoke_key(pg, row["prefix"])

    clock.advance(29.9)
    assert auth.authenticate(key).key_prefix == row["prefix"]  # still cached: within the TTL
    clock.advance(0.2)
    with pytest.raises(Unauthorized, match="revoked") as info:
        auth.authenticate(key)
    assert key not in info.value.message
    with pytest.raises(Unauthorized, match="revoked"):
        Authenticator(lambda: pg).authenticate(key)  # a process without the entry refuses at once


def test_a_disabled_account_is_refused_and_enabling_it_restores_access(pg, account):
    key, _ = accounts.create_key(pg, account["id"])
    accounts.disable_account(pg, account["id"])
    with pytest.raises(Unauthorized, match="disabled"):
        Authenticator(lambda: pg).authenticate(key)
    accounts.enable_account(pg, account["id"])
    assert Authenticator(lambda: pg).authenticate(key).account_id == str(account["id"])


def test_a_cache_hit_makes_no_query(pg, account):
    key, row = accounts.create_key(pg, account["id"])
    get_conn = OneConnection(pg)
    auth = Authenticator(get_conn)
    auth.authenticate(key)
    statements = list(get_conn.conn.statements)
    assert len(statements) == 2 and statements[0].startswith("SELECT") and statements[1].startswith("UPDATE")
    for _ in range(5):
        assert auth.authenticate(key).key_prefix == row["prefix"]  # OneConnection raises on a second call
    assert get_conn.conn.statements == statements

    auth.clear()
    with pytest.raises(AssertionError, match="second database round trip"):
        auth.authenticate(key)  # proves the guard bites once the cache is empty


def test_an_unknown_prefix_is_cached_too(pg):
    key, _ = accounts.generate_key()
    get_conn = OneConnection(pg)
    auth = Authenticator(get_conn)
    for _ in range(3):
        with pytest.raises(Unauthorized):
            auth.authenticate(key)
    assert len(get_conn.conn.statements) == 1  # one SELECT, no UPDATE for a refused key


def test_the_cache_is_bounded_and_drops_the_oldest_prefix(pg):
    queries = []
    auth = Authenticator(lambda: queries.append(1) or pg, max_entries=2)
    keys = [accounts.generate_key()[0] for _ in range(3)]
    for key in keys + keys[1:]:  # the last two are still cached
        with pytest.raises(Unauthorized):
            auth.authenticate(key)
    assert len(queries) == 3
    with pytest.raises(Unauthorized):
        auth.authenticate(keys[0])  # evicted: asked again
    assert len(queries) == 4


def test_authentication_notes_when_a_key_was_last_used(pg, account):
    key, row = accounts.create_key(pg, account["id"])
    assert last_used(pg, row["prefix"]) is None
    Authenticator(lambda: pg).authenticate(key)
    used = last_used(pg, row["prefix"])
    assert used is not None
    assert accounts.list_keys(pg, account["id"])[0]["last_used_at"] == used


def test_keys_never_reach_the_logs_in_a_whole_admin_flow(pg, account, caplog, capsys):
    app_logger = logging.getLogger("csv_opener")  # may not propagate (logs.configure): listen on it directly
    app_logger.addHandler(caplog.handler)
    old_level = app_logger.level
    app_logger.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    try:
        assert admin.main(["create-key", str(account["id"]), "--name", "flow"]) == 0
        created = capsys.readouterr()
        key = created.out.strip().splitlines()[-1]
        prefix = accounts.parse_key(key)
        assert prefix is not None
        Authenticator(lambda: pg).authenticate(key)
        with pytest.raises(Unauthorized):
            Authenticator(lambda: pg).authenticate(key[:-1] + ("A" if key[-1] != "A" else "B"))
        assert admin.main(["list-keys", str(account["id"])]) == 0
        assert admin.main(["revoke-key", prefix]) == 0
        with pytest.raises(Unauthorized):
            Authenticator(lambda: pg).authenticate(key)
        rest = capsys.readouterr()
    finally:
        app_logger.removeHandler(caplog.handler)
        app_logger.setLevel(old_level)

    secret = key.split("_", 2)[2]
    assert any(prefix in r.getMessage() or prefix in str(vars(r)) for r in caplog.records)  # logs were captured
    for record in caplog.records:
        assert secret not in record.getMessage() and secret not in str(vars(record))
    assert secret not in caplog.text
    assert created.out.count(secret) == 1 and secret not in created.err  # shown once, by create-key
    assert secret not in rest.out and secret not in rest.err
    assert prefix in rest.out


# ---------------------------------------------------------------- management

def test_set_limits_changes_only_what_is_given_and_resets_on_request(pg, account):
    updated = accounts.set_limits(pg, account["id"], rpm=5, urls_per_day=100)
    assert (updated["rpm"], updated["urls_per_day"], updated["max_jobs"], updated["models"]) == (5, 100, None, None)
    updated = accounts.set_limits(pg, account["id"], max_jobs=0, models=["gpt-4o", "gpt-4o", "gpt-4o-mini"])
    assert (updated["rpm"], updated["urls_per_day"], updated["max_jobs"]) == (5, 100, 0)
    assert updated["models"] == ["gpt-4o", "gpt-4o-mini"]
    updated = accounts.set_limits(pg, account["id"], reset=["rpm", "models"])
    assert (updated["rpm"], updated["urls_per_day"], updated["max_jobs"], updated["models"]) == (None, 100, 0, None)
    assert accounts.get_account(pg, account["id"]) == updated
    with pytest.raises(BadRequest):
        accounts.set_limits(pg, account["id"])  # nothing to change
    with pytest.raises(BadRequest):
        accounts.set_limits(pg, account["id"], rpm=1, reset=["rpm"])
    with pytest.raises(BadRequest):
        accounts.set_limits(pg, account["id"], reset=["colour"])


def test_the_database_refuses_negative_limits_too(pg, account):
    with pytest.raises(psycopg.errors.CheckViolation):
        pg.execute("UPDATE accounts SET urls_per_day = -1 WHERE id = %s", (account["id"],))


def test_unknown_ids_and_prefixes_are_not_found(pg):
    missing = "123e4567-e89b-12d3-a456-426614174000"
    assert accounts.get_account(pg, missing) is None
    for call in (lambda: accounts.create_key(pg, missing), lambda: accounts.disable_account(pg, missing),
                 lambda: accounts.enable_account(pg, missing), lambda: accounts.set_limits(pg, missing, rpm=1),
                 lambda: accounts.list_keys(pg, missing), lambda: accounts.revoke_key(pg, "0000abcd")):
        with pytest.raises(NotFound):
            call()


def test_list_keys_shows_an_accounts_keys_never_their_hashes(pg, account, tag):
    other = accounts.create_account(pg, f"{tag}-other")
    key_a, _ = accounts.create_key(pg, account["id"], name="a")
    key_b, _ = accounts.create_key(pg, account["id"], name="b", role="admin")
    accounts.create_key(pg, other["id"], name="c")
    accounts.revoke_key(pg, f"cso_{accounts.parse_key(key_a)}")
    rows = accounts.list_keys(pg, account["id"])
    assert [(r["name"], r["role"], r["revoked_at"] is not None) for r in rows] == [
        ("a", "member", True), ("b", "admin", False)]
    assert all(r["account_name"] == account["name"] for r in rows)
    assert all("secret_hash" not in r for r in rows)
    everyone = accounts.list_keys(pg)
    assert {r["name"] for r in everyone} >= {"a", "b", "c"}
    assert key_b not in str(everyone)


def test_revoking_twice_keeps_the_first_time(pg, account):
    key, row = accounts.create_key(pg, account["id"])
    first = accounts.revoke_key(pg, row["prefix"])["revoked_at"]
    assert accounts.revoke_key(pg, key)["revoked_at"] == first  # the whole key names it too


def test_a_prefix_collision_draws_a_new_key(pg, account):
    _, existing = accounts.create_key(pg, account["id"])
    draws = iter([(f"cso_{existing['prefix']}_{'A' * 43}", existing["prefix"]), accounts.generate_key()])
    key, row = accounts.create_key(pg, account["id"], draw=lambda: next(draws))
    assert row["prefix"] != existing["prefix"] and accounts.parse_key(key) == row["prefix"]
    assert len(accounts.list_keys(pg, account["id"])) == 2


def test_find_account_by_name_and_list_accounts(pg, account, tag):
    accounts.create_account(pg, account["name"])  # names are not unique: the oldest is found
    assert accounts.find_account_by_name(pg, account["name"])["id"] == account["id"]
    assert accounts.find_account_by_name(pg, f"{tag}-nobody") is None
    accounts.create_key(pg, account["id"])
    listed = {a["id"]: a for a in accounts.list_accounts(pg)}
    assert listed[account["id"]]["active_keys"] == 1


def test_create_key_inside_a_transaction_survives_a_collision(pg, account):
    _, existing = accounts.create_key(pg, account["id"])
    draws = iter([(f"cso_{existing['prefix']}_{'B' * 43}", existing["prefix"]), accounts.generate_key()])
    with pg.transaction():
        _, row = accounts.create_key(pg, account["id"], draw=lambda: next(draws))
        accounts.set_limits(pg, account["id"], rpm=3)  # the transaction is still usable
    assert row["prefix"] != existing["prefix"]


# ---------------------------------------------------------------- usage

def _job(pg, account_id, model=None, mode="live"):
    return pg.execute(
        "INSERT INTO jobs (file_name, file_path, account_id, model, status, mode) VALUES ('a.csv', 'x', %s, %s, "
        "'processing', %s) RETURNING id",
        (account_id, model, mode),
    ).fetchone()["id"]


def _url(pg, job_id, row, finished_at_sql, prompt, completion):
    pg.execute(
        f"""INSERT INTO urls (job_id, row_number, chunk, url, status, prompt_tokens, completion_tokens, finished_at)
            VALUES (%s, %s, 0, 'https://a.example/', 'completed', %s, %s, {finished_at_sql})""",
        (job_id, row, prompt, completion),
    )


def test_usage_today_counts_todays_urls_and_tokens_of_this_account_only(pg, account, tag):
    other = accounts.create_account(pg, f"{tag}-other")
    empty = accounts.usage_today(pg, account["id"])
    assert (empty["urls"], empty["prompt_tokens"], empty["completion_tokens"], empty["by_model"]) == (0, 0, 0, [])

    pg.execute("INSERT INTO account_usage (account_id, day, urls) VALUES "
               "(%s, (now() AT TIME ZONE 'UTC')::date, 42), (%s, (now() AT TIME ZONE 'UTC')::date - 1, 900), "
               "(%s, (now() AT TIME ZONE 'UTC')::date, 7)", (account["id"], account["id"], other["id"]))
    job = _job(pg, account["id"])
    _url(pg, job, 1, "now()", 100, 20)
    _url(pg, job, 2, "now()", 50, 10)
    _url(pg, job, 3, "now() - interval '2 days'", 1000, 1000)  # before today
    _url(pg, _job(pg, account["id"], "gpt-4o"), 1, "now()", 5, 1)
    _url(pg, _job(pg, account["id"], "gpt-4o", "batch"), 1, "now()", 8, 2)
    _url(pg, _job(pg, other["id"]), 1, "now()", 7000, 7000)

    usage = accounts.usage_today(pg, account["id"])
    assert usage["urls"] == 42
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (163, 33)
    none = {"cached_tokens": 0, "live_prompt_tokens": 0, "live_completion_tokens": 0, "live_cached_tokens": 0}
    assert usage["by_model"] == [
        {"model": None, "mode": "live", "prompt_tokens": 150, "completion_tokens": 30, **none},
        {"model": "gpt-4o", "mode": "batch", "prompt_tokens": 8, "completion_tokens": 2, **none},
        {"model": "gpt-4o", "mode": "live", "prompt_tokens": 5, "completion_tokens": 1, **none}]
    assert str(usage["day"]) == pg.execute("SELECT (now() AT TIME ZONE 'UTC')::date::text AS d").fetchone()["d"]


# ---------------------------------------------------------------- the migration

def _database_url(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def test_the_migration_gives_existing_jobs_the_default_account(settings, unique, tmp_path):
    admin_url = _database_url(settings.database_url, "postgres")
    name = f"csv_opener_accounts_{unique}"
    url = _database_url(settings.database_url, name)
    with psycopg.connect(admin_url, autocommit=True) as server:
        server.execute(f'CREATE DATABASE "{name}"')
    try:
        shutil.copy(SQL_DIR / "0001_jobs_and_urls.sql", tmp_path)
        assert migrate(url, tmp_path) == ["0001_jobs_and_urls"]
        with db.connect(url) as conn:
            old = conn.execute("INSERT INTO jobs (file_name, file_path, status) VALUES ('old.csv', 'x', "
                               "'processing') RETURNING id, updated_at").fetchone()
            shutil.copy(SQL_DIR / "0002_accounts.sql", tmp_path)
            assert migrate(url, tmp_path) == ["0002_accounts"]
            # (plain SQL: the accounts functions read columns of later migrations)
            default = conn.execute("SELECT id FROM accounts WHERE name = 'default'").fetchone()
            job = conn.execute("SELECT account_id, updated_at FROM jobs WHERE id = %s", (old["id"],)).fetchone()
            assert job["account_id"] == default["id"]
            assert job["updated_at"] == old["updated_at"]  # the backfill is not a sign of progress
            with pytest.raises(psycopg.errors.NotNullViolation):
                conn.execute("INSERT INTO jobs (file_name, file_path) VALUES ('new.csv', 'y')")
            indexes = {r["indexname"]: r["indexdef"] for r in conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'jobs'").fetchall()}
            assert "jobs_created_idx" not in indexes and "jobs_status_created_idx" not in indexes
            assert "(account_id, created_at DESC, id DESC)" in indexes["jobs_account_created_idx"]
            assert "(account_id, status, created_at DESC, id DESC)" in indexes["jobs_account_status_created_idx"]
            assert "WHERE (status = 'processing'::text)" in indexes["jobs_processing_idx"]
            # built and usable (not a plan: whether the planner may use a new index yet depends on
            # transactions of other databases of the server, such as another test run's)
            valid = conn.execute("""SELECT indisvalid AND indisready AND indislive AS ok FROM pg_index
                                    WHERE indexrelid = 'jobs_processing_idx'::regclass""").fetchone()["ok"]
            assert valid is True
    finally:
        with psycopg.connect(admin_url, autocommit=True) as server:
            server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
