"""Reading a finished Batch API batch back (chalicelib/generation/batches.py): its result files'
lines, each answer checked as a live one is (the output guard, then the quality checks, asked
again live where they say so), and what each row's answer cost: the batch answer's tokens at
the batch price (its cached prompt tokens at the cached price), the re-asks' at the live price
(``live_part``, sql/0021). A completed row keeps its fingerprint, so later jobs reuse it as they
reuse a live job's."""

from __future__ import annotations

import json

from chalicelib.generation import checks, pricing, reuse
from chalicelib.generation.answers import (
    GenerationFailed,
    UnusableAnswer,
    cached_count,
    error_text,
    opener_from_answer,
    token_count,
)
from chalicelib.generation.ratelimit import LimiterStopped
from chalicelib.logs import get_logger

log = get_logger("batches")

EXPIRED_ERROR = ("The provider's Batch API did not run this request within its 24-hour window (batch expired), "
                 "nor in the batches sent again for it; retry the job to send it again")
MISSING_ERROR = "The provider's batch ended without an answer for this request"


class BatchAnswers:
    """What ``BatchRunner`` does with a finished batch's files (it has ``client``, ``generator``,
    ``settings``, ``duplicates`` and ``_page``)."""

    def _lines(self, file_id: str | None):
        """The JSON objects of a result file (lines that are not are skipped, logged)."""
        if not file_id:
            return
        text = self.client.files.content(file_id).text
        for number, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                line = None
            if isinstance(line, dict):
                yield line
            else:
                log.warning("unreadable line in a batch result file", extra={"file_id": file_id, "line": number})

    def _read_line(self, line: dict, rows: dict[str, dict], job: dict, results: dict, release: list) -> None:
        """One answer: an opener, a failure with its reason, or (cancelled) the row given back."""
        row = rows.get(line.get("custom_id")) if isinstance(line.get("custom_id"), str) else None
        if row is None or str(row["id"]) in results:
            return  # not a row this batch still holds (a retried job's), or a repeat
        key = str(row["id"])
        failed = {"id": row["id"], "status": "failed", "retry_count": row["retry_count"] + 1}
        response, error = line.get("response"), line.get("error")
        if isinstance(response, dict) and response.get("status_code") == 200:
            try:
                opener = opener_from_answer(response.get("body"), row["url"], job["instructions"])
            except UnusableAnswer as exc:  # paid all the same: its tokens count
                results[key] = {**failed, "error": error_text(str(exc)), **answer_tokens(response.get("body"))}
                return
            results[key] = self._checked(job, row, opener, failed)
            return
        code = error.get("code") if isinstance(error, dict) else None
        if code == "batch_cancelled":
            release.append(row["id"])
        elif code == "batch_expired":
            results[key] = {**failed, "error": EXPIRED_ERROR}
        elif isinstance(response, dict) and isinstance(response.get("status_code"), int):
            body = response.get("body")
            detail = body.get("error", {}).get("message") if isinstance(body, dict) and isinstance(
                body.get("error"), dict) else None
            results[key] = {**failed, "error": error_text(
                f"HTTP {response['status_code']} from the model API: {detail or 'no details'}")}
        else:
            message = error.get("message") if isinstance(error, dict) else None
            results[key] = {**failed, "error": error_text(
                f"The provider's Batch API could not run this request: {message or code or 'no details'}")}

    def _checked(self, job: dict, row: dict, opener, failed: dict) -> dict:
        """A batch answer through the quality checks (asked again live where they say so, within
        the job's budget): the row's result."""
        page, _ = self._page(job, row)
        within_budget = pricing.over_budget(self.settings.prices, job) is None
        try:
            kept = checks.generate_checked(
                self.generator, job_id=str(job["id"]), url=row["url"], instructions=job["instructions"],
                model=job["model"], options=checks.Options.of(job), fields=row.get("fields"), page=page,
                duplicates=self.duplicates,
                max_calls=self.settings.max_retries if within_budget else 1, account=str(job["account_id"]),
                first=opener, feedback=row.get("feedback"))
        except (GenerationFailed, LimiterStopped) as exc:
            message = exc.message if isinstance(exc, GenerationFailed) else "stopped while asking again"
            spent = (exc.prompt_tokens, exc.completion_tokens) if isinstance(exc, GenerationFailed) and \
                exc.prompt_tokens else (opener.prompt_tokens, opener.completion_tokens)  # the batch answer's, at least
            result = {**failed, "error": error_text(message), "prompt_tokens": spent[0], "completion_tokens": spent[1],
                      "cached_tokens": opener.cached_tokens,
                      **live_part(spent[0] - opener.prompt_tokens, spent[1] - opener.completion_tokens, 0)}
            if isinstance(exc, checks.Ungrounded):
                result["grounding"] = "unsupported"
            return result
        return {"id": row["id"], "status": "completed", "opener": kept.text,
                "retry_count": row["retry_count"] + kept.attempts - 1 - kept.regenerations,
                "prompt_tokens": kept.prompt_tokens, "completion_tokens": kept.completion_tokens,
                "cached_tokens": kept.cached_tokens,
                **live_part(kept.prompt_tokens - opener.prompt_tokens,  # the re-asks, paid live
                            kept.completion_tokens - opener.completion_tokens,
                            kept.cached_tokens - opener.cached_tokens),
                "fingerprint": reuse.job_fingerprint(job, row), "page_hash": reuse.page_hash(page),
                "evidence": kept.evidence, "grounding": kept.grounding, "quality": kept.quality,
                "words": kept.words, "language": kept.language, "regenerations": kept.regenerations}

    @staticmethod
    def _unanswered(remote, missing: list[dict], results: dict, release: list) -> None:
        """Rows neither result file mentions: expired, given back (cancelled), or failed."""
        reason = MISSING_ERROR
        if remote.status == "expired":
            reason = EXPIRED_ERROR
        elif remote.status == "failed":
            errors = getattr(getattr(remote, "errors", None), "data", None) or []
            detail = "; ".join(str(e.message) for e in errors if getattr(e, "message", None))
            reason = error_text(f"The provider's batch failed: {detail or 'no details'}")
        for row in missing:
            if remote.status == "cancelled":
                release.append(row["id"])
            else:
                results[str(row["id"])] = {"id": row["id"], "status": "failed", "error": reason,
                                           "retry_count": row["retry_count"] + 1}


def live_part(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    """The part of a batch row's tokens paid at the live price (its re-asks; sql/0021): None
    when there were none, as for a row of a live job."""
    if not (prompt_tokens or completion_tokens):
        return {}
    return {"live_prompt_tokens": prompt_tokens, "live_completion_tokens": completion_tokens,
            "live_cached_tokens": max(0, cached_tokens)}


def answer_tokens(body) -> dict:
    """The tokens a batch answer reports (``usage``), for a row whose answer was unusable."""
    usage = body.get("usage") if isinstance(body, dict) else None
    return {"prompt_tokens": token_count(usage, "prompt_tokens"),
            "completion_tokens": token_count(usage, "completion_tokens"), "cached_tokens": cached_count(usage)}
