"""The whole system as separate processes, for the end-to-end and fault tests.

`make test` provides LocalStack (S3, SQS), a throwaway PostgreSQL database and the settings in
the environment. On top of that this package starts, once for all its tests:

- the fake OpenAI-compatible server (`python -m tests.support.fake_openai`),
- a private `redis-server` on a free port (the fault tests restart it; the machine's shared
  Redis is never touched),
- `chalice local` on a free port (the HTTP API),
- the event runner (`python infra/runner.py`, MAX_CONCURRENT_JOBS chunk workers), which tests
  may SIGKILL and start again, or restart with other settings.

Everything is stopped by PID at the end of the package (SIGTERM, then SIGKILL after a timeout),
so nothing of it is left consuming the queues when the other test packages run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import redis

from tests.e2e.helpers import Api, Fake, connect, http, wait_for

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
CHALICE = str(Path(sys.executable).parent / "chalice")

# The settings every e2e process runs with (the runner may be restarted with overrides).
BASE_SETTINGS = {
    "OPENAI_API_KEY": "test",
    "OPENAI_DUMMY_MODE": "false",
    "OPENAI_TIMEOUT_S": "3",
    "OPENAI_RPM": "0",
    "OPENAI_TPM": "0",
    "MAX_RETRIES": "3",
    # Short, so a killed runner's rows are retaken quickly; leases are renewed while held.
    "LEASE_SECONDS": "15",
    "CHUNK_SIZE": "100",
    "CHUNK_CONCURRENCY": "8",
    "MAX_CONCURRENT_JOBS": "3",
    "API_RATE_LIMIT_PER_MINUTE": "0",  # the tests poll quickly from one address
    "LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
    # The local runner's visibility timeout (heartbeat at a third of it): a SIGKILLed runner's
    # chunk messages come back in seconds.
    "RUNNER_VISIBILITY_S": "10",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen | None, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` s (that PID only)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class Stack:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.database_url = os.environ["DATABASE_URL"]
        self.redis_port = free_port()
        self.env = {**os.environ, **BASE_SETTINGS, "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                    "RATELIMIT_PREFIX": os.environ.get("RATELIMIT_PREFIX", "csv-opener-e2e:ratelimit") + ":e2e"}
        self.env.pop("OPENAI_DUMMY_DELAY_MS", None)
        self.fake_proc = self.redis_proc = self.api_proc = self.runner_proc = None
        self.runner_overrides: dict[str, str] = {}

    # ------------------------------------------------------------ processes

    def _spawn(self, name: str, args: list[str], **options) -> subprocess.Popen:
        """Start a child in its own session, its output appended to <logs>/<name>.log."""
        with open(self.logs / f"{name}.log", "ab") as log:
            options.setdefault("stdout", log)
            return subprocess.Popen(args, stderr=log if options["stdout"] is subprocess.PIPE else subprocess.STDOUT,
                                    start_new_session=True, **options)

    def create_account(self) -> None:
        """An account and its key, made with the operators' command as an operator would."""
        def admin(*args: str) -> str:
            done = subprocess.run([PYTHON, "-m", "chalicelib.admin", *args], cwd=ROOT, env=self.env,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            return done.stdout.strip().splitlines()[-1]

        self.account_id = admin("create-account", f"e2e-{os.getpid()}")
        admin("set-limits", self.account_id, "--urls-per-day", "0", "--jobs", "0")  # no quota in these tests
        self.key = admin("create-key", self.account_id, "--name", "e2e")

    def start(self) -> Stack:
        self.create_account()
        self.start_fake()
        self.start_redis()
        self.start_api()
        self.start_runner()
        return self

    def start_fake(self) -> None:
        self.fake_proc = self._spawn("fake", [PYTHON, "-m", "tests.support.fake_openai", "--port", "0",
                                              "--latency-ms", "20,50"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        base_url = self.fake_proc.stdout.readline().strip()  # first line: the base URL
        assert base_url.startswith("http://"), f"fake server did not start: {base_url!r}"
        self.fake = Fake(base_url.removesuffix("/v1"))
        self.env["OPENAI_BASE_URL"] = base_url

    def start_redis(self) -> None:
        self.redis_proc = self._spawn("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                                "--save", "", "--appendonly", "no", "--dir", str(self.logs)])
        client = redis.Redis(port=self.redis_port, socket_connect_timeout=1)
        wait_for(lambda: self._ping(client), 10, every=0.05, what="private redis-server up")

    @staticmethod
    def _ping(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def stop_redis(self) -> None:
        """Stop the private Redis (SIGTERM: it shuts down without saving, nothing to save)."""
        stop(self.redis_proc)
        self.redis_proc = None

    def start_api(self) -> None:
        port = free_port()
        self.api_proc = self._spawn(
            "chalice",
            [CHALICE, "local", "--stage", "local", "--no-autoreload", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=self.env)
        self.api = Api(f"http://127.0.0.1:{port}", self.key)

        def healthy():
            assert self.api_proc.poll() is None, f"chalice local exited; see {self.logs / 'chalice.log'}"
            try:
                return self.api.call("GET", "/health", timeout=5).status == 200
            except OSError:
                return False

        wait_for(healthy, 60, every=0.25, what="chalice local GET /health 200")

    def start_runner(self, **overrides: str) -> None:
        """Start the event runner (if none is running) with the base settings plus `overrides`."""
        if self.runner_proc is not None and self.runner_proc.poll() is None:
            return
        self.runner_overrides = {k: str(v) for k, v in overrides.items()}
        env = {**self.env, **self.runner_overrides}
        marker = '"runner started"'
        path = self.logs / "runner.log"
        before = path.read_text(errors="replace").count(marker) if path.exists() else 0
        self.runner_proc = self._spawn("runner", [PYTHON, str(ROOT / "infra" / "runner.py")], cwd=ROOT, env=env)

        def started():
            assert self.runner_proc.poll() is None, f"runner exited; see {path}"
            return path.read_text(errors="replace").count(marker) > before

        wait_for(started, 30, every=0.1, what="runner started")

    def stop_runner(self) -> None:
        stop(self.runner_proc, timeout=60)
        self.runner_proc = None

    def kill_runner(self) -> None:
        """SIGKILL: no handler gets to save or hand anything on."""
        self.runner_proc.send_signal(signal.SIGKILL)
        self.runner_proc.wait(10)
        self.runner_proc = None

    def use_runner(self, **overrides: str) -> None:
        """Make sure the runner runs with exactly these overrides (restarting it if needed)."""
        wanted = {k: str(v) for k, v in overrides.items()}
        if self.runner_proc is not None and self.runner_proc.poll() is None and self.runner_overrides == wanted:
            return
        self.stop_runner()
        self.start_runner(**wanted)

    def close(self) -> None:
        for proc in (self.runner_proc, self.api_proc, self.redis_proc, self.fake_proc):
            stop(proc)
        if self.fake_proc is not None and self.fake_proc.stdout:
            self.fake_proc.stdout.close()

    # ------------------------------------------------------------ state

    def terminate_db_connections(self) -> int:
        """pg_terminate_backend every other connection to the test database; returns how many."""
        with connect(self.database_url) as conn:
            return conn.execute(
                """SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS n FROM pg_stat_activity
                   WHERE datname = current_database() AND pid <> pg_backend_pid()"""
            ).fetchone()["n"]


@pytest.fixture(scope="package")
def stack(request):
    if "AWS_ENDPOINT_URL" not in os.environ or "DATABASE_URL" not in os.environ:
        pytest.skip("needs the local stack: run through `make test`")
    logs = Path(tempfile.mkdtemp(prefix="csv-opener-e2e-"))
    failed_before = request.session.testsfailed
    s = Stack(logs)
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
        else:  # keep the processes' logs (chalice, runner, fake, redis) for the failure
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(f"[e2e] process logs kept in {logs}")


def _drain_queues() -> None:
    """Leave no e2e chunk messages (delayed continuations included) for the next test package."""
    from chalicelib import deps

    sqs = deps.chunk_queue().sqs
    for url in (os.environ.get("CHUNK_QUEUE_URL"), os.environ.get("DROPS_QUEUE_URL")):
        if url:
            try:
                sqs.purge_queue(QueueUrl=url)
            except Exception:  # noqa: BLE001 - best effort clean-up
                pass


@pytest.fixture
def fresh(stack):
    """Per test: the runner with the base settings and the fake reset (counters and config).
    Every test waits for its own jobs to finish, so the fake's counts are the next test's alone."""
    for job in stack.api.call("GET", "/api/jobs?status=processing&limit=100").json()["jobs"]:
        stack.api.call("POST", f"/api/upload/{job['id']}/cancel")  # left over by a failed test
    stack.use_runner()
    stack.fake.reset()
    assert http("GET", f"{stack.fake.url}/_fake/stats").status == 200
    return stack
