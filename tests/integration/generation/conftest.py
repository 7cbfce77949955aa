"""What the worker tests with a fake model server have in common (test_quality_worker.py,
test_reuse.py, test_budgets.py, test_batches.py): an empty chunk queue, the fake server and settings
that talk to it (rows that never look alike: tests/support/rows.py).

`clean` is not autouse (the limiter tests here need no queue): a module takes it with
``pytestmark = pytest.mark.usefixtures("clean")``.
"""

from __future__ import annotations

import dataclasses

import pytest

from tests.support.api import purge_queue
from tests.support.fake_openai import FakeOpenAI


@pytest.fixture
def clean(settings):
    purge_queue(settings.chunk_queue_url)


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def live(settings, fake):
    """Settings of the real client against `fake`: no rate limits, chunks of 10, four at once."""
    return dataclasses.replace(settings, openai_dummy_mode=False, openai_api_key="sk-test",
                               openai_base_url=fake.base_url, openai_rpm=0, openai_tpm=0, chunk_size=10,
                               chunk_concurrency=4, page_context_default=False, max_retries=3)
