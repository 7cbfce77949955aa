"""Presigned uploads of big files as S3 multipart uploads: the parts to PUT (each URL signed for
its part's exact length), which parts S3 already holds (to resume), and the complete step.

The bound the caller cannot exceed: a declared size above `max_file_size` is refused before
anything is created (`create.clean_size`); every part URL is signed for its exact length, so
the parts cannot add up to more than was declared; complete checks that every part is there
whole before joining them, and checks the joined object's real size (HEAD) afterwards. A
refused upload leaves nothing behind: the multipart upload is aborted (its parts dropped) or
the joined object deleted, and the job fails with the reason.

The job keeps the S3 upload id while parts are being PUT (`jobs.upload_id`, NULL once it is
completed or aborted), so a second complete, or an abort after a complete, is harmless.
"""

from __future__ import annotations

from chalicelib.adapters import db
from chalicelib.adapters.storage import BadParts, ObjectMissing, Storage, UploadMissing
from chalicelib.errors import BadRequest, Conflict, DomainError, TooLarge
from chalicelib.intake import csvfile
from chalicelib.jobs.views import job_json, require_job
from chalicelib.logs import get_logger
from chalicelib.settings import MIN_PART_SIZE, Settings

log = get_logger("jobs")

MAX_PARTS = 10_000  # S3's most parts in one upload
MiB = 1024 * 1024
ETAG_MAX = 128


def part_size_for(size: int, preferred: int) -> int:
    """Bytes per part: `preferred` (at least S3's 5 MiB), more when the file would otherwise need
    more than 10,000 parts (rounded up to whole MiB)."""
    needed = -(-size // MAX_PARTS)
    return max(preferred, MIN_PART_SIZE, -(-needed // MiB) * MiB)


def part_sizes(size: int, part_size: int) -> list[int]:
    """The length of every part, in order: all `part_size` but the last."""
    count = -(-size // part_size)
    return [part_size] * (count - 1) + [size - part_size * (count - 1)]


def parts_answer(storage: Storage, settings: Settings, job: dict, numbers: list[int] | None = None) -> dict:
    """What a client needs to PUT parts of the job's upload: a presigned URL per part (all, or
    the `numbers` given), the part size, and how to complete it."""
    sizes = part_sizes(job["upload_size"], job["upload_part_size"])
    wanted = range(1, len(sizes) + 1) if numbers is None else numbers
    job_id = str(job["id"])
    return {
        "job": job_json(job),
        "method": "PUT",
        "part_size": job["upload_part_size"],
        "part_count": len(sizes),
        "parts": [{"number": n, "size": sizes[n - 1],
                   "url": storage.presigned_part(job["file_path"], job["upload_id"], n, sizes[n - 1],
                                                 settings.presign_expires_s)} for n in wanted],
        "expires_in": settings.presign_expires_s,
        "complete": {"method": "POST", "url": "/api/upload/complete", "body": {"job_id": job_id}},
        "parts_url": f"/api/upload/{job_id}/parts",
    }


def multipart_job(conn, storage: Storage, account_id: str, job_id: str) -> dict:
    """The caller's job with a multipart upload; one no longer pending (canceled, failed) has its
    upload aborted if a failed abort left it open."""
    job = require_job(conn, account_id, job_id)
    if job["upload_part_size"] is None:
        raise Conflict("This job's file is not a multipart upload: PUT the whole file to the upload_url "
                       "POST /api/upload/url answered, then POST /api/upload/process", code="not_multipart")
    if job["status"] != "pending" and job["upload_id"] is not None:
        abort(conn, storage, job)
        job = {**job, "upload_id": None}
    return job


def uploaded_parts(conn, storage: Storage, settings: Settings, account_id: str, job_id: str) -> dict:
    """GET /api/upload/{job_id}/parts: the parts S3 holds whole, and fresh URLs for the others (to
    resume an upload after a dropped connection, or once its first URLs expired)."""
    job = multipart_job(conn, storage, account_id, job_id)
    if job["upload_id"] is None:
        return _finished(storage, job)
    try:
        held = storage.list_parts(job["file_path"], job["upload_id"])
    except UploadMissing:
        return _finished(storage, db.get_job(conn, job["id"]))
    whole, missing = _sort_parts(job, held)
    return {**parts_answer(storage, settings, job, missing), "uploaded": whole, "completed": False}


def _sort_parts(job: dict, held: list[dict]) -> tuple[list[dict], list[int]]:
    """(the parts S3 holds whole, the numbers of the others)."""
    sizes = part_sizes(job["upload_size"], job["upload_part_size"])
    by_number = {part["number"]: part for part in held}
    whole = [by_number[n] for n in range(1, len(sizes) + 1)
             if n in by_number and by_number[n]["size"] == sizes[n - 1]]
    done = {part["number"] for part in whole}
    return whole, [n for n in range(1, len(sizes) + 1) if n not in done]


def _finished(storage: Storage, job: dict) -> dict:
    """The answer for an upload that is no longer open: completed (the object is there) or not."""
    if job["status"] in ("failed", "canceled") or not storage.exists(job["file_path"]):
        raise Conflict("This upload is no longer open (it was refused, canceled or expired); start again with "
                       "POST /api/upload/url" + (f". Reason: {job['error']}" if job["error"] else ""),
                       code="upload_closed")
    return {"job": job_json(job), "completed": True, "parts": [], "uploaded": []}


def complete(conn, storage: Storage, settings: Settings, account_id: str, job_id: str, parts: object) -> dict:
    """POST /api/upload/complete: join the parts into the file. Every part must be there whole;
    the joined file is checked against the bound (refused: deleted, job failed). Completing an
    upload already completed answers the same."""
    job = multipart_job(conn, storage, account_id, job_id)
    if job["upload_id"] is None:
        return _finished(storage, job)
    sizes = part_sizes(job["upload_size"], job["upload_part_size"])
    given = clean_parts(parts, len(sizes))
    key, upload_id = job["file_path"], job["upload_id"]
    if job["upload_size"] > settings.max_file_size:  # the bound dropped since the URLs were signed
        refuse(conn, storage, job, TooLarge(f"The file is {job['upload_size']:,} bytes; the limit is "
                                            f"{settings.max_file_size:,} bytes per file"))
    try:
        held = storage.list_parts(key, upload_id)
        _whole, missing = _sort_parts(job, held)
        if missing:
            shown = ", ".join(str(n) for n in missing[:20]) + (" …" if len(missing) > 20 else "")
            raise BadRequest(f"{len(missing)} of {len(sizes)} parts are not uploaded whole yet (parts {shown}); "
                             f"GET /api/upload/{job['id']}/parts gives fresh URLs for them, PUT them, then "
                             "complete again", code="missing_parts")
        storage.complete_multipart(key, upload_id, given)
    except UploadMissing:  # completed (or aborted) by a call that raced this one
        return _finished(storage, db.get_job(conn, job["id"]))
    except BadParts as exc:
        raise BadRequest(f"The parts could not be joined: {exc}. Send every part's number with the ETag its PUT "
                         f"answered (GET /api/upload/{job['id']}/parts lists the parts stored)",
                         code="bad_parts") from None
    db.clear_upload_id(conn, job["id"], upload_id)
    size, _etag = storage.head(key)
    if size > settings.max_file_size or size != job["upload_size"]:
        refuse(conn, storage, {**job, "upload_id": None},
               TooLarge(f"The uploaded file is {size:,} bytes; the limit is {settings.max_file_size:,} bytes per file")
               if size > settings.max_file_size else
               BadRequest(f"The uploaded file is {size:,} bytes, not the {job['upload_size']:,} declared; "
                          "upload it again", code="size_mismatch"))
    log.info("multipart upload completed", extra={"job_id": str(job["id"]), "bytes": size, "parts": len(sizes)})
    return {"job": job_json(db.get_job(conn, job["id"])), "completed": True, "size": size,
            **sample_choice(storage, key, job["url_column"])}


def clean_parts(value: object, count: int) -> list[dict]:
    """The complete call's parts: every number 1..count once, each with the ETag its PUT gave."""
    example = 'e.g. {"job_id": "…", "parts": [{"number": 1, "etag": "\\"9b2cf…\\""}, …]}'
    if not isinstance(value, list) or len(value) != count:
        raise BadRequest(f"parts is required: a list of the {count} parts, each {{\"number\", \"etag\"}}; {example}",
                         code="bad_parts")
    parts: dict[int, str] = {}
    for item in value:
        number = item.get("number") if isinstance(item, dict) else None
        etag = item.get("etag") if isinstance(item, dict) else None
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= count or number in parts:
            raise BadRequest(f"Each part needs a distinct number from 1 to {count}; {example}", code="bad_parts")
        if (not isinstance(etag, str) or not 1 <= len(etag) <= ETAG_MAX or not etag.isascii()
                or not etag.isprintable()):
            raise BadRequest(f"Part {number} needs the ETag its PUT answered (printable ASCII, at most {ETAG_MAX} "
                             "characters)", code="bad_parts")
        parts[number] = etag
    return [{"number": n, "etag": parts[n]} for n in sorted(parts)]


def refuse(conn, storage: Storage, job: dict, error: DomainError) -> None:
    """Leave nothing behind: abort the upload (dropping its parts) or delete the joined file, fail
    the job with the reason, and raise `error`."""
    abort(conn, storage, job)
    try:
        storage.delete(job["file_path"])
    except Exception:
        log.exception("could not delete a refused upload", extra={"key": job["file_path"]})
    db.fail_job(conn, job["id"], error.message, expected="pending")
    raise error


def abort(conn, storage: Storage, job: dict) -> None:
    """Abort the job's open multipart upload, if it has one (a canceled or refused job)."""
    if job.get("upload_id"):
        storage.abort_multipart(job["file_path"], job["upload_id"])
        db.clear_upload_id(conn, job["id"], job["upload_id"])


def sample_choice(storage: Storage, key: str, url_column: str | None) -> dict:
    """The columns and URL column the file's first bytes show (the whole file is validated by
    process); {} when they cannot be read (process then says why)."""
    try:
        layout = csvfile.detect_layout(storage.read_head(key, csvfile.SAMPLE_SIZE), url_column)
    except (csvfile.CsvError, ObjectMissing):
        return {}
    return {"columns": list(layout.columns), "url_column": layout.url_column,
            "url_choice": csvfile.url_choice(layout)}
