"""Local event runner (dev and tests only; never imported by chalicelib/).

Lambda cannot run inside LocalStack here (it needs Docker), so this process plays the part of
Lambda's event sources: it long-polls the chunk queue, the ingest queue and the S3-notification queue on
LocalStack and calls the very handler objects Chalice registered in `app.py`, with the event
Lambda would deliver and a context whose deadline follows the function's configured timeout.

- Success deletes the message; an exception leaves it for redelivery (after a short pause
  here, the visibility timeout on AWS) and, after maxReceiveCount, the dead-letter queue.
- MAX_CONCURRENT_JOBS chunk handlers run at once, as the SQS event source's maximum
  concurrency does on AWS; ingest messages are handled one at a time, beside them.
- While a handler runs, its message's visibility is extended, so a runner killed mid-chunk
  has its message back within RUNNER_VISIBILITY_S (default 60; the rows' leases decide when
  they are retaken).
- Every RUNNER_SWEEP_S (300) it runs the `requeue_stalled` schedule, as EventBridge would.
- SIGINT/SIGTERM: stop taking messages; handlers in flight see their deadline arrive, save
  what they generated, hand the rest on in a continuation message, and the runner exits.

    python infra/runner.py
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import app  # noqa: E402  (the Chalice app: its registered handlers are what Lambda would call)
from chalicelib import deps, logs  # noqa: E402

log = logs.get_logger("runner")

VISIBILITY_S = int(os.environ.get("RUNNER_VISIBILITY_S", "60"))
SWEEP_EVERY_S = int(os.environ.get("RUNNER_SWEEP_S", "300"))  # the schedule of app.requeue_stalled
HEARTBEAT_S = max(1, VISIBILITY_S // 3)
POLL_WAIT_S = 1  # a stop waits for the receives in progress: the tests restart the runner often
RETRY_PAUSE_S = 2
CONFIG = ROOT / ".chalice" / "config.json"


def function_timeout(name: str, stage: str = "prod", default: int = 60) -> int:
    """lambda_timeout of a function in .chalice/config.json (function, then stage, then top)."""
    config = json.loads(CONFIG.read_text())
    stage_config = config.get("stages", {}).get(stage, {})
    for scope in (stage_config.get("lambda_functions", {}).get(name, {}), stage_config, config):
        if "lambda_timeout" in scope:
            return int(scope["lambda_timeout"])
    return default


class LambdaContext:
    """What Lambda passes as `context`: a request id and a clock running down to the timeout."""

    def __init__(self, function_name: str, timeout_s: int, stopping: threading.Event) -> None:
        self.function_name = function_name
        self.aws_request_id = str(uuid.uuid4())
        self.memory_limit_in_mb = 1024
        self._deadline = time.monotonic() + timeout_s
        self._stopping = stopping

    def get_remaining_time_in_millis(self) -> int:
        if self._stopping.is_set():  # shutting down: behave as if the deadline had come
            return 0
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def sqs_event(message: dict, queue_arn: str, region: str) -> dict:
    """The event Lambda's SQS event source delivers for one message."""
    return {"Records": [{
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": message.get("MessageAttributes", {}),
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }]}


def scheduled_event(region: str) -> dict:
    """The EventBridge event a `@app.schedule` function receives."""
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "000000000000", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "region": region, "resources": [], "detail": {}}


def s3_events(body: str) -> list[dict]:
    """S3 notification (as queued by S3) -> the events Lambda would get, one per record;
    the s3:TestEvent sent when the notification is configured yields none."""
    data = json.loads(body)
    if data.get("Event") == "s3:TestEvent":
        return []
    return [{"Records": [record]} for record in data.get("Records", [])]


class Runner:
    def __init__(self, chunk_queue_url: str, drops_queue_url: str | None, workers: int,
                 region: str = "us-east-1", ingest_queue_url: str | None = None) -> None:
        self.sqs = deps.chunk_queue().sqs
        self.chunk_queue_url = chunk_queue_url
        self.drops_queue_url = drops_queue_url
        self.ingest_queue_url = ingest_queue_url
        self.workers = workers
        self.region = region
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.chunk_timeout = function_timeout("process_chunk")
        self.drop_timeout = function_timeout("start_dropped_csv")
        self.ingest_timeout = function_timeout("ingest_file")

    def queue_arn(self, url: str) -> str:
        return self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    def start(self) -> Runner:
        chunk_arn = self.queue_arn(self.chunk_queue_url)
        for n in range(self.workers):
            self._spawn(f"chunks-{n}", self._chunk_loop, chunk_arn)
        if self.drops_queue_url:
            self._spawn("drops", self._drop_loop)
        if self.ingest_queue_url:
            self._spawn("ingest", self._ingest_loop, self.queue_arn(self.ingest_queue_url))
        self._spawn("schedule", self._schedule_loop)
        log.info("runner started", extra={"workers": self.workers, "chunk_timeout_s": self.chunk_timeout})
        return self

    def _spawn(self, name: str, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def stop(self, timeout: float = 120) -> None:
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        log.info("runner stopped")

    # ------------------------------------------------------------ loops

    def _receive(self, queue_url: str) -> list[dict]:
        try:
            return self.sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=POLL_WAIT_S,
                VisibilityTimeout=VISIBILITY_S, MessageSystemAttributeNames=["All"],
            ).get("Messages", [])
        except Exception:
            log.exception("receive failed; retrying")
            self.stopping.wait(1)
            return []

    def _chunk_loop(self, queue_arn: str) -> None:
        while not self.stopping.is_set():
            for message in self._receive(self.chunk_queue_url):
                context = LambdaContext("process_chunk", self.chunk_timeout, self.stopping)
                self._invoke(self.chunk_queue_url, message,
                             lambda m=message, c=context: app.process_chunk(sqs_event(m, queue_arn, self.region), c))

    def _ingest_loop(self, queue_arn: str) -> None:
        while not self.stopping.is_set():
            for message in self._receive(self.ingest_queue_url):
                context = LambdaContext("ingest_file", self.ingest_timeout, self.stopping)
                self._invoke(self.ingest_queue_url, message,
                             lambda m=message, c=context: app.ingest_file(sqs_event(m, queue_arn, self.region), c))

    def _drop_loop(self) -> None:
        while not self.stopping.is_set():
            for message in self._receive(self.drops_queue_url):
                def handle(m=message):
                    for event in s3_events(m["Body"]):
                        app.start_dropped_csv(event, LambdaContext("start_dropped_csv", self.drop_timeout,
                                                                   self.stopping))
                self._invoke(self.drops_queue_url, message, handle)

    def _schedule_loop(self) -> None:
        while not self.stopping.wait(SWEEP_EVERY_S):
            try:
                app.requeue_stalled(scheduled_event(self.region), LambdaContext("requeue_stalled", 60, self.stopping))
            except Exception:
                log.exception("scheduled sweep failed")

    def _invoke(self, queue_url: str, message: dict, call) -> None:
        done = threading.Event()
        heartbeat = threading.Thread(target=self._keep_invisible, args=(queue_url, message, done), daemon=True)
        heartbeat.start()
        try:
            call()
        except Exception:
            log.exception("handler failed; the message will be delivered again",
                          extra={"message_id": message["MessageId"],
                                 "receive_count": message.get("Attributes", {}).get("ApproximateReceiveCount")})
            done.set()
            self._change_visibility(queue_url, message, RETRY_PAUSE_S)
            return
        finally:
            done.set()
            heartbeat.join()
        try:
            self.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        except Exception:  # SQS unreachable: the message comes back and its handler skips finished work
            log.warning("could not delete a handled message", extra={"message_id": message["MessageId"]})

    def _keep_invisible(self, queue_url: str, message: dict, done: threading.Event) -> None:
        while not done.wait(HEARTBEAT_S):
            self._change_visibility(queue_url, message, VISIBILITY_S)

    def _change_visibility(self, queue_url: str, message: dict, seconds: int) -> None:
        try:
            self.sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"],
                                               VisibilityTimeout=seconds)
        except Exception:
            log.warning("could not change message visibility", extra={"message_id": message["MessageId"]})


def main() -> None:
    settings = deps.settings()
    runner = Runner(settings.chunk_queue_url, os.environ.get("DROPS_QUEUE_URL"), settings.max_concurrent_jobs,
                    settings.aws_region, ingest_queue_url=settings.ingest_queue_url).start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("stopping: no new messages; chunks in flight save and hand on")
    runner.stop()


if __name__ == "__main__":
    main()
