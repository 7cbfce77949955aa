"""Issue 19 item 3: one tenant's receivers that never answer cannot stall the sweep. Webhook
deliveries run in a small pool, within a time budget taken from what is left of the handler's
time, at most SWEEP_PER_ACCOUNT of one account per sweep and accounts taken in turns; the other
steps (requeue, exports, drop starts, batch polling) run whatever the webhooks do; what was not
attempted stays due, untouched, for the next sweep."""

from __future__ import annotations

import dataclasses
import socket
import threading
import uuid

import openai
import pytest

from chalicelib import deps, jobs
from chalicelib.adapters import db
from chalicelib.generation.batches import BatchRunner
from chalicelib.generation.openers import OpenerGenerator
from chalicelib.generation.ratelimit import RateLimiter
from chalicelib.jobs.sweep import HANDLER_TIMEOUT_S, RESERVE_S
from chalicelib.outbound import Fetcher, webhooks
from tests.support.accounts import service_account
from tests.support.api import purge_queue
from tests.support.fake_openai import FakeOpenAI
from tests.support.webhook_receiver import Receiver

ALLOW = ("127.0.0.1/32",)


class Tarpit:
    """A TCP server that accepts every connection and never answers (nor closes)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            self.held.append(conn)

    def close(self) -> None:
        self._stop.set()
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture(autouse=True)
def clean(conn, settings):
    purge_queue(settings.chunk_queue_url)


@pytest.fixture
def tarpit():
    t = Tarpit()
    yield t
    t.close()


@pytest.fixture
def receiver():
    with Receiver(status=204) as r:
        yield r


def a_job(conn, settings, account_id: str, mode: str | None = None) -> str:
    """A job of one URL; started (in `mode`) when a mode is given."""
    data = b"website\n" + f"s-{uuid.uuid4().hex[:8]}.example.com\n".encode()
    job_id = jobs.create_from_upload(conn, deps.storage(), account_id=account_id, file_name="w.csv", data=data,
                                     url_column=None)["job"]["id"]
    if mode is not None:
        jobs.start(conn, deps.storage(), deps.chunk_queue(), settings, account_id, job_id, mode=mode,
                   page_context=False)
    return job_id


def completed_without_export(conn, settings) -> str:
    """A job completed a while ago whose results CSV a crash never wrote."""
    job_id = a_job(conn, settings, service_account(conn), mode="live")
    with conn.transaction():
        conn.execute("UPDATE urls SET status = 'completed', opener = 'Hello.' WHERE job_id = %s", (job_id,))
        conn.execute("UPDATE jobs SET status = 'completed', processed_rows = total_rows, "
                     "finished_at = now() - interval '5 minutes', result_path = NULL WHERE id = %s", (job_id,))
    purge_queue(settings.chunk_queue_url)
    return job_id


def due_deliveries_to(conn, job_id: str, url: str, count: int) -> None:
    """`count` deliveries of one job, due now (oldest first), none attempted yet."""
    conn.execute(
        """INSERT INTO webhook_deliveries (job_id, event, url, body, created_at, next_attempt_at)
           SELECT %s, 'job.completed', %s, '{"type":"job.completed"}', now() - make_interval(secs => n),
                  now() - make_interval(secs => n)
           FROM generate_series(1, %s) AS n""", (job_id, url, count))


def test_receivers_that_never_answer_do_not_hold_the_other_steps_and_nothing_is_lost(
        conn, settings, tarpit, receiver, make_account):
    # tenant A: 50 deliveries due to a tarpit; tenant B: one, to a receiver that answers
    a, b = make_account().id, make_account().id
    a_job_id = a_job(conn, settings, a)
    due_deliveries_to(conn, a_job_id, f"http://127.0.0.1:{tarpit.port}/hook", 50)
    b_job_id = a_job(conn, settings, b)
    # another host name for the same server: the fetcher's per-host slots are the tarpit's
    due_deliveries_to(conn, b_job_id, receiver.url.replace("127.0.0.1", "localhost"), 1)
    unexported = completed_without_export(conn, settings)
    account_id = service_account(conn)
    # an open Batch API batch the provider has finished
    live = dataclasses.replace(settings, openai_dummy_mode=False, openai_api_key="sk-test", chunk_size=10)
    with FakeOpenAI() as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)
        generator = OpenerGenerator(client, RateLimiter(deps.redis_client(), 0, 0, prefix=uuid.uuid4().hex),
                                    "gpt-4o-mini", max_retries=1)
        runner = BatchRunner(get_conn=deps.conn, client=client, generator=generator, settings=live,
                             completed=lambda job: None, notify=lambda job: None)
        batch_job = a_job(conn, live, account_id, mode="batch")
        purge_queue(settings.chunk_queue_url)
        assert runner.submit_chunk(db.get_job(conn, batch_job), 0) == 1
        fake.age_batches(86_400)  # the provider has finished it

        fetcher = Fetcher(allow_networks=ALLOW, timeout_s=0.5)
        # what the Lambda context says is left: 7 s; the webhooks get that less the reserve
        done = jobs.sweep(conn, deps.conn, deps.storage(), deps.chunk_queue(), settings, fetcher,
                          poll_batches=runner.poll, webhook_box=deps.webhook_box, remaining_s=lambda: 7.0)

    assert done["errors"] == {}
    assert done["exported"] == 1 and db.get_job(conn, unexported)["result_path"] is not None
    assert done["batches"]["ingested"] == 1 and db.get_job(conn, batch_job)["status"] == "completed"

    report = done["webhooks"]
    # the budget the sweep kept to: what was left, less the reserve, within the handler's timeout
    assert report["budget_s"] == 7.0 - RESERVE_S == 2.0
    assert report["attempt_timeout_s"] == 0.5 and report["workers"] == webhooks.SWEEP_WORKERS
    assert RESERVE_S + webhooks.SWEEP_BUDGET_S < HANDLER_TIMEOUT_S
    # no attempt started that could end after the budget: at most workers x (budget / timeout)
    assert 1 <= report["attempted"] <= webhooks.SWEEP_WORKERS * 4 + 1 and report["attempted"] < report["due"]
    # A's share capped; B's delivery taken in its turn, not behind A's 50
    assert report["due"] == webhooks.SWEEP_PER_ACCOUNT + 1
    assert len(receiver.requests) == 1 and report["delivered"] == 1
    rows = conn.execute("SELECT attempts, last_error, next_attempt_at <= now() AS due FROM webhook_deliveries "
                        "WHERE job_id = %s", (a_job_id,)).fetchall()
    tried = [r for r in rows if r["attempts"] == 1]
    untouched = [r for r in rows if r["attempts"] == 0]
    assert len(tried) == report["failed"] == report["attempted"] - 1 and len(tried) + len(untouched) == 50
    assert all("timed out" in r["last_error"] and not r["due"] for r in tried)  # next at +30 s
    assert all(r["due"] and r["last_error"] is None for r in untouched)  # still due: nothing lost
    assert report["left_due"] == report["due"] - report["attempted"]


def test_a_step_that_raises_is_reported_and_the_others_still_run(conn, settings):
    unexported = completed_without_export(conn, settings)

    def poll_batches():
        raise RuntimeError("provider unreachable")

    done = jobs.sweep(conn, deps.conn, deps.storage(), deps.chunk_queue(), settings,
                      Fetcher(allow_networks=ALLOW, timeout_s=0.5), poll_batches=poll_batches,
                      webhook_box=deps.webhook_box, remaining_s=lambda: 7.0)
    assert done["errors"] == {"batches": "RuntimeError: provider unreachable"}
    assert done["exported"] == 1 and db.get_job(conn, unexported)["result_path"] is not None and "webhooks" in done


def test_due_deliveries_take_accounts_in_turns_and_cap_each(conn, settings, make_account):
    a, b, c = (make_account().id for _ in range(3))
    for account_id, count in ((a, 30), (b, 2), (c, 1)):
        due_deliveries_to(conn, a_job(conn, settings, account_id), "http://127.0.0.1:9/", count)
    due = webhooks.due_deliveries(conn, limit=100, per_account=5)
    owners = [str(d["account_id"]) for d in due]
    assert owners.count(a) == 5 and owners.count(b) == 2 and owners.count(c) == 1
    assert set(owners[:3]) == {a, b, c}  # every account's first before anyone's second
    assert len(webhooks.due_deliveries(conn, limit=4, per_account=5)) == 4
