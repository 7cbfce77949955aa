"""Requests on which the app answers what the document (and SPEC) do not allow, found while
fuzzing it. Each is sent as a schemathesis case with the fuzzer's checks, and is an expected
failure naming its bug: strict, so the run turns red the day the bug is fixed (then remove the
mark, and keep the case as a regression test)."""

from __future__ import annotations

import functools

import pytest
import requests
from schemathesis.core.failures import FailureGroup

from tests.support.fuzzing import CHECKS, keep_traffic_local, schema

# An expected failure is the fuzzer's checks failing, not any error (a broken test would be one).
known_bug = functools.partial(pytest.mark.xfail, strict=True, raises=FailureGroup)

LEADS = b"company,website\nAcme,acme.com\nGlobex,https://globex.example.org/\n"


@pytest.fixture(scope="module")
def http(fuzz_api):
    with requests.Session() as session:
        yield session


@pytest.fixture
def pending_job(fuzz_api, http) -> str:
    response = http.post(f"{fuzz_api.url}/api/upload?filename=leads.csv", data=LEADS, timeout=30,
                         headers={**fuzz_api.headers, "Content-Type": "text/csv"})
    assert response.status_code == 201, response.text
    return response.json()["job"]["id"]


def send(case, fuzz_api, http, headers: dict[str, str] | None = None) -> None:
    keep_traffic_local(case)
    case.call_and_validate(base_url=fuzz_api.url, session=http, headers={**fuzz_api.headers, **(headers or {})},
                           checks=CHECKS, timeout=30)


# A lone UTF-16 surrogate is valid JSON text ("\ud800") and becomes a Python str that UTF-8 cannot
# encode: PostgreSQL parameters (psycopg) and the S3 key used to raise UnicodeEncodeError -> 500.
# Found by hand while writing the fuzz suite; now 400 bad_file_name / bad_url_column /
# bad_instructions, kept here as regression cases.
SURROGATE = "\ud800"


def test_presigned_upload_file_name_with_a_lone_surrogate(fuzz_api, http):
    send(schema["/api/upload/url"]["POST"].Case(body={"file_name": f"{SURROGATE}.csv"}, media_type="application/json"),
         fuzz_api, http)


def test_presigned_upload_url_column_with_a_lone_surrogate(fuzz_api, http):
    send(schema["/api/upload/url"]["POST"].Case(body={"file_name": "leads.csv", "url_column": SURROGATE},
                                                media_type="application/json"), fuzz_api, http)


def test_process_instructions_with_a_lone_surrogate(fuzz_api, http, pending_job):
    send(schema["/api/upload/process"]["POST"].Case(body={"job_id": pending_job, "instructions": SURROGATE},
                                                    media_type="application/json"), fuzz_api, http)


# GET /api/upload/{id}/download with `Accept: application/json` used to answer 400 in Chalice's own
# shape {"Code": "BadRequest", "Message"} (its binary-response check of text/csv), neither an
# {"error": ...} body nor a documented status; now a documented 406 not_acceptable in SPEC's shape.
def test_download_to_a_client_that_does_not_accept_csv(fuzz_api, http, pending_job):
    send(schema["/api/upload/{job_id}/download"]["GET"].Case(path_parameters={"job_id": pending_job}),
         fuzz_api, http, headers={"Accept": "application/json"})
