"""The CSV Opener HTTP API as the command uses it: one httpx client that sends the key, and every
answer that is not a success turned into an `ApiError` carrying the API's message in words.

Two clients on purpose: `api` sends `Authorization: Bearer <key>` and never follows redirects;
`storage` carries no credentials and is the only one that talks to presigned S3 URLs (S3 rejects
a request that carries a foreign Authorization header, and the key must not leave for S3).
"""

from __future__ import annotations

import email.utils
import os
import re
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx

from csv_opener_cli import __version__

# One request carries at most this many bytes (Lambda's 6 MB, base64-encoded); README, "payload
# limits". Bigger files go through POST /api/upload/url and a presigned PUT.
DIRECT_UPLOAD_LIMIT = 4_669_440
MULTIPART_OVERHEAD = 2048  # the multipart framing around the file, generously
JOBS_PAGE_MAX = 100
RESULTS_PAGE_MAX = 1000
REDIRECTS = (301, 302, 303, 307, 308)
EXPORT_POLL_S = 5.0  # between downloads answered 202 (the CSV being built) without a Retry-After
EXPORT_MAX_WAIT_S = 20 * 60.0  # the server's build runs within 15 minutes
KEY_PREFIX_RE = re.compile(r"(cso_[0-9a-f]{8})_[A-Za-z0-9_-]+", re.ASCII)
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def key_label(key: str | None) -> str:
    """What may be shown of a key: its public `cso_<prefix>`, never the secret."""
    if not key:
        return "no key"
    match = KEY_PREFIX_RE.fullmatch(key.strip())
    return match.group(1) if match else "a key not of the form cso_<prefix>_<secret>"


def printable(text: str) -> str:
    """API text made safe for a terminal (messages may quote file names or cells)."""
    return _UNPRINTABLE.sub("?", text)


def redact(text: str, key: str | None) -> str:
    """`text` with the key (and its secret part) replaced by the key's label."""
    if not key:
        return text
    text = text.replace(key, key_label(key))
    parts = key.split("_", 2)
    secret = parts[2] if len(parts) == 3 else key
    return text.replace(secret, "<secret>") if len(secret) >= 8 else text


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ApiError(Exception):
    """An answer that is not a success, or no answer at all (`status` 0)."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        """Worth asking again later: no answer, or a server-side fault."""
        return self.status == 0 or self.status >= 500

    def as_json(self) -> dict:
        body: dict[str, Any] = {"status": self.status, "code": self.code, "message": self.message}
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return {"error": body}


def error_from(response: httpx.Response) -> ApiError:
    """The API's `{"error": {"code", "message"}}`, API Gateway's `{"message"}`, or the status line."""
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    try:
        body = response.json()
    except ValueError:
        body = None
    code, message = f"http_{status}", f"HTTP {status} {response.reason_phrase}".strip()
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code") or code)
        message = str(body["error"].get("message") or message)
    elif isinstance(body, dict) and isinstance(body.get("message"), str):  # API Gateway's own answers
        message = body["message"]
        if status == 403 and _unknown_route(message, response.headers.get("x-amzn-errortype", "")):
            code, message = "no_such_route", f"The API has no {response.request.method} {response.request.url.path}"
    elif response.headers.get("content-type", "").startswith(("application/xml", "text/xml")):
        code, message = _s3_error(response.text, code, message)
    return ApiError(status, code, printable(message), retry_after)


def _unknown_route(message: str, error_type: str) -> bool:
    """API Gateway's (and `chalice local`'s) answer to a route it does not have: "Missing
    Authentication Token", or, when the request carries an Authorization header that is not an
    AWS signature, "Authorization header requires 'Credential' parameter. … Authorization=<the
    header>" (which quotes the key: this message is never shown)."""
    return (message == "Missing Authentication Token" or "Authorization header requires" in message
            or error_type.startswith(("MissingAuthenticationToken", "IncompleteSignature")))


def _s3_error(text: str, code: str, message: str) -> tuple[str, str]:
    """S3's `<Error><Code>…</Code><Message>…</Message></Error>`."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        return code, message
    return (root.findtext("Code") or code), f"Storage refused the request: {root.findtext('Message') or message}"


def filename_from(content_disposition: str | None) -> str | None:
    """The file name of a Content-Disposition header as a bare name: `filename*` (RFC 6266 /
    RFC 5987, UTF-8) when present, else `filename`."""
    params: dict[str, str] = {}
    for part in (content_disposition or "").split(";")[1:]:
        name, _, value = part.partition("=")
        params.setdefault(name.strip().lower(), value.strip())
    name = None
    if "filename*" in params:
        charset, _, rest = params["filename*"].partition("'")
        _language, _, encoded = rest.partition("'")
        try:
            name = unquote(encoded, encoding=charset or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            name = None
    if not name and "filename" in params:
        name = params["filename"].strip('"')
    if not name:
        return None
    name = printable(name).replace("/", "_").replace("\\", "_").strip().lstrip(".")
    return name or None


@dataclass
class Upload:
    """What an upload gave: the job, and (direct uploads only) the validation summary."""
    job: dict
    how: str  # "direct" | "presigned" | "multipart"
    summary: dict | None = None
    choice: dict | None = None  # a multipart upload's complete answer: the URL column its first bytes show


class Api:
    def __init__(self, base_url: str, key: str, *, transport: httpx.BaseTransport | None = None,
                 timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        headers = {"User-Agent": f"csv-opener/{__version__}", "Accept": "application/json"}
        timeouts = httpx.Timeout(timeout, connect=10.0)
        if transport is None:
            transport = httpx.HTTPTransport(retries=2)  # connection failures only, with backoff
        self.api = httpx.Client(base_url=self.base_url + "/", headers={**headers, "Authorization": f"Bearer {key}"},
                                transport=transport, timeout=timeouts, follow_redirects=False)
        self.storage = httpx.Client(headers={"User-Agent": headers["User-Agent"]}, transport=transport,
                                    timeout=timeouts, follow_redirects=True)

    def close(self) -> None:
        self.api.close()
        self.storage.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing

    def _send(self, client: httpx.Client, method: str, url: str, **options) -> httpx.Response:
        try:
            return client.request(method, url, **options)
        except httpx.TransportError as exc:
            raise self._unreachable(client, exc) from None

    def _unreachable(self, client: httpx.Client, exc: httpx.TransportError) -> ApiError:
        where = f"the API at {self.base_url}" if client is self.api else "the storage (presigned URL)"
        detail = "timed out" if isinstance(exc, httpx.TimeoutException) else (str(exc) or type(exc).__name__)
        return ApiError(0, "connection_error", f"Could not reach {where}: {detail}")

    def error(self, response: httpx.Response) -> ApiError:
        """`error_from`, with the key never in the message (a server may quote the header)."""
        exc = error_from(response)
        exc.message = redact(exc.message, self.key)
        return exc

    def call(self, method: str, path: str, **options) -> dict:
        """One API call whose success is a JSON body."""
        response = self._send(self.api, method, path.lstrip("/"), **options)
        if not response.is_success:
            raise self.error(response)
        try:
            body = response.json()
        except ValueError:
            raise ApiError(response.status_code, "bad_response",
                           f"The API answered {response.status_code} without a JSON body") from None
        return body

    # ------------------------------------------------------------ upload and start

    def upload(self, path: Path, url_column: str | None = None, *,
               direct_limit: int = DIRECT_UPLOAD_LIMIT, note: Callable[[str], None] = lambda _: None,
               bar=None) -> Upload:
        """Upload a CSV: in one request when it fits, else (or when the API says
        `use_presigned_upload`) through a presigned PUT, or for a big file by parts in parallel
        (`bar`: the progress bar, csv_opener_cli.parts.Bar). The job is pending afterwards."""
        size = path.stat().st_size
        if size + MULTIPART_OVERHEAD <= direct_limit:
            try:
                return self.upload_direct(path, url_column)
            except ApiError as exc:
                if exc.code != "use_presigned_upload":
                    raise
                note("the API takes smaller direct uploads; using a presigned upload")
        return self.upload_presigned(path, url_column, bar)

    def upload_direct(self, path: Path, url_column: str | None = None) -> Upload:
        data = {"url_column": url_column} if url_column else None
        with path.open("rb") as file:
            body = self.call("POST", "/api/upload", files={"file": (path.name, file, "text/csv")}, data=data)
        return Upload(job=body["job"], how="direct", summary=body)

    def upload_presigned(self, path: Path, url_column: str | None = None, bar=None) -> Upload:
        with path.open("rb") as file:  # a file object: httpx sends its length, S3 wants no chunked body
            # the URL is signed for exactly this many bytes (the open file's, in case it was replaced)
            size = os.fstat(file.fileno()).st_size
            payload = {"file_name": path.name, "size": size, **({"url_column": url_column} if url_column else {})}
            created = self.call("POST", "/api/upload/url", json=payload)
            if "parts" in created:  # a multipart upload: csv_opener_cli/parts.py
                from csv_opener_cli.parts import NoBar, upload_parts

                completed = upload_parts(self, path, created, bar or NoBar())
                return Upload(job=completed["job"], how="multipart", summary=None, choice=completed)
            headers = created.get("headers") or {"Content-Type": "text/csv"}
            response = self._send(self.storage, created.get("method", "PUT"), created["upload_url"], content=file,
                                  headers=headers)
        if not response.is_success:
            raise self.error(response)
        return Upload(job=created["job"], how="presigned")

    def process(self, job_id: str, instructions: str | None = None, model: str | None = None,
                mode: str | None = None, options: dict[str, Any] | None = None) -> dict:
        """POST /api/upload/process; `options`: more fields of its body (the quality options)."""
        body: dict[str, Any] = {"job_id": job_id, **(options or {})}
        if instructions is not None:
            body["instructions"] = instructions
        if model:
            body["model"] = model
        if mode:
            body["mode"] = mode
        return self.call("POST", "/api/upload/process", json=body)

    # ------------------------------------------------------------ jobs

    def job(self, job_id: str) -> dict:
        return self.call("GET", f"/api/jobs/{_segment(job_id)}")["job"]

    def jobs(self, status: str | None = None, limit: int = 20) -> dict:
        params = {"status": status} if status else {}
        items = list(self._pages("/api/jobs", "jobs", params, limit, JOBS_PAGE_MAX))
        return {"jobs": items[:limit]}

    def results(self, job_id: str, status: str | None = None, limit: int = 50, quality: str | None = None,
                review: str | None = None) -> dict:
        params = {k: v for k, v in (("status", status), ("quality", quality), ("review", review)) if v}
        items = list(self._pages(f"/api/jobs/{_segment(job_id)}/results", "results", params, limit, RESULTS_PAGE_MAX))
        return {"results": items[:limit]}

    def _pages(self, path: str, field: str, params: dict, limit: int, page_max: int) -> Iterator[dict]:
        """Follow `next_cursor` until `limit` items (or the end)."""
        cursor, seen = None, 0
        while seen < limit:
            page = self.call("GET", path, params={**params, "limit": min(page_max, limit - seen),
                                                  **({"cursor": cursor} if cursor else {})})
            items = page.get(field) or []
            yield from items
            seen += len(items)
            cursor = page.get("next_cursor")
            if not cursor or not items:
                return

    def cancel(self, job_id: str) -> dict:
        return self.call("POST", f"/api/upload/{_segment(job_id)}/cancel")

    # ------------------------------------------------------------ review (SPEC "Review before sending")

    def result(self, job_id: str, result_id: str) -> dict:
        """One result with its history of openers."""
        return self.call("GET", f"/api/jobs/{_segment(job_id)}/results/{_segment(result_id)}")["result"]

    def edit(self, job_id: str, result_id: str, *, version: int | None = None, **changes: Any) -> dict:
        """PATCH a result: `opener` or `variant` (a pick), and/or `review` (None clears it), refused (409 stale_version)
        if the row is no longer at `version`."""
        body = {**changes, **({"version": version} if version is not None else {})}
        return self.call("PATCH", f"/api/jobs/{_segment(job_id)}/results/{_segment(result_id)}", json=body)["result"]

    def review(self, job_id: str, review: str | None, *, ids: list[str] | None = None,
               filters: dict[str, str] | None = None) -> dict:
        body = {"review": review, **({"result_ids": ids} if ids is not None else {"filter": filters or {}})}
        return self.call("POST", f"/api/jobs/{_segment(job_id)}/review", json=body)

    def regenerate(self, job_id: str, *, ids: list[str] | None = None, filters: dict[str, str] | None = None,
                   feedback: str | None = None, instructions: str | None = None) -> dict:
        body: dict[str, Any] = {"result_ids": ids} if ids is not None else {"filter": filters or {}}
        if feedback:
            body["feedback"] = feedback
        if instructions:
            body["instructions"] = instructions
        return self.call("POST", f"/api/jobs/{_segment(job_id)}/regenerate", json=body)

    def retry(self, job_id: str) -> dict:
        return self.call("POST", f"/api/jobs/{_segment(job_id)}/retry")

    def preview(self, job_id: str, instructions: str, rows: int | None = None, model: str | None = None,
                options: dict[str, Any] | None = None) -> dict:
        """POST /api/jobs/{id}/preview (SPEC, "Endpoints added after the first release"). A server
        without it answers API Gateway's 403 (or 404 `not_found` behind the gateway responses)."""
        body: dict[str, Any] = {"instructions": instructions}
        if rows is not None:
            body["rows"] = rows
        if model:
            body["model"] = model
        body.update(options or {})
        try:
            return self.call("POST", f"/api/jobs/{_segment(job_id)}/preview", json=body)
        except ApiError as exc:
            if exc.code in ("no_such_route", "not_found"):
                raise ApiError(exc.status, "not_available",
                               "This API does not offer previews yet (POST /api/jobs/{id}/preview is missing); "
                               "update the server, or start the job and look at its first results") from None
            raise

    # ------------------------------------------------------------ download

    def download(self, job_id: str, sink: Callable[[bytes], None], review: str | None = None, *,
                 sleep: Callable[[float], None] = time.sleep, waiting: Callable[[float], None] | None = None,
                 max_wait_s: float = EXPORT_MAX_WAIT_S) -> str | None:
        """Stream the job's CSV into `sink` (with `review="approved"`, only approved rows); returns
        the server's file name. A 302 (completed jobs, big files) is followed to its presigned URL
        without the key. A 202 (a big CSV being built on the server) is asked again after its
        Retry-After, `waiting(seconds waited so far)` told each time, for up to `max_wait_s`."""
        waited = 0.0
        while True:
            with self._stream(self.api, "GET", f"api/upload/{_segment(job_id)}/download",
                              params={"review": review} if review else None,
                              headers={"Accept": "text/csv, */*"}) as response:
                if response.status_code in REDIRECTS and "location" in response.headers:
                    location = str(response.url.join(response.headers["location"]))
                    return self._download_from(self.storage, location, sink)
                if response.status_code != 202:
                    return self._consume(response, sink)
                response.read()
                pause = parse_retry_after(response.headers.get("retry-after"))
            pause = min(max(pause if pause is not None else EXPORT_POLL_S, 1.0), 60.0)
            if waited + pause > max_wait_s:
                raise ApiError(202, "export_not_ready", f"The server was still building the CSV after "
                               f"{waited:.0f} s; try the download again later")
            if waiting is not None:
                waiting(waited)
            sleep(pause)
            waited += pause

    def _download_from(self, client: httpx.Client, url: str, sink: Callable[[bytes], None]) -> str | None:
        with self._stream(client, "GET", url) as response:
            return self._consume(response, sink)

    def _stream(self, client: httpx.Client, method: str, url: str, **options):
        try:
            return _Streamed(client.stream(method, url, **options), self, client)
        except httpx.TransportError as exc:
            raise self._unreachable(client, exc) from None

    def _consume(self, response: httpx.Response, sink: Callable[[bytes], None]) -> str | None:
        if not response.is_success:
            response.read()
            raise self.error(response)
        try:
            for chunk in response.iter_bytes(64 * 1024):
                sink(chunk)
        except httpx.TransportError as exc:
            raise ApiError(0, "connection_error", f"The download broke off: {type(exc).__name__}: {exc}") from None
        return filename_from(response.headers.get("content-disposition"))


class _Streamed:
    """`client.stream(...)` whose transport errors on entry become ApiError."""

    def __init__(self, manager, api: Api, client: httpx.Client) -> None:
        self.manager, self.api, self.client = manager, api, client

    def __enter__(self) -> httpx.Response:
        try:
            return self.manager.__enter__()
        except httpx.TransportError as exc:
            raise self.api._unreachable(self.client, exc) from None

    def __exit__(self, *exc: object) -> None:
        self.manager.__exit__(*exc)


def _segment(job_id: str) -> str:
    """A job id as one path segment (an id with a slash or `..` must not reach another route)."""
    return quote(job_id, safe="")
