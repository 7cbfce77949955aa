"""``python -m tests.support.fake_openai``: the server as a separate process. The first stdout
line is the base URL (…/v1); it serves until SIGTERM/SIGINT, then prints the final stats as one
JSON line on stderr. Exit status 2 on a bad configuration."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence

from .config import MALFORMED_KINDS
from .server import FakeOpenAIServer


def _latency_arg(text: str) -> float | tuple[float, float]:
    for sep in (",", ":", ".."):
        if sep in text:
            lo, hi = text.split(sep, 1)
            return (float(lo), float(hi))
    return float(text)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.support.fake_openai",
        description="Fake OpenAI-compatible server. Prints the base URL as the first stdout line, "
        "serves until SIGTERM/SIGINT, then prints final stats as JSON on stderr.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = pick a free port (default)")
    p.add_argument("--latency-ms", type=_latency_arg, default=0.0, help="fixed ms, or MIN,MAX for uniform")
    p.add_argument("--latency-per-call-ms", type=float, default=0.0,
                   help="capacity-bound: ms added to each answer's latency per call in flight")
    p.add_argument("--rpm", type=int, default=0, help="requests per minute, 0 = unlimited")
    p.add_argument("--tpm", type=int, default=0, help="tokens per minute, 0 = unlimited")
    p.add_argument("--model-limits", type=_json_object, default={},
                   help='per-model rpm/tpm as JSON, e.g. \'{"gpt-4o": {"rpm": 300, "tpm": 30000}}\'')
    p.add_argument("--ratelimit-headers", action=argparse.BooleanOptionalAction, default=True,
                   help="send x-ratelimit-* headers (default); --no-ratelimit-headers: never")
    p.add_argument("--ratelimit-limit-headers", action=argparse.BooleanOptionalAction, default=True,
                   help="include x-ratelimit-limit-* (default); --no-ratelimit-limit-headers: only remaining/reset")
    p.add_argument("--rate-limit-mode", choices=("bucket", "window", "fixed"), default="bucket")
    p.add_argument("--burst-seconds", type=float, default=1.0)
    p.add_argument("--count-rejected", action=argparse.BooleanOptionalAction, default=True,
                   help="429-ed requests consume quota, as OpenAI's do (default); --no-count-rejected: they do not")
    p.add_argument("--insufficient-quota", action="store_true",
                   help="answer every chat request 429 insufficient_quota (billing exhausted)")
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--error-statuses", default="500,503", help="comma-separated, e.g. 500,502,503")
    p.add_argument("--hang-rate", type=float, default=0.0)
    p.add_argument("--hang-seconds", type=float, default=3600.0)
    p.add_argument("--malformed-rate", type=float, default=0.0)
    p.add_argument("--malformed-kinds", default=",".join(MALFORMED_KINDS))
    p.add_argument("--seed", type=int, default=0, help="RNG seed; -1 = nondeterministic")
    p.add_argument("--content", default=None, help="override the opener; {url} and {host} are substituted")
    p.add_argument("--api-key", default=None, help="require this bearer token")
    p.add_argument("--batch-delay-s", type=float, default=0.0, help="Batch API: seconds until a batch is done")
    p.add_argument("--batch-error-rate", type=float, default=0.0, help="Batch API: share of requests that fail")
    p.add_argument("--batch-expire-fraction", type=float, default=None,
                   help="Batch API: batches expire at --batch-delay-s with only this share done")
    p.add_argument("--batch-cancel-delay-s", type=float, default=0.0,
                   help="Batch API: seconds a cancelled batch stays cancelling")
    p.add_argument("--no-response-format", dest="response_format_supported", action="store_false",
                   help="refuse requests carrying response_format with a 400 naming it")
    p.add_argument("--no-prompt-cache-key", dest="prompt_cache_key_supported", action="store_false",
                   help="refuse requests carrying prompt_cache_key with a 400 naming it")
    p.add_argument("--max-tokens-honoured", action="store_true",
                   help="cut an answer off at the request's max_tokens (finish_reason length)")
    p.add_argument("--prompt-cache-min-tokens", type=int, default=1024,
                   help="shortest prompt prefix that is cached (tokens)")
    p.add_argument("--prompt-cache-ttl-s", type=float, default=300.0, help="seconds an unused prefix stays cached")
    p.add_argument("--misbehave", type=_json_object, default={},
                   help='bad first answers per row, e.g. \'{"invent": 0.1, "spam": ["acme.com"]}\'')
    p.add_argument("--misbehave-seed", type=int, default=0, help="salt of the hash choosing misbehaving URLs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        server = FakeOpenAIServer(
            args.host,
            args.port,
            latency_ms=args.latency_ms,
            latency_per_call_ms=args.latency_per_call_ms,
            rpm=args.rpm,
            tpm=args.tpm,
            model_limits=args.model_limits,
            ratelimit_headers=args.ratelimit_headers,
            ratelimit_limit_headers=args.ratelimit_limit_headers,
            rate_limit_mode=args.rate_limit_mode,
            burst_seconds=args.burst_seconds,
            count_rejected=args.count_rejected,
            insufficient_quota=args.insufficient_quota,
            error_rate=args.error_rate,
            error_statuses=[int(s) for s in args.error_statuses.split(",") if s.strip()],
            hang_rate=args.hang_rate,
            hang_seconds=args.hang_seconds,
            malformed_rate=args.malformed_rate,
            malformed_kinds=[k.strip() for k in args.malformed_kinds.split(",") if k.strip()],
            seed=None if args.seed == -1 else args.seed,
            content=args.content,
            api_key=args.api_key,
            batch_delay_s=args.batch_delay_s,
            batch_error_rate=args.batch_error_rate,
            batch_expire_fraction=args.batch_expire_fraction,
            batch_cancel_delay_s=args.batch_cancel_delay_s,
            response_format_supported=args.response_format_supported,
            prompt_cache_key_supported=args.prompt_cache_key_supported,
            max_tokens_honoured=args.max_tokens_honoured,
            prompt_cache_min_tokens=args.prompt_cache_min_tokens,
            prompt_cache_ttl_s=args.prompt_cache_ttl_s,
            misbehave=args.misbehave,
            misbehave_seed=args.misbehave_seed,
        )
    except ValueError as exc:
        print(f"fake_openai: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        await server.start()
        print(server.base_url, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.close()

    asyncio.run(run())
    print(json.dumps(server.stats()), file=sys.stderr, flush=True)
    return 0
