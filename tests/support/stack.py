"""The whole system as separate processes, for the end-to-end and fault tests.

`make test` provides LocalStack (S3, SQS), a throwaway PostgreSQL database and the settings in
the environment. On top of that `Stack` starts, once for all of a package's tests (the e2e, CLI and browser packages):

- the fake OpenAI-compatible server (`python -m tests.support.fake_openai`), enforcing a
  provider's limits (FAKE_RPM, FAKE_TPM) that the app's shared limiter is set just below,
- a recording proxy in front of it (tests/support/proxy.py: when each LLM request reached the
  provider, and its status), so the tests can check the limiter's cooldowns,
- a private `redis-server` on a free port (the fault tests restart it; the machine's shared
  Redis is never touched),
- `chalice local` on a free port (the HTTP API),
- the event runner (`python infra/runner.py`, MAX_CONCURRENT_JOBS chunk workers), which tests
  may SIGKILL and start again, or restart with other settings.

Everything is stopped by PID at the end of the package (SIGTERM, then SIGKILL after a timeout),
so nothing of it is left consuming the queues when the other test packages run. A LocalStack the
restart test started in place of `make test`'s is stopped at the end of the session.

Waiting on a job (`Stack.wait_job`) fails fast: after STALL_S without progress, with a diagnosis
of the stack (job counters and leases, runner alive, queue depths, the fake, Redis, LocalStack).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import redis
from botocore.config import Config

from tests.support.e2e import (
    STALL_S,
    Api,
    Fake,
    connect,
    log_entries,
    time_for,
    wait_for,
    wait_progress,
)
from tests.support.proxy import RecordingProxy
from tests.support.teststack import require_test_stack
from tests.support.util import ROOT, free_port, stop

PYTHON = sys.executable
CHALICE = str(Path(sys.executable).parent / "chalice")

# The provider's limits, as the fake enforces them (token buckets of one second's worth). The
# stack runs at about 100-200 URLs/s here, so our 135/s binds at its peaks without slowing the
# suite much.
FAKE_RPM = 9000
# The fake counts a request's tokens its own way (tokens.py) plus max_tokens (120): 380-435 here,
# and the app estimates 397-447 before its refund. 500 a request keeps RPM the limit that binds,
# for the provider and for us.
FAKE_TPM = 500 * FAKE_RPM
SMALL_DIRECT_UPLOAD = 2000  # the CLI package's direct-upload cap: a small file takes the presigned path
# The CLI and browser packages' multipart settings: above 6 MiB by parts of 5 MiB (S3's smallest)
SMALL_MULTIPART = {"MULTIPART_THRESHOLD": str(6 * 1024 * 1024), "MULTIPART_PART_SIZE": str(5 * 1024 * 1024)}
PORT_ATTEMPTS = 3  # free_port() is a guess: another process may take the port before we bind it
LIMIT_SHARE = 0.9  # our OPENAI_RPM / OPENAI_TPM: a real limit, a little below the provider's

# The settings every e2e process runs with (the runner may be restarted with overrides).
BASE_SETTINGS = {
    "OPENAI_API_KEY": "test",
    "OPENAI_DUMMY_MODE": "false",
    "OPENAI_TIMEOUT_S": "3",
    "OPENAI_RPM": str(int(LIMIT_SHARE * FAKE_RPM)),
    "OPENAI_TPM": str(int(LIMIT_SHARE * FAKE_TPM)),
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


def _gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie its parent has not reaped yet counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


class LocalStack:
    """The private LocalStack `make test` started (infra/devstack.py exports LOCALSTACK_PID,
    LOCALSTACK_DIR and LOCALSTACK_START): stop it, start it again the same way on the same port,
    and provision its resources again. A LocalStack started here is stopped at the session's end
    (`at_exit`), since the later test packages use it too."""

    def __init__(self, env: dict[str, str], at_exit: Callable[[Callable[[], None]], None]) -> None:
        start = json.loads(env["LOCALSTACK_START"])
        self.pid = int(env["LOCALSTACK_PID"])
        self.argv, self.settings, self.cwd, self.log = start["argv"], start["env"], start["cwd"], start["log"]
        self.endpoint = env["AWS_ENDPOINT_URL"]
        self.at_exit = at_exit
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def available(env: dict[str, str]) -> bool:
        return all(k in env for k in ("LOCALSTACK_PID", "LOCALSTACK_START", "AWS_ENDPOINT_URL"))

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/_localstack/health", timeout=2) as resp:
                return resp.status == 200 and b'"s3"' in resp.read()
        except OSError:
            return False

    def stop(self, timeout: float = 30, kill: bool = False) -> float:
        """SIGTERM (SIGKILL after `timeout`; at once with `kill`) that PID only; returns once it
        is gone and the port no longer answers. Returns the seconds it took."""
        began = time.monotonic()
        if self.proc is not None and kill:
            self.proc.kill()
            self.proc.wait(10)
        elif self.proc is not None:
            stop(self.proc, timeout)
        elif not _gone(self.pid):
            os.kill(self.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                wait_for(lambda: _gone(self.pid), timeout, every=0.1, what=f"LocalStack pid {self.pid} exited")
            except AssertionError:
                os.kill(self.pid, signal.SIGKILL)
                wait_for(lambda: _gone(self.pid), 10, every=0.1, what=f"LocalStack pid {self.pid} killed")
        wait_for(lambda: not self.healthy(), 10, every=0.1, what="LocalStack port closed")
        return time.monotonic() - began

    def start(self, timeout: float = 120) -> float:
        """Start it again the way devstack did; returns the seconds until it was healthy."""
        began = time.monotonic()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LOCALSTACK_"))}
        env.update(self.settings)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        proc = self.proc
        self.at_exit(lambda: stop(proc, 30))
        self.pid = proc.pid

        def up():
            assert proc.poll() is None, f"LocalStack exited with {proc.returncode}; see {self.log}"
            return self.healthy()

        wait_for(up, timeout, every=0.25, what="LocalStack healthy again")
        return time.monotonic() - began

    def provision(self) -> dict[str, str]:
        from infra.provision import LOCAL_PARAMETERS, provision

        return provision(self.endpoint, parameters=LOCAL_PARAMETERS)


class Stack:
    def __init__(self, logs: Path, at_exit: Callable[[Callable[[], None]], None] = lambda f: None,
                 name: str = "e2e") -> None:
        self.name = name
        self.logs = logs
        self.runner_log = logs / "runner.log"
        self.localstack = LocalStack(dict(os.environ), at_exit) if LocalStack.available(os.environ) else None
        self.database_url = os.environ["DATABASE_URL"]
        self.redis_port = free_port()
        self.env = {**os.environ, **BASE_SETTINGS, "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                    "RATELIMIT_PREFIX": os.environ.get("RATELIMIT_PREFIX", "csv-opener-e2e:ratelimit") + f":{name}"}
        self.env.pop("OPENAI_DUMMY_DELAY_MS", None)
        self.fake_proc = self.redis_proc = self.api_proc = self.runner_proc = None
        self.redis_port_known = False
        self.proxy: RecordingProxy | None = None
        self.runner_overrides: dict[str, str] = {}
        # The limiter's keys for the current test (new_test): learned limits, cooldowns and buckets
        # never carry over from one test to the next.
        self.limiter_prefix = self.env["RATELIMIT_PREFIX"]
        self.test_began = time.time()  # set by the `fresh` fixture
        self._sqs = None

    # ------------------------------------------------------------ processes

    def _spawn(self, name: str, args: list[str], **options) -> subprocess.Popen:
        """Start a child in its own session, its output appended to <logs>/<name>.log."""
        with open(self.logs / f"{name}.log", "ab") as log:
            options.setdefault("stdout", log)
            return subprocess.Popen(args, stderr=log if options["stdout"] is subprocess.PIPE else subprocess.STDOUT,
                                    start_new_session=True, **options)

    def create_account(self, role: str = "member", operator: bool = False) -> None:
        """An account (an operator account if asked) and its key, made with the operators' command
        as an operator would."""
        def admin(*args: str) -> str:
            done = subprocess.run([PYTHON, "-m", "chalicelib.admin", *args], cwd=ROOT, env=self.env,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            return done.stdout.strip().splitlines()[-1]

        self.account_name = f"{self.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.account_id = admin("create-account", self.account_name, *(["--operator"] if operator else []))
        admin("set-limits", self.account_id, "--urls-per-day", "0", "--jobs", "0")  # no quota in these tests
        self.key = admin("create-key", self.account_id, "--role", role, "--name", self.name)

    def forget_account(self) -> None:
        """The account and its jobs go (the throwaway database is shared by every package)."""
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM jobs WHERE account_id = %s", (self.account_id,))
            conn.execute("DELETE FROM accounts WHERE id = %s", (self.account_id,))

    def start(self, *, runner: bool = True, role: str = "member", operator: bool = False) -> Stack:
        """Every process; without `runner`, chunk messages stay on the queue (the fuzz package
        drains them)."""
        self.create_account(role, operator)
        self.start_fake()
        self.start_redis()
        self.start_api()
        if runner:
            self.start_runner()
        return self

    def new_test(self) -> None:
        """A limiter prefix of the test's own for the workers (the runner restarts with it)."""
        self.limiter_prefix = f"{self.env['RATELIMIT_PREFIX']}:t{uuid.uuid4().hex[:8]}"

    @property
    def url(self) -> str:
        """The API's base URL (`chalice local`)."""
        return self.api.base

    @property
    def headers(self) -> dict[str, str]:
        """What a client of the stack's account sends with every call."""
        return {"Authorization": f"Bearer {self.key}"}

    def redis(self) -> redis.Redis:
        """A client of the stack's private Redis."""
        return redis.Redis(port=self.redis_port, socket_connect_timeout=2, socket_timeout=10)

    def start_fake(self) -> None:
        """The fake provider (its limits are its construction config, so a reset keeps them) and
        the recording proxy the workers reach it through."""
        self.fake_proc = self._spawn("fake", [PYTHON, "-m", "tests.support.fake_openai", "--port", "0",
                                              "--latency-ms", "20,50", "--rpm", str(FAKE_RPM),
                                              "--tpm", str(FAKE_TPM)],
                                     cwd=ROOT, stdout=subprocess.PIPE, text=True)
        base_url = self.fake_proc.stdout.readline().strip()  # first line: the base URL
        assert base_url.startswith("http://"), f"fake server did not start: {base_url!r}"
        self.fake = Fake(base_url.removesuffix("/v1"))
        port = int(base_url.removesuffix("/v1").rsplit(":", 1)[1])
        self.proxy = RecordingProxy("127.0.0.1", port).start()
        self.env["OPENAI_BASE_URL"] = f"{self.proxy.url}/v1"

    def start_redis(self) -> None:
        """The private redis-server on `redis_port`. At the first start a port another process took
        since free_port() picked it means another port; later (a fault test's restart) the API
        and the runner know the port, so it must be the same one."""
        for attempt in range(PORT_ATTEMPTS):
            proc = self._spawn("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                         "--save", "", "--appendonly", "no", "--dir", str(self.logs)])
            client = redis.Redis(port=self.redis_port, socket_connect_timeout=1)
            wait_for(lambda proc=proc, client=client: proc.poll() is not None or self._ping(client), 10, every=0.05,
                     what="private redis-server up")
            if proc.poll() is None:
                self.redis_proc, self.redis_port_known = proc, True
                return
            if self.redis_port_known or attempt == PORT_ATTEMPTS - 1:
                raise AssertionError(f"redis-server exited; see {self.logs / 'redis.log'}")
            self.redis_port = free_port()
            self.env["REDIS_URL"] = f"redis://127.0.0.1:{self.redis_port}/0"

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
        """`chalice local` on a free port; a port taken meanwhile by another process (a test run
        beside this one) makes it exit, and it starts again on another."""
        for attempt in range(PORT_ATTEMPTS):
            port = free_port()
            proc = self.api_proc = self._spawn(
                "chalice",
                [CHALICE, "local", "--stage", "local", "--no-autoreload", "--host", "127.0.0.1", "--port", str(port)],
                cwd=ROOT, env=self.env)
            self.api = Api(f"http://127.0.0.1:{port}", self.key)

            def healthy(proc=proc):
                if proc.poll() is not None:
                    return True
                try:
                    return self.api.call("GET", "/health", timeout=5).status == 200
                except OSError:
                    return False

            wait_for(healthy, 60, every=0.25, what="chalice local GET /health 200")
            if proc.poll() is None:
                return
            if attempt == PORT_ATTEMPTS - 1:
                raise AssertionError(f"chalice local exited; see {self.logs / 'chalice.log'}")

    def start_runner(self, **overrides: str) -> None:
        """Start the event runner (if none is running) with the base settings plus `overrides`."""
        if self.runner_proc is not None and self.runner_proc.poll() is None:
            return
        self.runner_overrides = {k: str(v) for k, v in overrides.items()}
        env = {**self.env, "RATELIMIT_PREFIX": self.limiter_prefix, **self.runner_overrides}
        marker = '"runner started"'
        path = self.runner_log
        before = path.read_text(errors="replace").count(marker) if path.exists() else 0
        self.runner_proc = self._spawn("runner", [PYTHON, str(ROOT / "infra/runner.py")], cwd=ROOT, env=env)
        self.runner_prefix = env["RATELIMIT_PREFIX"]

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
        if (self.runner_proc is not None and self.runner_proc.poll() is None and self.runner_overrides == wanted
                and self.runner_prefix == self.limiter_prefix):
            return
        self.stop_runner()
        self.start_runner(**wanted)

    def close(self) -> None:
        for proc in (self.runner_proc, self.api_proc, self.redis_proc, self.fake_proc):
            stop(proc)
        if self.proxy is not None:
            self.proxy.stop()
        if self.fake_proc is not None and self.fake_proc.stdout:
            self.fake_proc.stdout.close()

    # ------------------------------------------------------------ waiting

    def wait_job(self, job_id: str, statuses: tuple[str, ...] = ("completed",), *, urls: int,
                 fraction: float | None = None, stall_s: float = STALL_S, extra_s: float = 0.0) -> dict:
        """Wait (through the API, as a client would) until the job is in `statuses`, or with
        `fraction` until that share of its URLs is done. The wait is proportional to `urls`
        (helpers.time_for, plus `extra_s`) and fails as soon as the job makes no progress for
        `stall_s` s, saying what is stuck."""
        if fraction is not None:
            def reached(job):
                return job["total_rows"] and job["processed_rows"] + job["failed_rows"] >= fraction * job["total_rows"]
            what = f"waiting for job {job_id} to be {fraction:.0%} done"
        else:
            def reached(job):
                return job["status"] in statuses
            what = f"waiting for job {job_id} to be {' or '.join(statuses)}"
        return wait_progress(lambda: self.api.job_tolerant(job_id), reached, timeout=time_for(urls, extra_s),
                             stall_s=stall_s, what=what, diagnose=lambda: self.diagnose(job_id),
                             every=0.05 if fraction is not None else 0.1)

    def runner_entries(self, since: float | None = None) -> list[dict]:
        """The runner's JSON log lines since `since` (default: since the test began)."""
        return log_entries(self.runner_log, self.test_began if since is None else since)

    def sqs(self):
        """An SQS client that gives up quickly (for checks and diagnoses, not for the app)."""
        if self._sqs is None:
            self._sqs = boto3.client("sqs", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1",
                                     aws_access_key_id="test", aws_secret_access_key="test",
                                     config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}))
        return self._sqs

    def queue_depth(self, url: str) -> dict[str, int]:
        attrs = self.sqs().get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                                          "ApproximateNumberOfMessagesDelayed"])["Attributes"]
        return {"visible": int(attrs["ApproximateNumberOfMessages"]),
                "in_flight": int(attrs["ApproximateNumberOfMessagesNotVisible"]),
                "delayed": int(attrs.get("ApproximateNumberOfMessagesDelayed", 0))}

    def diagnose(self, job_id: str | None = None) -> str:
        """What the stack looks like, each part best effort (a fault may be in force)."""
        lines = ["what the stack looks like:"]

        def part(name: str, describe: Callable[[], str]) -> None:
            try:
                lines.append(f"  {name}: {describe()}")
            except Exception as exc:  # noqa: BLE001 - a diagnosis must not hide the failure
                lines.append(f"  {name}: could not be read ({type(exc).__name__}: {str(exc)[:200]})")

        if job_id:
            part("job", lambda: self._describe_job(job_id))
            part("urls", lambda: self._describe_urls(job_id))
        part("runner", self._describe_runner)
        part("chunk queue", lambda: str(self.queue_depth(os.environ["CHUNK_QUEUE_URL"])))
        if os.environ.get("INGEST_QUEUE_URL"):
            part("ingest queue", lambda: str(self.queue_depth(os.environ["INGEST_QUEUE_URL"])))
        part("dead-letter queue", lambda: str(self.queue_depth(os.environ["DLQ_URL"])))
        part("fake provider", lambda: json.dumps({k: v for k, v in self.fake.stats().items()
                                                  if not isinstance(v, dict)}))
        part("redis", lambda: "answers PING" if redis.Redis(port=self.redis_port, socket_connect_timeout=1,
                                                             socket_timeout=2).ping() else "no answer")
        if self.localstack is not None:
            part("localstack", lambda: f"pid {self.localstack.pid}, "
                                       + ("healthy" if self.localstack.healthy() else "NOT answering"))
        part("logs", lambda: str(self.logs))
        return "\n".join(lines)

    def _describe_job(self, job_id: str) -> str:
        with connect(self.database_url) as conn:
            job = conn.execute(
                """SELECT status, processed_rows, failed_rows, total_rows, chunks, undispatched, error,
                          round(extract(epoch FROM now() - updated_at)::numeric, 1) AS idle_s
                   FROM jobs WHERE id = %s""", (job_id,)).fetchone()
        return "not found" if job is None else ", ".join(f"{k}={v}" for k, v in job.items())

    def _describe_urls(self, job_id: str) -> str:
        with connect(self.database_url) as conn:
            rows = conn.execute(
                """SELECT status, count(*) AS n, count(DISTINCT chunk) AS chunks,
                          count(DISTINCT claimed_by) AS owners,
                          count(*) FILTER (WHERE lease_until < now()) AS expired_leases
                   FROM urls WHERE job_id = %s GROUP BY status ORDER BY status""", (job_id,)).fetchall()
        return "; ".join(f"{r['status']} {r['n']} in {r['chunks']} chunk(s)"
                         + (f" held by {r['owners']} owner(s), {r['expired_leases']} lease(s) expired"
                            if r["status"] == "processing" else "") for r in rows) or "none"

    def _describe_runner(self) -> str:
        proc = self.runner_proc
        if proc is None:
            state = "NOT running (stopped or killed by the test)"
        else:
            state = f"pid {proc.pid} alive" if proc.poll() is None else f"pid {proc.pid} EXITED with {proc.returncode}"
        text = self.runner_log.read_text(errors="replace") if self.runner_log.exists() else ""
        dead_threads = text.count("Exception in thread")
        problems = [e for e in self.runner_entries() if e.get("level") in ("error", "critical")]
        recent = "; ".join(f"{e['ts']} {e['message']}"
                           + (f" ({e['exception'].strip().splitlines()[-1][:160]})" if e.get("exception") else "")
                           for e in problems[-3:])
        return (f"{state}, overrides {self.runner_overrides or 'none'}, "
                f"{dead_threads} thread(s) died with an exception (whole log); {len(problems)} error line(s) "
                "this test"
                + (f", last: {recent}" if recent else ""))

    # ------------------------------------------------------------ state

    def terminate_db_connections(self) -> int:
        """pg_terminate_backend every other connection to the test database; returns how many."""
        with connect(self.database_url) as conn:
            return conn.execute(
                """SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS n FROM pg_stat_activity
                   WHERE datname = current_database() AND pid <> pg_backend_pid()"""
            ).fetchone()["n"]


def drain_queues() -> None:
    """Leave no e2e chunk messages (delayed continuations included) for the next test package."""
    from chalicelib import deps

    sqs = deps.chunk_queue().sqs
    for url in (os.environ.get("CHUNK_QUEUE_URL"), os.environ.get("DROPS_QUEUE_URL"),
                os.environ.get("INGEST_QUEUE_URL")):
        if url:
            try:
                sqs.purge_queue(QueueUrl=url)
            except Exception:  # noqa: BLE001 - best effort clean-up
                pass


@contextmanager
def package_stack(request, name: str, env: dict[str, str] | None = None, *, runner: bool = True,
                  role: str = "member", operator: bool = False) -> Iterator[Stack]:
    """The body of a package-scoped `stack` fixture (e2e, CLI, browser, fuzz): a Stack started
    with `env` over the base settings (and a `role` key for its account, an operator account if
    asked), closed, its account deleted and its queues drained at the end; the processes' logs are
    kept when a test of the package failed."""
    require_test_stack()
    logs = Path(tempfile.mkdtemp(prefix=f"csv-opener-{name}-"))
    failed_before = request.session.testsfailed
    s = Stack(logs, request.config.add_cleanup, name)
    s.env.update(env or {})
    started = False
    try:
        s.start(runner=runner, role=role, operator=operator)
        started = True
        yield s
    finally:
        s.close()
        drain_queues()
        if getattr(s, "account_id", None):
            s.forget_account()
        if started and request.session.testsfailed == failed_before:
            shutil.rmtree(logs, ignore_errors=True)
        else:  # keep the processes' logs (chalice, runner, fake, redis) for the failure
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(f"[{name}] process logs kept in {logs}")
