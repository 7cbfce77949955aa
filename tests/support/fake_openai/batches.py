"""The Batch API, in memory: input/output files (``/v1/files``) and batches (``/v1/batches``),
shaped as OpenAI documents them (https://platform.openai.com/docs/guides/batch). Only chat
completions can be batched.

Files
-----
``POST /v1/files`` takes multipart/form-data with ``purpose=batch`` (the only purpose supported)
and ``file``, a JSONL file checked at once (OpenAI checks it when the batch is created; failing
early is simpler to test): every non-blank line a JSON object with a unique string
``custom_id``, ``method`` ``"POST"``, ``url`` ``"/v1/chat/completions"`` and a ``body`` with a
``model`` and a non-empty ``messages`` list; one model per file; at most 50,000 lines and
200 MB. A bad file is a 400 naming the line. Output files (``purpose`` ``batch_output``) appear
when a batch ends.

Batches
-------
A batch takes the configuration in force when it is created (the batch knobs ``batch_delay_s``,
``batch_error_rate``, ``batch_expire_fraction``, and what shapes answers: ``content``,
``response_format_supported``, ``misbehave``, ...), and a private RNG seeded
from the server's, which decides which requests fail and shuffles the output lines (OpenAI
does not promise their order, so clients must not depend on it). Its status is computed
whenever it is read:

* the answer to ``POST /v1/batches`` says ``validating``; later reads say ``in_progress``;
* it works through its requests at a steady pace, in file order: by ``t`` seconds after
  creation ``floor(total * t / batch_delay_s)`` are done (times ``batch_expire_fraction`` if
  set), which ``request_counts`` show;
* at ``batch_delay_s`` it is ``completed``, or ``expired`` with only the first
  ``floor(total * batch_expire_fraction)`` requests done;
* ``POST /v1/batches/{id}/cancel`` before then makes it ``cancelling``, keeping the requests
  done by then, and ``batch_cancel_delay_s`` (read at the cancel) later ``cancelled``. A batch
  that has ended cannot be cancelled (400); cancelling a ``cancelling`` batch changes nothing.

When it ends its output file holds one line per successful request, its error file one line per
failed one (``batch_error_rate``: a 500 response; a parameter the live endpoint refuses, such as
``response_format`` with ``response_format_supported`` off: that 400 response) and per request
not done (``response`` null, ``error`` ``batch_expired`` or ``batch_cancelled``);
``request_counts.failed`` counts the error file's lines. A file that would be empty is not made
(its id stays null). Successful bodies are what ``POST /v1/chat/completions`` answers for the
same body (answers.py: opener, structured JSON, ``content``, token counts); a batch answer is a
first answer like a live one (misbehave.py), and both share the prompt cache.

``GET /v1/batches`` lists them newest first, ``limit`` (default 20, at most 100) at a time after
the cursor ``after``, with ``has_more``, each with its ``metadata`` (how a client finds a batch
it created but did not record).

Batch requests do not count against the live ``rpm``/``tpm`` limits, nor in the live chat stats.
All of this is called under the server's lock, except :func:`parse_upload`; so while a batch of
50,000 requests ends (about a second) the server answers nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from . import answers
from .config import FakeConfig
from .misbehave import Tracker
from .prompt_cache import PromptCache
from .responses import APIError, completion, server_error_body
from .tokens import REPLY_PRIMING, format_tokens, max_output, message_tokens, within

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
WINDOW_S = 24 * 3600
MAX_LINES = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_UPLOAD = MAX_FILE_BYTES + (1 << 20)
"""Largest ``POST /v1/files`` body read (the file plus room for the multipart framing)."""
EXPIRED = {"code": "batch_expired",
           "message": "This request could not be executed before the completion window expired."}
CANCELLED = {"code": "batch_cancelled", "message": "This request was cancelled."}
ENDED = ("completed", "expired", "cancelled", "failed")

_Result = tuple[int, bytes, list[tuple[str, str]]]


# --------------------------------------------------------------------------- upload parsing


@dataclasses.dataclass
class Upload:
    """A checked ``POST /v1/files`` upload."""

    filename: str
    purpose: str
    data: bytes
    requests: list[tuple[str, dict[str, Any]]]  # (custom_id, body), in file order


def parse_upload(content_type: str, body: bytes) -> Upload:
    """Parse and check a multipart ``POST /v1/files`` body (APIError 400 if bad). Needs no lock."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise APIError(400, "POST /v1/files expects multipart/form-data with 'purpose' and 'file'.")
    head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    parts = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
    for name in ("purpose", "file"):
        if name not in parts:
            raise APIError(400, f"Missing required parameter: '{name}'.", param=name)
    purpose = (parts["purpose"].get_payload(decode=True) or b"").decode("utf-8", "replace").strip()
    if purpose != "batch":
        raise APIError(400, f"The fake supports only purpose 'batch', got {purpose!r}.", param="purpose")
    data = parts["file"].get_payload(decode=True) or b""
    return Upload(parts["file"].get_filename() or "upload.jsonl", purpose, data, parse_requests(data))


def parse_requests(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The ``(custom_id, body)`` of each line of a batch input file, checked (APIError 400)."""
    if len(data) > MAX_FILE_BYTES:
        raise APIError(400, f"The file is {len(data)} bytes; a batch file may have at most {MAX_FILE_BYTES}.",
                       "file_too_large", "file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(400, "The file is not UTF-8 encoded JSONL.", "invalid_json_line", "file") from None
    requests: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    model: str | None = None
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue

        def bad(problem: str, code: str, line_number: int = number) -> APIError:
            return APIError(400, f"Line {line_number} of the batch file: {problem}", code, "file")

        if len(requests) == MAX_LINES:
            raise bad(f"a batch file may have at most {MAX_LINES} requests.", "too_many_tasks")
        try:
            request = json.loads(line)
        except ValueError:
            raise bad("not valid JSON.", "invalid_json_line") from None
        if not isinstance(request, dict):
            raise bad("must be a JSON object.", "invalid_json_line")
        custom_id = request.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise bad("custom_id must be a non-empty string.", "invalid_request")
        if custom_id in seen:
            raise bad(f"duplicate custom_id {custom_id!r}; each custom_id must be unique.", "duplicate_custom_id")
        if request.get("method") != "POST":
            raise bad(f"method must be 'POST', got {request.get('method')!r}.", "invalid_method")
        if request.get("url") != ENDPOINT:
            raise bad(f"url must be '{ENDPOINT}', got {request.get('url')!r}.", "invalid_url")
        body = request.get("body")
        if not isinstance(body, dict):
            raise bad("body must be a JSON object.", "invalid_request")
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise bad("body.model must be a non-empty string.", "invalid_request")
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            raise bad("body.messages must be a non-empty list.", "invalid_request")
        if model is None:
            model = body["model"]
        elif body["model"] != model:
            raise bad(f"model {body['model']!r} differs from {model!r} of the lines before; a batch file may use "
                      "only one model.", "mismatched_model")
        seen.add(custom_id)
        requests.append((custom_id, body))
    if not requests:
        raise APIError(400, "The batch file has no requests.", "empty_file", "file")
    return requests


# --------------------------------------------------------------------------- the store


@dataclasses.dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int
    requests: list[tuple[str, dict[str, Any]]] | None = None  # input files only

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed"}


@dataclasses.dataclass
class Batch:
    id: str
    input_file_id: str
    metadata: dict[str, str] | None
    requests: list[tuple[str, dict[str, Any]]]
    fails: list[bool]  # per request: answered 500 (batch_error_rate)
    rng: random.Random
    delay_s: float
    expire_fraction: float | None
    config: FakeConfig  # what the answers are made with (content, response_format, misbehave, ...)
    created_wall: float
    created_mono: float
    status: str = "in_progress"  # until it ends ("validating" only in the create answer)
    cancel_after: float | None = None  # seconds after creation of the cancel call
    cancel_delay_s: float = 0.0
    done_at_cancel: int = 0
    end_after: float | None = None  # seconds after creation it ended
    counts: dict[str, int] | None = None  # request_counts once ended
    output_file_id: str | None = None
    error_file_id: str | None = None

    def progress(self, elapsed: float) -> int:
        """Requests done ``elapsed`` seconds after creation (file order; none if negative)."""
        if elapsed < 0:
            return 0
        share = 1.0 if self.delay_s <= 0 else min(1.0, elapsed / self.delay_s)
        if self.expire_fraction is not None:
            share *= self.expire_fraction
        return math.floor(len(self.requests) * share + 1e-9)

    def request_counts(self, elapsed: float) -> dict[str, int]:
        if self.counts is not None:
            return dict(self.counts)
        done = self.done_at_cancel if self.cancel_after is not None else self.progress(elapsed)
        failed = sum(self.fails[:done])
        return {"total": len(self.requests), "completed": done - failed, "failed": failed}

    def to_dict(self, now_mono: float, *, validating: bool = False) -> dict[str, Any]:
        def stamp(after: float | None) -> int | None:
            return None if after is None else int(self.created_wall + after)

        def when(status: str) -> int | None:
            return stamp(self.end_after) if self.status == status else None

        return {
            "id": self.id,
            "object": "batch",
            "endpoint": ENDPOINT,
            "errors": None,
            "input_file_id": self.input_file_id,
            "completion_window": COMPLETION_WINDOW,
            "status": "validating" if validating else self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": stamp(0.0),
            "in_progress_at": None if validating else stamp(0.0),
            "expires_at": stamp(WINDOW_S),
            "finalizing_at": stamp(self.end_after) if self.status in ("completed", "expired") else None,
            "completed_at": when("completed"),
            "failed_at": None,
            "expired_at": when("expired"),
            "cancelling_at": stamp(self.cancel_after),
            "cancelled_at": when("cancelled"),
            "request_counts": self.request_counts(-1.0 if validating else now_mono - self.created_mono),
            "metadata": self.metadata,
        }


class BatchStore:
    """Files and batches of one server (until its ``reset()``). Not thread-safe: the server
    calls :meth:`handle` under its lock."""

    def __init__(self, tracker: Tracker | None = None, cache: PromptCache | None = None) -> None:
        self.tracker = tracker or Tracker()  # shared with the live endpoint: a URL is answered once
        self.cache = cache or PromptCache()
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, Batch] = {}
        self.stats = {"files": 0, "batches": 0, "batch_requests": 0, "batches_cancelled": 0}
        self._seq = {"file": 0, "batch": 0, "request": 0}

    def age(self, seconds: float) -> int:
        """Move every batch ``seconds`` further from its creation (see ``age_batches``)."""
        for batch in self.batches.values():
            batch.created_mono -= seconds
            batch.created_wall -= seconds
        return len(self.batches)

    def _next(self, kind: str) -> int:
        self._seq[kind] += 1
        return self._seq[kind]

    def handle(self, method: str, path: str, body: bytes, upload: Upload | None, config: FakeConfig,
               rng: random.Random, query: dict[str, str] | None = None) -> _Result:
        """Answer a ``/files…`` or ``/batches…`` request (``path`` without ``/v1``; ``upload`` is
        the parsed body of ``POST /files``; ``query``: the URL's parameters, ``limit`` and
        ``after`` of ``GET /batches``). Raises APIError for error answers."""
        now_mono = time.monotonic()
        match method, path.strip("/").split("/"):
            case "POST", ["files"]:
                assert upload is not None, "the server parses the upload (parse_upload) before the lock"
                return _json(self._add_file(upload.filename, "batch", upload.data, upload.requests).to_dict())
            case "GET", ["files"]:
                return _json(_page([f.to_dict() for f in reversed(self.files.values())]))
            case "GET", ["files", file_id]:
                return _json(self._file(file_id).to_dict())
            case "GET", ["files", file_id, "content"]:
                return 200, self._file(file_id).data, [("content-type", "application/octet-stream")]
            case "DELETE", ["files", file_id]:
                del self.files[self._file(file_id).id]
                return _json({"id": file_id, "object": "file", "deleted": True})
            case "POST", ["batches"]:
                batch = self._create(body, config, rng, now_mono)
                return _json(batch.to_dict(now_mono, validating=True))
            case "GET", ["batches"]:
                for batch in self.batches.values():
                    self._advance(batch, now_mono)
                return _json(self._list(query or {}, now_mono))
            case "GET", ["batches", batch_id]:
                return _json(self._batch(batch_id, now_mono).to_dict(now_mono))
            case "POST", ["batches", batch_id, "cancel"]:
                return _json(self._cancel(self._batch(batch_id, now_mono), config, now_mono).to_dict(now_mono))
        raise APIError(404, f"Unknown request URL: {method} {path}", "unknown_url")

    # ----- files

    def _add_file(self, filename: str, purpose: str, data: bytes,
                  requests: list[tuple[str, dict[str, Any]]] | None = None) -> StoredFile:
        stored = StoredFile(f"file-fake{self._next('file'):012d}", filename, purpose, data, int(time.time()), requests)
        self.files[stored.id] = stored
        if purpose == "batch":
            self.stats["files"] += 1
        return stored

    def _file(self, file_id: str) -> StoredFile:
        stored = self.files.get(file_id)
        if stored is None:
            raise APIError(404, f"No such File object: {file_id}", "file_not_found", "id")
        return stored

    # ----- batches

    def _create(self, body: bytes, config: FakeConfig, rng: random.Random, now_mono: float) -> Batch:
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise APIError(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(request, dict):
            raise APIError(400, "The request body must be a JSON object.")
        file_id = request.get("input_file_id")
        stored = self.files.get(file_id) if isinstance(file_id, str) else None
        if stored is None or stored.requests is None:
            raise APIError(400, f"Invalid input_file_id {file_id!r}: no such batch input file.", param="input_file_id")
        if request.get("endpoint") != ENDPOINT:
            raise APIError(400, f"Invalid endpoint {request.get('endpoint')!r}; the fake supports only '{ENDPOINT}'.",
                           param="endpoint")
        if request.get("completion_window") != COMPLETION_WINDOW:
            raise APIError(400, f"Invalid completion_window {request.get('completion_window')!r}; only "
                           f"'{COMPLETION_WINDOW}' is supported.", param="completion_window")
        metadata = request.get("metadata")
        if metadata is not None and not (
            isinstance(metadata, dict) and len(metadata) <= 16
            and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
        ):
            raise APIError(400, "metadata must be an object of at most 16 string values.", param="metadata")
        batch_rng = random.Random(rng.getrandbits(64))
        batch = Batch(
            id=f"batch_fake{self._next('batch'):012d}",
            input_file_id=stored.id,
            metadata=metadata,
            requests=stored.requests,
            fails=[batch_rng.random() < config.batch_error_rate for _ in stored.requests],
            rng=batch_rng,
            delay_s=config.batch_delay_s,
            expire_fraction=config.batch_expire_fraction,
            config=config,
            created_wall=time.time(),
            created_mono=now_mono,
        )
        self.batches[batch.id] = batch
        self.stats["batches"] += 1
        self.stats["batch_requests"] += len(batch.requests)
        return batch

    def _list(self, query: dict[str, str], now_mono: float) -> dict[str, Any]:
        """``GET /batches``: newest first, ``limit`` (1-100, default 20) of them after the batch
        id ``after`` (a cursor: the last id of the page before), ``has_more`` when more follow;
        each with its ``metadata``, so a client can find a batch it created but never recorded."""
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            raise APIError(400, f"Invalid 'limit': {query.get('limit')!r} is not an integer.", param="limit") from None
        if not 1 <= limit <= 100:
            raise APIError(400, f"Invalid 'limit': {limit}; it must be between 1 and 100.", param="limit")
        ordered = list(reversed(self.batches.values()))
        start = 0
        if "after" in query:
            ids = [b.id for b in ordered]
            if query["after"] not in ids:
                raise APIError(404, f"No such Batch object: {query['after']}", "batch_not_found", "after")
            start = ids.index(query["after"]) + 1
        page = _page([b.to_dict(now_mono) for b in ordered[start:start + limit]])
        page["has_more"] = start + limit < len(ordered)
        return page

    def _batch(self, batch_id: str, now_mono: float) -> Batch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise APIError(404, f"No such Batch object: {batch_id}", "batch_not_found", "batch_id")
        self._advance(batch, now_mono)
        return batch

    def _cancel(self, batch: Batch, config: FakeConfig, now_mono: float) -> Batch:
        if batch.status in ENDED:
            raise APIError(400, f"Cannot cancel a batch with status '{batch.status}'.", "invalid_request")
        if batch.cancel_after is None:
            elapsed = now_mono - batch.created_mono
            batch.status = "cancelling"
            batch.cancel_after = elapsed
            batch.cancel_delay_s = config.batch_cancel_delay_s
            batch.done_at_cancel = batch.progress(elapsed)
            self.stats["batches_cancelled"] += 1
        return batch

    def _advance(self, batch: Batch, now_mono: float) -> None:
        """End the batch if its time has come."""
        if batch.status in ENDED:
            return
        elapsed = now_mono - batch.created_mono
        if batch.cancel_after is not None:
            end = batch.cancel_after + batch.cancel_delay_s
            if elapsed >= end:
                self._finish(batch, "cancelled", batch.done_at_cancel, end)
        elif elapsed >= batch.delay_s:
            self._finish(batch, "completed" if batch.expire_fraction is None else "expired",
                         batch.progress(batch.delay_s), batch.delay_s)

    def _answer(self, n: int, created: int, body: dict[str, Any], config: FakeConfig) -> tuple[int, dict[str, Any]]:
        """What the live endpoint answers for ``body``: a ``chat.completion``, or the 400 of a parameter
        it refuses. Misbehaviour and the prompt cache are shared with the live endpoint."""
        try:
            kind = answers.check(body, config)
        except APIError as exc:
            return exc.status, json.loads(exc.body())
        answer = answers.compose(body, kind, config, self.tracker)
        self.tracker.delivered(answer.url, answer.rule)
        messages = body["messages"]
        per_message = [message_tokens(message) for message in messages]
        cached = self.cache.use(str(body["model"]), answer.cache_key, messages, per_message, time.monotonic(),
                                config.prompt_cache_min_tokens, config.prompt_cache_ttl_s)
        content, c_tokens, finish = within(answer.content, max_output(body) if config.max_tokens_honoured else None)
        payload = completion(n, created, str(body["model"]), content,
                             REPLY_PRIMING + sum(per_message) + format_tokens(body), c_tokens, cached, finish)
        payload["id"] = f"chatcmpl-fakebatch{n:012d}"
        return 200, payload

    def _finish(self, batch: Batch, status: str, done: int, end_after: float) -> None:
        """Write the output and error files: requests before ``done`` succeeded or failed (500)
        as drawn, the others were not done (``batch_expired``/``batch_cancelled``)."""
        created = int(batch.created_wall + end_after)
        not_done = EXPIRED if status == "expired" else CANCELLED
        ok: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for index, (custom_id, body) in enumerate(batch.requests):
            n = self._next("request")
            line: dict[str, Any] = {"id": f"batch_req_fake{n:012d}", "custom_id": custom_id, "response": None,
                                    "error": None}
            if index >= done:
                line["error"] = not_done
                failed.append(line)
            elif batch.fails[index]:
                error = json.loads(server_error_body(500))
                line["response"] = {"status_code": 500, "request_id": f"req_fakebatch{n:012d}", "body": error}
                failed.append(line)
            else:
                status_code, response_body = self._answer(n, created, body, batch.config)
                line["response"] = {"status_code": status_code, "request_id": f"req_fakebatch{n:012d}",
                                    "body": response_body}
                (ok if status_code == 200 else failed).append(line)
        batch.rng.shuffle(ok)
        batch.rng.shuffle(failed)
        if ok:
            batch.output_file_id = self._add_file(f"{batch.id}_output.jsonl", "batch_output", _jsonl(ok)).id
        if failed:
            batch.error_file_id = self._add_file(f"{batch.id}_error.jsonl", "batch_output", _jsonl(failed)).id
        batch.counts = {"total": len(batch.requests), "completed": len(ok), "failed": len(failed)}
        batch.status = status
        batch.end_after = end_after




def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _page(data: list[dict[str, Any]]) -> dict[str, Any]:
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return {"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": False}


def _json(obj: dict[str, Any]) -> _Result:
    return 200, json.dumps(obj).encode(), []
