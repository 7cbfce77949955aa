"""PostgreSQL adapter: one connection per container and thread, and one function per query.

Lambda runs one request per container at a time, so a single reused connection is right there;
`chalice local` and the event runner use threads, so connections are kept per thread. Every
function takes the connection as its first argument; transactions are the caller's
(`with conn.transaction():`). Parameters are always passed separately, bulk rows go by COPY.
"""

from __future__ import annotations

import threading

import psycopg
from psycopg.rows import dict_row

_local = threading.local()


def connect(database_url: str) -> psycopg.Connection:
    return psycopg.connect(database_url, autocommit=True, row_factory=dict_row, connect_timeout=5)


def get_conn(database_url: str) -> psycopg.Connection:
    """This thread's connection, reopened when the server closed it (restart, idle kill)."""
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken or getattr(_local, "url", None) != database_url:
        if conn is not None and not conn.closed:
            conn.close()
        conn = connect(database_url)
        _local.conn, _local.url = conn, database_url
    return conn


def ping(conn: psycopg.Connection) -> None:
    conn.execute("SELECT 1").fetchone()
