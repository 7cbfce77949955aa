"""Signed webhooks: when a job completes, fails or is canceled, its callback URL gets a POST of
`{"type": "job.completed" | "job.failed" | "job.canceled", "job": {...}}`, signed in the manner
of Stripe's: `X-CSV-Opener-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
under the account's webhook secret. Receivers check the HMAC and reject timestamps older than
five minutes (replays).

Deliveries are rows in `webhook_deliveries`, the queue: the first attempt happens when the job
changes status; a non-2xx answer or a timeout is retried with exponential backoff by the scheduled
sweep, for up to a day. A big job's `job.completed` is queued at completion but held
(`awaits_results`) until its results CSV, built in the background, exists: the build releases it
(`release`, only its own completion's), a failed build makes it due (`stop_holding`), a retry or
a regeneration of the job sends it at once as it was (`end_holds`), and the sweep sends it when its
hold ends whatever the build did. Every attempt first takes the delivery by one conditional update
(`claim`: the first attempt's, after a release, and the sweep's alike), so an event goes out once,
then again only after an attempt that failed, until delivered. Every attempt goes through the
SSRF-safe fetcher (public addresses only; https in the prod stage) and is signed afresh (a new
timestamp: a receiver refuses one older than five minutes, and a retry may come an hour later).

The sweep's share is bounded: a small pool of threads, a time budget it never starts an attempt
past, and a cap per account, so receivers that never answer (one tenant's, or many) cannot hold
the sweep or starve other tenants' deliveries. What is not attempted stays due for the next sweep.

The account's secret is stored sealed (chalicelib/outbound/sealing.py), never in the clear.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from chalicelib.errors import BadRequest
from chalicelib.logs import correlation_headers, get_logger
from chalicelib.outbound.sealing import PREFIX, SealingKeyError, SecretBox

log = get_logger("webhooks")

HEADER = "X-CSV-Opener-Signature"
TOLERANCE_S = 300
GIVE_UP_AFTER = timedelta(days=1)
FIRST_RETRY_S = 30
MAX_RETRY_S = 3600
MAX_URL_CHARS = 2048
EVENTS = {"completed": "job.completed", "failed": "job.failed", "canceled": "job.canceled"}
# The sweep's share (its Lambda has 60 s; requeue, exports, drops and batch polling need the rest).
SWEEP_WORKERS = 4  # attempts at once
SWEEP_BUDGET_S = 30.0  # no attempt starts that could end after this
SWEEP_LIMIT = 200  # deliveries looked at per sweep
SWEEP_PER_ACCOUNT = 20  # of which at most this many of one account
ATTEMPT_TIMEOUT_S = 5.0  # one attempt: connect, send, answer (the fetcher's deadline)
CLAIM_S = 120  # an attempt in flight is not due for this long (a crashed one comes back after it)
RESEAL_LIMIT = 500  # secrets resealed per sweep

Clock = Callable[[], datetime]
DELIVERY_COLUMNS = "id, job_id, event, url, body, attempts, created_at"


def utcnow() -> datetime:
    return datetime.now(UTC)



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
    """Seconds before the next attempt after `attempts` failed ones: 30, 60, 120, ... 3600."""
    return min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** max(0, attempts - 1))


def event_body(event: str, job_body: dict) -> str:
    return json.dumps({"type": event, "job": job_body}, separators=(",", ":"), default=str)


def enqueue(conn, job: dict, job_body: dict, *, due_in_s: float = 0.0, awaits_results: bool = False) -> dict | None:
    """Queue the delivery of the job's status change, if it has a callback URL: due in
    `due_in_s` (a held one, `awaits_results`, when its hold ends)."""
    event = EVENTS.get(job["status"])
    if not job.get("callback_url") or event is None:
        return None
    return conn.execute(
        f"""INSERT INTO webhook_deliveries (job_id, event, url, body, next_attempt_at, awaits_results)
            VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s), %s) RETURNING {DELIVERY_COLUMNS}""",
        (job["id"], event, job["callback_url"], event_body(event, job_body), due_in_s, awaits_results),
    ).fetchone()


def account_secret(conn, box: SecretBox, job_id) -> str | None:
    """The signing secret of the job's account, opened; a value still in the clear (from before
    encryption) or sealed with an older key is sealed again with the current key on the way."""
    row = conn.execute("SELECT a.id, a.webhook_secret FROM jobs j JOIN accounts a ON a.id = j.account_id "
                       "WHERE j.id = %s", (job_id,)).fetchone()
    if row is None or not row["webhook_secret"]:
        return None
    secret = box.open(row["webhook_secret"])
    if not box.is_current(row["webhook_secret"]):
        _reseal(conn, row["id"], row["webhook_secret"], box.seal(secret))
    return secret


def _reseal(conn, account_id, stored: str, sealed: str) -> bool:
    # Only over the value read: a rotation in between wins.
    return conn.execute("UPDATE accounts SET webhook_secret = %s WHERE id = %s AND webhook_secret = %s",
                        (sealed, account_id, stored)).rowcount == 1


def attempt(conn, fetcher, box: SecretBox, delivery: dict, *, now: Clock = utcnow,
            timeout_s: float | None = None) -> bool:
    """One attempt, signed at `now()`; records its outcome: delivered, or the next attempt's
    time, or given up (the next attempt would be more than a day after the event)."""
    secret = account_secret(conn, box, delivery["job_id"])
    body = delivery["body"].encode()
    headers = {"User-Agent": "CSVOpener-Webhooks/1.0", "X-CSV-Opener-Event": delivery["event"],
               "X-CSV-Opener-Delivery": str(delivery["id"]), **correlation_headers()}
    sent_at = now()
    if secret:
        headers[HEADER] = signature(secret, int(sent_at.timestamp()), body)
    result = fetcher.post_json(delivery["url"], body, headers, timeout_s=timeout_s)
    ok = result.status == "fetched" and result.http_status is not None and 200 <= result.http_status < 300
    attempts = delivery["attempts"] + 1
    if ok:
        conn.execute("""UPDATE webhook_deliveries SET attempts = %s, last_status = %s, last_error = NULL,
                               delivered_at = %s WHERE id = %s AND delivered_at IS NULL AND gave_up_at IS NULL""",
                     (attempts, result.http_status, sent_at, delivery["id"]))
        log.info("webhook delivered", extra={"job_id": str(delivery["job_id"]), "event": delivery["event"]})
        return True
    error = result.reason if result.http_status is None else f"HTTP {result.http_status}"
    next_at = sent_at + timedelta(seconds=retry_delay_s(attempts))
    gave_up = sent_at if next_at > delivery["created_at"] + GIVE_UP_AFTER else None
    conn.execute(
        """UPDATE webhook_deliveries SET attempts = %s, last_status = %s, last_error = %s, next_attempt_at = %s,
                  gave_up_at = %s
           WHERE id = %s AND delivered_at IS NULL AND gave_up_at IS NULL""",
        (attempts, result.http_status, error[:300], next_at, gave_up, delivery["id"]))
    log.warning("webhook delivery failed", extra={"job_id": str(delivery["job_id"]), "attempts": attempts,
                                                  "error": error[:300], "gave_up": gave_up is not None})
    return False


def due_deliveries(conn, limit: int, per_account: int) -> list[dict]:
    """Deliveries due now, at most `per_account` of any one account, taken in turns (each
    account's oldest first, then each one's second, ...) so one tenant's backlog of receivers
    that never answer does not hold the others' deliveries behind it."""
    return conn.execute(
        """SELECT id, job_id, event, url, body, attempts, created_at, account_id FROM (
               SELECT d.id, d.job_id, d.event, d.url, d.body, d.attempts, d.created_at, d.next_attempt_at,
                      j.account_id,
                      row_number() OVER (PARTITION BY j.account_id ORDER BY d.next_attempt_at, d.id) AS nth
               FROM webhook_deliveries d JOIN jobs j ON j.id = d.job_id
               WHERE d.delivered_at IS NULL AND d.gave_up_at IS NULL AND d.next_attempt_at <= now()) due
           WHERE nth <= %s ORDER BY nth, next_attempt_at, id LIMIT %s""", (per_account, limit)).fetchall()


def claim(conn, delivery_id, claim_s: int = CLAIM_S) -> dict | None:
    """Take one due delivery for an attempt (another sweep running at once gets None): it is
    not due again for `claim_s`, so an attempt that crashed is retried after that. A held one
    taken when its hold ended is held no more: a build finishing later does not send it again."""
    return conn.execute(
        f"""UPDATE webhook_deliveries SET next_attempt_at = now() + make_interval(secs => %s), awaits_results = false
            WHERE id = %s AND delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= now()
            RETURNING {DELIVERY_COLUMNS}""", (claim_s, delivery_id)).fetchone()


def deliver_due(get_conn, fetcher, box: SecretBox, *, budget_s: float = SWEEP_BUDGET_S,
                workers: int = SWEEP_WORKERS, limit: int = SWEEP_LIMIT, per_account: int = SWEEP_PER_ACCOUNT,
                attempt_timeout_s: float = ATTEMPT_TIMEOUT_S, now: Clock = utcnow) -> dict:
    """The sweep's part: attempt due deliveries, `workers` at a time, starting none that could
    end after `budget_s` (each is cut at `attempt_timeout_s`). Returns what it did, and the
    budget and attempt timeout it kept to; what it did not reach stays due, untouched."""
    report = {"due": 0, "attempted": 0, "delivered": 0, "failed": 0, "skipped": 0, "errors": 0,
              "budget_s": budget_s, "attempt_timeout_s": attempt_timeout_s, "workers": workers}
    ends_at = time.monotonic() + budget_s
    pending = list(due_deliveries(get_conn(), limit, per_account))
    report["due"] = len(pending)
    lock = threading.Lock()

    def take() -> dict | None:
        with lock:
            # Start nothing that could outlast the budget: the attempt's own deadline bounds it.
            if not pending or ends_at - time.monotonic() < attempt_timeout_s:
                return None
            report["attempted"] += 1
            return pending.pop(0)

    def work() -> None:
        conn = get_conn()  # this thread's connection
        while (candidate := take()) is not None:
            try:
                delivery = claim(conn, candidate["id"])
                if delivery is None:  # delivered, given up or taken since it was listed
                    outcome = "skipped"
                else:
                    outcome = "delivered" if attempt(conn, fetcher, box, delivery, now=now,
                                                     timeout_s=attempt_timeout_s) else "failed"
            except SealingKeyError:
                raise  # a configuration fault: the sweep reports it (the claim expires: nothing lost)
            except Exception:
                log.exception("webhook attempt failed", extra={"delivery_id": str(candidate["id"])})
                outcome = "errors"
            with lock:
                report[outcome] += 1

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="webhook") as pool:
        futures = [pool.submit(work) for _ in range(max(1, min(workers, len(pending))))]
    for future in futures:
        future.result()  # a SealingKeyError, raised again here
    report["left_due"] = len(pending)
    return report


def notify(conn, fetcher, box: Callable[[], SecretBox] | None, job: dict, job_body: dict, *,
           hold_s: float | None = None) -> None:
    """A job changed to completed, failed or canceled: queue its webhook and try it once now;
    with `hold_s`, a completion is held instead until its results CSV exists (`release`) or for
    at most `hold_s` (then the sweep sends it). Never raises: a receiver's trouble is the
    delivery's record, not the job's. The box is built after the delivery is queued, so a key
    fault (logged, loudly) leaves it due for the sweep."""
    try:
        if hold_s is not None and job["status"] == "completed":
            with conn.transaction():  # the job row first, then its deliveries (as `end_holds`)
                held = _still(conn, job)
                delivery = enqueue(conn, job, job_body, due_in_s=hold_s if held else 0, awaits_results=held)
            if held:
                if delivery is not None:
                    log.info("webhook held for the results CSV", extra={"job_id": str(job["id"]), "hold_s": hold_s})
                return
            # retried or regenerated since the completion: no build of it will release it, it goes now
        else:
            delivery = enqueue(conn, job, job_body)
        if delivery is not None and fetcher is not None and box is not None:
            _attempt_now(conn, fetcher, box, [delivery["id"]])
    except Exception:
        log.exception("could not queue or attempt a webhook", extra={"job_id": str(job.get("id"))})


def _still(conn, job: dict) -> bool:
    """Whether the job is still completed by the completion `job` was read at (a retry or a
    regeneration since moved it on), its row share-locked for the caller's transaction: a retry
    waits for it, and it for a retry (then it reads the job as the retry left it)."""
    return conn.execute("SELECT 1 FROM jobs WHERE id = %s AND status = 'completed' AND finished_at = %s FOR SHARE",
                        (job["id"], job["finished_at"])).fetchone() is not None


def _attempt_now(conn, fetcher, box: Callable[[], SecretBox], delivery_ids: list) -> None:
    """The first attempt of deliveries just made due, each taken by the sweep's own claim: a
    sweep that took one in between attempts it instead (once, either way). The box is opened
    first: a key fault leaves them due for the sweep."""
    opened = box()
    for delivery_id in delivery_ids:
        delivery = claim(conn, delivery_id)
        if delivery is not None:
            attempt(conn, fetcher, opened, delivery)


def send_now(conn, fetcher, box: Callable[[], SecretBox], delivery_ids: list) -> None:
    """`_attempt_now` for deliveries made due by a request (`end_holds`). Never raises: what is
    not sent is due for the sweep."""
    try:
        _attempt_now(conn, fetcher, box, delivery_ids)
    except Exception:
        log.exception("could not attempt a webhook", extra={"deliveries": [str(i) for i in delivery_ids]})


def release(conn, fetcher, box: Callable[[], SecretBox], job: dict, job_body: dict) -> int:
    """The completed job's results CSV exists: the `job.completed` held for this completion (queued
    after its `finished_at`; an earlier completion's is not this CSV's) is due now, its body as the
    job is now (with its `result_path`), and attempted once here (retries are the sweep's). Nothing
    is released for a job retried or regenerated since (`_still`): that ended the hold already.
    The hold ends in one conditional update, and the attempt takes the sweep's claim: a release
    and a sweep at once send it once. Never raises (what was released is due for the sweep).
    -> the deliveries released."""
    try:
        with conn.transaction():  # the job row first, then its deliveries (as `end_holds`)
            if not _still(conn, job):
                return 0
            released = conn.execute(
                """UPDATE webhook_deliveries SET awaits_results = false, body = %s, next_attempt_at = now()
                   WHERE job_id = %s AND event = 'job.completed' AND awaits_results AND created_at >= %s
                     AND delivered_at IS NULL AND gave_up_at IS NULL RETURNING id""",
                (event_body(EVENTS["completed"], job_body), job["id"], job["finished_at"])).fetchall()
        if released:
            log.info("held webhook released: the results CSV exists", extra={"job_id": str(job["id"])})
            _attempt_now(conn, fetcher, box, [row["id"] for row in released])
        return len(released)
    except Exception:
        log.exception("could not release a held webhook", extra={"job_id": str(job.get("id"))})
        return 0


def end_holds(conn, job_id) -> list:
    """The completed job is retried or regenerated: its held `job.completed` is due now, as it was
    (the completion it tells of happened; its results CSV will not be built: the job changes).
    Call in the transaction that changes the job's status, after its row is locked (lock order:
    the job row, then its deliveries), so a release or a held enqueue runs wholly before or after
    it. No release touches them after (`awaits_results` cleared). -> the deliveries made due."""
    return [row["id"] for row in conn.execute(
        """UPDATE webhook_deliveries SET awaits_results = false, next_attempt_at = least(next_attempt_at, now())
           WHERE job_id = %s AND awaits_results AND delivered_at IS NULL AND gave_up_at IS NULL RETURNING id""",
        (job_id,)).fetchall()]


def stop_holding(conn, job_id) -> int:
    """The build of the completed job's results CSV failed: its held `job.completed` is due now
    (the sweep sends it without waiting for a build that may fail again; a download then builds
    it). -> how many."""
    return conn.execute(
        """UPDATE webhook_deliveries SET next_attempt_at = least(next_attempt_at, now())
           WHERE job_id = %s AND awaits_results AND delivered_at IS NULL AND gave_up_at IS NULL""",
        (job_id,)).rowcount


def reseal_secrets(conn, box: SecretBox, limit: int = RESEAL_LIMIT) -> int:
    """Seal with the current key the secrets still in the clear (from before encryption) or
    sealed with an older key; the sweep's part of a key rotation. Returns how many."""
    rows = conn.execute(
        """SELECT id, webhook_secret FROM accounts
           WHERE webhook_secret IS NOT NULL AND NOT starts_with(webhook_secret, %s) ORDER BY id LIMIT %s""",
        (f"{PREFIX}{box.current_id}:", limit)).fetchall()
    return sum(_reseal(conn, row["id"], row["webhook_secret"], box.seal(box.open(row["webhook_secret"])))
               for row in rows)


def check_keys(conn, box: SecretBox) -> None:
    """At start: every key id the stored secrets name is configured, and the newest of each
    opens. Raises SealingKeyError otherwise (a wrong or missing key is found here, loudly, not
    by deliveries going out unsigned)."""
    rows = conn.execute(
        """SELECT DISTINCT ON (split_part(webhook_secret, ':', 2)) webhook_secret FROM accounts
           WHERE starts_with(webhook_secret, %s)
           ORDER BY split_part(webhook_secret, ':', 2), created_at DESC""", (PREFIX,)).fetchall()
    for row in rows:
        box.open(row["webhook_secret"])


def latest(conn, job_id) -> dict | None:
    row = conn.execute(
        """SELECT event, attempts, last_status, last_error, delivered_at, gave_up_at, next_attempt_at, awaits_results
           FROM webhook_deliveries WHERE job_id = %s ORDER BY created_at DESC LIMIT 1""", (job_id,)).fetchone()
    return row


def rotate_secret(conn, box: SecretBox, account_id: str) -> str:
    """A new signing secret for the account, stored sealed; the old one signs nothing more."""
    secret = new_secret()
    conn.execute("UPDATE accounts SET webhook_secret = %s WHERE id = %s", (box.seal(secret), account_id))
    return secret
