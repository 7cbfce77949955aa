"""Plain `pytest` must not empty a database, queue or Redis that `make test` did not create
(the dev stack's, say): the stack tests refuse to run without its marker."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from chalicelib.adapters import db
from tests.support.teststack import MARKER, REFUSAL, stack_problem
from tests.support.util import ROOT


def test_the_marker_must_name_the_database_in_use():
    good = {MARKER: "csv_opener_test_1", "DATABASE_URL": "postgresql://127.0.0.1:5432/csv_opener_test_1",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:4566"}
    assert stack_problem(good) is None
    assert stack_problem({**good, "DATABASE_URL": "postgresql://127.0.0.1:5432/csv_opener"}) == REFUSAL  # make dev's
    assert stack_problem({k: v for k, v in good.items() if k != MARKER}) == REFUSAL
    assert stack_problem({k: v for k, v in good.items() if k != "AWS_ENDPOINT_URL"}) == REFUSAL


def test_plain_pytest_refuses_and_leaves_the_database_as_it_was(conn, account):
    job_id = str(uuid.uuid4())
    db.insert_job(conn, job_id=job_id, account_id=account.id, file_name="keep.csv", file_path="uploads/keep.csv",
                  source="upload")
    env = {k: v for k, v in os.environ.items() if k != MARKER}  # the same database, but not said to be a test one
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/integration/jobs/test_api.py::test_cancel_then_cancel_again_is_409"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout[-2000:]
    assert "make test" in run.stdout and "1 error" in run.stdout
    assert db.get_job(conn, job_id) is not None  # the conn fixture's TRUNCATE never ran
