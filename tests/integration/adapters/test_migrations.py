from infra.migrate import migrate

SCHEMA = """
SELECT table_name, column_name, data_type, is_nullable, column_default
FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2
"""


def test_migrations_applied_twice_change_nothing(settings, conn):
    before = conn.execute(SCHEMA).fetchall()
    versions = conn.execute("SELECT version, applied_at FROM schema_migrations ORDER BY 1").fetchall()
    assert [v["version"] for v in versions][0] == "0001_jobs_and_urls"

    assert migrate(settings.database_url) == []

    assert conn.execute(SCHEMA).fetchall() == before
    assert conn.execute("SELECT version, applied_at FROM schema_migrations ORDER BY 1").fetchall() == versions


def test_schema_enforces_statuses_and_keeps_updated_at_current(conn):
    job = conn.execute(
        "INSERT INTO jobs (account_id, file_name, file_path) "
        "VALUES ((SELECT id FROM accounts WHERE name = 'default'), 'a.csv', 'uploads/x/a.csv') RETURNING id, updated_at"
    ).fetchone()
    import psycopg
    import pytest

    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE jobs SET status = 'done' WHERE id = %s", (job["id"],))
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute("INSERT INTO urls (job_id, row_number, chunk, url) VALUES (gen_random_uuid(), 1, 0, 'x')")
    with conn.transaction():
        conn.execute("SELECT pg_sleep(0.01)")
    updated = conn.execute("UPDATE jobs SET status = 'processing' WHERE id = %s RETURNING updated_at",
                           (job["id"],)).fetchone()
    assert updated["updated_at"] > job["updated_at"]
