"""From an upload to a pending job: validate the CSV, store the original in S3, create the
row; a presigned upload is validated when it is processed. Also how a job reads its stored file.

A presigned upload is bounded three ways, since the bucket takes the bytes without us: the URL
is signed for the exact size the caller declared (S3 refuses a longer body), an account holds
at most `account_max_pending` such jobs not yet processed, and a stored file that fails
validation is deleted with its job failed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import asdict

from chalicelib.adapters import db
from chalicelib.adapters.storage import ObjectChanged, ObjectMissing, Storage
from chalicelib.errors import BadRequest, Conflict, DomainError, Gone, RateLimited
from chalicelib.intake import csvfile
from chalicelib.intake.uploads import (
    check_file_type,
    check_size,
    clean_file_name,
    clean_url_column,
    safe_file_name,
)
from chalicelib.jobs.multipart import part_size_for, parts_answer
from chalicelib.jobs.views import job_json, require_job
from chalicelib.logs import get_logger
from chalicelib.settings import Settings

log = get_logger("jobs")



def upload_key(account_id: str, job_id: str, file_name: str) -> str:
    return f"uploads/{account_id}/{job_id}/{safe_file_name(file_name)}"


def create_from_upload(conn, storage: Storage, *, account_id: str, file_name: str, data: bytes,
                       url_column: str | None) -> dict:
    """Validate the CSV, store the original in S3, create the pending job. -> 201 body."""
    try:
        summary = csvfile.summarize([data], url_column)
    except csvfile.CsvError as exc:
        raise csv_error(exc) from None
    job_id = str(uuid.uuid4())
    key = upload_key(account_id, job_id, file_name)
    etag = storage.put_bytes(key, data)
    try:
        job = db.insert_job(conn, job_id=job_id, account_id=account_id, file_name=file_name, file_path=key,
                            source="upload", source_etag=etag, **summary_fields(summary))
    except Exception:
        storage.delete(key)  # no orphan object for a job that does not exist
        raise
    log.info("upload stored", extra={"job_id": job_id, "total_rows": summary.total_rows,
                                     "invalid_rows": summary.invalid_rows, "bytes": len(data)})
    return upload_body(job, summary)


def summary_fields(summary: csvfile.Summary) -> dict:
    """What validation learned about a file, as job columns."""
    return {"layout": asdict(summary.layout), "columns": list(summary.layout.columns),
            "url_column": summary.layout.url_column, "total_rows": summary.total_rows,
            "invalid_rows": summary.invalid_rows, "errors": summary.errors}


def upload_body(job: dict, summary: csvfile.Summary) -> dict:
    return {
        "job": job_json(job),
        "url_column": summary.layout.url_column,
        "url_choice": csvfile.url_choice(summary.layout),
        "columns": list(summary.layout.columns),
        "total_rows": summary.total_rows,
        "invalid_rows": summary.invalid_rows,
        "errors": summary.errors,
    }


def create_presigned_upload(conn, storage: Storage, settings: Settings, *, account_id: str, file_name: object,
                            size: object, url_column: object = None) -> dict:
    """A pending job plus a PUT URL for exactly `size` bytes; the file is validated by `start`."""
    name = clean_file_name(file_name)
    url_column = clean_url_column(url_column)
    check_file_type(name, "text/csv")
    size = clean_size(size, settings.max_file_size)
    job_id = str(uuid.uuid4())
    key = upload_key(account_id, job_id, name)
    multipart = size > settings.multipart_threshold  # parts PUT in parallel, retried one by one
    upload_id = storage.create_multipart(key) if multipart else None
    try:
        with conn.transaction():
            db.lock_account(conn, account_id)  # concurrent requests of one account count one at a time
            pending = db.pending_presigned(conn, account_id)
            if settings.account_max_pending and pending >= settings.account_max_pending:
                raise RateLimited(
                    f"This account has {pending} presigned uploads not yet processed, its limit; call "
                    "/api/upload/process for them (or cancel the ones you do not need), then ask again",
                    code="too_many_pending")
            job = db.insert_job(conn, job_id=job_id, account_id=account_id, file_name=name, file_path=key,
                                source="presigned", url_column=url_column or None, upload_id=upload_id,
                                upload_size=size if multipart else None,
                                upload_part_size=part_size_for(size, settings.multipart_part_size)
                                if multipart else None)
    except Exception:
        if upload_id is not None:  # no open upload for a job that does not exist
            storage.abort_multipart(key, upload_id)
        raise
    if multipart:
        return parts_answer(storage, settings, job)
    return {"job": job_json(job), "upload_url": storage.presigned_put(key, size, settings.presign_expires_s),
            "method": "PUT", "headers": {"Content-Type": "text/csv"}}  # the length is the body's own


def choose_url_column(conn, storage: Storage, account_id: str, job_id: str, url_column: object) -> None:
    """`url_column` on process: the caller re-chooses the URL column of a pending job (one of the
    alternatives the upload answered). A file not validated yet (a presigned upload) is validated
    with it when it starts; a validated one is checked again now. A name the file does not have,
    or a column without valid URLs, is a 400 that leaves the job as it was."""
    wanted = clean_url_column(url_column)
    job = require_job(conn, account_id, job_id)
    if wanted is None or job["status"] != "pending":
        return  # start answers a job that is not pending with its 409
    if job["layout"] is None:
        db.update_pending_job(conn, job["id"], url_column=wanted)
        return
    if wanted == job["url_column"]:
        return
    try:
        summary = csvfile.summarize(read_source(storage, job), wanted)
    except csvfile.CsvError as exc:
        raise csv_error(exc) from None
    db.update_pending_job(conn, job["id"], **summary_fields(summary))


def clean_size(value: object, max_size: int) -> int:
    """The declared size of a presigned upload: a whole number of bytes, 1..max_size."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"size is required: the file's length in bytes, a whole number from 1 to {max_size:,}, "
                         'e.g. {"file_name": "leads.csv", "size": 52428800}', code="bad_size")
    check_size(value, max_size)
    return value


def validate_stored(conn, storage: Storage, settings: Settings, job: dict) -> dict:
    """Validate a presigned upload as /api/upload would; a bad file fails the job with the reason."""
    try:
        size, etag = storage.head(job["file_path"])
    except ObjectMissing:
        if job["upload_id"] is not None:
            raise BadRequest("The file's multipart upload is not completed yet; PUT every part, then POST "
                             "/api/upload/complete with their ETags", code="file_not_uploaded") from None
        raise BadRequest("The file has not been uploaded yet; PUT it to upload_url first",
                         code="file_not_uploaded") from None
    try:
        check_size(size, settings.max_file_size)  # before reading (a URL signed before MAX_FILE_SIZE dropped)
        summary = csvfile.summarize(read_source(storage, {**job, "source_etag": etag}), job["url_column"])
    except csvfile.CsvError as exc:
        error = csv_error(exc)
    except DomainError as exc:
        error = exc
    else:  # from now on the job reads exactly this version of the file
        return db.update_job(conn, job["id"], source_etag=etag, **summary_fields(summary))
    if db.fail_job(conn, job["id"], error.message, expected="pending") is not None:
        delete_refused(storage, job["file_path"])
    raise error


def delete_refused(storage: Storage, key: str) -> None:
    """A refused file goes (it would only take space until the retention period); the failed job
    keeps the reason. A failed delete is logged: the lifecycle rule removes the object later."""
    try:
        storage.delete(key)
    except Exception:
        log.exception("could not delete a refused upload", extra={"key": key})


def csv_error(exc: csvfile.CsvError) -> DomainError:
    return DomainError(exc.message, code=exc.code, status=exc.status)


def layout_of(job: dict) -> csvfile.Layout:
    data = dict(job["layout"])
    data["columns"] = tuple(data["columns"])
    data["url_alternatives"] = tuple(data.get("url_alternatives") or ())
    return csvfile.Layout(**data)


def read_source(storage: Storage, job: dict) -> Iterator[bytes]:
    """The job's file, exactly the version it validated (its ETag), as chunks of bytes."""
    try:
        yield from storage.iter_chunks(job["file_path"], job["source_etag"])
    except ObjectChanged:
        raise Conflict("The file was replaced after it was validated, so its rows no longer match this job; "
                       "upload the new file as a new job", code="source_changed") from None
    except ObjectMissing:
        raise Gone("The uploaded file is no longer stored (deleted, or past the retention period); "
                   "GET /api/jobs/{id}/results still lists every opener", code="source_gone") from None
