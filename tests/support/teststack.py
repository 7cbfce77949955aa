"""The marker that says "this is the throwaway stack `make test` made": integration, e2e, CLI,
browser and fuzz tests empty the database, purge the queues and write Redis keys, so they refuse
to run against anything else (plain `pytest` would otherwise truncate the dev database of
`make dev` and purge its queue)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

import pytest

MARKER = "CSV_OPENER_TEST_STACK"  # infra/devstack.py sets it to the throwaway database's name
REFUSAL = ("This test empties the database, queues and Redis keys it uses, so it runs only against the "
           "throwaway stack that `make test` creates (a private database and LocalStack); run it with "
           '`make test PYTEST_ARGS="<path>"` instead of plain pytest.')


def stack_problem(environ: Mapping[str, str] = os.environ) -> str | None:
    """None when `environ` is `make test`'s; else why the stack tests must not run."""
    name, url = environ.get(MARKER, ""), environ.get("DATABASE_URL", "")
    if not name or urlsplit(url).path.lstrip("/") != name or not environ.get("AWS_ENDPOINT_URL"):
        return REFUSAL
    return None


def require_test_stack() -> None:
    problem = stack_problem()
    if problem is not None:
        pytest.fail(problem, pytrace=False)
