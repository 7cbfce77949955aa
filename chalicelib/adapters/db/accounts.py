"""What a start or retry reads and locks of an account: its limits, processing jobs and the
day's URL count."""

from __future__ import annotations

# ---------------------------------------------------------------- accounts (limits at start)

ACCOUNT_LIMIT_COLUMNS = ("id, name, disabled_at, rpm, urls_per_day, max_jobs, models, "
                         "webhook_secret IS NOT NULL AS has_webhook_secret")  # never the secret itself


def lock_account(conn, account_id: str) -> dict | None:
    """The account row, locked for the caller's transaction: starts and retries of one account
    take their quota and job slots one at a time (always after the job's own locks)."""
    return conn.execute(f"SELECT {ACCOUNT_LIMIT_COLUMNS} FROM accounts WHERE id = %s FOR UPDATE",
                        (account_id,)).fetchone()


def get_account(conn, account_id: str) -> dict | None:
    return conn.execute(f"SELECT {ACCOUNT_LIMIT_COLUMNS} FROM accounts WHERE id = %s", (account_id,)).fetchone()


def processing_jobs(conn, account_id: str) -> int:
    return conn.execute("SELECT count(*) AS n FROM jobs WHERE account_id = %s "
                        "AND status IN ('ingesting', 'processing')",
                        (account_id,)).fetchone()["n"]


def pending_presigned(conn, account_id: str) -> int:
    """Presigned-upload jobs of the account not yet processed, whether their file came or not."""
    return conn.execute("SELECT count(*) AS n FROM jobs WHERE account_id = %s AND status = 'pending' "
                        "AND source = 'presigned'", (account_id,)).fetchone()["n"]


UTC_TODAY = "(now() AT TIME ZONE 'UTC')::date"


def urls_today(conn, account_id: str) -> int:
    row = conn.execute(f"SELECT urls FROM account_usage WHERE account_id = %s AND day = {UTC_TODAY}",
                       (account_id,)).fetchone()
    return int(row["urls"]) if row else 0


def add_urls_today(conn, account_id: str, count: int) -> None:
    conn.execute(
        f"""INSERT INTO account_usage (account_id, day, urls) VALUES (%s, {UTC_TODAY}, %s)
            ON CONFLICT (account_id, day) DO UPDATE SET urls = account_usage.urls + EXCLUDED.urls""",
        (account_id, count),
    )


def add_preview_tokens(conn, account_id: str, model: str, prompt_tokens: int, completion_tokens: int,
                       cached_tokens: int = 0) -> None:
    """A preview's tokens into the day's usage (they belong to no job: see sql/0010), its cached
    prompt tokens apart (sql/0021)."""
    conn.execute(
        f"""INSERT INTO preview_usage (account_id, day, model, prompt_tokens, completion_tokens, cached_tokens)
            VALUES (%s, {UTC_TODAY}, %s, %s, %s, %s)
            ON CONFLICT (account_id, day, model) DO UPDATE SET
                prompt_tokens = preview_usage.prompt_tokens + EXCLUDED.prompt_tokens,
                completion_tokens = preview_usage.completion_tokens + EXCLUDED.completion_tokens,
                cached_tokens = preview_usage.cached_tokens + EXCLUDED.cached_tokens""",
        (account_id, model, prompt_tokens, completion_tokens, cached_tokens),
    )
