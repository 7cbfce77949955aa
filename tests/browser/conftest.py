"""The web page in a real browser: headless Chromium (Debian's, driven by Playwright) against the
whole stack as separate processes, started once for the package as tests/e2e/conftest.py does:

- the fake OpenAI-compatible server (`python -m tests.support.fake_openai`),
- a private `redis-server` on a free port,
- `chalice local` on a free port (the page and the API, one origin),
- the event runner (`python infra/runner.py`).

`make test` provides LocalStack, the throwaway database and the settings in the environment.
Chromium comes from `infra/browser.sh`, which installs Debian's package when it is missing (as
root with apt-get) and otherwise says the exact command; only then are these tests skipped.

A browser page needs a CORS rule on the bucket for the presigned PUT (uploads above the direct
limit) and for following a download's 302 to S3. infra/resources.yaml gives the bucket none yet,
so when it has none, the one the page needs is added here and taken off at the end.

Everything started here is stopped by PID at the end of the package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.support.e2e import Fake
from tests.support.stack import drain_queues
from tests.support.teststack import require_test_stack
from tests.support.util import free_port, stop, wait_for

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
CHALICE = str(Path(sys.executable).parent / "chalice")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]

# What every process of this stack runs with, on top of the test environment.
SETTINGS = {
    "OPENAI_API_KEY": "test",
    "OPENAI_DUMMY_MODE": "false",
    "OPENAI_TIMEOUT_S": "3",
    "OPENAI_RPM": "0",
    "OPENAI_TPM": "0",
    "MAX_RETRIES": "2",  # a failing URL fails after one backoff (0.5-1.5 s)
    "LEASE_SECONDS": "15",
    "CHUNK_SIZE": "100",
    "CHUNK_CONCURRENCY": "8",
    "MAX_CONCURRENT_JOBS": "3",
    "API_RATE_LIMIT_PER_MINUTE": "0",  # the page polls every second
    # Small, so a test file of a few KB takes the presigned path (POST /api/upload/url + PUT to S3).
    "MAX_DIRECT_UPLOAD": "16384",
    "RUNNER_VISIBILITY_S": "10",
    "LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
}


def http(method: str, url: str, body: dict | None = None, headers: dict | None = None,
         timeout: float = 10) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Stack:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.redis_port = free_port()
        self.env = {**os.environ, **SETTINGS, "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                    "RATELIMIT_PREFIX": f"csv-opener-browser-{uuid.uuid4().hex[:8]}:ratelimit"}
        self.env.pop("OPENAI_DUMMY_DELAY_MS", None)
        self.procs: dict[str, subprocess.Popen] = {}

    def _spawn(self, name: str, args: list[str], **options) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "ab") as log:
            options.setdefault("stdout", log)
            stderr = log if options["stdout"] is subprocess.PIPE else subprocess.STDOUT
            proc = subprocess.Popen(args, stderr=stderr, start_new_session=True, cwd=ROOT, **options)
        self.procs[name] = proc
        return proc

    def start(self) -> Stack:
        self._create_account()
        fake = self._spawn("fake", [PYTHON, "-m", "tests.support.fake_openai", "--port", "0", "--latency-ms", "20,50"],
                           stdout=subprocess.PIPE, text=True)
        base_url = fake.stdout.readline().strip()  # first line: its base URL
        assert base_url.startswith("http://"), f"fake server did not start: {base_url!r}"
        self.fake = Fake(base_url.removesuffix("/v1"))
        self.env["OPENAI_BASE_URL"] = base_url

        self._spawn("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", str(self.logs)])
        wait_for(self._redis_up, 10, every=0.1, what="private redis-server up")

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        api = self._spawn("chalice", [CHALICE, "local", "--stage", "local", "--no-autoreload", "--host", "127.0.0.1",
                                      "--port", str(port)], env=self.env)
        runner = self._spawn("runner", [PYTHON, str(ROOT / "infra" / "runner.py")], env=self.env)

        def api_up():
            assert api.poll() is None, f"chalice local exited; see {self.logs / 'chalice.log'}"
            try:
                return http("GET", f"{self.url}/health", timeout=5)[0] == 200
            except OSError:
                return False

        wait_for(api_up, 60, every=0.2, what="chalice local GET /health 200")

        def runner_up():
            assert runner.poll() is None, f"runner exited; see {self.logs / 'runner.log'}"
            return '"runner started"' in (self.logs / "runner.log").read_text(errors="replace")

        wait_for(runner_up, 30, every=0.1, what="runner started")
        return self

    def _redis_up(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.redis_port, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    def _create_account(self) -> None:
        from chalicelib.adapters import db
        from tests.support.accounts import make_account

        self.account_name = f"browser-{uuid.uuid4().hex[:8]}"
        conn = db.get_conn(os.environ["DATABASE_URL"])  # this thread's shared connection: not closed here
        account = make_account(conn, self.account_name, urls_per_day=0, max_jobs=0)
        self.account_id, self.key = account.id, account.key

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        status, raw = http(method, self.url + path, body, {"Authorization": f"Bearer {self.key}"})
        assert 200 <= status < 300, (status, raw[:300])
        return json.loads(raw)

    def close(self) -> None:
        for name in ("runner", "chalice", "redis", "fake"):
            stop(self.procs.get(name))
        fake = self.procs.get("fake")
        if fake is not None and fake.stdout:
            fake.stdout.close()
        self._forget_account()

    def _forget_account(self) -> None:
        from chalicelib.adapters import db

        conn = db.get_conn(os.environ["DATABASE_URL"])
        conn.execute("DELETE FROM jobs WHERE account_id = %s", (self.account_id,))
        conn.execute("DELETE FROM accounts WHERE id = %s", (self.account_id,))


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
    require_test_stack()
    logs = Path(tempfile.mkdtemp(prefix="csv-opener-browser-"))
    failed_before = request.session.testsfailed
    s = Stack(logs)
    started = added_cors = False
    try:
        s.start()
        added_cors = _bucket_cors(s.url)
        started = True
        yield s
    finally:
        s.close()
        drain_queues()
        if added_cors:
            _remove_bucket_cors()
        if started and request.session.testsfailed == failed_before:
            shutil.rmtree(logs, ignore_errors=True)
        else:
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(f"[browser] process logs kept in {logs}")


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
