"""Signed webhooks: when a job completes, fails or is canceled, its callback URL gets a POST of
`{"type": "job.completed" | "job.failed" | "job.canceled", "job": {...}}`, signed in the manner
of Stripe's: `X-CSV-Opener-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
under the account's webhook secret. Receivers check the HMAC and reject timestamps older than
five minutes (replays).

Deliveries are rows in `webhook_deliveries`, the queue: the first attempt happens when the job
changes status; a non-2xx answer or a timeout is retried with exponential backoff by the
scheduled sweep, for up to a day. Every attempt goes through the SSRF-safe fetcher (public
addresses only; https in the prod stage).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from datetime import timedelta
from urllib.parse import urlsplit

from chalicelib.errors import BadRequest
from chalicelib.logs import get_logger

log = get_logger("webhooks")

HEADER = "X-CSV-Opener-Signature"
TOLERANCE_S = 300
GIVE_UP_AFTER = timedelta(days=1)
FIRST_RETRY_S = 30
MAX_RETRY_S = 3600
MAX_URL_CHARS = 2048
EVENTS = {"completed": "job.completed", "failed": "job.failed", "canceled": "job.canceled"}


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The header value for `body` sent at `timestamp` (unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, now: float | None = None, tolerance_s: int = TOLERANCE_S) -> bool:
    """What a receiver does: the HMAC matches (constant time) and the timestamp is recent."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = signature(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def clean_callback_url(value: object, *, https_only: bool) -> str | None:
    """A job's callback URL as given to `process`: an absolute http(s) URL (https in prod)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_URL_CHARS or any(ord(c) < 33 or ord(c) == 127 for c in value):
        raise BadRequest(f"callback_url must be a URL of at most {MAX_URL_CHARS} characters", code="bad_callback_url")
    parts = urlsplit(value)
    allowed = ("https",) if https_only else ("http", "https")
    if parts.scheme not in allowed or not parts.hostname or parts.username or parts.password:
        raise BadRequest(f"callback_url must be an absolute {' or '.join(allowed)} URL without credentials",
                         code="bad_callback_url")
    return value


def retry_delay_s(attempts: int) -> int:
    return min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** max(0, attempts - 1))


def enqueue(conn, job: dict, job_body: dict) -> dict | None:
    """Queue the delivery of the job's status change, if it has a callback URL."""
    event = EVENTS.get(job["status"])
    if not job.get("callback_url") or event is None:
        return None
    body = json.dumps({"type": event, "job": job_body}, separators=(",", ":"), default=str)
    return conn.execute(
        """INSERT INTO webhook_deliveries (job_id, event, url, body) VALUES (%s, %s, %s, %s)
           RETURNING id, job_id, event, url, body, attempts, created_at""",
        (job["id"], event, job["callback_url"], body),
    ).fetchone()


def attempt(conn, fetcher, delivery: dict) -> bool:
    """One attempt; records its outcome (delivered, or the next attempt's time, or given up)."""
    secret_row = conn.execute(
        "SELECT a.webhook_secret FROM jobs j JOIN accounts a ON a.id = j.account_id WHERE j.id = %s",
        (delivery["job_id"],)).fetchone()
    secret = (secret_row or {}).get("webhook_secret")
    body = delivery["body"].encode()
    headers = {"User-Agent": "CSVOpener-Webhooks/1.0", "X-CSV-Opener-Event": delivery["event"],
               "X-CSV-Opener-Delivery": str(delivery["id"])}
    if secret:
        headers[HEADER] = signature(secret, int(time.time()), body)
    result = fetcher.post_json(delivery["url"], body, headers)
    ok = result.status == "fetched" and result.http_status is not None and 200 <= result.http_status < 300
    attempts = delivery["attempts"] + 1
    if ok:
        conn.execute("""UPDATE webhook_deliveries SET attempts = %s, last_status = %s, last_error = NULL,
                               delivered_at = now() WHERE id = %s AND delivered_at IS NULL""",
                     (attempts, result.http_status, delivery["id"]))
        log.info("webhook delivered", extra={"job_id": str(delivery["job_id"]), "event": delivery["event"]})
        return True
    error = result.reason if result.http_status is None else f"HTTP {result.http_status}"
    conn.execute(
        """UPDATE webhook_deliveries SET attempts = %(n)s, last_status = %(status)s, last_error = %(error)s,
                  next_attempt_at = now() + make_interval(secs => %(delay)s),
                  gave_up_at = CASE WHEN now() + make_interval(secs => %(delay)s) > created_at + %(limit)s
                                    THEN now() END
           WHERE id = %(id)s AND delivered_at IS NULL""",
        {"n": attempts, "status": result.http_status, "error": error[:300], "delay": retry_delay_s(attempts),
         "limit": GIVE_UP_AFTER, "id": delivery["id"]})
    log.warning("webhook delivery failed", extra={"job_id": str(delivery["job_id"]), "attempts": attempts,
                                                  "error": error[:300]})
    return False


def deliver_due(conn, fetcher, limit: int = 50) -> int:
    """The sweep's part: attempt the deliveries that are due; returns how many were delivered."""
    due = conn.execute(
        """SELECT id, job_id, event, url, body, attempts, created_at FROM webhook_deliveries
           WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= now()
           ORDER BY next_attempt_at LIMIT %s""", (limit,)).fetchall()
    return sum(attempt(conn, fetcher, d) for d in due)


def notify(conn, fetcher, job: dict, job_body: dict) -> None:
    """A job changed to completed, failed or canceled: queue its webhook and try it once now.
    Never raises: a receiver's trouble is the delivery's record, not the job's."""
    try:
        delivery = enqueue(conn, job, job_body)
        if delivery is not None and fetcher is not None:
            attempt(conn, fetcher, delivery)
    except Exception:
        log.exception("could not queue or attempt a webhook", extra={"job_id": str(job.get("id"))})


def latest(conn, job_id) -> dict | None:
    row = conn.execute(
        """SELECT event, attempts, last_status, last_error, delivered_at, gave_up_at, next_attempt_at
           FROM webhook_deliveries WHERE job_id = %s ORDER BY created_at DESC LIMIT 1""", (job_id,)).fetchone()
    return row


def rotate_secret(conn, account_id: str) -> str:
    secret = new_secret()
    conn.execute("UPDATE accounts SET webhook_secret = %s WHERE id = %s", (secret, account_id))
    return secret
