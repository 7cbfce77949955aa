"""A CSV dropped under incoming/{account_id}/ starts a job with default options; a drop that
starts nothing is moved aside with the reason."""

from __future__ import annotations

import uuid

from chalicelib.adapters import db
from chalicelib.adapters.queue import ChunkQueue
from chalicelib.adapters.storage import ObjectMissing, Storage
from chalicelib.errors import DomainError
from chalicelib.intake.uploads import (
    safe_file_name,
)
from chalicelib.jobs.start import start
from chalicelib.logs import get_logger
from chalicelib.settings import Settings

log = get_logger("jobs")



def drop_account(conn, key: str) -> tuple[str | None, str]:
    """`incoming/{account_id}/{name}.csv` -> (account id, "") or (None, why it starts nothing)."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "incoming" or not parts[2]:
        return None, "not in an account folder: drop files at incoming/{account_id}/{name}.csv"
    try:
        account_id = str(uuid.UUID(parts[1]))
    except ValueError:
        return None, f"'{parts[1][:100]}' is not an account id: drop files at incoming/{{account_id}}/{{name}}.csv"
    account = db.get_account(conn, account_id)
    if account is None:
        return None, f"no account with id {account_id}"
    if account["disabled_at"] is not None:
        return None, f"account {account_id} is disabled"
    return account_id, ""


def reject_drop(storage: Storage, key: str, reason: str) -> str:
    """Move a drop that starts nothing to rejected/ (same path) with a .reason.txt beside it."""
    target = "rejected/" + key.removeprefix("incoming/")
    storage.copy(key, target)
    storage.put_bytes(target + ".reason.txt", (reason + "\n").encode(), content_type="text/plain; charset=utf-8")
    storage.delete(key)
    log.warning("dropped file rejected", extra={"key": key, "moved_to": target, "reason": reason})
    return target


def start_from_drop(conn, storage: Storage, queue: ChunkQueue, settings: Settings, *, key: str,
                    version: str | None, etag: str | None = None) -> dict | None:
    """A CSV dropped under incoming/{account_id}/ -> a job of that account started with default
    options, as upload + process would. `version` (the event's sequencer or ETag) makes a repeated
    notification a no-op. A drop outside an account folder, or for an unknown or disabled account,
    is moved to rejected/ with the reason; a bad file becomes a failed job with the reason (never
    an exception, so no redelivery loop)."""
    account_id, why = drop_account(conn, key)
    if account_id is None:
        try:
            reject_drop(storage, key, why)
        except ObjectMissing:
            log.info("rejected drop already moved", extra={"key": key})
        return None
    name = safe_file_name(key.rsplit("/", 1)[-1])
    source_key = f"{storage.bucket}/{key}@{version or ''}"
    if etag is None:  # the event names the version it is about; without one, pin what is there now
        try:
            etag = storage.head(key)[1]
        except ObjectMissing:
            log.info("dropped file already gone", extra={"key": key})
            return None
    job = db.insert_job(conn, job_id=str(uuid.uuid4()), account_id=account_id, file_name=name, file_path=key,
                        source="s3", source_key=source_key, source_etag=etag)
    if job is None:  # a repeated notification: resume the job if its start never happened
        job = db.get_job_by_source_key(conn, source_key)
        if job is None or job["status"] != "pending":
            log.info("duplicate S3 notification ignored", extra={"key": key})
            return None
        log.info("resuming a dropped file's start", extra={"job_id": str(job["id"]), "key": key})
    return start_drop_job(conn, storage, queue, settings, job)


def start_drop_job(conn, storage: Storage, queue: ChunkQueue, settings: Settings, job: dict) -> dict | None:
    """Start a pending drop's job; a bad file (or a refused start) fails it with the reason."""
    try:
        return start(conn, storage, queue, settings, str(job["account_id"]), str(job["id"]))
    except DomainError as exc:
        log.warning("dropped file rejected", extra={"job_id": str(job["id"]), "key": job["file_path"],
                                                   "error": exc.message})
        db.fail_job(conn, job["id"], exc.message, expected="pending")
        return None
