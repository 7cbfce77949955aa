"""SQS adapter: chunk messages `{"job_id", "chunk"}` on the chunk queue, sent ten at a time, and
on the ingest queue (read by the ingest function, 15 minutes) ingest messages `{"job_id"}` (one
per file: read it into the job's rows) and export messages `{"job_id", "export": view}` (build
the job's results CSV, `view` "all" or "approved", in S3).

A message sent while a correlation id is in the log context (the HTTP request or event that led
to it, chalicelib/observe.py) carries it as `"correlation_id"`, so the chunk handler's lines and
metrics join the request's; a message without one (older senders) is read as before.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from chalicelib.logs import context_field

BATCH = 10  # SendMessageBatch maximum


class EnqueueFailed(RuntimeError):
    pass


CORRELATION_ID = "correlation_id"


def chunk_message(job_id: str, chunk: int, correlation_id: str | None = None) -> str:
    message = {"job_id": str(job_id), "chunk": chunk}
    correlation_id = correlation_id or context_field(CORRELATION_ID)
    if correlation_id:
        message[CORRELATION_ID] = str(correlation_id)
    return json.dumps(message)


def parse_chunk_message(body: str) -> tuple[str, int]:
    """-> (job_id, chunk); ValueError when the body is not a chunk message."""
    try:
        data = json.loads(body)
        return str(uuid.UUID(str(data["job_id"]))), int(data["chunk"])
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise ValueError(f"not a chunk message: {body[:200]!r}") from exc


def chunk_correlation_id(body: str) -> str | None:
    """The correlation id a chunk message carries; None for an older message or not a chunk message."""
    try:
        value = json.loads(body).get(CORRELATION_ID)
    except (TypeError, ValueError, AttributeError):
        return None
    return str(value)[:100] if value else None


def ingest_message(job_id: str) -> str:
    message = {"job_id": str(job_id)}
    correlation_id = context_field(CORRELATION_ID)
    if correlation_id:
        message[CORRELATION_ID] = str(correlation_id)
    return json.dumps(message)


EXPORT_VIEWS = ("all", "approved")


def export_message(job_id: str, view: str) -> str:
    message = {"job_id": str(job_id), "export": view}
    correlation_id = context_field(CORRELATION_ID)
    if correlation_id:
        message[CORRELATION_ID] = str(correlation_id)
    return json.dumps(message)


def parse_background_message(body: str) -> tuple[str, str, str | None]:
    """-> ("ingest", job_id, None) or ("export", job_id, view); ValueError for anything else."""
    try:
        data = json.loads(body)
        job_id = str(uuid.UUID(str(data["job_id"])))
        view = data.get("export")
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise ValueError(f"not an ingest or export message: {body[:200]!r}") from exc
    if view is None:
        return "ingest", job_id, None
    if view not in EXPORT_VIEWS:
        raise ValueError(f"not an export view: {body[:200]!r}")
    return "export", job_id, view


def parse_ingest_message(body: str) -> str:
    """-> job_id; ValueError when the body is not an ingest message (an export message is not)."""
    kind, job_id, _ = parse_background_message(body)
    if kind != "ingest":
        raise ValueError(f"not an ingest message: {body[:200]!r}")
    return job_id


class ChunkQueue:
    def __init__(self, sqs_client, queue_url: str, dlq_url: str | None = None,
                 ingest_queue_url: str | None = None) -> None:
        self.sqs = sqs_client
        self.queue_url = queue_url
        self.dlq_url = dlq_url
        self.ingest_queue_url = ingest_queue_url

    def send_ingest(self, job_id: str) -> None:
        """One message: read the job's file (again, from where its stored rows end)."""
        if not self.ingest_queue_url:
            raise EnqueueFailed("no ingest queue is configured (INGEST_QUEUE_URL)")
        self.sqs.send_message(QueueUrl=self.ingest_queue_url, MessageBody=ingest_message(job_id))

    def send_export(self, job_id: str, view: str) -> None:
        """One message: build the job's export of `view` in S3 (on the ingest queue)."""
        if not self.ingest_queue_url:
            raise EnqueueFailed("no ingest queue is configured (INGEST_QUEUE_URL)")
        self.sqs.send_message(QueueUrl=self.ingest_queue_url, MessageBody=export_message(job_id, view))

    def send_chunks(self, job_id: str, chunks: Iterable[int]) -> int:
        """Send one message per chunk; entries SQS rejects are resent. Returns the count sent."""
        chunks = list(chunks)
        for start in range(0, len(chunks), BATCH):
            self._send_batch({str(c): chunk_message(job_id, c) for c in chunks[start : start + BATCH]})
        return len(chunks)

    @retry(
        retry=retry_if_exception_type(EnqueueFailed),
        stop=stop_after_attempt(5),
        wait=wait_exponential_jitter(multiplier=0.1, max=2),
        reraise=True,
    )
    def _send_batch(self, entries: dict[str, str]) -> None:
        response = self.sqs.send_message_batch(
            QueueUrl=self.queue_url,
            Entries=[{"Id": entry_id, "MessageBody": body} for entry_id, body in entries.items()],
        )
        failed = response.get("Failed") or []
        for entry in response.get("Successful") or []:
            entries.pop(entry["Id"], None)
        if failed:
            reasons = "; ".join(f"{f.get('Code')}: {f.get('Message')}" for f in failed)
            raise EnqueueFailed(f"{len(failed)} chunk message(s) not accepted: {reasons}")

    def send_continuation(self, job_id: str, chunk: int, delay_s: int = 0) -> None:
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=chunk_message(job_id, chunk), DelaySeconds=delay_s)

    def depth(self, queue_url: str | None = None) -> dict[str, int]:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=queue_url or self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return {
            "visible": int(attrs.get("ApproximateNumberOfMessages", 0)),
            "in_flight": int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
        }

    def check(self) -> None:
        self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])
