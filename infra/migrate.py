"""Apply the numbered SQL migrations in `sql/` in order, each once.

Versions applied are recorded in `schema_migrations`; an advisory lock makes concurrent runs
wait for each other; each file runs in its own transaction. Running it twice changes nothing.

    python infra/migrate.py [DATABASE_URL]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psycopg

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
LOCK_ID = 0x6373765F6F70  # arbitrary, constant: "csv_op"


def pending_migrations(applied: set[str], sql_dir: Path = SQL_DIR) -> list[Path]:
    return [p for p in sorted(sql_dir.glob("[0-9][0-9][0-9][0-9]_*.sql")) if p.stem not in applied]


def migrate(database_url: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply what is missing; returns the versions applied by this call."""
    done: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for path in pending_migrations(applied, sql_dir):
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,))
                done.append(path.stem)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
    return done


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/csv_opener")
    applied = migrate(url)
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none (up to date)'}")
