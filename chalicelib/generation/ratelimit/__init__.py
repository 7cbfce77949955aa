"""One OpenAI requests-per-minute and tokens-per-minute budget shared through Redis.

Why this exists: every chunk is processed by its own Lambda invocation, and each invocation
runs up to 16 threads calling OpenAI. A per-process limiter cannot stop fifty containers from
each spending the whole account budget at once; OpenAI then answers 429 and everything slows
down. All of them therefore take their turn from one pair of token buckets kept in Redis.

How it works:

* Two token buckets (requests, tokens), each a Redis hash ``{level, ts}``, refill continuously at
  ``limit / 60000`` per millisecond up to ``burst = max(limit / 60, need)``: one second's worth,
  because OpenAI enforces its per-minute limits in shorter slices, not as one per-minute lump.
* ``acquire`` is a *reservation* (GCRA-style): one atomic Lua script, on the Redis server clock,
  deducts the caller's need at once (the level may go negative) and returns how long until that
  reservation is covered. The caller sleeps that long and then calls the API without asking
  again: no polling, no thundering herd, first come first served, and exactly ``limit`` per
  minute in the long run however many processes share the budget.
* ``cooldown(seconds)`` after a provider 429 pauses every worker in every process: it stores
  ``<prefix>:cooldown_until`` and freezes both buckets until then (no credit accrues during the
  pause, so the end of a pause releases at most one burst, then the steady rate). A reservation
  made before the 429 that would have fired inside the pause is handed back and retaken after it.
* ``refund`` corrects the token bucket once the response's real ``usage`` is known.
* Fair share between accounts: ``acquire(..., account=id)`` also takes the turn from that
  account's own pair of buckets, refilled at ``limit / n`` where n is the number of accounts that
  asked in the last few seconds. An account may reserve at most ``MAX_AHEAD_MS`` ahead in its
  share; beyond that it is told to come back later instead of queueing. So a big job cannot
  stack up minutes of reservations in front of a small job of another account: while both run,
  each gets half the provider rate, and alone, either gets all of it.
* If Redis is unreachable ``acquire`` keeps retrying with backoff; it never lets a caller through
  unthrottled. It gives up only when the caller's ``should_stop()`` says so (``LimiterStopped``).
* Limits learned from the provider, per model. OpenAI answers every call with
  ``x-ratelimit-limit-requests`` / ``x-ratelimit-limit-tokens`` (the organisation's RPM and TPM
  for that model). ``observe(model, headers)`` stores them in ``P:m:<model>:limits`` and the
  scripts use them from the next reservation on, so the system converges on the real limits
  without being told, and follows a change (a tier upgrade) with the next answer. ``rpm`` and
  ``tpm`` given to the limiter (OPENAI_RPM / OPENAI_TPM) are ceilings over what is learned (0 =
  none): headroom for other users of the same key, and the limits in force for a server that
  sends no such headers (over the rate found from its 429s, below). Until a model's provider
  has answered once, at most ``start_rpm`` requests per minute go out (a cautious start: a few
  requests, not a wall of 429s; the app uses ``START_RPM``, 0 turns it off); waits booked in
  that phase are booked again as soon as the limits are known, and the buckets go on from what
  the start used (not full again).
* A rate found from 429s (AIMD, as TCP finds a path's rate), per model, for a server that
  states no limit (vLLM, LiteLLM, Ollama, some Azure deployments) or states a wrong one. One
  controller per model lives in the limits hash (``found``, ``phase``, ``peak``, ``last``, ``cut``,
  ``gen``) and every process updates it through one atomic script, so fifty handlers run one
  controller, not fifty: ``observe`` of a success may raise it (lua/grow.lua: slow-start doubling
  per period until the first 429, then half the way back to where the last 429 came, then an
  additive probe past it, at most once per ``aimd_period_ms`` and only while the rate is used);
  ``cooldown`` after a 429 cuts it by ``aimd_decrease`` at most once per period (lua/cooldown.lua),
  so one burst of 429s is one signal. A cut also forgives every booking not yet due and bumps
  ``gen``: a caller that booked at the old rate books again when it wakes, so the cut takes
  effect at once, not after the queue booked at the old rate has drained into more 429s. A
  stated limit resets the controller to it (and it is never probed past); ``OPENAI_RPM`` stays a
  ceiling: the rate in force is min(found, ceiling), and the buckets pace with it. ``limits``
  says which set it ("stated", "found from 429s", "ceiling").
* A server that states no limit but sends ``x-ratelimit-remaining-requests`` /
  ``-reset-requests`` (gateways, Azure) is gauged from them (lua/gauge.lua): none remaining pauses
  every worker until one request fits, before the 429 comes; (budget size - remaining) / reset is
  its rate, which caps the rate found while the budget is being drained. A stated limit lower
  than the rate in use takes effect at once (the bookings made at the old one are booked again).
  A fixed window (a counter reset every minute: gateways, LiteLLM) is told apart by its reset's
  end staying put while the budget is spent: the rate is then remaining / time left, and none
  remaining pauses every worker until the window's end (the reset honoured as the pause).
  The token budget is gauged the same way from ``x-ratelimit-remaining-tokens`` / ``-reset-tokens``
  when no token limit is stated: one design, parametrised by the dimension (the tokens' fields
  carry a ``t_`` prefix in the limits hash: ``t_found``, ``t_est``...). The token rate gauged is
  the token bucket's limit (under ``OPENAI_TPM``), grows as the request rate does once its
  estimate is stale (lua/grow.lua, ``t_used`` counts the tokens booked), and is cut by a 429 whose
  headers show the token budget used up (``cooldown(..., spent=...)``; a 429 that does not say
  cuts the request rate, as before). The bucket paced at it is refunded to what the provider
  charged up front (prompt + max_tokens, ``refund(..., charged=)``), not to the usage: the
  provider's remaining drains at that, so the rate gauged is in those units.
* Calls per minute: the acquire script counts each call it admits in per-second slots of the
  model's ``B:calls`` hash and, for a job's call, ``P:job:<id>:calls`` (lua/calls.lua sums the last
  minute), for ``GET /api/metrics`` and the job view; no extra round trip per call.
* Each model has its own buckets, cooldown and fair shares (``acquire(..., model=m)``), as the
  provider limits each model on its own: jobs on different models share a key, not a bucket.

A limit of 0 means "unlimited" for that bucket.

Keys, with P the prefix in a hash tag (``{csv-opener:ratelimit}`` for ``csv-opener:ratelimit``;
a prefix that already holds a tag, e.g. ``app:{rl}``, is used as it is) and B = ``P:m:<model>``
(``P`` itself when no model is given): ``B:requests`` and ``B:tokens`` (the buckets),
``B:cooldown_until``, ``B:limits`` (learned, a hash ``{rpm, tpm}``, -1 = the provider sends
none, and the rate controller's fields), ``B:active_accounts`` (a zset) and
``B:share:<account>:requests|tokens``. Every key a script touches travels in ``KEYS``, and
Redis Cluster hashes only the tag, so all of a limiter's keys share one hash slot and each script
runs on the node that owns it (no CROSSSLOT); a single Redis stores the same keys.

Modules: `limiter` (RateLimiter and its Lua scripts in lua/), `feedback` (what it learns from the
provider's answers and reports: observe, limits, calls_per_minute), `keys` (Redis key names),
`headers` (a provider's limit and remaining/reset headers and a request's token estimate).
"""

from chalicelib.generation.ratelimit.headers import (
    DIMENSIONS,
    estimate_tokens,
    exhausted,
    provider_limits,
    provider_remaining,
    retry_after_seconds,
    states_a_budget,
)
from chalicelib.generation.ratelimit.limiter import START_RPM, LimiterStopped, RateLimiter

__all__ = ["DIMENSIONS", "START_RPM", "LimiterStopped", "RateLimiter", "estimate_tokens", "exhausted",
           "provider_limits", "provider_remaining", "retry_after_seconds", "states_a_budget"]
