"""Shared fixtures. `make test` (infra/devstack.py) provides a throwaway database with the
migrations applied, a private LocalStack with the resources, and the settings in the env."""

from __future__ import annotations

import os
import uuid

import pytest

from chalicelib import db, deps
from chalicelib.settings import get_secret_settings, get_settings


def _reset_caches() -> None:
    get_settings.cache_clear()
    get_secret_settings.cache_clear()
    for factory in (deps.storage, deps.chunk_queue, deps.redis_client, deps.opener_generator, deps.chunk_worker):
        factory.cache_clear()


@pytest.fixture
def settings():
    return get_settings()


@pytest.fixture
def conn(settings):
    """The test database, emptied before the test."""
    connection = db.get_conn(settings.database_url)
    connection.execute("TRUNCATE jobs, urls")
    return connection


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


@pytest.fixture(scope="session")
def chalice_app():
    from app import app

    return app


@pytest.fixture
def client(chalice_app):
    from chalice.test import Client

    with Client(chalice_app, stage_name="local") as test_client:
        yield test_client


def requires_stack() -> None:
    if "AWS_ENDPOINT_URL" not in os.environ:
        pytest.skip("needs the local stack: run through `make test`")
