"""The server: connections, routing, the chat completion endpoint and the ``/_fake/*`` control
endpoints (:class:`FakeOpenAIServer`, asyncio), and :class:`FakeOpenAI`, which runs it on its
own event loop in a thread for synchronous tests. The Batch API's files and batches are in
batches.py; this module only routes to them."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import random
import threading
import time
from typing import Any, Self
from urllib.parse import parse_qsl

from . import answers, batches, faults, responses
from .config import ConfigError, FakeConfig
from .misbehave import Tracker
from .prompt_cache import PromptCache
from .ratelimit import RateLimits
from .responses import APIError, error_body
from .tokens import REPLY_PRIMING, format_tokens, max_output, message_tokens, within
from .wire import MAX_BODY, MAX_HEAD, HTTPError, parse_head, read_body, response

log = logging.getLogger("fake_openai")

_Result = tuple[int, bytes, list[tuple[str, str]]]
MAX_LATENCIES = 200_000  # GET /_fake/latencies: the last answers' (time, latency ms)


class FakeOpenAIServer:
    """The asyncio server. Use it directly inside a running event loop
    (``await server.start()`` / ``await server.close()``), or use the threaded
    :class:`FakeOpenAI` wrapper. ``configure``/``reset``/``stats`` are
    thread-safe and may be called from any thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        self.host = host
        self.port = port
        self._initial = FakeConfig().replace(**config)
        self._lock = threading.Lock()
        self._server: asyncio.AbstractServer | None = None
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._in_flight = 0
        self._seq = 0
        with self._lock:
            self._apply(self._initial)
            self._reset_stats()

    # ----- state (call with self._lock held)

    def _apply(self, config: FakeConfig, *, reseed: bool = False) -> None:
        old = getattr(self, "_config", None)
        self._config = config
        if old is None or reseed or old.seed != config.seed:
            self._rng = random.Random(config.seed)
        if old is None:
            self._limits: dict[str, RateLimits] = {}  # model -> its limits, made on first use
            self._new_memory()
        now = time.monotonic()
        for model, limits in self._limits.items():  # rebuild (refill) only those that changed
            if limits.settings != RateLimits.settings_for(config, model):
                self._limits[model] = RateLimits(config, now, model)

    def _new_memory(self) -> None:
        """Forget what was answered: URLs (misbehave.py), cached prefixes, files and batches."""
        self._tracker = Tracker()
        self._cache = PromptCache()
        self._batches = batches.BatchStore(self._tracker, self._cache)

    def _limits_for(self, model: str, now: float) -> RateLimits:
        limits = self._limits.get(model)
        if limits is None:
            limits = self._limits[model] = RateLimits(self._config, now, model)
        return limits

    def _reset_stats(self) -> None:
        self._stats: dict[str, Any] = {
            "requests": 0,
            "ok": 0,
            "rate_limited": 0,
            "insufficient_quota": 0,
            "errors": 0,
            "hangs": 0,
            "malformed": 0,
            "truncated": 0,
            "bad_requests": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "charged_tokens": 0,
            "max_in_flight": self._in_flight,
            "first_request_at": None,
            "last_request_at": None,
        }
        self._latencies: collections.deque = collections.deque(maxlen=MAX_LATENCIES)  # (wall s, ms) per answer
        self._by_url: dict[str, int] = {}
        self._ok_by_url: dict[str, int] = {}
        self._by_model: dict[str, dict[str, int]] = {}
        self._refused: dict[str, int] = {}  # parameter -> 400s naming it (answers.check)
        self._by_format: dict[str, int] = {}  # answer kind (structured.Kind) -> ok answers

    def _model_stats(self, model: str) -> dict[str, int]:
        entry = self._by_model.get(model)
        if entry is None:
            entry = self._by_model[model] = dict.fromkeys(
                ("requests", "ok", "rate_limited", "prompt_tokens", "completion_tokens"), 0
            )
        return entry

    # ----- public control API

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (valid after start)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1`` — pass to ``openai.OpenAI(base_url=...)``."""
        return self.url + "/v1"

    @property
    def config(self) -> FakeConfig:
        with self._lock:
            return self._config

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Update configuration fields; returns the new configuration as a dict.
        Changing ``rpm``/``tpm``/``model_limits``/``rate_limit_mode``/
        ``burst_seconds`` rebuilds (refills) the limiters of the models whose
        limits changed (the others keep their state); passing ``seed`` (even the
        same value) re-seeds the RNG."""
        with self._lock:
            new = self._config.replace(**changes)
            self._apply(new, reseed="seed" in changes)
            return new.to_dict()

    def reset(self, *, keep_config: bool = False) -> None:
        """Clear counters, refill limiters, re-seed the RNG, forget the Batch API's
        files and batches; also restore the construction-time configuration unless
        ``keep_config``."""
        with self._lock:
            if not keep_config:
                self._config = self._initial
            self._rng = random.Random(self._config.seed)
            self._limits = {}
            self._new_memory()
            self._reset_stats()
            self._seq = 0

    def age_batches(self, seconds: float) -> int:
        """Move every batch ``seconds`` further from its creation (time travel for tests: a batch
        of ``batch_delay_s=3600`` ends after ``age_batches(3600)``). Returns the batches moved."""
        with self._lock:
            return self._batches.age(seconds)

    def stats(self) -> dict[str, Any]:
        """Snapshot of the counters: ``requests`` (chat completion requests
        received, any outcome), ``ok``, ``rate_limited``, ``insufficient_quota``,
        ``errors``, ``hangs``, ``malformed``, ``bad_requests`` (400/401),
        ``truncated`` (ok answers cut off at the request's ``max_tokens``, with
        ``finish_reason`` "length": ``max_tokens_honoured``), ``by_url`` (all valid requests per URL,
        including 429-ed and failed ones), ``ok_by_url`` (200 with a proper opener),
        ``prompt_tokens``/``completion_tokens`` (of ok answers), ``charged_tokens`` (what the
        admitted calls cost against the token limit: prompt + max_tokens),
        ``by_model`` (per model of valid requests: ``requests``, ``ok``,
        ``rate_limited``, ``prompt_tokens``, ``completion_tokens``),
        ``in_flight``/``max_in_flight``, and ``first_request_at``/
        ``last_request_at`` (``time.time()`` wall-clock seconds of the
        first/last received chat request, so comparable across processes).
        All of these are of live chat completions only; the Batch API counts
        ``files`` (uploaded), ``batches`` (created), ``batch_requests`` (requests
        in created batches) and ``batches_cancelled``. ``refused`` counts the
        live 400s naming a parameter (``{"response_format": 2}``), ``by_format``
        the live ok answers by kind (``text``, ``json_schema``, ``json_object``,
        ``prompt``: JSON asked for in words). Live and batch answers
        together count ``misbehaved`` (answers that broke a ``misbehave`` rule),
        ``misbehaved_by_rule``, ``reasks`` (answers about a URL answered before),
        ``cache_hits`` and ``cached_tokens`` (prompt_cache.py)."""
        with self._lock:
            out = dict(self._stats)
            out["by_url"] = dict(self._by_url)
            out["ok_by_url"] = dict(self._ok_by_url)
            out["by_model"] = {model: dict(entry) for model, entry in self._by_model.items()}
            out["refused"] = dict(self._refused)
            out["by_format"] = dict(self._by_format)
            out["in_flight"] = self._in_flight
            out.update(self._tracker.stats())
            out["cache_hits"], out["cached_tokens"] = self._cache.hits, self._cache.cached_tokens
            out.update(self._batches.stats)
            return out

    # ----- lifecycle

    async def start(self) -> FakeOpenAIServer:
        self._closing = False
        self._server = await asyncio.start_server(
            self._handle_connection, self.host, self.port, limit=MAX_HEAD, backlog=2048
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        tasks = list(self._conn_tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    # ----- connection handling

    async def _handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conn_tasks.add(task)  # type: ignore[arg-type]
        try:
            await self._serve(reader, writer)
        except (
            asyncio.CancelledError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
        ):
            pass
        except Exception:  # never let one connection take the server down
            log.exception("fake_openai: unexpected error on connection")
        finally:
            if task is not None:
                self._conn_tasks.discard(task)  # type: ignore[arg-type]
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not self._closing:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # EOF between requests (or a partial request): just close
            except asyncio.LimitOverrunError:
                writer.write(
                    response(431, error_body("Request header too large", "invalid_request_error"), keep_alive=False)
                )
                await writer.drain()
                return
            try:
                method, target, version, headers = parse_head(head)
                conn = headers.get("connection", "").lower()
                keep_alive = "close" not in conn if version == "HTTP/1.1" else "keep-alive" in conn
                path, _, query = target.partition("?")
                max_body = batches.MAX_UPLOAD if path in ("/v1/files", "/files") else MAX_BODY
                body = await read_body(reader, writer, headers, max_body)
            except HTTPError as exc:
                writer.write(response(exc.status, error_body(exc.message, "invalid_request_error"), keep_alive=False))
                await writer.drain()
                return
            result = await self._dispatch(method, path, headers, body, reader, query)
            if result is None:  # hung request ended: the client went away or hang_seconds elapsed
                return
            status, payload, extra = result
            writer.write(response(status, payload, keep_alive=keep_alive, headers=extra))
            await writer.drain()
            if not keep_alive:
                return

    async def _dispatch(
        self, method: str, path: str, headers: dict[str, str], body: bytes, reader: asyncio.StreamReader,
        query: str = "",
    ) -> _Result | None:
        if path.startswith("/v1/"):
            path = path[3:]
        if path == "/chat/completions":
            if method != "POST":
                return _method_not_allowed()
            return await self._chat(headers, body, reader)
        if path in ("/files", "/batches") or path.startswith(("/files/", "/batches/")):
            return await self._batch_api(method, path, headers, body, query)
        if path == "/models" or path.startswith("/models/"):
            if method != "GET":
                return _method_not_allowed()
            return 200, responses.models(path), []
        if path == "/_fake/stats" and method == "GET":
            return 200, json.dumps(self.stats()).encode(), []
        if path == "/_fake/latencies" and method == "GET":
            with self._lock:
                return 200, json.dumps({"latencies": list(self._latencies)}).encode(), []
        if path == "/_fake/config":
            if method == "GET":
                return 200, json.dumps(self.config.to_dict()).encode(), []
            if method == "POST":
                try:
                    changes = json.loads(body or b"{}")
                    if not isinstance(changes, dict):
                        raise ConfigError("config body must be a JSON object")
                    return 200, json.dumps(self.configure(**changes)).encode(), []
                except ValueError as exc:  # includes JSONDecodeError
                    return 400, error_body(str(exc), "invalid_request_error"), []
        if path == "/_fake/reset" and method == "POST":
            try:
                opts = json.loads(body) if body.strip() else {}
            except ValueError:
                return 400, error_body("reset body must be JSON", "invalid_request_error"), []
            keep = bool(opts.get("keep_config", False)) if isinstance(opts, dict) else False
            self.reset(keep_config=keep)
            return 200, json.dumps({"reset": True, "config": self.config.to_dict()}).encode(), []
        if path == "/_fake/age_batches" and method == "POST":
            try:
                seconds = json.loads(body).get("seconds")
                if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
                    raise ValueError
            except (ValueError, AttributeError):
                return 400, error_body('body must be {"seconds": <non-negative number>}', "invalid_request_error"), []
            return 200, json.dumps({"batches": self.age_batches(seconds)}).encode(), []
        if path in ("/", "/health", "/_fake/health"):
            return 200, b'{"status": "ok"}', []
        return 404, error_body(f"Unknown request URL: {method} {path}", "invalid_request_error", "unknown_url"), []

    # ----- the Batch API (batches.py)

    async def _batch_api(self, method: str, path: str, headers: dict[str, str], body: bytes,
                         query: str = "") -> _Result:
        api_key = self.config.api_key
        if api_key is not None and headers.get("authorization", "") != f"Bearer {api_key}":
            return 401, error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"), []
        try:
            upload = None
            if method == "POST" and path == "/files":  # parse outside the lock, off the event loop
                upload = await asyncio.to_thread(batches.parse_upload, headers.get("content-type", ""), body)
            with self._lock:
                return self._batches.handle(method, path, body, upload, self._config, self._rng,
                                            dict(parse_qsl(query)))
        except batches.APIError as exc:
            return exc.result()

    # ----- POST /v1/chat/completions

    async def _chat(self, headers: dict[str, str], body: bytes, reader: asyncio.StreamReader) -> _Result | None:
        """Validate (400/401), then billing (``insufficient_quota``), then the rate limits (429),
        then the request's fate (hang, error, malformed or ok) after its latency."""
        now_wall = time.time()
        with self._lock:
            st = self._stats
            st["requests"] += 1
            if st["first_request_at"] is None:
                st["first_request_at"] = now_wall
            st["last_request_at"] = now_wall
            config = self._config
            tracker = self._tracker
        try:
            request = _parse_chat(body)
            if config.api_key is not None and headers.get("authorization", "") != f"Bearer {config.api_key}":
                raise HTTPError(401, "Incorrect API key provided.")
            kind = answers.check(request, config)
        except (HTTPError, APIError) as exc:
            with self._lock:
                self._stats["bad_requests"] += 1
                if isinstance(exc, APIError) and exc.param:
                    self._refused[exc.param] = self._refused.get(exc.param, 0) + 1
            if isinstance(exc, APIError):
                return exc.result()
            if exc.status == 401:
                return 401, error_body(exc.message, "invalid_request_error", "invalid_api_key"), []
            return exc.status, error_body(exc.message, "invalid_request_error"), []

        messages: list[Any] = request["messages"]
        model = str(request["model"])
        # Without the lock: the tracker is written only on this (the event loop's) thread, by the live
        # endpoint and the batch store; other threads only read its counters.
        answer = answers.compose(request, kind, config, tracker)
        url, content = answer.url, answer.content
        per_message = [message_tokens(message) for message in messages]
        p_tokens = REPLY_PRIMING + sum(per_message) + format_tokens(request)  # prompt_tokens(messages) + schema
        max_out = max_output(request)
        content, c_tokens, finish = within(content, max_out if config.max_tokens_honoured else None)
        cost = p_tokens + (c_tokens if max_out is None else max_out)

        now = time.monotonic()
        with self._lock:
            config = self._config
            if url is not None:
                self._by_url[url] = self._by_url.get(url, 0) + 1
            model_stats = self._model_stats(model)
            model_stats["requests"] += 1
            if config.insufficient_quota:
                self._stats["insufficient_quota"] += 1
                return 429, responses.INSUFFICIENT_QUOTA, []
            limits = self._limits_for(model, now)
            limited = limits.check(cost, now, model, config.count_rejected, config.ratelimit_headers,
                                   config.ratelimit_limit_headers)
            if limited is not None:
                self._stats["rate_limited"] += 1
                model_stats["rate_limited"] += 1
                return limited
            self._stats["charged_tokens"] += cost
            rl_headers = limits.headers(now, config.ratelimit_limit_headers) if config.ratelimit_headers else []
            fate = faults.draw(self._rng, config)
            self._seq += 1
            seq = self._seq
            self._in_flight += 1
            self._stats["max_in_flight"] = max(self._stats["max_in_flight"], self._in_flight)
            if config.latency_per_call_ms and fate.outcome != "hang":  # capacity-bound: slower with every call
                fate = dataclasses.replace(fate, delay_s=fate.delay_s + config.latency_per_call_ms
                                           * self._in_flight / 1000.0)
            if fate.outcome != "hang":
                self._latencies.append((now_wall, round(fate.delay_s * 1000, 3)))
            if fate.outcome == "hang":
                self._stats["hangs"] += 1
        try:
            if fate.outcome == "hang":
                await faults.hang(reader, config.hang_seconds)
                return None
            if fate.delay_s > 0:
                await asyncio.sleep(fate.delay_s)
            rl_headers.append(("x-request-id", f"req_fake{seq:012d}"))
            rl_headers.append(("openai-processing-ms", str(int(fate.delay_s * 1000))))
            if fate.outcome == "error":
                with self._lock:
                    self._stats["errors"] += 1
                return fate.status, responses.server_error_body(fate.status), rl_headers
            if fate.outcome == "malformed":
                payload = responses.completion(seq, int(now_wall), model, content, p_tokens, c_tokens,
                                               finish_reason=finish)
                with self._lock:
                    self._stats["malformed"] += 1
                return 200, responses.malformed(fate.malformed_kind, payload), rl_headers
            with self._lock:
                self._tracker.delivered(url, answer.rule)
                self._by_format[kind] = self._by_format.get(kind, 0) + 1
                cached = self._cache.use(model, answer.cache_key, messages, per_message, time.monotonic(),
                                         config.prompt_cache_min_tokens, config.prompt_cache_ttl_s)
                self._stats["ok"] += 1
                self._stats["truncated"] += finish == "length"
                self._stats["prompt_tokens"] += p_tokens
                self._stats["completion_tokens"] += c_tokens
                model_stats = self._model_stats(model)
                model_stats["ok"] += 1
                model_stats["prompt_tokens"] += p_tokens
                model_stats["completion_tokens"] += c_tokens
                if url is not None:
                    self._ok_by_url[url] = self._ok_by_url.get(url, 0) + 1
            payload = responses.completion(seq, int(now_wall), model, content, p_tokens, c_tokens, cached, finish)
            return 200, json.dumps(payload).encode(), rl_headers
        finally:
            with self._lock:
                self._in_flight -= 1


def _method_not_allowed() -> _Result:
    return 405, error_body("Method not allowed", "invalid_request_error"), []


def _parse_chat(body: bytes) -> dict[str, Any]:
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HTTPError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
            "library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
        ) from None
    if not isinstance(request, dict):
        raise HTTPError(400, "The request body must be a JSON object.")
    if not request.get("model") or not isinstance(request["model"], str):
        raise HTTPError(400, "you must provide a model parameter")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HTTPError(400, "Missing required parameter: 'messages'.")
    if request.get("stream"):
        raise HTTPError(400, "stream=true is not supported by the fake OpenAI server")
    return request


class FakeOpenAI:
    """Threaded wrapper: runs :class:`FakeOpenAIServer` on its own event loop in
    a daemon thread so synchronous tests can use it.

    ``FakeOpenAI(host="127.0.0.1", port=0, **FakeConfig fields)``;
    ``start()`` returns self; ``stop()``; ``base_url``; ``configure(**kw)``;
    ``reset(keep_config=False)``; ``stats()``; context manager.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        self.server = FakeOpenAIServer(host, port, **config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``); the ``/_fake/*`` endpoints live here."""
        return self.server.url

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``."""
        return self.server.base_url

    @property
    def config(self) -> FakeConfig:
        return self.server.config

    def configure(self, **changes: Any) -> dict[str, Any]:
        return self.server.configure(**changes)

    def reset(self, *, keep_config: bool = False) -> None:
        self.server.reset(keep_config=keep_config)

    def stats(self) -> dict[str, Any]:
        return self.server.stats()

    def age_batches(self, seconds: float) -> int:
        return self.server.age_batches(seconds)

    def start(self) -> FakeOpenAI:
        if self._thread is not None:
            raise RuntimeError("FakeOpenAI already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.server.start())
            except BaseException as exc:  # noqa: BLE001 - re-raised by start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.server.close())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run, name="fake-openai", daemon=True)
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            raise failure[0]
        self._loop, self._thread = loop, thread
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = self._loop = None

    def __enter__(self) -> Self:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
