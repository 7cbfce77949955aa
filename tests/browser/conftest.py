"""The web page in a real browser: headless Chromium (Debian's, driven by Playwright) against the
whole stack as separate processes (tests/support/stack.py, the Stack the e2e, CLI and fuzz
packages use too), started once for the package with a few settings of its own (SETTINGS): the
fake OpenAI-compatible server, a private `redis-server`, `chalice local` (the page and the API,
one origin) and the event runner.

`make test` provides LocalStack, the throwaway database and the settings in the environment.
Chromium comes from `infra/browser.sh`, which installs Debian's package when it is missing (as
root with apt-get) and otherwise says the exact command; only then are these tests skipped.

A browser page needs a CORS rule on the bucket for the presigned PUT (uploads above the direct
limit) and for following a download's 302 to S3. infra/resources.yaml gives the bucket none yet,
so when it has none, the one the page needs is added here and taken off at the end.

Everything started here is stopped by PID at the end of the package.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.stack import SMALL_MULTIPART, package_stack
from tests.support.util import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]

# The browser package's settings on top of the shared Stack's (tests/support/stack.py).
SETTINGS = {
    "OPENAI_RPM": "0",  # no ceiling of ours: the fake's own limit is the only one
    "OPENAI_TPM": "0",
    "MAX_RETRIES": "2",  # a failing URL fails after one backoff (0.5-1.5 s)
    "API_RATE_LIMIT_PER_MINUTE": "0",  # the page polls every second
    # Small, so a test file of a few KB takes the presigned path (POST /api/upload/url + PUT to S3).
    "MAX_DIRECT_UPLOAD": "16384",
    **SMALL_MULTIPART,  # above 6 MiB by parts of 5 MiB
}


def _bucket_cors(origin: str) -> bool:
    """Give the upload bucket the CORS rule a page at `origin` needs (the presigned PUT, a
    download's 302 to S3), unless it has one already. Returns whether a rule was added."""
    from botocore.exceptions import ClientError

    from chalicelib import deps

    s3, bucket = deps.storage().s3, os.environ.get("UPLOAD_BUCKET", "csv-opener-uploads")
    try:
        s3.get_bucket_cors(Bucket=bucket)
        return False  # the bucket's own rule (infra/resources.yaml) is what the page must work with
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "NoSuchCORSConfiguration":
            raise
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [{
        "AllowedOrigins": [origin], "AllowedMethods": ["GET", "PUT"], "AllowedHeaders": ["content-type"],
        "ExposeHeaders": ["Content-Disposition", "ETag"], "MaxAgeSeconds": 600}]})
    return True


def _remove_bucket_cors() -> None:
    from chalicelib import deps

    deps.storage().s3.delete_bucket_cors(Bucket=os.environ.get("UPLOAD_BUCKET", "csv-opener-uploads"))


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's Chromium, installed by infra/browser.sh if it can be; else a skip saying how."""
    done = subprocess.run(["bash", str(ROOT / "infra" / "browser.sh")], capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        pytest.skip(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "Chromium is missing")
    return CHROMIUM


@pytest.fixture(scope="package")
def stack(request):
    with package_stack(request, "browser", SETTINGS) as s:
        added_cors = _bucket_cors(s.url)
        try:
            yield s
        finally:
            if added_cors:
                _remove_bucket_cors()


@pytest.fixture(scope="package")
def browser(chromium_path, stack):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def fresh(stack):
    """The fake back to its start-up behaviour (latency 20-50 ms, no faults)."""
    stack.fake.reset()
    return stack


@pytest.fixture
def page(browser, fresh):
    """A new browser tab (its own sessionStorage) on the page; failures from the page's own
    console (CSP violations, script errors) fail the test."""
    context = browser.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(15000)
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    tab.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
           if msg.type == "error" and "Failed to load resource" not in msg.text else None)
    tab.goto(fresh.url + "/")
    tab.problems = problems
    yield tab
    context.close()
    assert not problems, problems
