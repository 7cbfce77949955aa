"""Fault tests: the whole system (see conftest.py) keeps its promises while things break mid-run.

After each fault: every URL is `completed` or `failed` with an error, the job's counters equal
the rows, no job stays `processing`, and no URL is generated twice (from the fake server's
per-URL counts of successful answers; the only exception is an answer a SIGKILLed process got and
could not save). The shared limiter runs with a real limit just below the provider's (conftest
FAKE_RPM / OPENAI_RPM): every 429 pauses every worker (no request reaches the provider during a
pause, beyond the ones already in flight) and after the first pause the 429 share stays under
MAX_429_SHARE (the storm test states its own bound).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import uuid

import boto3
import pytest
import redis

from chalicelib.generation.ratelimit import RateLimiter
from tests.support.e2e import (
    EXTRA_COLUMNS,
    assert_finished_cleanly,
    assert_limiter_kept_its_promises,
    assert_openers_came_from_the_llm,
    connect,
    figures,
    job_row,
    limiter_figures,
    url_rows,
    wait_for,
)
from tests.support.e2e import make_csv as _make_csv
from tests.support.stack import FAKE_TPM

pytestmark = pytest.mark.slow

# Below the provider's limit the limiter should meet (almost) no 429 at all; a stray one from
# requests bunching up on the way is allowed for.
MAX_429_SHARE = 0.02


def make_csv(n: int):
    return _make_csv(f"flt{uuid.uuid4().hex[:6]}", n)


def report(capsys, line: str) -> None:
    with capsys.disabled():
        print("\n" + line)


def start_job(stack, n: int) -> tuple[str, int, float]:
    csv_file = make_csv(n)
    job_id = stack.api.upload(csv_file.name, csv_file.data)["job"]["id"]
    began = time.monotonic()
    stack.api.process(job_id)
    return job_id, csv_file.valid, began


def finish(stack, capsys, name: str, job_id: str, total: int, began: float, *, stall_s: float | None = None,
           extra_s: float = 0.0, allowed_extra: dict[str, int] | None = None, note="",
           max_429_share: float = MAX_429_SHARE):
    """Wait for the job (failing fast if it is stuck), check the promises, print and return the
    figures (`note`: text, or a function giving it once the job is done)."""
    stack.wait_job(job_id, urls=total, extra_s=extra_s, **({"stall_s": stall_s} if stall_s else {}))
    seconds = time.monotonic() - began
    note = note() if callable(note) else note
    rows = assert_finished_cleanly(stack.database_url, job_id, total)
    stats = stack.fake.wait_quiet(timeout=30)
    fig = figures(stats, rows, seconds, allowed_extra)
    lim = limiter_figures(stack.proxy.exchanges(since=stack.test_began), stack.runner_entries())
    report(capsys, fig.line(name) + (f"; {note}" if note else "") + f"\n[e2e]   {lim.line()}")
    assert_openers_came_from_the_llm(stats, rows)
    assert fig.duplicates == 0, fig
    assert lim.rate_limited == stats["rate_limited"], (lim, stats["rate_limited"])  # the proxy saw them all
    assert_limiter_kept_its_promises(lim, max_429_share)
    return fig, rows, stats


# A killed runner's rows and messages are taken again after LEASE_SECONDS and RUNNER_VISIBILITY_S
# (the base settings' 15 s and 10 s): shorter for the tests that wait for them.
QUICK_RECOVERY = {"LEASE_SECONDS": "6", "RUNNER_VISIBILITY_S": "6"}


@pytest.mark.runner(**QUICK_RECOVERY)
def test_sigkill_a_runner_mid_chunk(fresh, capsys):
    """The runner process dies with SIGKILL while its workers hold leased rows; a new runner
    (after the killed messages become visible again) finishes every URL. Its rows' leases and
    messages come back sooner than the base settings' (the job stands still that long): leases
    are renewed at a third of LEASE_SECONDS, the message's visibility at a third of
    RUNNER_VISIBILITY_S, as with any."""
    stack = fresh
    job_id, total, began = start_job(stack, 800)
    stack.wait_job(job_id, urls=int(0.3 * total), fraction=0.3)
    # Kill while rows are held (not in the moment between two chunks, when none is).
    wait_for(lambda: any(r["status"] == "processing" for r in url_rows(stack.database_url, job_id)), 30,
             every=0.01, what="rows held by the runner", diagnose=lambda: stack.diagnose(job_id))
    stack.kill_runner()
    killed_at = time.monotonic()
    # What the kill destroyed: answers the dead process got but never saved. Those URLs are
    # generated again by design; any *other* second generation counts as a duplicate.
    at_kill_stats = stack.fake.wait_quiet()
    at_kill = url_rows(stack.database_url, job_id)
    held = sum(r["status"] == "processing" for r in at_kill)
    lost = {r["url"]: 1 for r in at_kill if r["status"] != "completed" and at_kill_stats["ok_by_url"].get(r["url"])}
    assert held > 0, "the kill did not land mid-chunk"
    assert sum(r["status"] == "completed" for r in at_kill) < total

    stack.start_runner(**QUICK_RECOVERY)
    # The killed runner's messages come back after RUNNER_VISIBILITY_S and its rows once their
    # LEASE_SECONDS run out: the job may stand still that long.
    quiet = int(QUICK_RECOVERY["LEASE_SECONDS"]) + int(QUICK_RECOVERY["RUNNER_VISIBILITY_S"]) + 15
    fig, rows, stats = finish(stack, capsys, "SIGKILL runner", job_id, total, began, stall_s=quiet, extra_s=quiet,
                              allowed_extra=lost,
                              note=lambda: f"{held} rows held by the killed runner, {len(lost)} answers lost "
                                           f"with it, job done {time.monotonic() - killed_at:.1f} s after the kill")
    raw = sum(max(0, stats["ok_by_url"].get(r["url"], 0) - 1) for r in rows)
    assert raw == len(lost), (raw, len(lost))  # exactly the lost answers were generated again
    assert fig.failed == 0


def test_redis_restarts_mid_run(fresh, capsys):
    stack = fresh
    job_id, total, began = start_job(stack, 600)
    stack.wait_job(job_id, urls=int(0.3 * total), fraction=0.3)
    stack.stop_redis()
    down_at = time.monotonic()
    health = stack.api.call("GET", "/health", timeout=20)
    assert health.status == 503 and health.json()["checks"]["redis"]["ok"] is False, health.body
    time.sleep(max(0.0, 2.0 - (time.monotonic() - down_at)))
    stack.start_redis()
    down_for = time.monotonic() - down_at
    wait_for(lambda: stack.api.call("GET", "/health").status == 200, 20, what="health back to 200",
             diagnose=stack.diagnose)
    fig, _, _ = finish(stack, capsys, "Redis restart", job_id, total, began, extra_s=down_for,
                       note=f"Redis down {down_for:.1f} s")
    assert fig.failed == 0


def test_postgres_connections_killed_mid_run(fresh, capsys):
    stack = fresh
    job_id, total, began = start_job(stack, 600)
    killed = []
    for fraction in (0.25, 0.6):
        stack.wait_job(job_id, urls=int(fraction * total), fraction=fraction)
        killed.append(stack.terminate_db_connections())
    assert all(n > 0 for n in killed), killed
    fig, _, _ = finish(stack, capsys, "pg_terminate_backend", job_id, total, began,
                       note=f"connections terminated: {killed}")
    assert fig.failed == 0


# each URL takes up to 3 attempts with backoff between them, a hang 3 s (the client's timeout):
# more URLs at once, as for test_provider_answers_500_to_everything
@pytest.mark.runner(CHUNK_CONCURRENCY="32")
def test_llm_5xx_and_hangs(fresh, capsys):
    """20 % of calls answer 500/503 and 5 % never answer (client timeout 3 s; the fake closes a
    hung connection without an answer after 5 s, should the client not have gone by then); with
    3 attempts some URLs may legitimately fail, each with its error."""
    stack = fresh
    stack.fake.configure(error_rate=0.2, hang_rate=0.05, hang_seconds=5)
    job_id, total, began = start_job(stack, 300)
    # each URL may take 3 attempts of up to 3 s plus backoff: about 4 times the normal work
    fig, rows, _ = finish(stack, capsys, "20 % 5xx + 5 % hangs", job_id, total, began, extra_s=3 * total / 20)
    assert fig.errors > 0 and fig.hangs > 0
    assert fig.failed <= 0.06 * total, "far more failures than 3 attempts at 25 % faults explain"
    for row in rows:
        if row["status"] == "failed":
            assert "HTTP 5" in row["error"] or "Timed out" in row["error"], row


# With OPENAI_RPM ten times the provider's limit and no limit stated, the rate is found from the
# 429s (the shared controller: slow start until the first one, a cut on each, at most once a
# second): after the first pause a few percent of calls are refused, not the ~30 % of a shared
# pause alone, or the ~90 % of none. (Measured: see the report's "after the first pause".)
MAX_STORM_429_SHARE = 0.08


def found_from_429s(stack, job_id: str) -> dict:
    """The limits the shared limiter has for the job's model now (what every process uses)."""
    shared = redis.Redis.from_url(stack.env["REDIS_URL"])
    try:
        return RateLimiter(shared, 0, 0, prefix=stack.limiter_prefix).limits(stack.api.job(job_id)["model"])
    finally:
        shared.close()


@pytest.mark.runner(OPENAI_RPM="12000")  # we think 200/s...
def test_429_storm(fresh, capsys):
    """The provider allows a tenth of what we believe our limit is, and does not state its limit
    (as Azure OpenAI, it sends x-ratelimit-remaining/-reset but no -limit): the rate is gauged
    from remaining/reset (none remaining pauses every worker before the 429) and found from any
    429, under the OPENAI_RPM ceiling. Every URL still ends, the 429s stay rare (measured: none of
    200 calls; 1.3 % before remaining/reset were read, 15.7 % before the controller), and no URL
    is generated twice."""
    stack = fresh
    stack.fake.configure(rpm=1200, ratelimit_limit_headers=False)  # ...the provider allows 20/s
    job_id, total, began = start_job(stack, 200)
    fig, _, _ = finish(stack, capsys, "429 storm", job_id, total, began, extra_s=total / 20,
                       max_429_share=MAX_STORM_429_SHARE)
    assert fig.completed >= 0.95 * total, fig
    limits = found_from_429s(stack, job_id)
    assert limits["how"]["rpm"] in ("remaining-reset", "found from 429s"), limits
    assert limits["found"]["phase"] == "additive increase", limits  # the slow start is over
    assert limits["in_force"]["rpm"] < 12000, limits


@pytest.mark.runner(OPENAI_RPM="", OPENAI_TPM="")
def test_a_provider_stating_no_limit_is_paced_at_the_rate_found_from_its_429s(fresh, capsys):
    """OPENAI_RPM unset and a provider (as vLLM or LiteLLM) that sends no x-ratelimit-* header at
    all and allows 20 requests/s: no setting, yet after the first pause only a few percent of the
    calls are refused (before the controller: unpaced, ~75 %), and every URL completes."""
    stack = fresh
    stack.fake.configure(rpm=1200, ratelimit_headers=False)
    job_id, total, began = start_job(stack, 400)
    fig, _, _ = finish(stack, capsys, "no limit stated", job_id, total, began, extra_s=total / 20,
                       max_429_share=MAX_STORM_429_SHARE)
    assert fig.completed == total, fig
    limits = found_from_429s(stack, job_id)
    assert limits["learned"] == {"rpm": -1, "tpm": -1} and limits["how"]["rpm"] == "found from 429s", limits


@pytest.mark.runner(OPENAI_RPM="", OPENAI_TPM="")  # the test's own limiter prefix (fresh): nothing learned yet
def test_limits_are_learned_from_the_provider_when_not_configured(fresh, capsys):
    """OPENAI_RPM / OPENAI_TPM unset and a provider allowing 40 requests/s (per minute: 2,400),
    stated in its x-ratelimit-limit-* headers: after a cautious start the limiter paces at
    exactly that, so 429s stay rare and no request goes into a pause."""
    stack = fresh
    stack.fake.configure(rpm=2400)
    job_id, total, began = start_job(stack, 300)
    fig, _, _ = finish(stack, capsys, "limits learned", job_id, total, began, extra_s=total / 40)
    assert fig.completed == total and fig.rate_limited <= 0.01 * total, fig
    shared = redis.Redis.from_url(stack.env["REDIS_URL"])  # what every process of the stack now uses
    limiter = RateLimiter(shared, 0, 0, prefix=stack.limiter_prefix)
    assert limiter.limits(stack.api.job(job_id)["model"])["learned"] == {"rpm": 2400, "tpm": FAKE_TPM}
    shared.close()


@pytest.mark.runner(LEASE_SECONDS="2", OPENAI_TIMEOUT_S="15")
def test_a_generation_outliving_its_lease_is_not_started_twice(fresh, capsys):
    """LEASE_SECONDS shorter than one LLM call: the worker still holds its rows, so it must keep
    their leases alive (renewing well within LEASE_SECONDS) and never claim them a second time."""
    stack = fresh
    stack.fake.configure(latency_ms=[300, 4000])
    job_id, total, began = start_job(stack, 16)
    finish(stack, capsys, "generation longer than the lease", job_id, total, began, extra_s=15)


@pytest.mark.runner(CHUNK_CONCURRENCY="32")  # each URL takes ~4 s of attempts and backoff: more at once
def test_provider_answers_500_to_everything(fresh, capsys):
    """Every call fails with HTTP 500: every URL fails with that reason after its attempts, the
    job still completes, its results CSV is written to S3 and the download lists every URL as
    failed with the reason."""
    stack = fresh
    # A provider that has answered before (the test's limiter is new: until a first answer it
    # would send 3 requests a second, its cautious start, and no 500 carries limits to learn)
    warm_id, warm_total, _ = start_job(stack, 1)
    stack.wait_job(warm_id, urls=warm_total)
    stack.fake.reset()
    stack.proxy.clear()
    stack.test_began = time.time()
    stack.fake.configure(error_rate=1.0, error_statuses=[500])
    csv_file = _make_csv(f"f500{uuid.uuid4().hex[:6]}", 60, invalid_every=10)
    job_id = stack.api.upload(csv_file.name, csv_file.data)["job"]["id"]
    began = time.monotonic()
    stack.api.process(job_id)
    attempts = int(stack.env["MAX_RETRIES"])
    fig, rows, stats = finish(stack, capsys, "provider 500 to everything", job_id, csv_file.valid, began,
                              extra_s=attempts * 5)
    assert fig.failed == csv_file.valid and fig.completed == 0, fig
    assert stats["errors"] == attempts * csv_file.valid == stats["requests"], stats  # each URL tried MAX_RETRIES times
    for row in rows:
        assert row["status"] == "failed" and row["error"].startswith("HTTP 500 from the model API"), row
        assert row["retry_count"] == attempts, row

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    key = f"results/{stack.account_id}/{job_id}.csv"

    def written():
        listed = s3.list_objects_v2(Bucket=os.environ["UPLOAD_BUCKET"], Prefix=key).get("Contents", [])
        return any(o["Key"] == key for o in listed)

    wait_for(written, 20, what=f"s3://{os.environ['UPLOAD_BUCKET']}/{key}", diagnose=lambda: stack.diagnose(job_id))
    stored = s3.get_object(Bucket=os.environ["UPLOAD_BUCKET"], Key=key)["Body"].read().decode("utf-8")
    for table in (list(csv.reader(io.StringIO(stored, newline=""))), stack.api.download(job_id)):
        header, body = table[0], table[1:]
        assert header[-len(EXTRA_COLUMNS):] == EXTRA_COLUMNS
        assert len(body) == csv_file.valid + csv_file.invalid
        by_status: dict[str, int] = {}
        for index, line in enumerate(body):
            opener, status, error, _context = line[-len(EXTRA_COLUMNS):][:4]
            by_status[status] = by_status.get(status, 0) + 1
            if index in csv_file.invalid_rows:
                assert status == "invalid", line
            else:
                assert (opener, status) == ("", "failed") and error.startswith("HTTP 500"), line
        assert by_status == {"failed": csv_file.valid, "invalid": csv_file.invalid}, by_status
    job = stack.api.job(job_id)
    assert (job["status"], job["failed_rows"], job["processed_rows"]) == ("completed", csv_file.valid, 0), job


def _drain(sqs, url: str) -> int:
    """Delete whatever is visible on a queue now (not a purge: LocalStack, like SQS, allows one a minute)."""
    gone = 0
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages"):
        for message in messages:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            gone += 1
    return gone


POISON = {  # name: body, given a unique token (which the body and so its log lines carry)
    "malformed body": lambda token: f"not json {token}",
    "unknown job": lambda token: json.dumps({"job_id": token, "chunk": 0}),
    # Until parse_chunk_message checked the id, this one reached PostgreSQL ("invalid input syntax
    # for type uuid"), was delivered MAX_RECEIVE_COUNT (5) times and ended in the DLQ.
    "job id not a UUID": lambda token: json.dumps({"job_id": f"job-{token}", "chunk": 0}),
}


@pytest.mark.parametrize("kind", [
    "malformed body",
    "unknown job",
    "job id not a UUID",
])
def test_a_poison_message_is_dropped_once(fresh, capsys, kind):
    """A chunk message the handler cannot use is acknowledged and logged once, never retried in a
    loop: afterwards the chunk queue and the dead-letter queue are empty and the runner's log has
    exactly one line about it."""
    stack = fresh
    sqs = stack.sqs()
    queue, dlq = os.environ["CHUNK_QUEUE_URL"], os.environ["DLQ_URL"]
    empty = {"visible": 0, "in_flight": 0, "delayed": 0}
    assert stack.queue_depth(dlq) == empty
    token = str(uuid.uuid4())
    try:
        began = time.monotonic()
        message_id = sqs.send_message(QueueUrl=queue, MessageBody=POISON[kind](token))["MessageId"]

        def logged():
            return [e for e in stack.runner_entries() if token in json.dumps(e) or e.get("message_id") == message_id]

        def handled():  # SQS's counts lag a send: an empty queue alone can be read before it shows the message
            depth = stack.queue_depth(queue)
            return depth["visible"] + depth["in_flight"] + depth["delayed"] == 0 and bool(logged())

        # a loop would take MAX_RECEIVE_COUNT deliveries, a couple of seconds apart, to end
        wait_for(handled, 30, every=0.1, what=f"the {kind} message acknowledged", diagnose=stack.diagnose)
        seconds = time.monotonic() - began
        time.sleep(0.5)  # the handler logs before the runner deletes the message: let the line be flushed
        lines = logged()
        dead = stack.queue_depth(dlq)
        report(capsys, f"[e2e] poison message ({kind}): off the queue {seconds:.1f} s after sending; "
                       f"{len(lines)} log line(s): {'; '.join(e['message'] for e in lines)}; dead-letter queue {dead}")
        assert len(lines) == 1, lines
        assert "handler failed" not in lines[0]["message"], lines
        assert stack.queue_depth(queue) == empty
        assert dead == empty
    finally:
        _drain(sqs, dlq)  # the next test starts with an empty dead-letter queue


# longer than a busy LocalStack's pauses (a chunk message can take seconds to be received),
# shorter than the restart
STALL_AFTER_S, SWEEP_EVERY_S = 8, 2


@pytest.mark.runner(STALL_AFTER_S=str(STALL_AFTER_S), RUNNER_SWEEP_S=str(SWEEP_EVERY_S), MAX_CONCURRENT_JOBS="1")
def test_localstack_restarts_mid_job(fresh, capsys):
    """LocalStack dies mid-job (SIGKILL) and starts again on the same port, empty: its queues, and
    every queued chunk message with them, are gone until provisioned again (S3 keeps its objects
    on AWS: the test puts the job's upload back). The runner has one chunk worker while the job
    keeps two chunk messages out (CHUNKS_PER_JOB), so one message is always waiting on the queue:
    that chunk is lost (the one in flight is finished by its handler, which outlives the restart).
    Only the stall sweep can bring it back: it enqueues the job's unfinished chunks again and the
    job finishes.

    The sweep acts on jobs idle for STALL_AFTER_S (600 s by default), longer than a test may
    take: the runner is started with 8 s (and sweeps every 2 s instead of every 300 s)."""
    stack = fresh
    localstack = stack.localstack
    if localstack is None:
        pytest.skip("needs the LocalStack make test started (LOCALSTACK_PID/_START from infra/devstack.py)")
    stall_after, sweep_every = STALL_AFTER_S, SWEEP_EVERY_S
    job_id, total, began = start_job(stack, 600)
    stack.wait_job(job_id, urls=int(0.3 * total), fraction=0.3)
    queue = os.environ["CHUNK_QUEUE_URL"]
    wait_for(lambda: stack.queue_depth(queue)["visible"] > 0, 20, every=0.05, what="a chunk message waiting",
             diagnose=lambda: stack.diagnose(job_id))

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    bucket, upload_key = os.environ["UPLOAD_BUCKET"], job_row(stack.database_url, job_id)["file_path"]
    upload = s3.get_object(Bucket=bucket, Key=upload_key)["Body"].read()

    def done() -> int:
        job = job_row(stack.database_url, job_id)
        return job["processed_rows"] + job["failed_rows"]

    def orphaned() -> list[int]:
        """Chunks with work that nobody holds and that no chunk finishing will send (not waiting
        in the job's window): only a message on the queue could have started them."""
        with connect(stack.database_url) as conn:
            return [r["chunk"] for r in conn.execute(
                """SELECT u.chunk FROM urls u JOIN jobs j ON j.id = u.job_id WHERE u.job_id = %s
                   GROUP BY u.chunk, j.undispatched
                   HAVING bool_or(u.status = 'pending') AND NOT bool_or(u.status = 'processing')
                      AND NOT u.chunk = ANY(j.undispatched) ORDER BY u.chunk""", (job_id,)).fetchall()]

    try:
        depth_at_stop, done_at_stop, stop_wall = stack.queue_depth(queue), done(), time.time()
        stopped_in = localstack.stop(kill=True)
        started_in = localstack.start()
        healthy_wall, done_while_down = time.time(), done() - done_at_stop
        lost = orphaned()
        with pytest.raises(stack.sqs().exceptions.QueueDoesNotExist):  # nothing survived the restart
            stack.queue_depth(queue)
        localstack.provision()
        s3.put_object(Bucket=bucket, Key=upload_key, Body=upload)  # same bytes: the job's ETag still matches
        provisioned_wall = time.time()
    finally:
        if not localstack.healthy():
            localstack.start()
            localstack.provision()

    def requeued_after() -> str:
        """Seconds from LocalStack healthy to the sweep's first requeue of this job after the stop
        (from the runner's log; it cannot send before the queue exists again)."""
        found = [e for e in stack.runner_entries(since=stop_wall) if e["message"] == "chunks enqueued again"
                 and e.get("job_id") == job_id]
        return f"{found[0]['_t'] - healthy_wall:.1f} s" if found else "never"

    fig, _, _ = finish(
        stack, capsys, "LocalStack restart", job_id, total, began,
        stall_s=started_in + stall_after + 2 * sweep_every + 30, extra_s=started_in + stall_after + 2 * sweep_every,
        note=lambda: (f"at the stop {done_at_stop}/{total} done and {depth_at_stop} on the queue; LocalStack killed "
                      f"(gone in {stopped_in:.1f} s), chunks {lost} lost with it; healthy again "
                      f"{started_in:.1f} s after its start ({done_while_down} "
                      f"URLs finished meanwhile by chunks in flight), provisioned "
                      f"{provisioned_wall - healthy_wall:.1f} s later; the sweep requeued the job's chunks "
                      f"{requeued_after()} after LocalStack was healthy, the job was done "
                      f"{time.time() - healthy_wall:.1f} s after it "
                      f"({time.time() - stop_wall:.1f} s after the stop)"))
    assert lost, f"no chunk message was lost with LocalStack (queue at the stop: {depth_at_stop})"
    assert requeued_after() != "never", "the job finished without the sweep: what recovered the lost message?"
    assert fig.failed == 0
    # every chunk worker of the runner lived through it (a worker thread that dies is not replaced)
    assert "Exception in thread" not in stack.runner_log.read_text(errors="replace"), stack.diagnose()

    key = f"results/{stack.account_id}/{job_id}.csv"  # the export after completion worked too
    wait_for(lambda: job_row(stack.database_url, job_id)["result_path"] == key, 30, what=f"{key} written",
             diagnose=lambda: stack.diagnose(job_id))
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] > 0


PROVIDER_TPM = 720_000  # the token limit of the provider in test_the_token_limit_binds_end_to_end


@pytest.mark.runner(OPENAI_RPM="", OPENAI_TPM=str(int(0.9 * PROVIDER_TPM)))
def test_the_token_limit_binds_end_to_end(fresh, capsys):
    """A provider whose tokens-per-minute limit binds long before its requests-per-minute one
    (9,000 requests but 720,000 tokens a minute: about 28 requests/s of these ~420-token calls),
    and which states neither (no x-ratelimit-limit-* headers, so nothing is learned): with
    OPENAI_TPM set just under it and no RPM ceiling, the workers pace by tokens alone, so the
    provider's token bucket never runs dry (at most a stray 429), where without the TPM ceiling
    nothing would pace them at all."""
    stack = fresh
    provider_tpm = PROVIDER_TPM  # the runner's OPENAI_TPM (the mark): 90 % of it
    stack.fake.configure(tpm=provider_tpm, ratelimit_limit_headers=False)
    job_id, total, began = start_job(stack, 300)
    fig, _, stats = finish(stack, capsys, "TPM binds", job_id, total, began, extra_s=total / 20)
    # at most 2 % answered 429 (issue 25's bound): a loaded 2-core machine bunches paced sends,
    # and 4 of 300 (1.3 %) were seen under load where the old bound was 1 %
    assert fig.completed == total and fig.rate_limited <= 0.02 * total, fig
    assert stats["rate_limited"] <= 0.02 * total
