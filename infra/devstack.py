"""Run the local stack for `make dev` and `make test`.

    python infra/devstack.py dev        # LocalStack :4566 + resources + DB csv_opener + chalice local :8000 + runner
    python infra/devstack.py test [ARGS] # private LocalStack on a free port + throwaway DB, then pytest ARGS
    python infra/devstack.py migrate     # apply migrations to DATABASE_URL
    python infra/devstack.py bench [NAMES] # as test, then `python -m bench.NAME` for each (default: all)

Settings come from the environment and an optional `.env` (the environment wins). Everything
this script starts it stops again, by PID, on exit or Ctrl-C; what it did not start (a LocalStack
already serving on :4566, the machine's PostgreSQL and Redis) it leaves alone.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.migrate import migrate  # noqa: E402
from infra.provision import LOCAL_PARAMETERS, provision  # noqa: E402

LOCALSTACK_PYTHON = ROOT / ".venv-localstack" / "bin" / "python"
DEV_LOCALSTACK_PORT = 4566
DEV_API_PORT = 8000
DEFAULTS = {
    "DATABASE_URL": "postgresql://127.0.0.1:5432/csv_opener",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
}
PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
REDIS_START = ('redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no '
               "--dir /var/lib/redis --logfile /var/log/redis/ci.log")


def say(message: str) -> None:
    print(f"[devstack] {message}", flush=True)


def load_env() -> dict[str, str]:
    env = dict(DEFAULTS)
    env.update({k: v for k, v in dotenv_values(ROOT / ".env").items() if v is not None})
    env.update(os.environ)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def check_services(env: dict[str, str]) -> None:
    """Fail early, saying which service is missing and how to start it."""
    problems = []
    try:
        psycopg.connect(with_database(env["DATABASE_URL"], "postgres"), connect_timeout=3).close()
    except psycopg.Error as exc:
        problems.append(f"PostgreSQL is not answering at {env['DATABASE_URL']} ({exc}).\n"
                        f"  Start it with: {PG_START}")
    try:
        redis.Redis.from_url(env["REDIS_URL"], socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        problems.append(f"Redis is not answering at {env['REDIS_URL']} ({exc}).\n  Start it with: {REDIS_START}")
    if problems:
        sys.exit("[devstack] cannot start:\n" + "\n".join(problems))


def create_database(env: dict[str, str], name: str) -> bool:
    """Create database `name` if missing; True when this call created it."""
    with psycopg.connect(with_database(env["DATABASE_URL"], "postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        conn.execute(f'CREATE DATABASE "{name}"')  # name is ours, never user input
        return True


def drop_database(env: dict[str, str], name: str) -> None:
    with psycopg.connect(with_database(env["DATABASE_URL"], "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def localstack_healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_localstack/health", timeout=2) as resp:
            return resp.status == 200 and b'"s3"' in resp.read()
    except OSError:
        return False


def stop_process(proc: subprocess.Popen, name: str, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    say(f"stopping {name} (pid {proc.pid})")
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


STARTED_LOCALSTACKS: dict[int, dict[str, str]] = {}  # port -> LOCALSTACK_PID, _DIR, _START for tests


class PortTaken(Exception):
    """Our LocalStack could not have the port: another process took it after free_port()."""


@contextmanager
def localstack(port: int, volume_dir: Path, reuse: bool = True) -> Iterator[str]:
    """Start LocalStack (S3, SQS, CloudFormation, SSM, CloudWatch, SNS) in host mode; yields its URL. With `reuse`
    (make dev), one already answering on the port is used; without (a private stack), that, or
    ours exiting before it answers, is PortTaken."""
    endpoint = f"http://127.0.0.1:{port}"
    if localstack_healthy(port):
        if not reuse:
            raise PortTaken(port)
        say(f"LocalStack already running at {endpoint}; using it")
        yield endpoint
        return
    if not LOCALSTACK_PYTHON.exists():
        sys.exit("[devstack] .venv-localstack is missing: run `make venv` (make dev/test do it for you)")
    volume_dir.mkdir(parents=True, exist_ok=True)
    log_path = volume_dir / "localstack.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LOCALSTACK_"))}
    # cloudwatch and sns: the alarms, their topic and the dashboard of infra/resources.yaml
    settings = dict(SERVICES="s3,sqs,cloudformation,ssm,cloudwatch,sns", GATEWAY_LISTEN=f"127.0.0.1:{port}",
                    LOCALSTACK_VOLUME_DIR=str(volume_dir), SQS_ENDPOINT_STRATEGY="path",
                    DISABLE_EVENTS="1", SKIP_SSL_CERT_DOWNLOAD="1", SKIP_INFRA_DOWNLOADS="1",
                    # check presigned URLs as S3 does: a PUT of another length than the signed one is refused
                    S3_SKIP_SIGNATURE_VALIDATION="0")
    env.update(settings)
    argv = [str(LOCALSTACK_PYTHON), "-m", "localstack.runtime.main"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=volume_dir,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not localstack_healthy(port) or proc.poll() is not None:
            if proc.poll() is not None:
                if not reuse:
                    raise PortTaken(port)
                sys.exit(f"[devstack] LocalStack exited with {proc.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                sys.exit(f"[devstack] LocalStack not healthy after 90 s; see {log_path}")
            time.sleep(0.25)
        say(f"LocalStack ready at {endpoint} (pid {proc.pid}, log {log_path})")
        # for the e2e test that restarts it: how to stop it and start it again the same way (the
        # environment minus AWS_* and LOCALSTACK_*, plus `settings`)
        STARTED_LOCALSTACKS[port] = {
            "LOCALSTACK_PID": str(proc.pid), "LOCALSTACK_DIR": str(volume_dir),
            "LOCALSTACK_START": json.dumps({"argv": argv, "env": settings, "cwd": str(volume_dir),
                                            "log": str(log_path)})}
        yield endpoint
    finally:
        stop_process(proc, "LocalStack")


@contextmanager
def private_localstack(volume_dir: Path, attempts: int = 3) -> Iterator[str]:
    """LocalStack on a free port of its own, never another run's: free_port() only guesses, so a
    port that is taken by the time LocalStack binds it is given up for another."""
    for attempt in range(attempts):
        port = free_port()
        try:
            with localstack(port, volume_dir / f"port-{port}", reuse=False) as endpoint:
                yield endpoint
            return
        except PortTaken:
            say(f"port {port} was taken meanwhile; trying another ({attempt + 1} of {attempts})")
    sys.exit(f"[devstack] LocalStack could not get a free port in {attempts} attempts")


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (each held until all are picked, so none repeats)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _pings(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=2) as node:
            return bool(node.ping())
    except redis.RedisError:
        return False


def cluster_state_ok(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=2) as node:
            return node.cluster("INFO").get("cluster_state") == "ok"
    except redis.RedisError:
        return False


@contextmanager
def redis_cluster(directory: Path, nodes: int = 3) -> Iterator[Callable[[], str]]:
    """A private Redis Cluster of `nodes` primaries (no replicas, nothing saved) on free ports, for
    the cluster tests. Yields `ready()`, which waits until the cluster is formed and returns the URL
    of one node: forming it takes redis-cli a second or two of waiting, which can overlap the
    LocalStack start. The nodes are stopped by PID afterwards. Each node's cluster bus port is
    picked free too (the default, port + 10000, may be taken or beyond 65535)."""
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        sys.exit("[devstack] redis-server and redis-cli are needed for the Redis Cluster tests")
    directory.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    picked = free_ports(2 * nodes)
    ports, bus_ports = picked[:nodes], picked[nodes:]
    procs: list[tuple[int, subprocess.Popen]] = []
    create: subprocess.Popen | None = None
    try:
        for port, bus_port in zip(ports, bus_ports, strict=True):
            with open(directory / f"redis-{port}.log", "ab") as log:
                procs.append((port, subprocess.Popen(
                    ["redis-server", "--cluster-enabled", "yes",
                     "--cluster-config-file", str(directory / f"nodes-{port}.conf"),
                     "--port", str(port), "--cluster-port", str(bus_port), "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no", "--dir", str(directory)],
                    stdout=log, stderr=subprocess.STDOUT, cwd=directory, start_new_session=True)))
        deadline = time.monotonic() + 30
        for port, proc in procs:
            while not _pings(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"[devstack] Redis Cluster node :{port} did not start; see {directory}/redis-{port}.log")
                time.sleep(0.02)
        create_log = directory / "cluster-create.log"
        with open(create_log, "wb") as log:
            create = subprocess.Popen(
                ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def ready() -> str:
            waiting = time.monotonic()
            try:
                code = create.wait(60)
            except subprocess.TimeoutExpired:
                code = None
            if code != 0:
                sys.exit(f"[devstack] redis-cli --cluster create failed:\n{create_log.read_text()}")
            deadline = time.monotonic() + 30
            while not all(cluster_state_ok(p) for p in ports):
                if time.monotonic() > deadline:
                    sys.exit(f"[devstack] Redis Cluster not ok after 30 s; see the logs in {directory}")
                time.sleep(0.05)
            say(f"Redis Cluster ready on ports {', '.join(map(str, ports))} (pids "
                f"{', '.join(str(p.pid) for _, p in procs)}; {time.monotonic() - started:.2f} s since its start, "
                f"{time.monotonic() - waiting:.2f} s of it waited for here)")
            return f"redis://127.0.0.1:{ports[0]}/0"

        yield ready
    finally:
        if create is not None:
            stop_process(create, "redis-cli --cluster create", timeout=5)
        for port, proc in procs:
            stop_process(proc, f"Redis Cluster node :{port}")


def stack_env(env: dict[str, str], endpoint: str, outputs: dict[str, str]) -> dict[str, str]:
    port = urlsplit(endpoint).port
    env = dict(env)
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        UPLOAD_BUCKET=outputs["BucketName"],
        CHUNK_QUEUE_URL=f"{endpoint}/000000000000/{outputs['ChunkQueueArn'].rsplit(':', 1)[1]}",
        DLQ_URL=f"{endpoint}/000000000000/{outputs['ChunkDeadLetterQueueArn'].rsplit(':', 1)[1]}",
        INGEST_QUEUE_URL=f"{endpoint}/000000000000/{outputs['IngestQueueArn'].rsplit(':', 1)[1]}",
        DROPS_QUEUE_URL=f"{endpoint}/000000000000/{LOCAL_PARAMETERS['DropsQueueName']}",
        LOCALSTACK_PORT=str(port),
    )
    return env


@contextmanager
def private_stack(kind: str) -> Iterator[dict[str, str]]:
    """A LocalStack on a free port with the resources, and a throwaway migrated database;
    yields the environment to run tests or benchmarks in. Both are removed afterwards."""
    env = load_env()
    check_services(env)
    run_id = secrets.token_hex(4)
    db_name = f"csv_opener_{kind}_{run_id}"
    with ExitStack() as stack:
        began = time.monotonic()
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"csv-opener-{kind}-")))
        endpoint = stack.enter_context(private_localstack(tmp / "localstack"))
        started = time.monotonic()
        outputs = provision(endpoint, parameters=LOCAL_PARAMETERS)
        provisioned = time.monotonic()
        create_database(env, db_name)
        stack.callback(drop_database, env, db_name)
        run_env = stack_env(env, endpoint, outputs)
        run_env.update(STARTED_LOCALSTACKS.get(urlsplit(endpoint).port, {}))
        run_env.update(
            DATABASE_URL=with_database(env["DATABASE_URL"], db_name),
            RATELIMIT_PREFIX=f"csv-opener-{kind}-{run_id}:ratelimit",
            OPENAI_DUMMY_MODE=env.get("OPENAI_DUMMY_MODE", "true"),
            # No internet here: every made-up test domain would cost a page fetch its full 5 s of
            # failed DNS. Tests that exercise page context ask for it (against local fake sites).
            PAGE_CONTEXT_DEFAULT=env.get("PAGE_CONTEXT_DEFAULT", "false"),
            # tests/support/teststack.py: the stack tests run only where this names the database
            CSV_OPENER_TEST_STACK=db_name,
        )
        run_env.pop("OPENAI_API_KEY", None)  # tests and benchmarks never call a paid API
        migrate(run_env["DATABASE_URL"])
        # the fixed cost of every `make test` / `make bench`, before the first test
        say(f"database {db_name} ready; stack ready in {time.monotonic() - began:.1f} s (LocalStack "
            f"{started - began:.1f} s, resources {provisioned - started:.1f} s, database "
            f"{time.monotonic() - provisioned:.1f} s)")
        yield run_env


def run_tests(pytest_args: list[str]) -> int:
    # the Redis Cluster forms while LocalStack starts; its URL is for tests/integration/generation/test_cluster.py
    with (tempfile.TemporaryDirectory(prefix="csv-opener-cluster-") as cluster_dir,
          redis_cluster(Path(cluster_dir)) as cluster_ready,
          private_stack("test") as test_env):
        test_env = {**test_env, "REDIS_CLUSTER_URL": cluster_ready()}
        code = subprocess.call([sys.executable, "-m", "pytest", *pytest_args], env=test_env, cwd=ROOT)
    if code == 5:
        say("pytest collected no tests: failing")
        return 1
    return code


BENCHMARKS = ("ingest", "overhead", "utilization", "fairshare", "pagecontext",  # what `make bench` runs, in order
              "learned", "aimd", "batch", "refusal", "quality", "estimate")


def run_bench(args: list[str]) -> int:
    """Each benchmark module in turn, in a private stack as for tests. Leading names pick
    benchmarks (default: all of BENCHMARKS); from the first '-' on, arguments go to each."""
    split = next((i for i, a in enumerate(args) if a.startswith("-")), len(args))
    names, options = args[:split] or list(BENCHMARKS), args[split:]
    unknown = [n for n in names if not (ROOT / "bench" / f"{n}.py").exists()]
    if unknown:
        sys.exit(f"[devstack] no benchmark named {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    code = 0
    with private_stack("bench") as bench_env:
        for name in names:
            say(f"running bench.{name}")
            code = subprocess.call([sys.executable, "-m", f"bench.{name}", *options], env=bench_env, cwd=ROOT) or code
    return code


def requeue(env: dict[str, str]) -> int:
    """Jobs left processing (or ingesting) by an earlier `make dev` lost their queued chunks (and
    ingest messages) with LocalStack."""
    code = ("from chalicelib import deps, jobs; "
            "print(jobs.requeue_ingests(deps.conn(), deps.chunk_queue()) "
            "+ jobs.requeue_unfinished(deps.conn(), deps.chunk_queue()))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


DEV_KEY_FILE = ROOT / ".dev-key"  # git-ignored: the dev account's admin key, shown in the banner


def dev_key(database_url: str) -> str:
    """The `dev` account's admin key: the one kept in .dev-key while it still works against this
    database, else a new one (keys are stored only as hashes, so a lost one cannot be shown again)."""
    from chalicelib import accounts
    from chalicelib.adapters import db

    conn = db.connect(database_url)
    try:
        # An operator account: the developer sees the queues, provider limits and /health details.
        account = accounts.ensure_account(conn, "dev", operator=True)
        if not account["operator"]:  # made before accounts had the flag
            accounts.set_operator(conn, str(account["id"]))
        if DEV_KEY_FILE.exists():
            key = DEV_KEY_FILE.read_text().strip()
            try:
                accounts.Authenticator(lambda: conn, ttl_s=0).authenticate(key)
                return key
            except accounts.Unauthorized:
                pass
        key, _row = accounts.create_key(conn, str(account["id"]), role="admin", name="make dev")
    finally:
        conn.close()
    DEV_KEY_FILE.write_text(key + "\n")
    DEV_KEY_FILE.chmod(0o600)
    return key


def run_dev() -> int:
    env = load_env()
    check_services(env)
    db_name = urlsplit(env["DATABASE_URL"]).path.lstrip("/") or "csv_opener"
    with ExitStack() as stack:
        endpoint = stack.enter_context(localstack(DEV_LOCALSTACK_PORT, ROOT / ".localstack"))
        outputs = provision(endpoint, parameters=LOCAL_PARAMETERS)
        say(f"resources ready: {outputs['BucketName']}, {outputs['ChunkQueueArn'].rsplit(':', 1)[1]}")
        if create_database(env, db_name):
            say(f"created database {db_name}")
        applied = migrate(env["DATABASE_URL"])
        say(f"migrations applied: {', '.join(applied) or 'none (up to date)'}")
        dev_env = stack_env(env, endpoint, outputs)
        key = dev_key(env["DATABASE_URL"])
        resumed = requeue(dev_env)
        if resumed:
            say(f"{resumed} chunk message(s) of unfinished jobs enqueued again (LocalStack keeps no messages)")
        procs = {
            "chalice local": subprocess.Popen(
                [str(Path(sys.executable).parent / "chalice"), "local", "--stage", "local",
                 "--host", "127.0.0.1", "--port", str(DEV_API_PORT), "--no-autoreload"],
                env=dev_env, cwd=ROOT, start_new_session=True),
        }
        runner = ROOT / "infra" / "runner.py"
        if runner.exists():
            procs["event runner"] = subprocess.Popen([sys.executable, str(runner)], env=dev_env, cwd=ROOT,
                                                     start_new_session=True)
        for name, proc in procs.items():
            # the runner lets chunks in flight save (LLM calls may take up to OPENAI_TIMEOUT_S)
            stack.callback(stop_process, proc, name, 45 if name == "event runner" else 15)
        say(f"API on http://127.0.0.1:{DEV_API_PORT} — Ctrl-C stops everything")
        say(f"dev account admin key (also in .dev-key): {key}")
        say(f'try: curl -H "Authorization: Bearer $(cat .dev-key)" http://127.0.0.1:{DEV_API_PORT}/api/account')
        try:
            while all(p.poll() is None for p in procs.values()):
                time.sleep(0.5)
            dead = [n for n, p in procs.items() if p.poll() is not None]
            say(f"{', '.join(dead)} exited; stopping the rest")
            return 1
        except KeyboardInterrupt:
            say("Ctrl-C: stopping")
            return 0


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # `kill` stops the stack as cleanly as Ctrl-C; SIGINT is set explicitly because a shell
    # starting us in the background would have it ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    command, *rest = sys.argv[1:] or ["help"]
    if command == "test":
        return run_tests(rest)
    if command == "dev":
        return run_dev()
    if command == "bench":
        return run_bench(rest)
    if command == "migrate":
        env = load_env()
        applied = migrate(env["DATABASE_URL"])
        say(f"migrations applied: {', '.join(applied) or 'none (up to date)'}")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
