"""CSV Opener: Chalice wiring only. Each handler reads the request or event, calls one service
function with its dependencies, and returns; errors become the SPEC error shape in `route`."""

from __future__ import annotations

import functools
import json
import uuid

from chalice import Chalice, CORSConfig, Rate, Response

from chalicelib import apilimit, db, deps, jobs, logs
from chalicelib.errors import BadRequest, DomainError
from chalicelib.health import run_checks
from chalicelib.queue import parse_chunk_message
from chalicelib.uploads import parse_upload

logs.configure(deps.settings().log_level)
log = logs.get_logger("api")

app = Chalice(app_name="csv-opener")
app.api.binary_types.extend(["multipart/form-data", "text/csv"])
app.log.setLevel("CRITICAL")  # Chalice's own error log is replaced by ours (JSON, with request id)
CORS = CORSConfig(allow_origin=deps.settings().cors_allow_origin, expose_headers=["Retry-After", "X-Request-Id"])

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response({"error": {"code": code, "message": message}}, status_code=status, headers=headers or {})


def _request_id() -> str:
    request = app.current_request
    context = getattr(request, "context", None) or {}
    return context.get("requestId") or str(uuid.uuid4())


def route(path: str, **options):
    """`app.route` whose view turns DomainError into its 4xx and anything else into a logged 500."""
    options.setdefault("cors", CORS)
    options.setdefault("content_types", ["*/*"])  # bodies are checked by us, with our error shape

    def decorator(view):
        @functools.wraps(view)
        def wrapped(**params):
            try:
                return view(**params)
            except DomainError as exc:
                return error_response(exc.status, exc.code, exc.message, exc.headers)
            except Exception:
                request_id = _request_id()
                log.exception("unhandled error", extra={"request_id": request_id, "path": path})
                return error_response(500, "internal_error",
                                      f"Something went wrong on our side; quote request id {request_id}.",
                                      {"X-Request-Id": request_id})

        return app.route(path, **options)(wrapped)

    return decorator


def json_body() -> dict:
    raw = app.current_request.raw_body or b""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("The body is not valid JSON", code="bad_json") from None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object", code="bad_json")
    return body


def query() -> dict:
    return app.current_request.query_params or {}


@app.middleware("http")
def hygiene(event, get_response):
    """Per-client request limit, then security headers on every response."""
    retry_after = None
    if event.path != "/health":
        limit = deps.settings().api_rate_limit_per_minute
        retry_after = apilimit.check(deps.redis_client(), client_id_of(event), limit)
    if retry_after is not None:
        response = error_response(429, "rate_limited",
                                  f"Too many requests; try again in {retry_after} s", {"Retry-After": str(retry_after)})
    else:
        response = get_response(event)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@route("/health", methods=["GET"])
def health():
    s3, sqs = deps.storage(), deps.chunk_queue()
    ok, body = run_checks({
        "postgres": lambda: db.ping(deps.conn()),
        "redis": deps.redis_client().ping,
        "s3": s3.check,
        "sqs": sqs.check,
    })
    return Response(body, status_code=200 if ok else 503)


def client_id_of(event) -> str:
    identity = (event.context or {}).get("identity") or {}
    return identity.get("sourceIp") or "unknown"


@route("/api/upload", methods=["POST"])
def upload():
    request = app.current_request
    upload = parse_upload(request.headers, query(), request.raw_body, deps.settings().max_file_size)
    body = jobs.create_from_upload(deps.conn(), deps.storage(), file_name=upload.file_name, data=upload.data,
                                   url_column=upload.url_column)
    return Response(body, status_code=201)


@route("/api/upload/url", methods=["POST"])
def upload_url():
    body = json_body()
    result = jobs.create_presigned_upload(deps.conn(), deps.storage(), file_name=body.get("file_name"),
                                          url_column=body.get("url_column"))
    return Response(result, status_code=201)


@route("/api/upload/process", methods=["POST"])
def process():
    body = json_body()
    job_id = body.get("job_id") or body.get("jobId")
    if not job_id:
        raise BadRequest("job_id is required", code="missing_job_id")
    result = jobs.start(deps.conn(), deps.storage(), deps.chunk_queue(), deps.settings(), job_id,
                        instructions=body.get("instructions"), model=body.get("model"))
    return Response(result, status_code=202)


@route("/api/jobs", methods=["GET"])
def list_jobs():
    q = query()
    return jobs.list_(deps.conn(), status=q.get("status"), limit=q.get("limit"), cursor=q.get("cursor"))


@route("/api/jobs/{job_id}", methods=["GET"])
def get_job(job_id):
    return jobs.get(deps.conn(), job_id)


@route("/api/jobs/{job_id}/results", methods=["GET"])
def job_results(job_id):
    q = query()
    return jobs.results(deps.conn(), job_id, status=q.get("status"), limit=q.get("limit"), cursor=q.get("cursor"))


@route("/api/jobs/{job_id}/retry", methods=["POST"])
def retry_job(job_id):
    return Response(jobs.retry(deps.conn(), deps.chunk_queue(), job_id), status_code=202)


@route("/api/upload/{job_id}/cancel", methods=["POST"])
def cancel_job(job_id):
    return jobs.cancel(deps.conn(), job_id)


@route("/api/upload/{job_id}/download", methods=["GET"])
def download(job_id):
    kind, payload, name = jobs.download(deps.conn(), deps.storage(), job_id)
    if kind == "redirect":
        return Response("", status_code=302, headers={"Location": payload})
    return Response(payload, status_code=200, headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="{name}"',
    })


@route("/api/metrics", methods=["GET"])
def metrics():
    return jobs.metrics(deps.conn(), deps.chunk_queue())


@app.on_sqs_message(queue="csv-opener-chunks", batch_size=1, name="process_chunk",
                    maximum_concurrency=max(2, deps.settings().max_concurrent_jobs))  # AWS minimum is 2
def process_chunk(event):
    """One chunk message. Bad messages are logged and acknowledged; unexpected errors raise so
    SQS redelivers; on the last delivery the chunk's unfinished URLs are failed with the reason
    before the message goes to the dead-letter queue."""
    for record in event:
        try:
            job_id, chunk = parse_chunk_message(record.body)
        except ValueError:
            log.error("malformed chunk message dropped", extra={"body": record.body[:500]})
            continue
        try:
            deps.chunk_worker().process_chunk(job_id, chunk, remaining_seconds(event.context))
        except Exception as exc:
            deliveries = int(record.to_dict().get("attributes", {}).get("ApproximateReceiveCount", 1))
            if deliveries >= deps.settings().max_receive_count:
                jobs.give_up_chunk(deps.conn, job_id, chunk, deliveries, exc)
            raise


@app.on_s3_event(bucket=deps.settings().upload_bucket, prefix="incoming/", suffix=".csv",
                 events=["s3:ObjectCreated:*"], name="start_dropped_csv")
def start_dropped_csv(event):
    """A CSV dropped under incoming/ starts a job with default options."""
    record = event.to_dict()["Records"][0]["s3"]["object"]
    jobs.start_from_drop(deps.conn(), deps.storage(), deps.chunk_queue(), deps.settings(), key=event.key,
                         version=record.get("sequencer") or record.get("eTag"))


@app.schedule(Rate(5, unit=Rate.MINUTES), name="requeue_stalled")
def requeue_stalled(event):
    """Every 5 minutes: chunks of jobs without progress for 10 minutes whose work nobody holds
    are enqueued again (a lost message must not leave a job processing forever)."""
    jobs.requeue_unfinished(deps.conn(), deps.chunk_queue(), idle_s=jobs.STALL_AFTER_S)


def remaining_seconds(context):
    if context is None or not hasattr(context, "get_remaining_time_in_millis"):
        return lambda: float("inf")
    return lambda: context.get_remaining_time_in_millis() / 1000
