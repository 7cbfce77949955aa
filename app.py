"""CSV Opener: Chalice wiring only. Each handler reads the request or event, calls one service
function with its dependencies, and returns; errors become the SPEC error shape in `route`."""

from __future__ import annotations

import functools
import json
import re
import urllib.parse
import uuid

from chalice import Chalice, CORSConfig, Rate, Response

from chalicelib import deps, jobs, logs, observe, review, web
from chalicelib import metrics as emf
from chalicelib.accounts import Caller, Unauthorized, apilimit
from chalicelib.adapters import db
from chalicelib.adapters.health import run_checks
from chalicelib.adapters.queue import parse_background_message, parse_chunk_message
from chalicelib.errors import BadRequest, DomainError, RateLimited
from chalicelib.intake.uploads import parse_upload
from chalicelib.jobs import preview
from chalicelib.outbound import webhooks
from chalicelib.web import openapi

logs.configure(deps.settings().log_level)
log = logs.get_logger("api")
deps.settings().check_stage()  # the prod stage refuses to start with laptop settings (CORS "*")

app = Chalice(app_name="csv-opener")
app.api.binary_types.extend(["multipart/form-data", "text/csv"])
app.log.setLevel("CRITICAL")  # Chalice's own error log is replaced by ours (JSON, with request id)
CORS = CORSConfig(allow_origin=deps.settings().cors_origins[0] if deps.settings().cors_origins else "*",
                  allow_headers=["Authorization", "X-Api-Key"],
                  expose_headers=["Retry-After", "X-Request-Id", "WWW-Authenticate"])

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


def route(path: str, public: bool = False, **options):
    """`app.route` whose view gets the authenticated caller first (unless `public`), within the
    account's request limit; DomainError becomes its 4xx, anything else a logged 500."""
    options.setdefault("cors", CORS)
    options.setdefault("content_types", ["*/*"])  # bodies are checked by us, with our error shape

    def decorator(view):
        @functools.wraps(view)
        def wrapped(**params):
            emf.tag(job_id=params.get("job_id"))
            try:
                if public:
                    return view(**params)
                return view(authenticated_caller(), **params)
            except Unauthorized as exc:
                return error_response(exc.status, exc.code, exc.message, {"WWW-Authenticate": "Bearer"})
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


def presented_key() -> str | None:
    """The key of `Authorization: Bearer <key>` or `X-Api-Key: <key>`; "" for another scheme."""
    headers = app.current_request.headers
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.strip().partition(" ")
        return credentials.strip() if scheme.lower() == "bearer" else ""
    return headers.get("x-api-key")


def authenticated_caller() -> Caller:
    """The caller of this request (401 otherwise), counted against its account's request limit."""
    caller = authenticate(presented_key())
    emf.tag(account_id=caller.account_id)
    s = deps.settings()
    limit = caller.rpm if caller.rpm is not None else s.api_rate_limit_per_minute
    wait = apilimit.check(deps.redis_client(), s.ratelimit_prefix, f"account:{caller.account_id}", limit,
                          s.api_rate_window_s)
    if wait is not None:
        raise RateLimited(f"Too many requests for this account; try again in {wait} s",
                          headers={"Retry-After": str(wait)})
    return caller


def authenticate(key: str | None) -> Caller:
    """The key's caller, or Unauthorized counted against the client's address. An address over its
    limit of failed authentications is refused (429) before the key is looked up, whatever the
    key: a flood of made-up keys must not cost a database query each."""
    s = deps.settings()
    scope = f"auth-failures:{client_address()}"
    wait = apilimit.wait_if_over(deps.redis_client(), s.ratelimit_prefix, scope, s.ip_rate_limit_per_minute)
    if wait is not None:
        raise RateLimited(f"Too many failed authentications from this address; try again in {wait} s",
                          headers={"Retry-After": str(wait)})
    try:
        return deps.authenticator().authenticate(key)
    except Unauthorized:
        apilimit.check(deps.redis_client(), s.ratelimit_prefix, scope, s.ip_rate_limit_per_minute,
                       s.api_rate_window_s)
        raise


def limit_client_address() -> None:
    """Per-address limit for what is not tied to an account (/health)."""
    s = deps.settings()
    wait = apilimit.check(deps.redis_client(), s.ratelimit_prefix, f"ip:{client_address()}",
                          s.ip_rate_limit_per_minute, s.api_rate_window_s)
    if wait is not None:
        raise RateLimited(f"Too many requests from this address; try again in {wait} s",
                          headers={"Retry-After": str(wait)})


def client_address() -> str:
    identity = (app.current_request.context or {}).get("identity") or {}
    return identity.get("sourceIp") or "unknown"


def json_body() -> dict:
    raw = app.current_request.raw_body or b""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise BadRequest("The body is not valid JSON", code="bad_json") from None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object", code="bad_json")
    return body


def query() -> dict:
    return app.current_request.query_params or {}


@app.middleware("all")
def observed(event, get_response):
    """Every invocation of every function: one log context (request, correlation id) and one EMF
    metrics flush (chalicelib/observe.py)."""
    return observe.run(event, get_response)


@app.middleware("http")
def hygiene(event, get_response):
    """Security headers on every response; with several CORS origins, the caller's if it is one."""
    response = get_response(event)
    origins = deps.settings().cors_origins
    origin = (event.headers or {}).get("origin")
    if len(origins) > 1 and origin in origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@route("/health", methods=["GET"], public=True)
def health():
    """Open to anyone (rate limited per address): the status and each check's ok flag; the
    latencies and error texts only for keys of an operator account."""
    limit_client_address()
    s3, sqs = deps.storage(), deps.chunk_queue()
    ok, body = run_checks({
        "postgres": lambda: db.ping(deps.conn()),
        "redis": deps.redis_client().ping,
        "s3": s3.check,
        "sqs": sqs.check,
    })
    if _is_operator_request():
        body["checks"] = {name: {**c, "error": logs.redact_secrets(c["error"])} if "error" in c else c
                          for name, c in body["checks"].items()}
    else:
        body = {"status": body["status"], "checks": {name: {"ok": c["ok"]} for name, c in body["checks"].items()}}
    return Response(body, status_code=200 if ok else 503)


def _is_operator_request() -> bool:
    key = presented_key()
    if not key:
        return False
    try:
        return authenticate(key).is_operator
    except Exception:  # a bad key, too many of them, an unreachable database: the anonymous answer
        return False


@route("/", methods=["GET"], public=True)
def web_page():
    """The web page (chalicelib/web/static/), with its own strict Content-Security-Policy."""
    return web.page_response(deps.settings(), (app.current_request.context or {}).get("path"))


@route("/static/{name}", methods=["GET"], public=True)
def web_asset(name):
    """The page's script, style sheet and icon (by bare name; anything else is a 404)."""
    return web.asset_response(name, deps.settings())


@route("/api/openapi.json", methods=["GET"], public=True)
def openapi_document():
    """The OpenAPI 3.1 description of this API (chalicelib/web/openapi.yaml), public."""
    return Response(openapi.document(), headers={"Cache-Control": "public, max-age=300"})


@route("/api/account", methods=["GET"])
def account(caller: Caller):
    return jobs.account_view(deps.conn(), deps.settings(), caller)


@route("/api/account/webhook-secret", methods=["POST"])
def webhook_secret(caller: Caller):
    """Create or rotate the account's webhook signing secret; shown only in this answer."""
    return Response({"secret": webhooks.rotate_secret(deps.conn(), deps.webhook_box(), caller.account_id),
                     "header": webhooks.HEADER}, status_code=201)


@route("/api/upload", methods=["POST"])
def upload(caller: Caller):
    request = app.current_request
    s = deps.settings()
    upload = parse_upload(request.headers, query(), request.raw_body, s.max_file_size, s.max_direct_upload)
    body = jobs.create_from_upload(deps.conn(), deps.storage(), account_id=caller.account_id,
                                   file_name=upload.file_name, data=upload.data, url_column=upload.url_column)
    return Response(body, status_code=201)


@route("/api/upload/url", methods=["POST"])
def upload_url(caller: Caller):
    body = json_body()
    result = jobs.create_presigned_upload(deps.conn(), deps.storage(), deps.settings(), account_id=caller.account_id,
                                          file_name=body.get("file_name"), size=body.get("size"),
                                          url_column=body.get("url_column"))
    return Response(result, status_code=201)


@route("/api/upload/complete", methods=["POST"])
def complete_upload(caller: Caller):
    """Join the parts of a multipart presigned upload into the file (checked against the bound)."""
    body = json_body()
    job_id = body.get("job_id")
    if not job_id:
        raise BadRequest("job_id is required", code="missing_job_id")
    return jobs.complete_upload(deps.conn(), deps.storage(), deps.settings(), caller.account_id, job_id,
                                body.get("parts"))


@route("/api/upload/{job_id}/parts", methods=["GET"])
def upload_parts(caller: Caller, job_id):
    """The parts S3 holds of a multipart upload, and fresh URLs for the others (resume)."""
    return jobs.uploaded_parts(deps.conn(), deps.storage(), deps.settings(), caller.account_id, job_id)


@route("/api/upload/process", methods=["POST"])
def process(caller: Caller):
    body = json_body()
    job_id = body.get("job_id") or body.get("jobId")
    if not job_id:
        raise BadRequest("job_id is required", code="missing_job_id")
    emf.tag(job_id=job_id)
    if body.get("url_column") is not None:  # the caller re-chose the URL column (an upload's alternatives)
        jobs.choose_url_column(deps.conn(), deps.storage(), caller.account_id, job_id, body.get("url_column"))
    result = jobs.start(deps.conn(), deps.storage(), deps.chunk_queue(), deps.settings(), caller.account_id, job_id,
                        instructions=body.get("instructions"), model=body.get("model"),
                        page_context=body.get("page_context"), max_cost_usd=body.get("max_cost_usd"),
                        callback_url=body.get("callback_url"), mode=body.get("mode"),
                        grounding=body.get("grounding"), min_words=body.get("min_words"),
                        max_words=body.get("max_words"), language=body.get("language"), reuse=body.get("reuse"),
                        variants=body.get("variants"), completed=deps.job_completed, notify=deps.notify_job)
    return Response(result, status_code=202)


@route("/api/jobs", methods=["GET"])
def list_jobs(caller: Caller):
    q = query()
    return jobs.list_(deps.conn(), caller.account_id, status=q.get("status"), limit=q.get("limit"),
                      cursor=q.get("cursor"))


@route("/api/jobs/{job_id}", methods=["GET"])
def get_job(caller: Caller, job_id):
    return jobs.get(deps.conn(), caller.account_id, job_id, limiter=deps.rate_limiter())


@route("/api/jobs/{job_id}/results", methods=["GET"])
def job_results(caller: Caller, job_id):
    q = query()
    return jobs.results(deps.conn(), caller.account_id, job_id, status=q.get("status"), limit=q.get("limit"),
                        cursor=q.get("cursor"), quality=q.get("quality"), review=q.get("review"))


@route("/api/jobs/{job_id}/results/{result_id}", methods=["GET"])
def job_result(caller: Caller, job_id, result_id):
    return review.get_result(deps.conn(), caller.account_id, job_id, result_id)


@route("/api/jobs/{job_id}/results/{result_id}", methods=["PATCH"])
def edit_result(caller: Caller, job_id, result_id):
    return review.edit(deps.conn(), caller.account_id, job_id, result_id, json_body(),
                     app.current_request.headers.get("if-unmodified-since"))


@route("/api/jobs/{job_id}/review", methods=["POST"])
def review_results(caller: Caller, job_id):
    return review.review_results(deps.conn(), caller.account_id, job_id, json_body())


@route("/api/jobs/{job_id}/regenerate", methods=["POST"])
def regenerate_results(caller: Caller, job_id):
    result = review.regenerate(deps.conn(), deps.chunk_queue(), deps.settings(), caller.account_id, job_id, json_body(),
                               send_webhooks=deps.send_webhooks)
    return Response(result, status_code=202)


@route("/api/jobs/{job_id}/preview", methods=["POST"])
def preview_job(caller: Caller, job_id):
    body = json_body()
    return preview.preview(deps.conn(), deps.storage(), deps.settings(), deps.preview_generator(), caller.account_id,
                           job_id, instructions=body.get("instructions"), model=body.get("model"),
                           page_context=body.get("page_context"), rows=body.get("rows"),
                           page_summary=deps.page_summaries(), grounding=body.get("grounding"),
                           min_words=body.get("min_words"), max_words=body.get("max_words"),
                           language=body.get("language"), reuse=body.get("reuse"), variants=body.get("variants"))


@route("/api/jobs/{job_id}/retry", methods=["POST"])
def retry_job(caller: Caller, job_id):
    result = jobs.retry(deps.conn(), deps.chunk_queue(), deps.settings(), caller.account_id, job_id,
                        send_webhooks=deps.send_webhooks)
    return Response(result, status_code=202)


@route("/api/upload/{job_id}/cancel", methods=["POST"])
def cancel_job(caller: Caller, job_id):
    return jobs.cancel(deps.conn(), caller.account_id, job_id, notify=deps.notify_job,
                       cancel_batches=lambda job: deps.batch_runner().cancel_job(job), storage=deps.storage())


@route("/api/upload/{job_id}/download", methods=["GET"])
def download(caller: Caller, job_id):
    kind, payload, name = jobs.download(deps.conn(), deps.storage(), deps.chunk_queue(), deps.settings(),
                                        caller.account_id, job_id, review=query().get("review"))
    if kind == "building":  # a big export is being built in the background: ask again
        return Response({"export": "building", "retry_after": payload,
                         "message": f"The CSV is being built; ask again in {payload} s."},
                        status_code=202, headers={"Retry-After": str(payload)})
    if kind == "redirect":
        return Response("", status_code=302, headers={"Location": payload})
    if not accepts_binary(app.current_request.headers.get("accept")):
        raise DomainError("The download is a CSV file: send `Accept: text/csv` (or `*/*`, as browsers and curl do).",
                          code="not_acceptable", status=406)
    return Response(payload, status_code=200, headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": content_disposition(name),
    })


def accepts_binary(accept: str | None) -> bool:
    """Whether a response of one of the API's binary types (text/csv) may go to a client sending
    this Accept header. API Gateway hands such a body over decoded only then (else as base64 text),
    and Chalice refuses to send it otherwise, with a 400 in its own shape; this is its rule
    (chalice.app._matches_content_type), checked first so the refusal is ours."""
    offered = {part.strip() for part in re.split("[,;]", (accept or "").lower())}
    return "*/*" in offered or bool(offered & {t.lower() for t in app.api.binary_types})


def content_disposition(name: str) -> str:
    """An attachment header any HTTP/1.1 stack can send: an ASCII fallback name, plus the real
    one as RFC 6266 / RFC 5987 `filename*` when it is not plain ASCII."""
    fallback = name.encode("ascii", "replace").decode().replace("?", "_").replace('"', "")
    if fallback == name:
        return f'attachment; filename="{name}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{urllib.parse.quote(name, safe='')}"


@route("/api/metrics", methods=["GET"])
def metrics(caller: Caller):
    """The account's own figures; the shared queues and provider limits for operator keys only."""
    if not caller.is_operator:
        return jobs.metrics(deps.conn(), deps.chunk_queue(), caller.account_id, operator=False)
    models = sorted({deps.settings().openai_model, *jobs.account_models(deps.conn(), deps.settings(),
                                                                        caller.account_id)})
    return jobs.metrics(deps.conn(), deps.chunk_queue(), caller.account_id, operator=True,
                        limiter=deps.rate_limiter(), models=models, gate=deps.concurrency_gate())


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
                jobs.give_up_chunk(deps.conn, deps.storage(), deps.chunk_queue(), job_id, chunk, deliveries, exc,
                                   completed=deps.job_completed)
            raise


@app.on_sqs_message(queue="csv-opener-ingest", batch_size=1, name="ingest_file")
def ingest_file(event):
    """One ingest message: read the job's file into its rows from where the stored ones end (a
    redelivery skips what is stored); or one export message: build the job's results CSV in S3
    (a download too big to build in its request). Bad messages are logged and acknowledged;
    unexpected errors raise so SQS delivers the message again."""
    for record in event:
        try:
            kind, job_id, view = parse_background_message(record.body)
        except ValueError:
            log.error("malformed ingest message dropped", extra={"body": record.body[:500]})
            continue
        if kind == "export":
            jobs.build_export(deps.conn, deps.storage(), job_id, view, results_ready=deps.results_ready)
            continue
        jobs.ingest_file(deps.conn(), deps.storage(), deps.chunk_queue(), deps.settings(), job_id,
                         remaining_s=remaining_seconds(event.context), completed=deps.job_completed,
                         notify=deps.notify_job)


@app.on_s3_event(bucket=deps.settings().upload_bucket, prefix="incoming/", suffix=".csv",
                 events=["s3:ObjectCreated:*"], name="start_dropped_csv")
def start_dropped_csv(event):
    """A CSV dropped under incoming/ starts a job with default options."""
    record = event.to_dict()["Records"][0]["s3"]["object"]
    jobs.start_from_drop(deps.conn(), deps.storage(), deps.chunk_queue(), deps.settings(), key=event.key,
                         version=record.get("sequencer") or record.get("eTag"), etag=record.get("eTag"))


@app.schedule(Rate(5, unit=Rate.MINUTES), name="requeue_stalled")
def requeue_stalled(event):
    """Every 5 minutes: chunks of jobs without progress for 10 minutes whose work nobody holds
    are enqueued again (a lost message must not leave a job processing forever); completed jobs
    without their results CSV get it; drops whose start failed are started; finished Batch API
    batches are read back into their jobs; due webhooks are retried within what time is left.
    A step that failed fails the invocation (an alarm), after every other step ran."""
    done = jobs.sweep(deps.conn(), deps.conn, deps.storage(), deps.chunk_queue(), deps.settings(),
                      deps.outbound_fetcher(), poll_batches=deps.batch_runner().poll, webhook_box=deps.webhook_box,
                      remaining_s=remaining_seconds(getattr(event, "context", None)), notify=deps.notify_job)
    if done["errors"]:
        raise RuntimeError(f"sweep steps failed: {done['errors']}")


def remaining_seconds(context):
    if context is None or not hasattr(context, "get_remaining_time_in_millis"):
        return lambda: float("inf")
    return lambda: context.get_remaining_time_in_millis() / 1000
