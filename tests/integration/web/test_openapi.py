"""chalicelib/web/openapi.yaml cannot drift from the code: it is a valid OpenAPI 3.1 document, GET
/api/openapi.json serves exactly it, it lists exactly the routes and methods app.py registers,
its public operations are exactly the ones that answer without a key, and what the endpoints
answer along a job's life matches its status codes, media types and schemas.

The fuzzer (tests/fuzz) sends generated requests to a real `chalice local`; these tests are the
fast, deterministic part, through chalice.test.Client."""

from __future__ import annotations

import json
import re
import uuid

import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from chalicelib import deps
from chalicelib.web import openapi
from tests.support.api import mark_urls_done
from tests.support.util import ROOT

SPEC_PATH = ROOT / "chalicelib" / "web" / "openapi.yaml"
SPEC = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
SPEC_URI = "urn:csv-opener:openapi"
REGISTRY = Registry().with_resource(SPEC_URI, Resource.from_contents(SPEC, default_specification=DRAFT202012))
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Routes that work without a key (the rest answer 401 unauthorized).
PUBLIC = {("GET", "/"), ("GET", "/static/{name}"), ("GET", "/health"), ("GET", "/api/openapi.json")}

LEADS = b"company,website\nAcme,acme.com\nGlobex,https://globex.example.org/about\nBad,javascript:alert(1)\n"


def operations() -> list[tuple[str, str, dict]]:
    return [(method.upper(), path, item[method]) for path, item in SPEC["paths"].items()
            for method in HTTP_METHODS if method in item]


def resolve(node: dict, pointer: str) -> tuple[dict, str]:
    """Follow a local `$ref` (components/responses, ...): (the object, its JSON pointer)."""
    while "$ref" in node:
        pointer = node["$ref"].removeprefix("#")
        node = SPEC
        for part in pointer.lstrip("/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node, pointer


def escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def header(response, name: str) -> str | None:
    return next((value for key, value in response.headers.items() if key.lower() == name.lower()), None)


def check_answer(method: str, template: str, response) -> dict | bytes:
    """The answer's status is documented for the operation, its media type too, and a JSON body
    validates against the documented schema. Returns the parsed body (bytes when not JSON)."""
    operation = SPEC["paths"][template][method.lower()]
    status = str(response.status_code)
    assert status in operation["responses"], (
        f"{method} {template} answered {status}, documented: {sorted(operation['responses'])}: {response.body[:300]!r}")
    definition, pointer = resolve(operation["responses"][status],
                                  f"/paths/{escape(template)}/{method.lower()}/responses/{status}")
    for name, declared in definition.get("headers", {}).items():
        if resolve(declared, "")[0].get("required"):
            assert name.lower() in {key.lower() for key in response.headers}, f"{method} {template} {status}: no {name}"
    content = definition.get("content")
    if not content:
        return response.body
    media_type = (header(response, "Content-Type") or "application/json").split(";")[0].strip()
    assert media_type in content, f"{method} {template} {status}: {media_type} not in {sorted(content)}"
    if media_type != "application/json":
        return response.body
    data = json.loads(response.body)
    schema_pointer = f"{pointer}/content/{escape(media_type)}/schema"
    validator = Draft202012Validator({"$ref": f"{SPEC_URI}#{schema_pointer}"}, registry=REGISTRY,
                                     format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)]
    assert not errors, f"{method} {template} {status} does not match the document: {errors}"
    return data


# ---------------------------------------------------------------- the document itself


def test_document_is_valid_openapi_3_1():
    assert re.fullmatch(r"3\.1\.\d+", SPEC["openapi"])
    validate(SPEC, cls=OpenAPIV31SpecValidator)


def test_served_at_api_openapi_json_to_anyone(client):
    for http in (client.anonymous, client.http):
        response = http.get("/api/openapi.json")
        assert response.status_code == 200
        # chalice local and API Gateway send application/json for a body without a Content-Type
        assert (header(response, "Content-Type") or "application/json").startswith("application/json")
        assert json.loads(response.body) == SPEC == openapi.document()
        check_answer("GET", "/api/openapi.json", response)


def test_every_route_is_documented_with_its_methods_and_nothing_else(chalice_app):
    served = {path: sorted(methods) for path, methods in chalice_app.routes.items()}
    documented = {path: sorted(m.upper() for m in HTTP_METHODS if m in item) for path, item in SPEC["paths"].items()}
    assert documented == served


def test_path_parameters_are_declared():
    for method, path, operation in operations():
        parameters = [resolve(p, "")[0] for p in SPEC["paths"][path].get("parameters", [])
                      + operation.get("parameters", [])]
        declared = {p["name"] for p in parameters if p["in"] == "path"}
        assert declared == set(re.findall(r"{(\w+)}", path)), f"{method} {path}"


def test_security_is_global_except_the_public_operations():
    assert SPEC["security"] == [{"bearerAuth": []}, {"apiKeyAuth": []}]
    schemes = SPEC["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKeyAuth"] == {**schemes["apiKeyAuth"], "type": "apiKey", "in": "header", "name": "X-Api-Key"}
    for method, path, operation in operations():
        if (method, path) in PUBLIC:
            # open to anyone: no security, or (/health: a key only adds details) a key optional
            assert operation["security"] in ([], [{}, {"bearerAuth": []}, {"apiKeyAuth": []}]), f"{method} {path}"
        else:
            assert "security" not in operation, f"{method} {path} must keep the global security"


def test_every_operation_documents_the_errors_any_request_can_get():
    for method, path, operation in operations():
        responses = operation["responses"]
        assert "500" in responses, f"{method} {path}"
        if (method, path) not in PUBLIC:
            assert {"401", "429"} <= set(responses), f"{method} {path}"
        for status, response in responses.items():
            if int(status) >= 400 and (method, path, status) != ("GET", "/health", "503"):  # the health body
                definition, _ = resolve(response, "")
                schema = definition["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, f"{method} {path} {status}"


def test_anonymous_callers_get_401_exactly_where_the_document_wants_a_key(client):
    values = {"job_id": str(uuid.uuid4()), "result_id": str(uuid.uuid4()), "name": "index.html"}
    for method, path, _operation in operations():
        url = re.sub(r"{(\w+)}", lambda m: values[m.group(1)], path)
        response = client.anonymous.request(method, url, headers={"Accept": "*/*"})
        if (method, path) in PUBLIC:
            assert response.status_code != 401, f"{method} {url}"
        else:
            assert response.status_code == 401, f"{method} {url}: {response.status_code}"
            assert header(response, "WWW-Authenticate") == "Bearer"
        check_answer(method, path, response)


# ---------------------------------------------------------------- answers along a job's life


def drain_chunk_queue() -> None:
    queue = deps.chunk_queue()
    while messages := queue.sqs.receive_message(QueueUrl=queue.queue_url, MaxNumberOfMessages=10,
                                                WaitTimeSeconds=0).get("Messages", []):
        for message in messages:
            queue.sqs.delete_message(QueueUrl=queue.queue_url, ReceiptHandle=message["ReceiptHandle"])


@pytest.fixture
def api(client):
    """`call(METHOD, template, url, ...)`: the request through the test client, its answer checked
    against the document; returns (status, parsed body)."""
    def call(method: str, template: str, url: str | None = None, *, json_body=None, body=b"", headers=None,
             anonymous: bool = False):
        sent = {"Accept": "*/*", **(headers or {})}
        if json_body is not None:
            sent.setdefault("Content-Type", "application/json")
            body = json.dumps(json_body)
        http = client.anonymous if anonymous else client.http
        response = http.request(method, url or template, headers=sent, body=body)
        return response.status_code, check_answer(method, template, response)

    yield call
    drain_chunk_queue()


def multipart(data: bytes, name: str = "leads.csv", fields: dict[str, str] | None = None) -> tuple[dict, bytes]:
    boundary = "----openapi" + uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
             for key, value in (fields or {}).items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                 "Content-Type: text/csv\r\n\r\n".encode() + data + b"\r\n")
    payload = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, payload


def test_answers_along_a_jobs_life_match_the_document(api, env):
    env(OPENAI_DUMMY_DELAY_MS="0")  # previews generate (dummy mode) in the request
    assert api("GET", "/api/account")[0] == 200
    assert api("GET", "/api/metrics")[0] == 200
    assert api("GET", "/health", anonymous=True)[0] in (200, 503)
    assert api("GET", "/")[0] == 200
    assert api("GET", "/static/{name}", "/static/missing.js")[0] == 404

    # uploads, and how they are refused
    status, uploaded = api("POST", "/api/upload", "/api/upload?filename=leads.csv", body=LEADS,
                           headers={"Content-Type": "text/csv"})
    assert status == 201 and uploaded["errors"], uploaded
    headers, payload = multipart(LEADS, fields={"url_column": "website"})
    status, second = api("POST", "/api/upload", body=payload, headers=headers)
    assert status == 201
    csv_type = {"Content-Type": "text/csv"}
    assert api("POST", "/api/upload", "/api/upload?filename=x.csv", body=b"  \n", headers=csv_type)[0] == 400
    assert api("POST", "/api/upload", "/api/upload?filename=x.csv", body=b"url\nnope\n", headers=csv_type)[0] == 400
    assert api("POST", "/api/upload", json_body={"file": "x"})[0] == 415
    assert api("POST", "/api/upload", "/api/upload?filename=x.pdf", body=LEADS, headers=csv_type)[0] == 415

    # reading jobs
    job_id, unknown = uploaded["job"]["id"], str(uuid.uuid4())
    assert api("GET", "/api/jobs/{job_id}", f"/api/jobs/{job_id}")[0] == 200
    assert api("GET", "/api/jobs/{job_id}", f"/api/jobs/{unknown}")[0] == 404
    assert api("GET", "/api/jobs/{job_id}", "/api/jobs/not-a-uuid")[0] == 404
    status, page = api("GET", "/api/jobs", "/api/jobs?limit=1")
    assert status == 200 and len(page["jobs"]) == 1 and page["next_cursor"]
    assert api("GET", "/api/jobs", f"/api/jobs?limit=1&cursor={page['next_cursor']}")[1]["next_cursor"] is None
    for bad in ("limit=0", "limit=101", "limit=x", "status=done", "cursor=!!"):
        assert api("GET", "/api/jobs", f"/api/jobs?{bad}")[0] == 400, bad
    assert api("GET", "/api/jobs/{job_id}/results", f"/api/jobs/{job_id}/results")[1]["results"] == []

    # previews (page context off: tests send traffic to this machine only)
    preview = "/api/jobs/{job_id}/preview"
    status, previewed = api("POST", preview, f"/api/jobs/{job_id}/preview",
                            json_body={"rows": 1, "page_context": False, "instructions": "Mention {{company}}."})
    assert status == 200 and len(previewed["previews"]) == 1 and previewed["previews"][0]["context_status"] == "off"
    assert api("POST", preview, f"/api/jobs/{job_id}/preview", json_body={"rows": 9, "page_context": False})[0] == 400
    assert api("POST", preview, f"/api/jobs/{unknown}/preview", json_body={"page_context": False})[0] == 404

    # start, cancel, retry, download
    assert api("POST", "/api/upload/process", json_body={})[0] == 400
    assert api("POST", "/api/upload/process", body="{not json", headers={"Content-Type": "application/json"})[0] == 400
    assert api("POST", "/api/upload/process", json_body={"job_id": unknown})[0] == 404
    assert api("POST", "/api/upload/process", json_body={"job_id": job_id, "model": "no-such-model"})[0] == 400
    status, started = api("POST", "/api/upload/process", json_body={"jobId": job_id, "instructions": "We sell maps.",
                                                                     "page_context": False})
    assert status == 202 and started["job"]["status"] == "processing"
    assert api("POST", "/api/upload/process", json_body={"job_id": job_id})[0] == 409
    status, results = api("GET", "/api/jobs/{job_id}/results", f"/api/jobs/{job_id}/results?limit=1&status=pending")
    assert status == 200 and len(results["results"]) == 1 and results["next_cursor"]
    assert results["results"][0]["quality"] == [] and started["job"]["quality"]["flagged"] == {}
    flagged = "/api/jobs/{job_id}/results"
    assert api("GET", flagged, f"/api/jobs/{job_id}/results?quality=duplicate") == (200, {"results": [],
                                                                                       "next_cursor": None})
    assert api("GET", flagged, f"/api/jobs/{job_id}/results?quality=dupe")[0] == 400
    assert api("POST", "/api/jobs/{job_id}/retry", f"/api/jobs/{job_id}/retry")[0] == 409
    assert api("POST", "/api/upload/{job_id}/cancel", f"/api/upload/{job_id}/cancel")[0] == 200
    assert api("POST", "/api/upload/{job_id}/cancel", f"/api/upload/{job_id}/cancel")[0] == 409
    assert api("POST", "/api/upload/{job_id}/cancel", f"/api/upload/{unknown}/cancel")[0] == 404
    status, retried = api("POST", "/api/jobs/{job_id}/retry", f"/api/jobs/{job_id}/retry")
    assert status == 202 and retried["retried"] == 2
    assert api("POST", "/api/jobs/{job_id}/retry", f"/api/jobs/{unknown}/retry")[0] == 404
    status, csv_body = api("GET", "/api/upload/{job_id}/download", f"/api/upload/{job_id}/download")
    assert status == 200
    assert csv_body.startswith(b"company,website,opener,opener_status,opener_error,context_status,opener_evidence,"
                               b"opener_quality,opener_language\r\n")
    assert api("GET", "/api/upload/{job_id}/download", f"/api/upload/{unknown}/download")[0] == 404

    # a webhook: on this machine (tests reach nothing else), refused by the SSRF-safe fetcher anyway
    assert api("POST", "/api/account/webhook-secret")[0] == 201
    hooked, local = second["job"]["id"], "http://127.0.0.1:9/hook"
    assert api("POST", "/api/upload/process", json_body={"job_id": hooked, "callback_url": "ftp://x"})[0] == 400
    status, started = api("POST", "/api/upload/process",
                          json_body={"job_id": hooked, "page_context": False, "callback_url": local})
    assert status == 202 and started["job"]["callback_url"] == local
    assert api("POST", "/api/upload/{job_id}/cancel", f"/api/upload/{hooked}/cancel")[0] == 200
    status, seen = api("GET", "/api/jobs/{job_id}", f"/api/jobs/{hooked}")
    assert status == 200 and seen["job"]["callback"]["url"] == local

    # the presigned path, before its file arrives
    status, presigned = api("POST", "/api/upload/url", json_body={"file_name": "big.csv", "size": 5000,
                                                                 "url_column": "website"})
    assert status == 201 and presigned["job"]["url_column"] == "website"
    assert api("POST", "/api/upload/url", json_body={})[0] == 400
    assert api("POST", "/api/upload/url", json_body={"file_name": "big.pdf"})[0] == 415
    later = presigned["job"]["id"]
    assert api("GET", "/api/upload/{job_id}/download", f"/api/upload/{later}/download")[0] == 409
    assert api("POST", "/api/upload/process", json_body={"job_id": later})[0] == 400  # file_not_uploaded

    status, metrics = api("GET", "/api/metrics")
    assert status == 200 and metrics["jobs"]["processing"] == 1


def test_review_answers_match_the_document(api, conn):
    """The review loop's answers (issue 21): a result with its history, an edit, marks in bulk,
    a regeneration and their refusals."""
    status, uploaded = api("POST", "/api/upload", "/api/upload?filename=leads.csv", body=LEADS,
                           headers={"Content-Type": "text/csv"})
    job_id, unknown = uploaded["job"]["id"], str(uuid.uuid4())
    assert api("POST", "/api/upload/process", json_body={"job_id": job_id, "page_context": False})[0] == 202
    mark_urls_done(conn, job_id)
    _, page = api("GET", "/api/jobs/{job_id}/results", f"/api/jobs/{job_id}/results?review=none")
    row = page["results"][0]
    one = "/api/jobs/{job_id}/results/{result_id}"
    status, shown = api("GET", one, f"/api/jobs/{job_id}/results/{row['id']}")
    assert status == 200 and len(shown["result"]["history"]) == 1
    assert api("GET", one, f"/api/jobs/{job_id}/results/{unknown}")[0] == 404
    status, edited = api("PATCH", one, f"/api/jobs/{job_id}/results/{row['id']}",
                         json_body={"opener": "A person's opener for this prospect.", "review": "approved",
                                    "version": row["version"]})
    assert status == 200 and edited["result"]["edited"]
    assert api("PATCH", one, f"/api/jobs/{job_id}/results/{row['id']}",
               json_body={"review": None, "version": row["version"]})[0] == 409
    assert api("PATCH", one, f"/api/jobs/{job_id}/results/{row['id']}", json_body={})[0] == 400
    review = "/api/jobs/{job_id}/review"
    assert api("POST", review, f"/api/jobs/{job_id}/review", json_body={"filter": {}, "review": "approved"}) == (
        200, {"reviewed": 1})
    assert api("POST", review, f"/api/jobs/{job_id}/review", json_body={"filter": {}})[0] == 400
    regenerate = "/api/jobs/{job_id}/regenerate"
    status, started = api("POST", regenerate, f"/api/jobs/{job_id}/regenerate",
                          json_body={"filter": {"status": "completed"}, "feedback": "Shorter."})
    assert status == 202 and started["regenerating"] == 1 and started["job"]["regenerated"] == 1
    assert api("POST", regenerate, f"/api/jobs/{job_id}/regenerate", json_body={"filter": {}})[0] == 409
    assert api("POST", regenerate, f"/api/jobs/{unknown}/regenerate", json_body={"filter": {}})[0] == 404
    assert api("GET", "/api/upload/{job_id}/download", f"/api/upload/{job_id}/download?review=approved")[0] == 200
    assert api("GET", "/api/upload/{job_id}/download", f"/api/upload/{job_id}/download?review=no")[0] == 400
