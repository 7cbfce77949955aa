"""What a request asks of a job, checked: text fields, flags, money, mode, limits, cursors,
{{column}} names, and the models and limits an account has. Pure but for reading the account."""

from __future__ import annotations

import base64
import binascii
import uuid

from chalicelib import accounts
from chalicelib.adapters import db
from chalicelib.errors import BadRequest, NotFound
from chalicelib.generation import prompt
from chalicelib.intake.uploads import (
    has_control_characters,
)
from chalicelib.logs import get_logger
from chalicelib.quality import flags
from chalicelib.quality.flags import check_word_limits
from chalicelib.settings import Settings

log = get_logger("jobs")



JOB_STATUSES = ("pending", "ingesting", "processing", "completed", "failed", "canceled")


URL_STATUSES = ("pending", "processing", "completed", "failed")


MAX_INSTRUCTIONS = 2000


def plain_number(text: str, max_digits: int = 9) -> int | None:
    """`text` as a non-negative int if it is 1-9 ASCII digits (str.isdigit() also accepts '²'
    and '٣', which int() refuses or reads differently), else None."""
    if text.isascii() and text.isdigit() and len(text) <= max_digits:
        return int(text)
    return None


def parse_limit(value: str | None, default: int, maximum: int) -> int:
    if value is None or value == "":
        return default
    number = plain_number(value)
    if number is None or not 1 <= number <= maximum:
        raise BadRequest(f"limit must be a whole number from 1 to {maximum}", code="bad_limit")
    return number


def check_status(value: str | None, allowed: tuple[str, ...]) -> str | None:
    if value and value not in allowed:
        raise BadRequest(f"status must be one of {', '.join(allowed)}", code="bad_status")
    return value or None


def job_uuid(value: str | None) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise NotFound(f"No job with id '{value}'", code="job_not_found") from None


def encode_cursor(*parts: object) -> str:
    return base64.urlsafe_b64encode("|".join(str(p) for p in parts).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, count: int) -> list[str]:
    try:
        parts = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("|")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        parts = []
    if len(parts) != count:
        raise BadRequest("cursor is not valid; pass back next_cursor from the previous page", code="bad_cursor")
    return parts


def clean_text(value, name: str, limit: int, allowed_controls: str = "") -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string", code=f"bad_{name}")
    value = value.strip()
    if len(value) > limit:
        raise BadRequest(f"{name} is longer than {limit} characters", code=f"bad_{name}")
    if has_control_characters(value, allowed_controls):
        raise BadRequest(f"{name} contains a NUL or another control character", code=f"bad_{name}")
    return value or None


def flag(value: object, name: str, default: bool = True) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false", code=f"bad_{name}")
    return value


def money(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1_000_000:
        raise BadRequest(f"{name} must be a number of US dollars above 0 and at most 1,000,000", code=f"bad_{name}")
    return float(value)


def job_mode(value: object, settings: Settings) -> str | None:
    """The job's mode as asked ("live" or "batch"); None: the default, decided by its size."""
    if value is None:
        return None if not settings.openai_dummy_mode else "live"
    if value not in ("live", "batch"):
        raise BadRequest('mode must be "live" or "batch"', code="bad_mode")
    if value == "batch" and settings.openai_dummy_mode:
        raise BadRequest("Batch mode needs a provider with a Batch API (OPENAI_API_KEY or OPENAI_BASE_URL); "
                         "dummy mode answers live calls only", code="batch_unavailable")
    return value


def template_columns(instructions: str | None, job: dict) -> dict[str, int]:
    """The columns the instructions name as {{column}}: {name: index}; 400 unknown_column if one
    is not a column of the file."""
    names = prompt.template_fields(instructions)
    if not names:
        return {}
    columns = list(job["columns"] or [])
    resolved = prompt.resolve_fields(names, columns)
    if isinstance(resolved, list):
        raise BadRequest(f"The instructions name {', '.join('{{' + n + '}}' for n in resolved)}, which is not a "
                         f"column of the file; its columns are: {', '.join(columns)}", code="unknown_column")
    return resolved


def account_limits(account: dict | None, settings: Settings) -> accounts.Limits:
    if account is None:
        raise NotFound("The account no longer exists", code="account_not_found")
    return accounts.effective_limits(
        account, default_rpm=settings.api_rate_limit_per_minute, default_urls_per_day=settings.account_urls_per_day,
        default_max_jobs=settings.account_max_jobs, default_model=settings.openai_model)


def account_models(conn, settings: Settings, account_id: str) -> tuple[str, ...]:
    """The models the account may use (the first is its default)."""
    return account_limits(db.get_account(conn, account_id), settings).models


def allowed_model(limits: accounts.Limits, model: str | None) -> str:
    """The job's model: the one asked for if the account may use it, else the default."""
    if model is None:
        return limits.models[0]
    if model not in limits.models:
        raise BadRequest(f"Model '{model}' is not allowed for this account; allowed: {', '.join(limits.models)}",
                         code="model_not_allowed")
    return model


GROUNDING_MODES = ("strict", "flag")


def quality_options(grounding: object = None, min_words: object = None, max_words: object = None,
                    language: object = None) -> dict:
    """The checks a job's openers go through (SPEC "Openers you can trust"), with their defaults:
    {"grounding", "min_words", "max_words", "language"}; a 400 with a clear code for a bad value."""
    if grounding is None:
        grounding = "strict"
    if grounding not in GROUNDING_MODES:
        raise BadRequest('grounding must be "strict" or "flag"', code="bad_grounding")
    low, high = check_word_limits(flags.DEFAULT_MIN_WORDS if min_words is None else min_words,
                                  flags.DEFAULT_MAX_WORDS if max_words is None else max_words)
    if language is None:
        language = "auto"
    if not isinstance(language, str) or (language != "auto" and not (
            len(language) == 2 and language.isascii() and language.isalpha() and language.islower())):
        raise BadRequest('language must be "auto" or a two-letter ISO 639-1 code in lower case, such as "de"',
                         code="bad_language")
    return {"grounding": grounding, "min_words": low, "max_words": high, "language": language}


MAX_VARIANTS = 3


def variants_option(value: object) -> int:
    """The job's ``variants`` (openers per row, SPEC "variants"): a whole number from 1 to
    MAX_VARIANTS, 1 when absent; a 400 ``bad_variants`` otherwise."""
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_VARIANTS:
        raise BadRequest(f"variants must be a whole number from 1 to {MAX_VARIANTS} (openers written per row)",
                         code="bad_variants")
    return value


def check_variants_mode(variants: int, mode: str) -> None:
    """Variants are written by live calls only: a batch job asking for more than one is refused
    (400 ``variants_batch``), so nothing of it is half-made."""
    if variants > 1 and mode == "batch":
        raise BadRequest("variants above 1 are written by live calls only; leave mode out (or set it to \"live\") "
                         "to get variants, or ask a batch job for one opener per row", code="variants_batch")
