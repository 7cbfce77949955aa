"""The sweep does nothing for a disabled account (issue 19 item 11): no results CSV exported, no
dropped file started, no chunk enqueued again, until the account is enabled. Against the real
PostgreSQL and LocalStack, through jobs.sweep as the schedule calls it."""

from __future__ import annotations

import uuid

import pytest

from chalicelib import accounts, deps, jobs
from chalicelib.adapters import db
from tests.support.api import drain_queue, mark_urls_done, purge_queue


@pytest.fixture(autouse=True)
def clean(conn, settings):
    purge_queue(settings.chunk_queue_url)


def urls_file(n: int) -> bytes:
    return b"url\n" + b"".join(f"s{i}-{uuid.uuid4().hex[:6]}.example.com\n".encode() for i in range(n))


def sweep(conn, settings) -> dict:
    return jobs.sweep(conn, deps.conn, deps.storage(), deps.chunk_queue(), settings)


def test_the_sweep_exports_and_starts_nothing_for_a_disabled_account_until_it_is_enabled(conn, settings,
                                                                                        make_account):
    account = make_account()
    # a completed job whose results CSV a crash never wrote
    done = jobs.create_from_upload(conn, deps.storage(), account_id=account.id, file_name="c.csv",
                                   data=urls_file(2), url_column=None)["job"]["id"]
    jobs.start(conn, deps.storage(), deps.chunk_queue(), settings, account.id, done)
    mark_urls_done(conn, done)
    conn.execute("UPDATE jobs SET finished_at = now() - interval '10 minutes' WHERE id = %s", (done,))
    # a dropped file whose start never happened
    key = f"incoming/{account.id}/late-{uuid.uuid4().hex[:6]}.csv"
    etag = deps.storage().put_bytes(key, urls_file(3))
    drop = db.insert_job(conn, job_id=str(uuid.uuid4()), account_id=account.id, file_name="late.csv", file_path=key,
                         source="s3", source_key=f"{key}@1", source_etag=etag)["id"]
    conn.execute("UPDATE jobs SET created_at = now() - interval '1 hour' WHERE id = %s", (drop,))
    drain_queue(settings.chunk_queue_url)

    accounts.disable_account(conn, account.id)
    swept = sweep(conn, settings)
    assert (swept["exported"], swept["drops_started"], swept["requeued"]) == (0, 0, 0)
    assert db.get_job(conn, done)["result_path"] is None and db.get_job(conn, drop)["status"] == "pending"
    assert drain_queue(settings.chunk_queue_url) == []

    accounts.enable_account(conn, account.id)
    swept = sweep(conn, settings)
    assert (swept["exported"], swept["drops_started"]) == (1, 1)
    assert db.get_job(conn, done)["result_path"] and db.get_job(conn, drop)["status"] == "processing"
