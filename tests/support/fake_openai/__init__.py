"""A fake OpenAI-compatible HTTP server for tests and benchmarks.

Why it exists: the CSV Opener app asks an LLM for one outreach opener per URL. Tests and
benchmarks must not call the real API (cost, flakiness, secrets), yet they need something the
real ``openai`` SDK talks to over real HTTP, that is fast enough never to be the bottleneck
(~1,000 requests/s on two cores with keep-alive clients), that behaves as the real service does
where the app's correctness depends on it, and that misbehaves on demand. It counts what it saw
(``/_fake/stats``) so tests can assert on duplicate generation and achieved request rates.
Standard library only.

Where things are
----------------
``config.py``     :class:`FakeConfig`, every knob and its validation
``ratelimit.py``  RPM/TPM limits per model (bucket or window), 429s with OpenAI's headers
``tokens.py``     token counts for ``usage`` and TPM (a BPE-like rule, not the app's chars/4)
``faults.py``     the per-request draw: hang, 5xx, malformed answer, latency
``responses.py``  the plain opener (from the URL in the prompt) and OpenAI's JSON bodies
``answers.py``    the content of one answer (live and batch alike): which of the following applies
``structured.py`` ``response_format`` (JSON schema / JSON object) checked and answered as OpenAI does
``writing.py``    grounded openers (evidence from the ``<page>``/``<prospect_data>`` blocks), languages
``misbehave.py``  bad first answers per row (invent, repeat, long, spam, wrong_language, no_json)
``prompt_cache.py`` ``usage.prompt_tokens_details.cached_tokens`` for repeated prompt prefixes
``batches.py``    the Batch API: files and batches, in memory, ending with time
``wire.py``       HTTP/1.1 parsing and framing
``server.py``     :class:`FakeOpenAIServer` (asyncio) and :class:`FakeOpenAI` (in a thread)
``cli.py``        ``python -m tests.support.fake_openai`` (``__main__.py``)

Endpoints
---------
``POST /v1/chat/completions``
    A ``chat.completion`` whose content is a deterministic short opener that mentions the host
    of the first ``http(s)://`` URL in the last user message (falling back to a URL in any other
    message, then to a bare domain such as ``acme.com`` in the last user message). ``usage``
    counts tokens as tokens.py says, with ``prompt_tokens_details.cached_tokens`` (prompt_cache.py).
    With ``max_tokens_honoured`` on, an answer longer than the request's
    ``max_completion_tokens`` / ``max_tokens`` is cut off there, with ``finish_reason`` "length"
    (tokens.within; counted in ``truncated``), as OpenAI stops.
    ``stream: true`` is rejected with a 400. A request with ``response_format`` (or asking for
    ``{"opener", "evidence"}`` JSON in words) gets JSON whose evidence is copied from the prompt's
    page or row (structured.py, writing.py), in the language asked for; ``misbehave`` makes the
    first answer of chosen URLs bad (misbehave.py); ``response_format_supported`` /
    ``prompt_cache_key_supported`` off refuse those parameters with OpenAI's 400 naming them.
``GET /v1/models``, ``GET /v1/models/{id}``
    A minimal model list / model object.
``POST /v1/files`` (multipart, ``purpose=batch``), ``GET /v1/files``, ``GET /v1/files/{id}``,
``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``
    Batch input files (checked on upload: 400 naming the bad line) and batch output files.
``POST /v1/batches``, ``GET /v1/batches``, ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``
    Batches of chat completions, whose status moves with time (``batch_delay_s``) and which can
    fail requests, expire or be cancelled on demand; see batches.py. They do not use the live
    rate limits.
``GET /_fake/stats``
    Counters, see :meth:`FakeOpenAIServer.stats`.
``GET /_fake/config``, ``POST /_fake/config``
    Read / update the configuration (JSON object of :class:`FakeConfig` fields). Unknown fields
    or invalid values give a 400.
``POST /_fake/reset``
    Clear counters, refill rate limiters, forget files and batches, re-seed the RNG and restore
    the configuration given at construction time. Body ``{"keep_config": true}`` keeps the
    current configuration.
``POST /_fake/age_batches``
    Body ``{"seconds": N}``: every batch is N seconds older (time travel: a batch of
    ``batch_delay_s=3600`` ends after 3600), so tests need not wait for the provider.

The ``/v1`` prefix is optional (``/chat/completions`` works too).

A chat request, in order
------------------------
1. Parse/validate (400 for bad JSON, missing ``model``/``messages``; 401 if ``api_key`` is
   configured and the bearer token differs; 400 naming ``response_format``, ``messages`` or
   ``prompt_cache_key`` for a parameter refused, see answers.py). Counted in ``requests`` and,
   when valid, in ``by_url`` and ``by_model``.
2. ``insufficient_quota``: 429 with ``{"error": {"type": "insufficient_quota", "code":
   "insufficient_quota", ...}}`` and no ``retry-after``, as OpenAI answers when billing is
   exhausted.
3. Rate limits of the request's model (``rpm``/``tpm``, 0 = unlimited, or its ``model_limits``
   entry; each model has its own), see ratelimit.py: a rejection is answered at
   once with 429 (``type`` ``"requests"`` or ``"tokens"``, ``code`` ``rate_limit_exceeded``,
   ``retry-after``, ``retry-after-ms``, ``x-ratelimit-*``) and, as at OpenAI, counts against the
   limits (``count_rejected``, on by default).
4. The fault draw and the latency (faults.py), then the answer. ``x-ratelimit-*`` headers are
   sent on every answer for each enabled limit of the model (none if ``ratelimit_headers`` is
   off; no ``-limit-*`` ones if ``ratelimit_limit_headers`` is off).

Usage
-----
In tests::

    with FakeOpenAI(latency_ms=[5, 20], rpm=600) as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="x", max_retries=0)
        ...
        fake.configure(error_rate=0.1)
        assert fake.stats()["requests"] == ...

As a separate process (first stdout line is the base URL; serves until SIGTERM/SIGINT, then
prints the final stats as one JSON line on stderr)::

    python -m tests.support.fake_openai --port 0 --latency-ms 200 --rpm 600
    python -m tests.support.fake_openai --latency-ms 100,300 --error-rate 0.05
    python -m tests.support.fake_openai --rpm 500 --model-limits '{"gpt-4o": {"rpm": 100}}' --batch-delay-s 5
    python -m tests.support.fake_openai --misbehave '{"invent": 0.1, "repeat": 0.1}' --no-response-format
"""

from __future__ import annotations

from .cli import main
from .config import MALFORMED_KINDS, ConfigError, FakeConfig
from .responses import find_url, make_opener
from .server import FakeOpenAI, FakeOpenAIServer
from .tokens import count_tokens, prompt_tokens
from .writing import structured_opener

__all__ = [
    "MALFORMED_KINDS",
    "ConfigError",
    "FakeConfig",
    "FakeOpenAI",
    "FakeOpenAIServer",
    "count_tokens",
    "find_url",
    "main",
    "make_opener",
    "structured_opener",
    "prompt_tokens",
]
