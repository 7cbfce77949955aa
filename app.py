"""CSV Opener: Chalice wiring only. Each handler reads the request or event, calls one service
function with its dependencies, and returns; errors become the SPEC error shape in `route`."""

from __future__ import annotations

import functools
import uuid

from chalice import Chalice, CORSConfig, Response

from chalicelib import db, deps, logs
from chalicelib.errors import DomainError
from chalicelib.health import run_checks

settings = deps.settings()
logs.configure(settings.log_level)
log = logs.get_logger("api")

app = Chalice(app_name="csv-opener")
app.log.setLevel("CRITICAL")  # Chalice's own error log is replaced by ours (JSON, with request id)
CORS = CORSConfig(allow_origin=settings.cors_allow_origin, expose_headers=["Retry-After", "X-Request-Id"])

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


@app.middleware("http")
def security_headers(event, get_response):
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
