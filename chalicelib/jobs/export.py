"""The results CSV: the original rows in order plus the opener columns, rendered for a download
(inline or through S3) and written to S3 once a job completes.

Memory stays flat whatever the file's size: the original is streamed from S3 and merge-joined
by row number with the URL rows, read from PostgreSQL in keyset pages; the CSV is written to a
temporary file (in memory up to a few MB, then on disk) and sent to S3 as a multipart upload
(`Storage.put_file`: 8 MiB parts, at most 4 in memory). A big download is a 302 to a presigned
URL of that object; a completed job's results CSV is written once and served from then on, and
an unfinished job's export is kept under a name made of its progress, so a download with no
progress since the last one is not built again. A filtered download (`review=approved`) is named
by its filter as well (`<processed>-<failed>-<updated>-approved.csv`) and never served from the
full results CSV."""

from __future__ import annotations

import csv
import io
import tempfile
from datetime import UTC, datetime, timedelta
from typing import IO

import tenacity

from chalicelib.adapters import db
from chalicelib.adapters.storage import Storage
from chalicelib.intake import csvfile
from chalicelib.jobs.create import layout_of, read_source
from chalicelib.logs import get_logger
from chalicelib.settings import BINARY_BODY_LIMIT

log = get_logger("jobs")

# What the checks found comes after the columns earlier downloads had, so a sheet that reads
# them by position keeps working.
EXTRA_COLUMNS = ("opener", "opener_status", "opener_error", "context_status",
                 "opener_evidence", "opener_quality", "opener_language")


def variant_columns(job: dict) -> tuple[str, ...]:
    """A job with variants (SPEC "variants") adds opener_2 .. opener_<variants>: the row's other
    variants in their order (``opener`` is the picked one), empty where a row has fewer."""
    return tuple(f"opener_{n}" for n in range(2, int(job.get("variants") or 1) + 1))


def _other_variants(result: dict | None, count: int) -> list[str]:
    """The `count` cells of variant_columns for one row."""
    variants = (result or {}).get("variants") or []
    picked = (result or {}).get("variant") or 1
    others = [v.get("opener") or "" for n, v in enumerate(variants, 1) if n != picked and isinstance(v, dict)]
    return (others + [""] * count)[:count]

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

INLINE_DOWNLOAD_LIMIT = BINARY_BODY_LIMIT  # larger downloads go through S3 (base64 in a 6 MB response)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_FORMULA_FIRST = frozenset(FORMULA_PREFIXES)  # each prefix is one character


def neutralize(cell: str) -> str:
    """Keep spreadsheets from running a cell as a formula."""
    return "'" + cell if cell.startswith(FORMULA_PREFIXES) else cell


def _neutralized(cells) -> list[str]:
    """`neutralize` over a row, inline: a 40-column file has millions of cells."""
    return ["'" + cell if cell[:1] in _FORMULA_FIRST else cell for cell in cells]


def write_csv(conn, storage: Storage, job: dict, out: IO[str], review: str | None = None) -> int:
    """The original rows in order plus opener columns, merge-joined with the URL rows by row
    number (both in file order, so memory stays bounded); with `review` ("approved"), only the
    rows a person so marked. Returns the rows written."""
    layout = layout_of(job)
    writer = csv.writer(out, lineterminator="\r\n")
    more = variant_columns(job)
    writer.writerow([neutralize(c) for c in (*layout.columns, *EXTRA_COLUMNS, *more)])
    width = len(layout.columns)
    results = db.iter_results(conn, job["id"], review=review) if job["status"] != "pending" else iter(())
    current = next(results, None)
    written = 0
    for row, record in csvfile.iter_rows(read_source(storage, job), layout):
        while current is not None and current["row_number"] < row.row:
            current = next(results, None)
        match = current if current is not None and current["row_number"] == row.row else None
        if review and match is None:
            continue  # not marked so (or an invalid row): not in a reviewed download
        extra = _extra_cells(row, match)
        if more:
            extra = (*extra, *_other_variants(match, len(more)))
        if len(record) < width:
            record = record + [""] * (width - len(record))
        writer.writerow(_neutralized((*record, *extra)))
        written += 1
    return written


def _extra_cells(row, result: dict | None) -> tuple[str, ...]:
    """The EXTRA_COLUMNS cells of one file row: an invalid row, a row with its URL result, or
    one not (yet) processed."""
    if row.url is None:
        return "", "invalid", row.error or "", "", "", "", ""
    if result is None:
        return "", "pending", "", "", "", "", ""
    status = result["status"] if result["status"] in ("completed", "failed") else "pending"
    return (result["opener"] or "", status, result["error"] or "", result["context_status"] or "",
            result["evidence"] or "", ";".join(result["quality"] or ()), result["language"] or "")


def render_csv(conn, storage: Storage, job: dict, spool_limit: int, review: str | None = None) -> IO[bytes]:
    """The download CSV in a temporary file (in memory up to `spool_limit` bytes), rewound."""
    buffer = tempfile.SpooledTemporaryFile(max_size=spool_limit, mode="w+b")
    text = io.TextIOWrapper(buffer, encoding="utf-8", newline="")
    write_csv(conn, storage, job, text, review)
    text.flush()
    text.detach()
    buffer.seek(0)
    return buffer


def export_key(job: dict, review: str | None = None) -> str:
    """Where a big download of the job as it is now is kept: named by its progress (counters and
    last update: edits and review marks move it too), so a download with no progress since the
    last one finds it already written."""
    updated_us = (job["updated_at"] - EPOCH) // timedelta(microseconds=1)
    version = f"{job['processed_rows']}-{job['failed_rows']}-{updated_us}" + (f"-{review}" if review else "")
    return f"exports/{job['account_id']}/{job['id']}/{version}.csv"


def drop_older_exports(storage: Storage, key: str) -> None:
    """Delete the job's earlier versions (the bucket's lifecycle rule for exports/ removes any a
    failure leaves). A link to one handed out moments ago then finds it gone, and a new download
    gives the newer version."""
    for older in storage.keys(key.rsplit("/", 1)[0] + "/"):
        if older != key and _view_of(older) == _view_of(key):  # the full and the approved ones both stay
            try:
                storage.delete(older)
            except Exception:
                log.exception("could not delete an old export", extra={"key": older})


def _view_of(key: str) -> str:
    """Which rows an export key holds ("all", or its filter): `<processed>-<failed>-<us>[-filter].csv`."""
    parts = key.rsplit("/", 1)[1].removesuffix(".csv").split("-", 3)
    return parts[3] if len(parts) == 4 else "all"


def download_name(file_name: str) -> str:
    stem = file_name.rsplit(".", 1)[0] if "." in file_name else file_name
    return f"{stem}-openers.csv"


def export_results(conn, storage: Storage, job: dict, keys: list[str]) -> None:
    """Write the results CSV to S3 under each key (results/{job_id}.csv, and for drops also
    results/<name>-openers.csv)."""
    with render_csv(conn, storage, job, 8 * 1024 * 1024) as buffer:
        storage.put_file(keys[0], buffer)
    for key in keys[1:]:
        storage.copy(keys[0], key)


def result_keys(job: dict) -> list[str]:
    keys = [f"results/{job['account_id']}/{job['id']}.csv"]
    if job["source"] == "s3":
        keys.append(f"results/{job['account_id']}/{download_name(job['file_name'])}")
    return keys


def export_job(get_conn, storage: Storage, job: dict) -> bool:
    """Write the results CSV(s) of a completed job, retrying; a failure is logged and noted on
    the job (the download still works) and never changes its status."""
    keys = result_keys(job)

    @tenacity.retry(stop=tenacity.stop_after_attempt(4), wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=8),
                    reraise=True)
    def attempt() -> None:
        conn = get_conn()
        export_results(conn, storage, db.get_job(conn, job["id"]), keys)
        db.update_job(conn, job["id"], result_path=keys[0])

    try:
        attempt()
    except Exception as exc:
        log.exception("results export failed", extra={"job_id": str(job["id"])})
        try:
            db.update_job(get_conn(), job["id"], error=f"results file not written ({type(exc).__name__}); "
                                                        "the download endpoint still works")
        except Exception:
            log.exception("could not record the export failure", extra={"job_id": str(job["id"])})
        return False
    log.info("results exported", extra={"job_id": str(job["id"]), "keys": keys})
    return True
