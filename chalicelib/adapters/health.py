"""GET /health: real round trips to PostgreSQL, Redis, S3 and SQS, each timed."""

from __future__ import annotations

import time
from collections.abc import Callable

from chalicelib.logs import get_logger

log = get_logger("health")


def _timed(check: Callable[[], object]) -> dict:
    started = time.perf_counter()
    try:
        check()
        result: dict = {"ok": True}
    except Exception as exc:  # a health check reports every failure, whatever its type
        log.warning("health check failed", extra={"error": f"{type(exc).__name__}: {exc}"})
        result = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def run_checks(checks: dict[str, Callable[[], object]]) -> tuple[bool, dict]:
    """Run each check (in this thread: it owns the DB connection) -> (all ok, body)."""
    results = {name: _timed(check) for name, check in checks.items()}
    ok = all(r["ok"] for r in results.values())
    return ok, {"status": "ok" if ok else "error", "checks": results}
