"""Schemathesis against a real `chalice local`: every operation of chalicelib/web/openapi.yaml, with
generated valid and invalid requests, must answer no 5xx and only what the document promises
(status codes, content types, response schemas).

One pytest item per operation (`test_api[GET /api/jobs]`). The budget is `MAX_EXAMPLES`
generated cases per operation in the fuzzing phase, plus the document's examples and the
deterministic coverage phase (boundary and invalid values of every parameter); the whole
package takes about a minute on the 2-core machine.
"""

from __future__ import annotations

import pytest
import requests

from tests.support.fuzzing import CHECKS, JOB_POOL, keep_traffic_local, schema


@pytest.fixture(scope="module")
def http(fuzz_api):
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module")
def jobs(fuzz_api, http):
    """Jobs of the fuzz account in each state: pending (uploaded), processing, canceled, and a
    presigned upload whose file never came."""
    def call(method: str, path: str, **kwargs) -> dict:
        kwargs.setdefault("headers", fuzz_api.headers)
        response = http.request(method, fuzz_api.url + path, timeout=30, **kwargs)
        assert response.status_code < 300, (method, path, response.status_code, response.text)
        return response.json()

    def upload() -> str:
        data = b"company,website\nAcme,acme.com\nGlobex,https://globex.example.org/\nBad,javascript:x\n"
        return call("POST", "/api/upload?filename=leads.csv", data=data,
                    headers={**fuzz_api.headers, "Content-Type": "text/csv"})["job"]["id"]

    pending = upload()
    processing = upload()
    call("POST", "/api/upload/process", json={"job_id": processing})
    canceled = upload()
    call("POST", "/api/upload/process", json={"job_id": canceled})
    call("POST", f"/api/upload/{canceled}/cancel")
    presigned = call("POST", "/api/upload/url", json={"file_name": "big.csv", "size": 5000})["job"]["id"]
    JOB_POOL[:] = [pending, processing, canceled, presigned]
    yield JOB_POOL
    JOB_POOL.clear()


@schema.parametrize()
def test_api(case, fuzz_api, http, jobs):
    keep_traffic_local(case)
    case.call_and_validate(base_url=fuzz_api.url, session=http, headers=fuzz_api.headers, checks=CHECKS,
                           timeout=30)
