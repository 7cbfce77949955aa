"""The API as a client sees it, for the fuzzer: `chalice local` on a free port, once for the package.

`make test` provides LocalStack (S3, SQS), a throwaway PostgreSQL database and the settings in the
environment. On top of that this package makes an account with an admin key (with the operators'
command, as an operator would; no daily URL quota, no job limit) and starts `chalice local` with
the API request limits off, so the fuzzer's burst of requests from one address is never throttled.

No event runner runs: jobs the fuzzer starts stay `processing`, and no worker fetches a page or
calls a webhook. Where the API itself would reach out (page context in previews, a cancel's
webhook) the fuzzer keeps it on this machine (`keep_traffic_local`), and the end of the package
checks that no page was fetched and no webhook went elsewhere. The limiter's Redis keys get a
prefix of their own. At the end `chalice local` is stopped by PID, the chunk messages those
starts sent are taken off the queue, and the account is deleted with its jobs, so nothing is
left for the other test packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.teststack import require_test_stack
from tests.support.util import free_port, stop

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
CHALICE = str(Path(sys.executable).parent / "chalice")

# What `chalice local` runs with on top of the test environment.
API_SETTINGS = {
    "API_RATE_LIMIT_PER_MINUTE": "0",  # the account's request limit (the account sets none of its own)
    "IP_RATE_LIMIT_PER_MINUTE": "0",  # /health and failed authentications, per address
    "OPENAI_DUMMY_MODE": "true",  # previews generate in-process, with no network and no delay
    "OPENAI_DUMMY_DELAY_MS": "0",
    "LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
}


@dataclass(frozen=True)
class FuzzApi:
    url: str
    key: str
    account_id: str
    log: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def admin(env: dict[str, str], *args: str) -> str:
    """`python -m chalicelib.admin ARGS`; its last line (the id or key those commands print)."""
    done = subprocess.run([PYTHON, "-m", "chalicelib.admin", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, f"admin {args[0]} failed: {done.stderr}"
    return done.stdout.strip().splitlines()[-1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"chalice local exited with {proc.returncode}; see {log}"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"chalice local not healthy within {timeout} s; see {log}")
        time.sleep(0.25)


def drain_chunk_queue() -> None:
    """Take off the chunk queue whatever the fuzzer's starts and retries sent (no runner ran)."""
    from chalicelib import deps

    queue = deps.chunk_queue()
    for _ in range(100):
        messages = queue.sqs.receive_message(QueueUrl=queue.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                             VisibilityTimeout=30).get("Messages", [])
        if not messages:
            return
        for message in messages:
            queue.sqs.delete_message(QueueUrl=queue.queue_url, ReceiptHandle=message["ReceiptHandle"])


def page_fetches(prefix: str) -> list[str]:
    """Keys of the page-summary cache under this prefix: one per page the app tried to fetch."""
    from chalicelib import deps

    return [key.decode() if isinstance(key, bytes) else key
            for key in deps.redis_client().scan_iter(match=f"*{prefix}:page:*", count=1000)]


def webhook_targets(database_url: str, account_id: str) -> list[str]:
    """The URLs the account's jobs queued webhooks for."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        try:
            rows = conn.execute("""SELECT DISTINCT d.url FROM webhook_deliveries d JOIN jobs j ON j.id = d.job_id
                                   WHERE j.account_id = %s""", (account_id,)).fetchall()
        except psycopg.errors.UndefinedTable:  # no webhooks in this version
            return []
    return [url for (url,) in rows]


def delete_account(database_url: str, account_id: str) -> None:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM jobs WHERE account_id = %s", (account_id,))
        conn.execute("DELETE FROM accounts WHERE id = %s", (account_id,))


@pytest.fixture(scope="package")
def fuzz_api(request) -> FuzzApi:
    require_test_stack()
    prefix = os.environ.get("RATELIMIT_PREFIX", "csv-opener-test:ratelimit") + ":fuzz"
    env = {**os.environ, **API_SETTINGS, "RATELIMIT_PREFIX": prefix}
    logs = Path(tempfile.mkdtemp(prefix="csv-opener-fuzz-"))
    log = logs / "chalice.log"
    failed_before = request.session.testsfailed

    account_id = admin(env, "create-account", f"fuzz-{os.getpid()}")
    proc = None
    webhooks: list[str] = []
    try:
        admin(env, "set-limits", account_id, "--urls-per-day", "0", "--jobs", "0")
        # An admin key: its answers are the fullest (queue depths in /api/metrics, /health details).
        key = admin(env, "create-key", account_id, "--role", "admin", "--name", "fuzz")
        port = free_port()
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [CHALICE, "local", "--stage", "local", "--no-autoreload", "--host", "127.0.0.1", "--port", str(port)],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, log)
        yield FuzzApi(url=url, key=key, account_id=account_id, log=log)
    finally:
        if proc is not None:
            stop(proc)
        drain_chunk_queue()
        webhooks = webhook_targets(env["DATABASE_URL"], account_id)
        delete_account(env["DATABASE_URL"], account_id)
        if request.session.testsfailed == failed_before:
            shutil.rmtree(logs, ignore_errors=True)
        else:  # keep chalice local's log (the app's JSON lines, tracebacks of any 500) for the failure
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(f"[fuzz] chalice local log kept in {log}")
    # Tests send traffic to this machine only (see tests/fuzz/test_schemathesis.py: keep_traffic_local).
    fetched = page_fetches(prefix)
    assert not fetched, f"the fuzz run made the app fetch {len(fetched)} page(s)"
    elsewhere = [url for url in webhooks if not url.startswith("http://127.0.0.1:")]
    assert not elsewhere, f"the fuzz run queued webhooks to {elsewhere}"
