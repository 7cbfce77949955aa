"""EMF metrics (chalicelib/metrics.py): every document printed is valid against the Embedded
Metric Format specification, carries account and job as properties (never dimensions), and
counts what the services recorded during one invocation."""

from __future__ import annotations

import io
import json

import httpx
import openai
import pytest

from chalicelib import logs, metrics
from chalicelib.adapters.queue import chunk_correlation_id, chunk_message, parse_chunk_message
from tests.support.emf import emf_documents, total


def _error(status: int) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://model.test/v1/chat/completions")
    response = httpx.Response(status, request=request, json={"error": {"message": "x"}})
    return openai.RateLimitError("slow down", response=response, body=None) if status == 429 else \
        openai.InternalServerError("boom", response=response, body=None)


def _raise(exc: BaseException):
    def call(**_request):
        raise exc
    return call


def test_one_invocation_is_one_valid_emf_document_with_ids_as_properties(capsys):
    with metrics.invocation("process_chunk", request_id="r-1", correlation_id="c-1"):
        metrics.tag_job({"id": "job-1", "account_id": "acct-1"},
                        price=lambda tokens: (tokens["prompt_tokens"] + tokens["completion_tokens"]) / 1_000_000)
        assert metrics.llm_call(lambda **request: request["x"], x="answer") == "answer"
        for exc in (_error(429), _error(503), openai.APITimeoutError(httpx.Request("POST", "http://model.test/")),
                    ValueError("bad answer")):
            with pytest.raises(type(exc)):
                metrics.llm_call(_raise(exc), model="m")
        metrics.url_result({"status": "completed", "context_status": "fetched", "prompt_tokens": 300,
                            "completion_tokens": 40})
        metrics.url_result({"status": "completed", "context_status": "not_html", "prompt_tokens": 200,
                            "completion_tokens": 60})
        metrics.url_result({"status": "failed", "context_status": "off", "prompt_tokens": None,
                            "completion_tokens": None})
        metrics.queue_lag("1000", now_ms=3500)
        metrics.limiter_wait(0.25)
    [document] = emf_documents(capsys.readouterr().out)
    directive = document["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "CSVOpener"
    assert directive["Dimensions"] == [["service"]]  # account and job are properties: no cardinality
    assert (document["account_id"], document["job_id"], document["correlation_id"], document["request_id"],
            document["function"]) == ("acct-1", "job-1", "c-1", "r-1", "process_chunk")
    assert [total(document, m) for m in ("UrlsCompleted", "UrlsFailed")] == [2, 1]
    assert [total(document, m) for m in ("LlmCalls", "LlmCallsOk", "LlmCalls429", "LlmCalls5xx", "LlmCallsTimeout",
                                         "LlmCallsError")] == [5, 1, 1, 1, 1, 1]
    assert len(document["LlmLatency"]) == 5
    assert [total(document, m) for m in ("PageFetchFetched", "PageFetchNotHtml")] == [1, 1]
    assert "PageFetchOff" not in document
    assert [total(document, m) for m in ("PromptTokens", "CompletionTokens")] == [500, 100]
    assert total(document, "CostUsd") == pytest.approx(600 / 1_000_000)
    assert total(document, "ChunkQueueLag") == 2500 and total(document, "LimiterWait") == 250
    assert document["UrlsCompleted"] == 2  # a single value is a plain number (Logs Insights sums it)
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert units["LlmLatency"] == units["ChunkQueueLag"] == "Milliseconds" and units["UrlsCompleted"] == "Count"


def test_the_rate_in_force_is_a_gauge_with_its_model_as_a_property(capsys):
    with metrics.invocation("process_chunk"):
        for rpm in (180, 900, 873):  # the rate at each call's grant: the last one stands, not a sum
            metrics.rate_in_force("gpt-4o-mini", rpm)
        metrics.rate_in_force("gpt-4o-mini", None)  # a limiter that does not say: nothing recorded
    [document] = emf_documents(capsys.readouterr().out)
    assert document["ProviderRpmInForce"] == 873 and document["model"] == "gpt-4o-mini"
    directive = document["_aws"]["CloudWatchMetrics"][0]
    assert directive["Dimensions"] == [["service"]]  # the model is no dimension
    assert {m["Name"]: m["Unit"] for m in directive["Metrics"]}["ProviderRpmInForce"] == "None"


def test_more_than_a_hundred_latencies_go_into_further_valid_documents(capsys):
    with metrics.invocation("process_chunk"):
        for _ in range(250):
            metrics.llm_call(lambda: None)
    documents = emf_documents(capsys.readouterr().out)
    assert [len(d["LlmLatency"]) for d in documents] == [99, 99, 52]
    assert total(documents[0], "LlmCalls") == 250 and "LlmCalls" not in documents[1]


def test_cold_start_is_counted_once_per_process_and_errors_flush_too(capsys, monkeypatch):
    monkeypatch.setattr(metrics, "_cold", True)
    with metrics.invocation("api_handler"):
        pass
    with pytest.raises(RuntimeError), metrics.invocation("api_handler"):
        raise RuntimeError("handler failed")
    first, second = emf_documents(capsys.readouterr().out)
    assert total(first, "ColdStart") == 1 and "ColdStart" not in second
    assert total(second, "HandlerErrors") == 1 and total(second, "Invocations") == 1


def test_threads_record_into_the_invocation_that_started_them(capsys):
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    with metrics.invocation("process_chunk"), ThreadPoolExecutor(4) as pool:
        for _ in range(40):
            pool.submit(contextvars.copy_context().run, metrics.url_result, {"status": "completed"})
    assert total(emf_documents(capsys.readouterr().out)[0], "UrlsCompleted") == 40


def test_without_an_invocation_recording_is_a_no_op_and_disabled_prints_nothing(capsys, monkeypatch):
    metrics.count(metrics.URLS_FAILED)
    metrics.url_result({"status": "failed"})
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    with metrics.invocation("api_handler"):
        metrics.count(metrics.URLS_FAILED)
    assert capsys.readouterr().out == ""


def test_tags_reach_the_log_lines_of_the_invocation(capsys):
    logs.configure("INFO")
    with logs.log_context(request_id="r-9", correlation_id="c-9"), metrics.invocation("api_handler"):
        metrics.tag(account_id="acct-9", job_id=None)
        logs.get_logger("t").info("hello")
    out = capsys.readouterr().out.splitlines()
    line = next(json.loads(x) for x in out if '"message"' in x)
    assert (line["request_id"], line["correlation_id"], line["account_id"]) == ("r-9", "c-9", "acct-9")
    assert "job_id" not in line


def test_chunk_messages_carry_the_correlation_id_and_old_messages_still_parse():
    job_id = "5f1b7a52-8e0c-4a52-9a68-1b4c3a1e8f10"
    with logs.log_context(correlation_id="req-42"):
        body = chunk_message(job_id, 3)
    assert parse_chunk_message(body) == (job_id, 3) and chunk_correlation_id(body) == "req-42"
    old = json.dumps({"job_id": job_id, "chunk": 1})
    assert parse_chunk_message(old) == (job_id, 1) and chunk_correlation_id(old) is None
    assert chunk_correlation_id("not json") is None
    assert "correlation_id" not in json.loads(chunk_message(job_id, 0))


def test_flush_writes_to_the_given_stream():
    recorder = metrics.Recorder("requeue_stalled")
    recorder.add(metrics.INVOCATIONS, 1)
    out = io.StringIO()
    metrics.flush(recorder, out)
    assert emf_documents(out.getvalue())[0]["function"] == "requeue_stalled"


def test_a_callers_correlation_id_is_kept_only_when_it_is_a_plain_token():
    from chalicelib import observe

    assert observe.correlation_from_request({"x-correlation-id": "upload-1:a.b"}, "req-1") == "upload-1:a.b"
    assert observe.correlation_from_request({"x-correlation-id": 'a b\n{"level": "error"}'}, "req-1") == "req-1"
    assert observe.correlation_from_request({"x-correlation-id": "x" * 101}, "req-1") == "req-1"
    assert observe.correlation_from_request({}, "req-1") == "req-1"
