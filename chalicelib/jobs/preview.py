"""Preview: openers for a job's first valid rows with the wording a user is trying, before they
spend on the whole file. Same prompt, limiter (the account's fair share), guard and page context
as the job would use; nothing is stored and the job does not start. Its calls are paid like any
other: the rows count against the account's URLs-per-day quota (taken before any call) and its
tokens in the day's usage (a row that failed counts the calls made for it too). What the
previews really cost against what the estimate says those rows cost calibrates the estimate: the
preview's own, and the start's (kept on the job, sql/0017). The same quality checks as the
job's run on each answer (grounding, flags, asking again), with the options the job would take;
near-duplicates are looked for among the previews themselves (the job's index does not exist
yet). With ``reuse`` (default true) a row whose fingerprint matches an opener the account's model
wrote in the last REUSE_DAYS shows that opener (``reused: true``, no call, left out of the
calibration), found in one query for the sample."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from chalicelib.adapters import db
from chalicelib.adapters.storage import Storage
from chalicelib.errors import BadRequest, Conflict
from chalicelib.generation import checks, pricing
from chalicelib.generation import reuse as reuse_openers
from chalicelib.generation.answers import GenerationFailed
from chalicelib.intake import csvfile
from chalicelib.jobs.create import layout_of, read_source
from chalicelib.jobs.ingest import check_sample
from chalicelib.jobs.options import (
    MAX_INSTRUCTIONS,
    account_limits,
    allowed_model,
    clean_text,
    flag,
    quality_options,
    template_columns,
    variants_option,
)
from chalicelib.jobs.start import take_account_capacity
from chalicelib.jobs.views import require_job
from chalicelib.settings import Settings

MAX_ROWS = 5
DEFAULT_ROWS = 3

# (url) -> (page summary or None, context_status); the page fetcher, or "off"
PageSummary = Callable[[str, str], tuple[str | None, str]]  # (url, account_id) -> (summary, context_status)


def _rows(value: object) -> int:
    if value is None:
        return DEFAULT_ROWS
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ROWS:
        raise BadRequest(f"rows must be a whole number from 1 to {MAX_ROWS}", code="bad_rows")
    return value


def first_rows(storage: Storage, job: dict, count: int, fields: dict[str, int]) -> list[tuple[int, str, dict]]:
    """(row number, URL, template values) of the file's first `count` valid rows."""
    found = []
    for row, record in csvfile.iter_rows(read_source(storage, job), layout_of(job)):
        if row.url is None:
            continue
        values = {name: (record[i] if i < len(record) else "")[:200] for name, i in fields.items()}
        found.append((row.row, row.url, values))
        if len(found) == count:
            break
    return found


def preview(conn, storage: Storage, settings: Settings, generator, account_id: str, job_id: str, *,
            instructions: object = None, model: object = None, page_context: object = True, rows: object = None,
            page_summary: PageSummary | None = None, grounding: object = None, min_words: object = None,
            max_words: object = None, language: object = None, reuse: object = None, variants: object = None) -> dict:
    """-> {"previews": [...], "estimate": {...}} for the job's first valid rows."""
    count = _rows(rows)
    options = checks.Options(**quality_options(grounding, min_words, max_words, language),
                             variants=variants_option(variants))
    instructions = clean_text(instructions, "instructions", MAX_INSTRUCTIONS, allowed_controls="\n\r\t")
    model = clean_text(model, "model", 100)
    job = require_job(conn, account_id, job_id)
    model = allowed_model(account_limits(db.get_account(conn, account_id), settings), model)
    page_context = flag(page_context, "page_context", settings.page_context_default)
    reuse = flag(reuse, "reuse", True)
    if job["layout"] is None:
        if job["status"] != "pending":
            raise Conflict("This job's file was never validated", code="not_ready")
        job, _ = check_sample(conn, storage, settings, job)  # the header and a sample, not the whole file
    fields = template_columns(instructions, job)
    sample = first_rows(storage, job, count, fields)
    with conn.transaction():  # refused over quota before any call; not a job, so no job slot
        take_account_capacity(conn, settings, account_id, len(sample), new_job=False)

    among_previews = checks.LocalDuplicates()
    as_job = {"account_id": account_id, "instructions": instructions, "model": model, "reuse": reuse,
              "language": options.language, "min_words": options.min_words, "max_words": options.max_words,
              "variants": options.variants}
    earlier = reuse_openers.lookup(conn, as_job, [{"id": number, "url": url, "fields": values or None}
                                                 for number, url, values in sample], settings.reuse_days)

    def one(item: tuple[int, str, dict]) -> dict:
        number, url, values = item
        page, status = (page_summary(url, account_id) if page_context and page_summary else (None, "off"))
        shown = {"row": number, "url": url, "context_status": status, "opener": None, "error": None,
                 "prompt_tokens": 0, "completion_tokens": 0, "evidence": None, "grounding": None, "quality": [],
                 "words": None, "language": None, "regenerations": 0, "reused": False, "cached_tokens": 0,
                 "variants": None}
        found = earlier[number].match(page) if number in earlier else None
        if found is not None:
            return {**shown, **{k: v for k, v in reuse_openers.reused_result(number, found).items()
                                if k in shown and k not in ("row", "url")}}
        # what the estimate says this very row costs, for the calibration below
        estimated[number] = (pricing.sample_request(instructions, list(fields), page_context, sample_url=url,
                                                    values=values, page=page or "", min_words=options.min_words,
                                                    max_words=options.max_words, variants=options.variants),
                             pricing.completion_tokens(options.min_words, options.max_words, options.variants))
        try:
            opener = checks.generate_checked(
                generator, job_id=str(job["id"]), url=url, instructions=instructions, model=model, options=options,
                fields=values or None, page=page, duplicates=among_previews,
                max_calls=getattr(generator, "max_retries", 2), account=account_id)
        except GenerationFailed as exc:  # the calls it made were paid: their tokens count
            failed = {**shown, "error": exc.message, "prompt_tokens": exc.prompt_tokens,
                      "completion_tokens": exc.completion_tokens}
            if isinstance(exc, checks.Ungrounded):
                failed["grounding"] = "unsupported"
            return failed
        return {**shown, "opener": opener.text, "prompt_tokens": opener.prompt_tokens,
                "completion_tokens": opener.completion_tokens, "evidence": opener.evidence,
                "grounding": opener.grounding, "quality": opener.quality, "words": opener.words,
                "language": opener.language, "regenerations": opener.regenerations,
                "cached_tokens": opener.cached_tokens, "variants": opener.variants}

    estimated: dict[int, tuple[int, int]] = {}
    with ThreadPoolExecutor(max(1, len(sample))) as pool:
        previews = list(pool.map(one, sample))
    db.add_preview_tokens(conn, account_id, model, sum(p["prompt_tokens"] for p in previews),
                          sum(p["completion_tokens"] for p in previews),
                          sum(p.get("cached_tokens") or 0 for p in previews))
    calibrated = preview_calibration(previews, estimated)
    if calibrated is not None:  # the start's estimate is corrected by it (jobs/start.py)
        db.set_estimate(conn, job["id"], {"preview": calibrated}, expected="pending")
    estimate = pricing.estimate(settings.prices, model, job["total_rows"], instructions, list(fields), page_context,
                                min_words=options.min_words, max_words=options.max_words, calibrated=calibrated,
                                variants=options.variants)
    return {"previews": previews, "estimate": estimate}


def preview_calibration(previews: list[dict], estimated: dict[int, tuple[int, int]]) -> dict | None:
    """The previews' real usage against what the estimate says those rows cost (rows that made
    no call left out): ``pricing.calibration`` with basis "preview"."""
    paid = [p for p in previews if p["prompt_tokens"]]
    return pricing.calibration((sum(estimated[p["row"]][0] for p in paid), sum(estimated[p["row"]][1] for p in paid)),
                               (sum(p["prompt_tokens"] for p in paid), sum(p["completion_tokens"] for p in paid)),
                               len(paid), "preview")
