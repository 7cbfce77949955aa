"""The fuzzer's view of the API, shared by the fuzz tests: the OpenAPI document loaded into
schemathesis with our configuration and checks, CSV bodies as people upload them, real job ids
swapped into generated paths, and the rule that keeps generated requests from reaching off this
machine."""

from __future__ import annotations

import json
import os
import uuid
from urllib.parse import urlsplit

import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core import NotSet
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.util import ROOT

SPEC_PATH = ROOT / "chalicelib" / "web" / "openapi.yaml"

# Generated cases per operation in the fuzzing phase; FUZZ_MAX_EXAMPLES=500 for a longer hunt.
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "25"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

CONFIG = schemathesis.Config.from_dict({
    "generation": {
        "mode": "all",  # valid requests and invalid ones
        "max-examples": MAX_EXAMPLES,
        "database": "none",  # no example database: every run starts afresh
        # Under CI the same cases every run (Hypothesis's own CI default), so a red run means a
        # change broke something, not a lucky draw; elsewhere new cases each run.
        "deterministic": os.environ.get("CI", "").lower() in ("1", "true", "yes"),
    },
    "phases": {
        "stateful": {"enabled": False},
        # The coverage phase also sends methods the document does not list, to see them refused.
        # Left out: TRACE and QUERY, which `chalice local`'s HTTP server (http.server, which has no
        # handler for them) answers itself with an HTML 501 before the app runs; API Gateway never
        # forwards either to the app.
        "coverage": {"unexpected-methods": ["GET", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"]},
    },
})

schema = schemathesis.openapi.from_path(SPEC_PATH, config=CONFIG)


# ---------------------------------------------------------------- request bodies

def _csv_file() -> st.SearchStrategy[bytes]:
    """CSV files as people upload them: a header, URL-ish cells (valid, invalid, empty), other
    columns with quoting, delimiters and non-ASCII text; sometimes header-less or plain noise."""
    cell = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
    url = st.one_of(
        st.sampled_from(["acme.com", "https://globex.example.org/about", "www.initech.io", "javascript:alert(1)",
                         "http://localhost:8080/x", "ftp://files.example.com", "10.0.0.1", ""]),
        st.builds(lambda host: f"https://{host}.example.com/", st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)),
        cell,
    )
    row = st.tuples(cell, url, cell).map(lambda cells: '"{}",{},"{}"'.format(
        cells[0].replace('"', '""'), cells[1].replace(",", " ").replace("\n", " "), cells[2].replace('"', '""')))
    delimiter = st.sampled_from([",", ";", "\t", "|"])
    with_header = st.tuples(st.sampled_from(["name,website,notes", "company,url,city", "a,b,c"]),
                            st.lists(row, min_size=1, max_size=8), delimiter).map(
        lambda t: "\n".join([t[0], *t[1]]).replace(",", t[2]) + "\n")
    one_column = st.lists(url, min_size=1, max_size=6).map(lambda rows: "\n".join(rows) + "\n")
    document = st.one_of(with_header, one_column, cell)
    return st.one_of(document.map(str.encode), document.map(lambda text: text.encode("cp1252", "replace")),
                     st.binary(max_size=64))


schemathesis.openapi.media_type("text/csv", _csv_file())


# ---------------------------------------------------------------- real job ids

JOB_POOL: list[str] = []  # filled by the `jobs` fixture before any case is sent


@schema.hook
def map_path_parameters(context, path_parameters):
    """Half of the generated job ids are replaced by one of the account's real jobs (chosen by
    the generated id itself, so a replayed case picks the same job), so the fuzzer also reaches
    the 200 / 202 / 409 answers and not only 404."""
    value = (path_parameters or {}).get("job_id")
    if JOB_POOL and isinstance(value, str):
        try:
            number = uuid.UUID(value).int
        except ValueError:
            return path_parameters
        if number % 2 == 0:
            path_parameters["job_id"] = JOB_POOL[(number // 2) % len(JOB_POOL)]
    return path_parameters


# Operations that fetch each row's web page when `page_context` is true (the default), and the
# one that takes a webhook URL (POSTed to when the job completes, fails or is canceled).
PAGE_FETCHING = {("POST", "/api/upload/process"), ("POST", "/api/jobs/{job_id}/preview")}
TAKES_CALLBACK = {("POST", "/api/upload/process")}
# Where the fuzzer's jobs send their webhooks: this machine (the SSRF-safe fetcher refuses it anyway).
LOCAL_CALLBACK = "http://127.0.0.1:9/csv-opener-fuzz"


def _could_be_a_url(value: str) -> bool:
    try:
        return "://" in value or bool(urlsplit(value).hostname)
    except ValueError:
        return True  # when unsure, it is replaced


def _stay_local(body: dict, operation: tuple[str, str]) -> dict:
    if operation in PAGE_FETCHING and body.get("page_context") in (None, True):
        body = {**body, "page_context": False}
    callback = body.get("callback_url")
    if operation in TAKES_CALLBACK and isinstance(callback, str) and _could_be_a_url(callback):
        body = {**body, "callback_url": LOCAL_CALLBACK}
    return body


def keep_traffic_local(case) -> None:
    """Tests send traffic to this machine only, so the fuzzer never asks the app to reach out: page
    context stays off (the app would fetch whatever hosts the generated CSVs name) and a callback
    URL that could pass is replaced by one on this machine. A missing body (read as `{}`: page
    context on) gets one. Invalid values are kept: they are refused with a 400 before anything is
    fetched, as is a body that is not a JSON object."""
    operation = (case.method.upper(), case.path)
    if operation not in PAGE_FETCHING | TAKES_CALLBACK:
        return
    body = case.body
    if isinstance(body, NotSet) or body is None or (isinstance(body, str | bytes) and not body.strip()):
        case.body, case.media_type = _stay_local({}, operation), "application/json"
        return
    parsed = body
    if isinstance(body, str | bytes):
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            return
    if isinstance(parsed, dict):
        local = _stay_local(parsed, operation)
        if local is not parsed:
            case.body = local if parsed is body else json.dumps(local).encode() if isinstance(body, bytes) \
                else json.dumps(local)
