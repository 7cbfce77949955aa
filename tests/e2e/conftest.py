"""The end-to-end and fault tests' fixtures: the whole system as separate processes
(tests/support/stack.py), started once for this package and fresh for each test."""

from __future__ import annotations

import time

import pytest

from tests.support.e2e import http
from tests.support.stack import package_stack


@pytest.fixture(scope="package")
def stack(request):
    with package_stack(request, "e2e") as s:
        yield s


@pytest.fixture
def fresh(stack, request):
    """Per test: LocalStack up, the runner with the base settings (and those of the test's
    ``@pytest.mark.runner(NAME="value", ...)``: one restart, not a second one in the test) and a
    limiter prefix of the test's own (nothing the limiter learned or booked carries over), the fake reset (counters and
    config; its rate limits are its construction config) and the proxy's records cleared. Every
    test waits for its own jobs to finish, so the fake's counts are the next test's alone."""
    if stack.localstack is not None and not stack.localstack.healthy():  # a failed restart test
        stack.localstack.start()
        stack.localstack.provision()
    for job in stack.api.call("GET", "/api/jobs?status=processing&limit=100").json()["jobs"]:
        stack.api.call("POST", f"/api/upload/{job['id']}/cancel")  # left over by a failed test
    stack.new_test()
    marker = request.node.get_closest_marker("runner")
    stack.use_runner(**(marker.kwargs if marker else {}))
    stack.fake.reset()
    assert http("GET", f"{stack.fake.url}/_fake/stats").status == 200
    stack.proxy.clear()
    stack.test_began = time.time()
    return stack
