"""The API as a client sees it, for the fuzzer: the shared Stack (tests/support/stack.py) once for
the package, without its event runner.

The Stack makes an operator account with an admin key (with the operators' command, as an operator would;
no daily URL quota, no job limit) and starts `chalice local` with the API request limits off, so
the fuzzer's burst of requests from one address is never throttled, and in dummy mode, so
previews generate in-process.

No event runner runs: jobs the fuzzer starts stay `processing`, and no worker fetches a page or
calls a webhook. Where the API itself would reach out (page context in previews, a cancel's
webhook) the fuzzer keeps it on this machine (`keep_traffic_local`), and the end of the package
checks that no page was fetched and no webhook went elsewhere. At the end the Stack is stopped,
the chunk messages the fuzzer's starts sent are taken off the queue, and the account is deleted
with its jobs, so nothing is left for the other test packages.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.support.stack import package_stack

# What the fuzz package's stack runs with on top of the shared Stack's settings.
API_SETTINGS = {
    "API_RATE_LIMIT_PER_MINUTE": "0",  # the account's request limit (the account sets none of its own)
    "IP_RATE_LIMIT_PER_MINUTE": "0",  # /health and failed authentications, per address
    "OPENAI_DUMMY_MODE": "true",  # previews generate in-process, with no network and no delay
    "OPENAI_DUMMY_DELAY_MS": "0",
}


def page_fetches(stack) -> list[str]:
    """Keys of the page-summary cache in the stack's Redis: one per page the app tried to fetch."""
    return [key.decode() for key in stack.redis().scan_iter(match="*:page:*", count=1000)]


def webhook_targets(stack) -> list[str]:
    """The URLs the account's jobs queued webhooks for."""
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        rows = conn.execute("""SELECT DISTINCT d.url FROM webhook_deliveries d JOIN jobs j ON j.id = d.job_id
                               WHERE j.account_id = %s""", (stack.account_id,)).fetchall()
    return [url for (url,) in rows]


@pytest.fixture(scope="package")
def fuzz_api(request):
    # An admin key of an operator account: its answers are the fullest (queue depths in
    # /api/metrics, /health details).
    with package_stack(request, "fuzz", API_SETTINGS, runner=False, role="admin", operator=True) as stack:
        yield stack
        # Tests send traffic to this machine only (tests/support/fuzzing.py: keep_traffic_local).
        fetched = page_fetches(stack)
        webhooks = webhook_targets(stack)
    assert not fetched, f"the fuzz run made the app fetch {len(fetched)} page(s)"
    elsewhere = [url for url in webhooks if not url.startswith("http://127.0.0.1:")]
    assert not elsewhere, f"the fuzz run queued webhooks to {elsewhere}"
