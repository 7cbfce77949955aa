"""Shared fixtures. `make test` (infra/devstack.py) provides a throwaway database with the
migrations applied, a private LocalStack with the resources, and the settings in the env."""

from __future__ import annotations

import uuid

import pytest

from chalicelib import deps
from chalicelib.adapters import db
from chalicelib.settings import get_settings
from tests.support.teststack import require_test_stack


def _reset_caches() -> None:
    deps.reset()


@pytest.fixture
def settings():
    """The settings of `make test`'s throwaway stack (refused anywhere else: tests empty it)."""
    require_test_stack()
    return get_settings()


@pytest.fixture
def conn(settings):
    """The test database, emptied before the test."""
    connection = live_conn(settings.database_url)
    connection.execute("TRUNCATE jobs, urls, opener_history, account_usage, webhook_deliveries, batches, job_exports")
    return connection


def live_conn(database_url: str):
    """This thread's connection, replaced if the server dropped it (the e2e fault tests terminate
    every backend of the test database, this process's idle one included)."""
    import psycopg

    connection = db.get_conn(database_url)
    try:
        connection.execute("SELECT 1")
    except psycopg.OperationalError:
        connection.close()
        connection = db.get_conn(database_url)
    return connection


@pytest.fixture
def account(conn):
    """A fresh account with a member key (accounts are kept: their ids never collide)."""
    from tests.support.accounts import make_account

    return make_account(conn)


@pytest.fixture
def make_account(conn):
    from tests.support.accounts import make_account as make

    return lambda **kwargs: make(conn, **kwargs)


@pytest.fixture
def env(monkeypatch):
    """Change settings for one test: `env(OPENAI_RPM="10")`; caches are rebuilt around it."""
    def apply(**values: str) -> None:
        for key, value in values.items():
            monkeypatch.setenv(key, value)
        _reset_caches()

    yield apply
    monkeypatch.undo()
    _reset_caches()


@pytest.fixture
def redis_client(settings):
    return deps.redis_client()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def pg(settings):
    return live_conn(settings.database_url)


@pytest.fixture
def tag(pg, unique, request):
    """A name prefix for the accounts a test creates; they, their keys and jobs go afterwards."""
    name = f"test-{request.module.__name__.rsplit('.', 1)[-1]}-{unique}"
    yield name
    pg.execute("DELETE FROM jobs WHERE account_id IN (SELECT id FROM accounts WHERE starts_with(name, %s))", (name,))
    pg.execute("DELETE FROM accounts WHERE starts_with(name, %s)", (name,))


@pytest.fixture(scope="session")
def chalice_app():
    from app import app

    return app


@pytest.fixture
def client(chalice_app, account):
    """The app through chalice.test.Client, as `account` (its key sent on every request)."""
    from chalice.test import Client

    from tests.support.accounts import AuthedClient

    with Client(chalice_app, stage_name="local") as test_client:
        yield AuthedClient(test_client, account)

