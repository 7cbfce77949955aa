"""Turn an upload request (multipart form or raw `text/csv` body) into a file name and bytes.

Pure: takes the headers, query and body Chalice hands over; raises DomainError for what the
caller got wrong (no file, wrong type, too big). Multipart parsing is python-multipart's.
"""

from __future__ import annotations

import io
import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath

from python_multipart import parse_form
from python_multipart.exceptions import FormParserError

from chalicelib.errors import BadRequest, TooLarge, UnsupportedMediaType
from chalicelib.logs import redact_secrets

CSV_EXTENSIONS = {".csv", ".tsv", ".txt", ""}
# What browsers and tools send for CSV files (Excel on Windows says vnd.ms-excel).
CSV_CONTENT_TYPES = {
    "text/csv", "text/plain", "text/tab-separated-values", "text/x-csv", "application/csv",
    "application/x-csv", "application/vnd.ms-excel", "application/octet-stream", "",
}


@dataclass(frozen=True)
class UploadedFile:
    file_name: str
    data: bytes
    url_column: str | None


def _header(headers: dict, name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value or ""
    return ""


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


MAX_NAME_INPUT = 1000  # characters of a file name or column name a caller may send


def safe_file_name(name: str | None) -> str:
    """The base name only: no path parts, control or format characters (bidi overrides that
    disguise an extension, zero-width characters), at most 200 characters."""
    base = PureWindowsPath(PurePosixPath(name or "").name).name
    base = "".join(c for c in base if unicodedata.category(c) not in ("Cc", "Cf") and c not in '"\\/')
    return base.strip().strip(".")[-200:] or "upload.csv"


def has_control_characters(text: str, allowed: str = "") -> bool:
    """NUL, other C0/C1 control characters, DEL, and lone UTF-16 surrogates ("\ud800" is valid JSON
    but no UTF-8: PostgreSQL and S3 cannot store it). PostgreSQL text cannot even hold NUL."""
    return any(((ord(c) < 32 or 0x7F <= ord(c) <= 0x9F) and c not in allowed) or 0xD800 <= ord(c) <= 0xDFFF
               for c in text)


def clean_url_column(value: object) -> str | None:
    """The caller's `url_column`: None, or a short string of printable characters."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_NAME_INPUT or has_control_characters(value):
        raise BadRequest("url_column must be the name (or 1-based number) of a column, as text without control "
                         f"characters, at most {MAX_NAME_INPUT} characters", code="bad_url_column")
    return value


def clean_file_name(value: object) -> str:
    """A file name sent in a JSON body: text without control characters, then `safe_file_name`."""
    if not value or not isinstance(value, str):
        raise BadRequest("file_name is required, e.g. {\"file_name\": \"leads.csv\"}", code="missing_file_name")
    if len(value) > MAX_NAME_INPUT or has_control_characters(value):
        raise BadRequest(f"file_name must be text without control characters, at most {MAX_NAME_INPUT} characters",
                         code="bad_file_name")
    return safe_file_name(value)


def check_file_type(file_name: str, content_type: str) -> None:
    extension = PurePosixPath(file_name).suffix.lower()
    if extension not in CSV_EXTENSIONS:
        raise UnsupportedMediaType(f"'{file_name}' is not a CSV file; upload a .csv file")
    if _media_type(content_type) not in CSV_CONTENT_TYPES:
        raise UnsupportedMediaType(f"Content type '{_media_type(content_type)}' is not CSV; upload a .csv file")


def check_size(size: int, max_size: int) -> None:
    if size > max_size:
        raise TooLarge(f"The file is {size:,} bytes; the limit is {max_size:,} bytes per file, whichever way it "
                       "is uploaded. Split it into smaller files and upload each one.")


def check_direct_size(size: int, direct_limit: int) -> None:
    if size > direct_limit:
        raise TooLarge(f"The request body is {size:,} bytes; one request can carry at most {direct_limit:,} "
                       "(API Gateway and Lambda cap a request at 6 MB, base64-encoded). Upload bigger files "
                       "with POST /api/upload/url (a presigned S3 upload), then POST /api/upload/process.",
                       code="use_presigned_upload")


def parse_upload(headers: dict, query: dict | None, body: bytes | None, max_size: int,
                 direct_limit: int | None = None) -> UploadedFile:
    """Read the file out of the request; raises BadRequest / TooLarge / UnsupportedMediaType."""
    query = query or {}
    declared = _header(headers, "content-length")
    if declared.isascii() and declared.isdigit() and len(declared) < 16:
        check_size(int(declared), max_size + 64 * 1024)  # multipart framing adds a little
    body = body or b""
    if direct_limit is not None:
        check_direct_size(len(body), direct_limit)
    content_type = _header(headers, "content-type")
    media_type = _media_type(content_type)
    if media_type == "multipart/form-data":
        upload = _parse_multipart(content_type, body, max_size)
        url_column = upload.url_column or query.get("url_column")
        upload = UploadedFile(upload.file_name, upload.data, clean_url_column(url_column))
    elif media_type in CSV_CONTENT_TYPES - {""}:
        name = safe_file_name(query.get("filename") or "upload.csv")
        check_file_type(name, media_type)
        upload = UploadedFile(name, body, clean_url_column(query.get("url_column")))
    else:
        raise UnsupportedMediaType(
            f"Send the CSV as multipart/form-data (part 'file') or as a text/csv body, not '{media_type or 'nothing'}'")
    check_size(len(upload.data), max_size)
    if not upload.data.strip():
        raise BadRequest("The file is empty; upload a CSV with one URL per row", code="empty_file")
    return upload


def _parse_multipart(content_type: str, body: bytes, max_size: int) -> UploadedFile:
    files: list = []
    fields: dict[str, str] = {}

    def on_field(field) -> None:
        name = (field.field_name or b"").decode("utf-8", "replace")
        fields[name] = (field.value or b"").decode("utf-8", "replace").strip()

    try:
        # HTTP header values are Latin-1; API Gateway may hand over other characters (a boundary
        # with "é" or an emoji), which no multipart body can be framed by.
        encoded_type = content_type.encode("latin-1")
    except UnicodeEncodeError:
        raise BadRequest("The Content-Type header has characters outside Latin-1; use an ASCII multipart boundary",
                         code="bad_multipart") from None
    headers = {"Content-Type": encoded_type, "Content-Length": str(len(body)).encode()}
    try:
        parse_form(headers, io.BytesIO(body), on_field, files.append)
    except (FormParserError, ValueError) as exc:
        # The parser's words describe the caller's own body (no host or key of ours); capped.
        detail = redact_secrets(str(exc))[:200]
        raise BadRequest(f"The multipart body could not be read ({detail}); send the file in a part named 'file'",
                         code="bad_multipart") from exc
    part = next((f for f in files if (f.field_name or b"") == b"file"), None)
    if part is None:
        raise BadRequest("No file in the request; send it in a multipart part named 'file'", code="no_file")
    name = safe_file_name((part.file_name or b"upload.csv").decode("utf-8", "replace"))
    part_type = part.content_type or ""
    check_file_type(name, part_type.decode("latin-1") if isinstance(part_type, bytes) else part_type)
    part.file_object.seek(0)
    data = part.file_object.read(max_size + 1)
    return UploadedFile(name, data, fields.get("url_column") or None)
