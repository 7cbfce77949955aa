"""What every handler invocation records, whatever its trigger: app.py's one middleware calls `run`.

Why this exists: an on-call engineer follows one upload from its HTTP request through every chunk
message and webhook it caused. Each invocation gets one log context (the Lambda request id, the
function, a correlation id) and one EMF flush (chalicelib/metrics.py). The correlation id is the
caller's `X-Correlation-Id` when it is a sane token, else the request id; the chunk messages sent
during the request carry it (chalicelib/adapters/queue.py), and the chunk handler takes it back
from its message, together with the message's age (ChunkQueueLag), and sends it on with the
job's webhook (`X-Correlation-Id`, chalicelib/outbound/webhooks.py).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

from chalicelib import logs, metrics
from chalicelib.adapters.queue import chunk_correlation_id

HEADER = logs.CORRELATION_HEADER
_SANE = re.compile(r"^[A-Za-z0-9._:\-]{1,100}$")  # ends up in logs and messages: no free text

# Chalice's event classes -> the function names of .chalice/config.json
FUNCTIONS = {"Request": "api_handler", "SQSEvent": "process_chunk", "S3Event": "start_dropped_csv",
             "CloudWatchEvent": "requeue_stalled"}


def _lambda_context(event: Any) -> Any:
    return getattr(event, "lambda_context", None) or getattr(event, "context", None)


def _api_request_id(event: Any) -> str | None:
    """API Gateway's id of an HTTP request (the one a 500 answer quotes), if any."""
    context = getattr(event, "context", None)
    return context.get("requestId") if isinstance(context, dict) else None


def _request_id(event: Any) -> str:
    """Lambda's request id of this invocation (API Gateway's, or a new one, where there is none: locally)."""
    request_id = getattr(_lambda_context(event), "aws_request_id", None) or _api_request_id(event)
    return str(request_id or uuid.uuid4())


def correlation_from_request(headers: Any, request_id: str) -> str:
    given = (headers or {}).get(HEADER.lower()) or (headers or {}).get(HEADER)
    return given if given and _SANE.match(given) else request_id


def run(event: Any, get_response: Callable[[Any], Any]) -> Any:
    """Run one invocation of any handler inside its log context and metrics recorder."""
    function = FUNCTIONS.get(type(event).__name__, type(event).__name__)
    request_id = _request_id(event)
    correlation_id, records = request_id, []
    if function == "api_handler":
        correlation_id = correlation_from_request(getattr(event, "headers", None), request_id)
    elif function == "process_chunk":
        records = [record.to_dict() for record in event]
        correlation_id = next((c for c in (chunk_correlation_id(r.get("body", "")) for r in records) if c),
                              request_id)
    with logs.log_context(request_id=request_id, function=function, correlation_id=correlation_id,
                          api_request_id=_api_request_id(event) if function == "api_handler" else None), \
            metrics.invocation(function, request_id=request_id, correlation_id=correlation_id):
        for record in records:
            metrics.queue_lag((record.get("attributes") or {}).get("SentTimestamp"))
        response = get_response(event)
        if function == "api_handler":
            metrics.http_status(response.status_code)
            response.headers.setdefault(HEADER, correlation_id)
        return response
