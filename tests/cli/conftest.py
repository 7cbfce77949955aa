"""The whole stack for the command's end-to-end tests, started the way tests/e2e starts it (its
Stack: fake OpenAI server, private redis-server, `chalice local` on a free port, the event runner,
an account and key made with `python -m chalicelib.admin`), with one difference: the API takes
direct uploads of at most 2,000 bytes, so a small file goes through the presigned path, and
files above 6 MiB go by parts of 5 MiB (S3's smallest), so an 11 MB file has 3.

Only the end-to-end tests ask for `stack`; the unit tests run without any server."""

from __future__ import annotations

import pytest

from tests.support.stack import SMALL_DIRECT_UPLOAD, SMALL_MULTIPART, package_stack


@pytest.fixture(scope="package")
def stack(request):
    with package_stack(request, "cli", {"MAX_DIRECT_UPLOAD": str(SMALL_DIRECT_UPLOAD), **SMALL_MULTIPART}) as s:
        yield s


@pytest.fixture
def fresh(stack):
    """The fake back at its base configuration for every test."""
    stack.fake.reset()
    return stack
