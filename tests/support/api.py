"""Helpers for tests that drive the API through chalice.test.Client (the `client` fixture) and
look at what it left in SQS and S3."""

from __future__ import annotations

import json
import uuid

from chalicelib import deps

LEADS = b"name,website,notes\nAcme,acme.com,first\nGlobex,https://globex.example.org/about,\nBad,javascript:alert(1),x\n"


def body(response):
    return json.loads(response.body)


def error_of(response) -> tuple[int, str]:
    """(status, error code) of an answer in SPEC's error shape (asserted)."""
    data = body(response)
    assert set(data) == {"error"} and data["error"]["message"], data
    return response.status_code, data["error"]["code"]


def post_json(client, path, payload, raw=None):
    data = raw if raw is not None else json.dumps(payload)
    return client.http.post(path, headers={"Content-Type": "application/json"}, body=data)


def upload_csv(client, data: bytes, filename="leads.csv", url_column=None):
    """POST /api/upload with a raw text/csv body."""
    query = f"?filename={filename}" + (f"&url_column={url_column}" if url_column else "")
    return client.http.post(f"/api/upload{query}", headers={"Content-Type": "text/csv"}, body=data)


def multipart(fields: dict[str, str], file: tuple[str, bytes, str] | None) -> tuple[dict, bytes]:
    """(headers, body) of a multipart/form-data request: `fields`, and `file` = (name, data,
    content type) as the part named "file"."""
    boundary = "----csvopener" + uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    if file:
        name, data, ctype = file
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                     f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
    payload = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, payload


def upload_and_process(client, data=LEADS, **options):
    """Upload `data` and start it: (job id, the process answer)."""
    job = body(upload_csv(client, data))["job"]
    response = post_json(client, "/api/upload/process", {"job_id": job["id"], **options})
    return job["id"], response


def run_with_callback(client, callback_url: str, data: bytes = LEADS) -> str:
    """Upload `data`, start it with `callback_url` and run its one chunk through the chunk worker
    (whose exactly-once completion calls deps.job_completed, as in production): the job id."""
    job = body(upload_csv(client, data))["job"]
    started = post_json(client, "/api/upload/process", {"job_id": job["id"], "callback_url": callback_url,
                                                         "page_context": False})
    assert started.status_code == 202, started.body
    purge_queue(deps.settings().chunk_queue_url)
    deps.chunk_worker().process_chunk(job["id"], 0, lambda: float("inf"))
    return job["id"]


def ingest_now(conn, job_id):
    """What the ingest function does for a job `process` left `ingesting` (a file above
    INGEST_INLINE_BYTES): its message taken off the ingest queue and the file read. -> the job."""
    from chalicelib import jobs
    from chalicelib.adapters.queue import parse_background_message

    queue = deps.chunk_queue()
    for message in drain_queue(queue.ingest_queue_url):
        if parse_background_message(message["Body"])[:2] != ("ingest", str(job_id)):  # another's: leave it
            queue.sqs.send_message(QueueUrl=queue.ingest_queue_url, MessageBody=message["Body"])
    return jobs.ingest_file(conn, deps.storage(), queue, deps.settings(), str(job_id))


def download(client, job_id, query: str = ""):
    # API Gateway and chalice serve text/csv (a binary type here) only to clients that accept it,
    # as browsers and curl do (*/*).
    return client.http.get(f"/api/upload/{job_id}/download{query}", headers={"Accept": "*/*"})


def patch_json(client, path, payload, headers=None):
    return client.http.patch(path, headers={"Content-Type": "application/json", **(headers or {})},
                             body=json.dumps(payload))


def mark_urls_done(conn, job_id, failed_rows=()):
    """Write every URL of the job as done, the way a worker's save would (counters moved in the
    same statement): the rows in `failed_rows` failed with "HTTP 500", the rest completed with
    the opener '=Hello <url>' and context_status 'fetched' (the failed ones 'timeout'); the job is
    completed."""
    conn.execute("""UPDATE urls SET status = CASE WHEN row_number = ANY(%s) THEN 'failed' ELSE 'completed' END,
                       opener = CASE WHEN row_number = ANY(%s) THEN NULL ELSE '=Hello ' || url END,
                       error = CASE WHEN row_number = ANY(%s) THEN 'HTTP 500' END,
                       context_status = CASE WHEN row_number = ANY(%s) THEN 'timeout' ELSE 'fetched' END
                    WHERE job_id = %s""", (list(failed_rows),) * 4 + (job_id,))
    conn.execute("""UPDATE jobs SET processed_rows = total_rows - %s, failed_rows = %s, progress = 100,
                    status = 'completed' WHERE id = %s""", (len(failed_rows), len(failed_rows), job_id))


def drain_queue(queue_url: str) -> list[dict]:
    """Receive and delete every visible message of the queue."""
    sqs = deps.chunk_queue().sqs
    messages = []
    while True:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                  VisibilityTimeout=30).get("Messages", [])
        if not got:
            return messages
        for m in got:
            messages.append(m)
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])


def purge_queue(queue_url: str) -> None:
    """Empty the queue, delayed messages included."""
    deps.chunk_queue().sqs.purge_queue(QueueUrl=queue_url)


def s3_keys(prefix: str) -> list[str]:
    s3 = deps.storage()
    return [o["Key"] for o in s3.s3.list_objects_v2(Bucket=s3.bucket, Prefix=prefix).get("Contents", [])]
