"""Ask the LLM for one short outreach opener per URL, safely, politely and only as often as allowed.

Why this exists: the chunk worker turns every URL of a job into an opener. Each call must take its
turn from the shared Redis limiter, survive the API's bad moments (429, 5xx, timeouts, dropped
connections) with one well-behaved retry policy, and hand back text that can go straight into a
CSV cell. When it cannot, the URL fails with a message a user can act on.

``OpenerGenerator.generate`` is one URL end to end. tenacity is the only retry layer (the SDK's
own retries are off): exponential backoff with jitter, at least as long as ``Retry-After``; a
429 also puts the shared limiter into a cooldown so every worker pauses, not just this one.
The prompt is ``prompt.build_messages``; the client and its error reading, ``client``; dummy
mode, ``dummy``; what an answer must be to become an opener, ``answers``.

The answer is asked for as JSON through ``response_format`` (``quality.response_format()``). A
server that refuses it (a 400 naming ``response_format``) is asked again at once with the JSON
asked for in words, and so is every later call to that model from this process (logged once):
the refusal is a property of the server, not of the row. ``prompt_cache_key`` (the job's id,
so the provider routes a job's requests to the cache holding its constant prefix) is handled
the same way: a 400 naming it turns it off for that model for the process, logged once. The
provider's cached prompt tokens (``usage.prompt_tokens_details.cached_tokens``) are kept with
the opener, to be priced at the model's cached-input price.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from typing import Any, Protocol

import openai
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential_jitter

from chalicelib import metrics
from chalicelib.generation.answers import (
    GenerationFailed,
    Opener,
    UnusableAnswer,
    cached_count,
    checked_answers,
    log_unusable,
    token_count,
)
from chalicelib.generation.client import (
    BACKOFF_INITIAL_S,
    BACKOFF_JITTER_S,
    BACKOFF_MAX_S,
    STOP_CHECK_SLICE_S,
    describe_error,
    is_quota_exhausted,
    is_retryable,
    retry_after,
)
from chalicelib.generation.prompt import build_messages
from chalicelib.generation.ratelimit import LimiterStopped, estimate_tokens, exhausted, states_a_budget
from chalicelib.generation.ratelimit.gate import Call
from chalicelib.quality.answer import refuses_response_format, response_format
from chalicelib.quality.flags import DEFAULT_MAX_WORDS, DEFAULT_MIN_WORDS

log = logging.getLogger("csv_opener.openers")

TEMPERATURE = 0.7
RATE_LIMITED_FREE = 5  # answers 429 (for the rate) a URL may have beyond MAX_RETRIES attempts

# -- generator ------------------------------------------------------------------------------------


class Limiter(Protocol):
    """What the generator needs from ``chalicelib.generation.ratelimit.RateLimiter`` (tests pass a fake)."""

    def acquire(self, tokens: int, should_stop: Callable[[], bool] = ..., account: str | None = ...,
                model: str | None = ..., job: str | None = ...) -> float: ...

    def refund(self, estimated: int, actual: int, model: str | None = ...) -> None: ...

    def cooldown(self, seconds: float, model: str | None = ...) -> None: ...

    def observe(self, model: str | None, headers: Any, ok: bool = ...) -> None: ...


def _exchange_s(response: Any) -> float | None:
    """How long the HTTP exchange of an answered call took (httpx's ``elapsed``: from sending the
    request to reading the answer), without the SDK's work around it; None if not known."""
    try:
        return response.http_response.elapsed.total_seconds()
    except (AttributeError, RuntimeError):
        return None


def _json_body(content: bytes) -> dict:
    """The answer's JSON object; anything else is an unusable answer (retried)."""
    try:
        body = json.loads(content)
    except ValueError:
        log_unusable("not JSON", content[:200].decode("utf-8", "replace"))
        raise UnusableAnswer("the answer was not JSON") from None
    if not isinstance(body, dict):
        log_unusable("not a JSON object", body)
        raise UnusableAnswer("the answer was not a JSON object")
    return body


class OpenerGenerator:
    """Generates one opener per call; safe to share between the chunk worker's threads."""

    def __init__(
        self,
        client: openai.OpenAI,
        limiter: Limiter,
        model: str,
        max_retries: int = 3,
        max_tokens: int = 120,
        sleep: Callable[[float], Any] = time.sleep,
        gate: Any = None,
    ) -> None:
        self.client = client
        self.limiter = limiter
        self.gate = gate  # ratelimit.gate.ConcurrencyGate: the model's calls in flight (None: no limit)
        self.model = model
        self.max_retries = max(1, int(max_retries))  # attempts in total, the first one included
        self.max_tokens = max_tokens
        self._sleep = sleep
        self.json_in_prompt: set[str] = set()  # models whose server refused response_format
        self.no_cache_key: set[str] = set()  # models whose server refused prompt_cache_key
        self._backoff = wait_exponential_jitter(
            multiplier=BACKOFF_INITIAL_S, max=BACKOFF_MAX_S, jitter=BACKOFF_JITTER_S
        )

    def generate(
        self,
        url: str,
        instructions: str | None = None,
        model: str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        account: str | None = None,
        fields: dict[str, str] | None = None,
        page: str | None = None,
        **asked: Any,
    ) -> Opener:
        """The opener for ``url``; raises GenerationFailed, or LimiterStopped when asked to stop.
        ``account`` takes the call from that account's fair share of the shared rate; ``fields``
        (the row's template columns) and ``page`` (a summary of the prospect's page) go into the
        prompt as data; ``asked``: ``language``, ``min_words``, ``max_words`` and ``reask`` of
        ``prompt.build_messages``, ``variants`` (openers asked for in the one call: the answer must
        hold exactly that many, each passing the guard; ``Opener.variants`` holds them), and
        ``cache_key`` (``prompt_cache_key``, sent where the server takes it). An answer the
        output guard rejects is retried like an unusable one."""
        def body() -> dict:
            return self.request_body(url, instructions, model, fields, page, **asked)
        retrying = Retrying(
            stop=self._stop(),
            wait=self._wait,
            retry=retry_if_exception(is_retryable),
            sleep=lambda seconds: self._pause(seconds, should_stop),
            before_sleep=lambda state: self._log_retry(url, state),
            reraise=True,
        )
        attempts = 0
        spent = [0, 0]  # tokens of answers turned down: paid, so counted with the row
        try:
            for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    try:
                        opener = self._attempt(body, should_stop, attempts, account, url, instructions,
                                               asked.get("variants", 1), asked.get("cache_key"))
                    except UnusableAnswer as exc:
                        spent[0] += exc.prompt_tokens
                        spent[1] += exc.completion_tokens
                        raise
                    if spent != [0, 0]:
                        opener = replace(opener, prompt_tokens=opener.prompt_tokens + spent[0],
                                         completion_tokens=opener.completion_tokens + spent[1])
                    return opener
        except (openai.OpenAIError, UnusableAnswer) as exc:
            raise GenerationFailed(describe_error(exc), attempts, *spent) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def request_body(self, url: str, instructions: str | None = None, model: str | None = None,
                     fields: dict[str, str] | None = None, page: str | None = None, *, language: str = "en",
                     min_words: int = DEFAULT_MIN_WORDS, max_words: int = DEFAULT_MAX_WORDS,
                     reask: str | None = None, feedback: str | None = None, cache_key: str | None = None,
                     variants: int = 1) -> dict:
        """The chat-completions request for one URL, as a live call sends it and a Batch API file
        carries it (one prompt for both modes): ``response_format`` unless the model's server
        refused it, then the JSON asked for in words; ``prompt_cache_key`` when ``cache_key`` is
        given and the model's server did not refuse it."""
        model = model or self.model
        in_words = model in self.json_in_prompt
        request = {"model": model,
                   "messages": build_messages(url, instructions, fields, page, language=language, min_words=min_words,
                                              max_words=max_words, json_in_prompt=in_words, reask=reask,
                                              feedback=feedback, variants=variants),
                   # room for each variant's opener and evidence: a cut-off answer is broken JSON
                   "max_tokens": self.max_tokens * max(1, variants), "temperature": TEMPERATURE}
        if not in_words:
            request["response_format"] = response_format(variants)
        if cache_key and model not in self.no_cache_key:
            request["prompt_cache_key"] = f"csv-opener-{cache_key}"[:64]
        return request

    def _stop(self) -> Callable[[RetryCallState], bool]:
        """When a URL's attempts are spent: ``max_retries`` of them, not counting up to
        ``RATE_LIMITED_FREE`` answered 429 for the rate (not the quota). A 429 says "not now" to
        every worker, which the limiter acts on, and while a rate is being found from 429s some
        are expected: a row refused three times in a row must not fail for it."""
        free = [0]

        def stop(state: RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome is not None and state.outcome.failed else None
            if (isinstance(exc, openai.RateLimitError) and not is_quota_exhausted(exc)
                    and free[0] < RATE_LIMITED_FREE):
                free[0] += 1
                return False
            return state.attempt_number - free[0] >= self.max_retries
        return stop

    def _attempt(self, body: Callable[[], dict], should_stop: Callable[[], bool], number: int,
                 account: str | None, url: str, instructions: str | None, variants: int = 1,
                 job: str | None = None) -> Opener:
        """One attempt (a refused parameter is dropped and the call made again). ``job``: the
        job the call is counted for (its calls per minute): the ``cache_key``, the job's id."""
        for _ in range(2):  # each refusal (response_format, prompt_cache_key) at most once
            request = body()
            try:
                return self._call(request, should_stop, number, account, url, instructions, variants, job)
            except openai.BadRequestError as exc:
                if not self._refused(request, exc):
                    raise
        return self._call(body(), should_stop, number, account, url, instructions, variants, job)

    def _refused(self, request: dict, exc: openai.BadRequestError) -> bool:
        """A 400 refusing ``response_format`` or ``prompt_cache_key``: that model goes without it
        from now on (logged once); False for any other 400."""
        model, detail = request["model"], describe_error(exc)
        if "prompt_cache_key" in request and ("prompt_cache_key" in detail or getattr(exc, "param", None)
                                              == "prompt_cache_key"):
            if model not in self.no_cache_key:
                self.no_cache_key.add(model)
                log.warning("model %s refused prompt_cache_key: not sending it from now on", model)
            return True
        if "response_format" in request and refuses_response_format(exc.status_code, detail):
            if model not in self.json_in_prompt:
                self.json_in_prompt.add(model)
                log.warning("model %s refused response_format: asking for the JSON in the prompt from now on", model)
            return True
        return False

    def _call(self, request: dict, should_stop: Callable[[], bool], number: int,
              account: str | None, url: str, instructions: str | None, variants: int = 1,
              job: str | None = None) -> Opener:
        model = request["model"]
        estimate = estimate_tokens(request["messages"], request["max_tokens"])
        counted = {"job": job} if job else {}
        # The in-flight slot first, then the rate: a call paced by the limiter is sent at once, not
        # held behind the gate (calls held there while its limit was low went out in a burst
        # when it opened, answered 429 by a server with a short burst allowance).
        with self.gate.slot(model, should_stop) if self.gate is not None else nullcontext(Call()) as call:
            metrics.limiter_wait(self.limiter.acquire(estimate, should_stop, account=account, model=model,
                                                      **counted))
            metrics.rate_in_force(model, getattr(self.limiter, "rpm_in_force", {}).get(model))
            try:
                response = self._send(request, call)
            except openai.RateLimitError as exc:
                # OpenAI's 429s state the limits too; a gateway's its remaining/reset
                headers = exc.response.headers
                if states_a_budget(headers):
                    self.limiter.observe(model, headers, ok=False, tokens=estimate)
                self._on_rate_limited(exc, model)
                raise
        # a success states the limits, or says by their absence that the server sends none (an
        # error page may lack them for other reasons: only successes and 429s are read)
        try:
            body = _json_body(response.http_response.content)
        except UnusableAnswer:  # still a success: what its headers state counts
            self.limiter.observe(model, response.http_response.headers, tokens=estimate)
            raise
        usage = body.get("usage") or {}
        # what the provider charged against its token budget up front: the prompt and max_tokens
        prompt = usage.get("prompt_tokens")
        charged = prompt + request["max_tokens"] if isinstance(prompt, int) and not isinstance(prompt, bool) else None
        self.limiter.observe(model, response.http_response.headers, tokens=charged or estimate)
        if isinstance(usage.get("total_tokens"), int):
            self.limiter.refund(estimate, usage["total_tokens"], model=model, charged=charged)
        # parsed, cleaned, then the output guard: a rejected answer is an UnusableAnswer, retried
        try:
            found = checked_answers(body, url, instructions, lenient="response_format" not in request,
                                    variants=variants)
        except UnusableAnswer as exc:
            exc.prompt_tokens = token_count(usage, "prompt_tokens")
            exc.completion_tokens = token_count(usage, "completion_tokens")
            raise
        (text, evidence), more = found[0], tuple(found) if variants > 1 else ()
        return Opener(text=text, prompt_tokens=token_count(usage, "prompt_tokens"),
                      completion_tokens=token_count(usage, "completion_tokens"), attempts=number, evidence=evidence,
                      cached_tokens=cached_count(usage), variants=more)

    def _send(self, request: dict, call: Call) -> Any:
        """The HTTP call, told to the model's in-flight gate (`call`): its latency (the HTTP
        exchange's, not the time the slot was held), a 429 or a timeout is what the gate's limit
        is found from."""
        try:
            # The SDK builds the request and raises its typed errors; the small JSON answer is read
            # directly (building the SDK's response model cost ~15 % of a call's CPU here).
            response = metrics.llm_call(self.client.chat.completions.with_raw_response.create, **request)
        except (openai.RateLimitError, openai.APITimeoutError):
            call.drop()
            raise
        # a server that states its rate budget is metered by rate: the gate holds it at its ceiling
        call.answered(_exchange_s(response), stated=states_a_budget(response.http_response.headers))
        return response

    def _on_rate_limited(self, exc: openai.RateLimitError, model: str) -> None:
        if is_quota_exhausted(exc):
            return  # not a rate problem: pausing everyone would not help
        self.limiter.cooldown(retry_after(exc) or 1.0, model=model, spent=exhausted(exc.response.headers))

    def _wait(self, retry_state: RetryCallState) -> float:
        """Exponential backoff with jitter, but never shorter than the server's Retry-After."""
        backoff = self._backoff(retry_state)
        outcome = retry_state.outcome
        hinted = retry_after(outcome.exception()) if outcome is not None and outcome.failed else None
        return max(backoff, hinted or 0.0)

    def _pause(self, seconds: float, should_stop: Callable[[], bool]) -> None:
        """Sleep between attempts in slices; LimiterStopped as soon as should_stop() is True."""
        remaining = seconds
        while True:
            if should_stop():
                raise LimiterStopped("stopped between attempts; the URL goes back to pending")
            if remaining <= 0:
                return
            step = min(STOP_CHECK_SLICE_S, remaining)
            self._sleep(step)
            remaining -= step

    def _log_retry(self, url: str, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.info(
            "opener attempt %d for %s failed (%s); retrying in %.2fs",
            state.attempt_number,
            url,
            describe_error(exc) if exc is not None else "unknown error",
            wait,
        )
