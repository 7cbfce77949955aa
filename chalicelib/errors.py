"""Errors a caller can cause. Each carries its HTTP status and a snake_case code; `app.py`
turns them into the SPEC error shape in one place."""

from __future__ import annotations


class DomainError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, code: str | None = None, status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.status = status or self.status
        self.headers = headers or {}


class BadRequest(DomainError):
    pass


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class TooLarge(DomainError):
    status = 413
    code = "file_too_large"


class UnsupportedMediaType(DomainError):
    status = 415
    code = "not_csv"


class Gone(DomainError):
    status = 410
    code = "gone"


class RateLimited(DomainError):
    status = 429
    code = "rate_limited"
