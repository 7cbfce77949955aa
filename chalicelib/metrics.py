"""CloudWatch metrics in Embedded Metric Format (EMF), one flush per handler invocation.

Why this exists: an operator must learn from alarms, not from a customer, that the dead-letter
queue fills, that the provider answers 429 to a third of the calls or that an account spent $400
overnight. Every handler runs inside `invocation(...)` (app.py's middleware); what the services
record during it (`count`, `llm_call`, `url_result`, ...) is summed here and printed on stdout as
EMF JSON when the invocation ends. Lambda ships stdout to CloudWatch Logs, which turns the lines
into metrics of namespace `CSVOpener` with no API call and no extra latency; locally (`chalice
local`, the event runner, tests) the same lines are just printed.

The EMF document itself is Powertools for AWS Lambda's (`AmazonCloudWatchEMFProvider`: units,
the 100-metric limit, the schema). Its `Metrics` facade is not used: that keeps one metric set per
process (class attributes), and the local runner handles many chunks at once in one process, so
each invocation here owns a provider of its own.

Cardinality: the only dimension is `service`; account id, job id, correlation id and request id
go in as properties (searchable with Logs Insights, free in CloudWatch), never as dimensions.
With no invocation open (an admin command, a unit test of a service), recording is a no-op.
Set POWERTOOLS_METRICS_DISABLED=true to print nothing.
"""

from __future__ import annotations

import contextvars
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

from chalicelib import logs

NAMESPACE = "CSVOpener"
SERVICE = "csv-opener"

COUNT, MS, NONE = "Count", "Milliseconds", "None"
# Metric names the alarms and the dashboard (infra/resources.yaml) and the runbook rely on.
URLS_COMPLETED, URLS_FAILED = "UrlsCompleted", "UrlsFailed"
LLM_CALLS, LLM_LATENCY = "LlmCalls", "LlmLatency"
LLM_OUTCOMES = {"ok": "LlmCallsOk", "429": "LlmCalls429", "5xx": "LlmCalls5xx", "timeout": "LlmCallsTimeout",
                "error": "LlmCallsError"}
COST_USD = "CostUsd"
QUEUE_LAG = "ChunkQueueLag"
COLD_START = "ColdStart"
INVOCATIONS, HANDLER_ERRORS = "Invocations", "HandlerErrors"
API_4XX, API_5XX = "Api4xx", "Api5xx"
LIMITER_WAIT = "LimiterWait"
INFLIGHT_LIMIT = "InflightLimit"  # the calls in flight a handler may have to a model (ratelimit/gate.py)
PROVIDER_RPM = "ProviderRpmInForce"  # the request rate the shared limiter paced the invocation's calls at
PROMPT_TOKENS, COMPLETION_TOKENS = "PromptTokens", "CompletionTokens"
# EMF takes 100 values per metric in a document; Powertools prints a document by itself when one
# reaches 100, so ours stop one short and the rest go into the next document.
VALUES_PER_DOCUMENT = 99
PAGE_FETCH_PREFIX = "PageFetch"  # + the context_status in CamelCase: PageFetchFetched, PageFetchNotHtml, ...

_current: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("metrics_recorder", default=None)
_cold = True  # the first invocation of this process (container) is its cold start
_cold_lock = threading.Lock()


def page_fetch_metric(context_status: str) -> str:
    return PAGE_FETCH_PREFIX + "".join(part.capitalize() for part in context_status.split("_"))


class Recorder:
    """What one invocation recorded; shared by the threads it starts (they copy the context)."""

    def __init__(self, function: str) -> None:
        self.function = function
        self.properties: dict[str, Any] = {"function": function}
        self.values: dict[str, tuple[str, list[float]]] = {}
        self.price: Callable[[dict], float | None] | None = None
        self._lock = threading.Lock()

    def add(self, name: str, value: float, unit: str = COUNT) -> None:
        with self._lock:
            self.values.setdefault(name, (unit, []))[1].append(float(value))

    def set(self, name: str, value: float, unit: str = NONE) -> None:
        """A gauge: the last value set stands for the invocation (not a sum)."""
        with self._lock:
            self.values[name] = (unit, [float(value)])

    def total(self, name: str) -> float:
        with self._lock:
            return sum(self.values.get(name, (COUNT, []))[1])

    def documents(self) -> list[dict]:
        """The EMF documents of this invocation: counts summed, latencies kept as value lists
        (VALUES_PER_DOCUMENT at most per metric and document; more go into further documents)."""
        with self._lock:
            series = {name: (unit, values if unit == MS else [sum(values)])
                      for name, (unit, values) in self.values.items()}
        documents = []
        while series:
            provider = AmazonCloudWatchEMFProvider(namespace=NAMESPACE, service=SERVICE)
            for name, (unit, values) in list(series.items()):
                for value in values[:VALUES_PER_DOCUMENT]:
                    provider.add_metric(name=name, unit=unit, value=value)
                rest = values[VALUES_PER_DOCUMENT:]
                if rest:
                    series[name] = (unit, rest)
                else:
                    del series[name]
            for key, value in self.properties.items():
                if value is not None:
                    provider.add_metadata(key=key, value=str(value))
            document = provider.serialize_metric_set()
            for name in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]:  # one value: a plain number, so
                values = document[name["Name"]]  # Logs Insights can sum it (`stats sum(CostUsd) by account_id`)
                if isinstance(values, list) and len(values) == 1:
                    document[name["Name"]] = values[0]
            documents.append(document)
        return documents


def current() -> Recorder | None:
    return _current.get()


@contextmanager
def invocation(function: str, **properties: Any) -> Iterator[Recorder]:
    """Record the metrics of one handler invocation and flush them as EMF on stdout at its end,
    whether it returns or raises (an exception counts in HandlerErrors and is re-raised)."""
    global _cold
    recorder = Recorder(function)
    recorder.properties.update(properties)
    with _cold_lock:
        cold, _cold = _cold, False
    recorder.add(INVOCATIONS, 1)
    if cold:
        recorder.add(COLD_START, 1)
    token = _current.set(recorder)
    try:
        with logs.log_context():  # what `tag` binds to the log lines ends with the invocation
            yield recorder
    except BaseException:
        recorder.add(HANDLER_ERRORS, 1)
        raise
    finally:
        _current.reset(token)
        flush(recorder)


def flush(recorder: Recorder, out=None) -> None:
    if is_metrics_disabled():
        return
    stream = out or sys.stdout  # whatever stdout is now (Lambda's, or a test's capture)
    for document in recorder.documents():
        stream.write(json.dumps(document, separators=(",", ":")) + "\n")
    stream.flush()


# ------------------------------------------------------------------ what services record

def count(name: str, value: float = 1, unit: str = COUNT) -> None:
    recorder = _current.get()
    if recorder is not None:
        recorder.add(name, value, unit)


def tag(**properties: Any) -> None:
    """Properties of this invocation (job id, account id, ...): on its metrics and its log lines."""
    given = {k: str(v) for k, v in properties.items() if v is not None}
    recorder = _current.get()
    if recorder is not None:
        recorder.properties.update(given)
    logs.bind(**given)


def tag_job(job: dict, price: Callable[[dict], float | None] | None = None) -> None:
    """The job this invocation works for; `price(result)` gives the dollars of one of its URLs
    from the result's token counters (prompt, completion, cached; None: the model has no price)."""
    tag(job_id=job["id"], account_id=job.get("account_id"))
    recorder = _current.get()
    if recorder is not None:
        recorder.price = price


def url_result(result: dict) -> None:
    """One URL finished (the worker's result dict): completed or failed, its page fetch, tokens, cost."""
    recorder = _current.get()
    if recorder is None:
        return
    recorder.add(URLS_COMPLETED if result.get("status") == "completed" else URLS_FAILED, 1)
    context = result.get("context_status")
    if context and context != "off":
        recorder.add(page_fetch_metric(context), 1)
    prompt, completion = result.get("prompt_tokens") or 0, result.get("completion_tokens") or 0
    if prompt or completion:
        recorder.add(PROMPT_TOKENS, prompt)
        recorder.add(COMPLETION_TOKENS, completion)
        cost = recorder.price(result) if recorder.price is not None else None
        if cost is not None:
            recorder.add(COST_USD, cost, NONE)


def llm_outcome(exc: BaseException | None) -> str:
    """ok, 429, 5xx, timeout or error, from what the openai SDK raised (duck-typed: its errors
    carry `status_code`; a timeout is APITimeoutError, a subclass of its connection error)."""
    if exc is None:
        return "ok"
    status = getattr(exc, "status_code", None)
    if status == 429:
        return "429"
    if isinstance(status, int) and status >= 500:
        return "5xx"
    if "Timeout" in type(exc).__name__ or isinstance(exc, TimeoutError):
        return "timeout"
    return "error"


def llm_call(call: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """`call(*args, **kwargs)` (one request to the model API), counted by outcome and timed."""
    started = time.perf_counter()
    error: BaseException | None = None
    try:
        return call(*args, **kwargs)
    except BaseException as exc:
        error = exc
        raise
    finally:
        count(LLM_CALLS)
        count(LLM_OUTCOMES[llm_outcome(error)])
        count(LLM_LATENCY, (time.perf_counter() - started) * 1000, MS)


def limiter_wait(seconds: float) -> float:
    """The time a call waited for the shared limiter; returned unchanged."""
    count(LIMITER_WAIT, seconds * 1000, MS)
    return seconds


def rate_in_force(model: str, rpm: int | None) -> None:
    """The request rate per minute the shared limiter paced the invocation's last call at (0: no
    limit), and its model as a property (one job, so one model, per chunk invocation)."""
    recorder = _current.get()
    if recorder is not None and rpm is not None:
        recorder.set(PROVIDER_RPM, rpm)
        recorder.properties["model"] = model


def queue_lag(sent_timestamp_ms: Any, now_ms: float | None = None) -> None:
    """A chunk message's age when its handler took it (SQS `SentTimestamp`, epoch ms)."""
    try:
        sent = float(sent_timestamp_ms)
    except (TypeError, ValueError):
        return  # no attribute (a hand-made event): nothing to measure
    now_ms = time.time() * 1000 if now_ms is None else now_ms
    count(QUEUE_LAG, max(0.0, now_ms - sent), MS)


def http_status(status: int) -> None:
    if 400 <= status < 500:
        count(API_4XX)
    elif status >= 500:
        count(API_5XX)
