"""The whole stack for the command's end-to-end tests, started the way tests/e2e starts it (its
Stack: fake OpenAI server, private redis-server, `chalice local` on a free port, the event runner,
an account and key made with `python -m chalicelib.admin`), with one difference: the API takes
direct uploads of at most 2,000 bytes, so a small file goes through the presigned path.

Only the end-to-end tests ask for `stack`; the unit tests run without any server."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack, _drain_queues

SMALL_DIRECT_UPLOAD = 2000


@pytest.fixture(scope="package")
def stack(request):
    if "AWS_ENDPOINT_URL" not in os.environ or "DATABASE_URL" not in os.environ:
        pytest.skip("needs the local stack: run through `make test`")
    logs = Path(tempfile.mkdtemp(prefix="csv-opener-cli-"))
    failed_before = request.session.testsfailed
    s = Stack(logs)
    s.env["MAX_DIRECT_UPLOAD"] = str(SMALL_DIRECT_UPLOAD)
    started = False
    try:
        s.start()
        started = True
        yield s
    finally:
        s.close()
        _drain_queues()
        if started and request.session.testsfailed == failed_before:
            shutil.rmtree(logs, ignore_errors=True)
        else:
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(f"[cli] process logs kept in {logs}")


@pytest.fixture
def fresh(stack):
    """The fake back at its base configuration for every test."""
    stack.fake.reset()
    return stack
