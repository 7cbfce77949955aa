"""Review before sending (SPEC): one result with its history, a person's edit or review mark
(with a version or If-Unmodified-Since precondition), and review marks in bulk.

A person's opener is checked like a model's for what its text alone tells (word limits, spam,
language) and flagged ``edited``; the job's quality counters move with it. Only a completed
row's opener can be edited; a row being regenerated refuses any change (409 ``regenerating``).
A row with variants may have one picked instead (``{"variant": i}``, ``picks``: not an edit).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from chalicelib.adapters.db import review as store
from chalicelib.errors import BadRequest, Conflict, NotFound
from chalicelib.jobs.options import URL_STATUSES, check_status, clean_text
from chalicelib.jobs.views import check_quality, iso, require_job
from chalicelib.logs import get_logger
from chalicelib.quality import flags as quality_flags
from chalicelib.review.picks import check_variant, move_grounding, pick_changes

log = get_logger("review")

MAX_OPENER = 600
MAX_IDS = 1000
REVIEW_FILTERS = ("approved", "rejected", "none")
EDIT_FIELDS = {"opener", "review", "version", "variant"}


def result_json(row: dict) -> dict:
    """A result row as the API shows it (GET results, the single result, an edit's answer)."""
    shown = {k: v for k, v in row.items()
             if k not in ("chunk", "no_reuse", "opener_at", "finished_at", "opener_source")}
    return {**shown, "id": str(row["id"]), "updated_at": iso(row["updated_at"]), "edited": bool(row["edited"])}


def result_uuid(value: str | None) -> str:
    """The result id of a path; anything that is not a UUID is an unknown result (404)."""
    try:
        if not str(value).isascii():  # uuid.UUID reads other scripts' digits too
            raise ValueError(value)
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise NotFound(f"No result with id '{value}'", code="not_found") from None


def require_result(conn, job: dict, result_id: str, *, lock: bool = False) -> dict:
    """The job's row `result_id`; another job's or account's row is exactly an unknown one."""
    row = store.get_result(conn, job["id"], result_uuid(result_id), lock=lock)
    if row is None:
        raise NotFound(f"No result with id '{result_id}' in this job", code="not_found")
    return row


def get_result(conn, account_id: str, job_id: str, result_id: str) -> dict:
    """The row with `history`: its earlier openers, then the current one, oldest first."""
    job = require_job(conn, account_id, job_id)
    row = require_result(conn, job, result_id)
    entries = [{"opener": h["opener"], "at": iso(h["at"]), "source": h["source"]}
               for h in store.history(conn, row["id"])]
    if row["opener"] is not None:
        entries.append({"opener": row["opener"], "at": iso(row["opener_at"] or row["finished_at"] or row["updated_at"]),
                        "source": row.get("opener_source") or ("person" if row["edited"] else "model")})
    return {"result": {**result_json(row), "history": entries}}


def check_review(value: object) -> str | None:
    if value is not None and value not in store.REVIEWS:
        raise BadRequest("review must be \"approved\", \"rejected\" or null", code="bad_review")
    return value


def check_version(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**31 - 1:
        raise BadRequest("version must be a whole number, the result's version as last read", code="bad_version")
    return value


def unmodified_since(header: str | None) -> datetime | None:
    """The If-Unmodified-Since header as a UTC time (an HTTP date), or None when absent."""
    if header is None or header.strip() == "":
        return None
    try:
        value = parsedate_to_datetime(header.strip())
    except (TypeError, ValueError, IndexError):
        value = None
    if value is None or value.tzinfo is None:
        raise BadRequest("If-Unmodified-Since must be an HTTP date such as 'Wed, 02 Dec 2026 10:00:00 GMT'",
                         code="bad_precondition")
    return value.astimezone(UTC)


def edit(conn, account_id: str, job_id: str, result_id: str, body: dict,
         if_unmodified_since: str | None = None) -> dict:
    """PATCH a result: a person's opener and/or review mark, if the row is still as the caller
    read it (`version`, or If-Unmodified-Since to the second). -> {"result"}."""
    unknown = sorted(set(body) - EDIT_FIELDS)
    if unknown:
        raise BadRequest(f"Unknown field(s): {', '.join(unknown)}; an edit takes opener, variant, review and "
                         "version", code="unknown_field")
    if "opener" not in body and "review" not in body and "variant" not in body:
        raise BadRequest("Nothing to change: give opener, variant and/or review", code="nothing_to_change")
    if "opener" in body and "variant" in body:
        raise BadRequest("Give either opener (your own text) or variant (one of the row's variants), not both",
                         code="opener_and_variant")
    variant = check_variant(body["variant"]) if "variant" in body else None
    opener = None
    if "opener" in body:
        opener = clean_text(body["opener"], "opener", MAX_OPENER)
        if opener is None:
            raise BadRequest("opener must be a non-empty string", code="bad_opener")
    review = check_review(body.get("review"))
    version = check_version(body.get("version"))
    since = unmodified_since(if_unmodified_since)
    job = require_job(conn, account_id, job_id)
    with conn.transaction():  # one lock order everywhere: the URL row, then the job row
        row = require_result(conn, job, result_id, lock=True)
        if row["status"] in ("pending", "processing") and row["no_reuse"]:
            raise Conflict("This result is being regenerated; edit it once its new opener is written",
                           code="regenerating")
        stale = (version is not None and version != row["version"]) or (
            since is not None and row["updated_at"].replace(microsecond=0) > since)
        if stale:
            raise Conflict(f"This result changed since you read it (now version {row['version']}); reload it and "
                           "edit again", code="stale_version")
        if (opener is not None or variant is not None) and row["status"] != "completed":
            raise Conflict(f"This result is {row['status']}; only a completed result's opener can be edited",
                           code="not_editable")
        changes: dict = {}
        if "review" in body and review != row["review"]:
            changes["review"] = review
        if opener is not None and opener != row["opener"]:
            checked = quality_flags.check(opener, language=row["language"], min_words=job["min_words"],
                                          max_words=job["max_words"])
            changes.update(opener=opener, quality=[*checked.flags, quality_flags.EDITED], words=checked.words)
        if variant is not None:
            changes.update(pick_changes(row, variant))
        if not changes:
            return {"result": result_json(row)}
        update = store.pick_variant if "variant" in changes else store.update_result
        updated = update(conn, row["id"], row["version"], **changes)
        if "opener" in changes or "variant" in changes:
            counters = store.lock_job_quality(conn, job["id"])
            moved = move_counts(counters, row["quality"], row["words"], changes["quality"], changes["words"])
            if "grounding" in changes:
                moved = move_grounding(moved, row["grounding"], changes["grounding"])
            store.set_job_quality(conn, job["id"], moved, drop_results=job["status"] == "completed")
        else:
            store.touch_job(conn, job["id"])
    log.info("result edited", extra={"job_id": str(job["id"]), "result_id": str(row["id"]),
                                     "fields": sorted(changes)})
    return {"result": result_json(updated)}


def move_counts(counters: dict, old_flags, old_words, new_flags, new_words) -> dict:
    """The job's quality counters (sql/0012_quality.sql) with one row's flags and words replaced."""
    flagged = dict(counters.get("flagged") or {})
    words = dict(counters.get("words") or {})
    for flag in old_flags or ():
        flagged[flag] = int(flagged.get(flag, 0)) - 1
    for flag in new_flags:
        flagged[flag] = int(flagged.get(flag, 0)) + 1
    if old_words is not None:
        words[str(old_words)] = int(words.get(str(old_words), 0)) - 1
    words[str(new_words)] = int(words.get(str(new_words), 0)) + 1
    return {**counters, "flagged": {k: v for k, v in flagged.items() if v},
            "words": {k: v for k, v in words.items() if v}}


def selection(body: dict) -> tuple[list[str] | None, dict]:
    """(result ids, or None) and the filter {"quality", "status", "review"} of a bulk request:
    exactly one of `result_ids` and `filter`."""
    has_ids, has_filter = "result_ids" in body, "filter" in body
    if has_ids == has_filter:
        raise BadRequest("Give either result_ids (a list of result ids) or filter (an object)", code="bad_selection")
    if has_ids:
        ids = body["result_ids"]
        if not isinstance(ids, list) or not ids or len(ids) > MAX_IDS:
            raise BadRequest(f"result_ids must be a list of 1 to {MAX_IDS} result ids", code="bad_result_ids")
        if not all(isinstance(i, str) and i.isascii() for i in ids):
            raise BadRequest("result_ids must hold result ids (UUIDs)", code="bad_result_ids")
        try:
            return sorted({str(uuid.UUID(i)) for i in ids}), {}
        except ValueError:
            raise BadRequest("result_ids must hold result ids (UUIDs)", code="bad_result_ids") from None
    filters = body["filter"]
    if not isinstance(filters, dict):
        raise BadRequest("filter must be an object with quality, status and/or review", code="bad_filter")
    unknown = sorted(set(filters) - {"quality", "status", "review"})
    if unknown:
        raise BadRequest(f"Unknown filter field(s): {', '.join(unknown)}", code="bad_filter")
    for name in ("quality", "status", "review"):
        if filters.get(name) is not None and not isinstance(filters[name], str):
            raise BadRequest(f"filter.{name} must be a string", code="bad_filter")
    return None, {"quality": check_quality(filters.get("quality")),
                  "status": check_status(filters.get("status"), URL_STATUSES),
                  "review": check_review_filter(filters.get("review"))}


def check_review_filter(value: str | None) -> str | None:
    if value and value not in REVIEW_FILTERS:
        raise BadRequest("review must be one of approved, rejected, none", code="bad_review")
    return value or None


def require_rows(conn, job: dict, ids: list[str] | None) -> None:
    """Every id named is one of the job's rows (404 otherwise, as for a single unknown id)."""
    if ids is not None and store.count_job_rows(conn, job["id"], ids) != len(ids):
        raise NotFound("Some of result_ids are not results of this job", code="not_found")


def review_results(conn, account_id: str, job_id: str, body: dict) -> dict:
    """POST review: the mark of the completed rows named or matching the filter (rows being
    regenerated are not completed, so left alone). -> {"reviewed": rows whose mark changed}."""
    unknown = sorted(set(body) - {"result_ids", "filter", "review"})
    if unknown:
        raise BadRequest(f"Unknown field(s): {', '.join(unknown)}", code="unknown_field")
    if "review" not in body:
        raise BadRequest("review is required: \"approved\", \"rejected\" or null", code="bad_review")
    mark = check_review(body["review"])
    ids, filters = selection(body)
    job = require_job(conn, account_id, job_id)
    with conn.transaction():
        require_rows(conn, job, ids)
        reviewed = store.mark_reviews(conn, job["id"], mark, ids=ids, filters=filters)
        if reviewed:
            store.touch_job(conn, job["id"])
    log.info("results reviewed", extra={"job_id": str(job["id"]), "review": mark, "reviewed": reviewed})
    return {"reviewed": reviewed}

