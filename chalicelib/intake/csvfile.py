"""Read uploaded CSV files of URLs: guess their layout, then stream their rows.

Uploads can hold 100,000+ rows and live in S3, so nothing here needs the whole file: the layout
(encoding, delimiter, header, URL column) is guessed from the first ``SAMPLE_SIZE`` bytes, then
records are decoded and parsed incrementally from an iterable of byte chunks (an S3 body's
``iter_chunks()``), with memory bounded by the longest line. Messy input never raises
``UnicodeDecodeError``; problems the user can fix raise :class:`CsvError`, which carries the
API error code and HTTP status.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from chalicelib.intake.urls import InvalidUrl, looks_like_url, normalize_url

SAMPLE_SIZE = 65536
FIELD_SIZE_LIMIT = 1 << 20  # 1 MiB per cell
MAX_LINE_LENGTH = 2 * FIELD_SIZE_LIMIT  # characters in one physical line
MAX_ERRORS = 20
MAX_ERROR_VALUE_LENGTH = 200  # a reported bad value is clipped to this
DELIMITERS = (",", ";", "\t", "|")

_DELIMITER_RECORDS = 50  # records parsed per candidate delimiter
_SCORING_RECORDS = 100  # records scored when looking for the URL column
_DECODE_ERRORS = "csvopener.cp1252_fallback"

# Header names (lower-case, without spaces, "_" or "-") that mark the URL column, best first.
URL_HEADERS = (
    "url",
    "urls",
    "website",
    "websiteurl",
    "websites",
    "site",
    "siteurl",
    "domain",
    "domains",
    "domainname",
    "link",
    "links",
    "homepage",
    "homepageurl",
    "companyurl",
    "companywebsite",
    "companydomain",
    "linkedin",
    "linkedinurl",
    "linkedinprofile",
    "profile",
    "profileurl",
)

_XLSX_MESSAGE = (
    "This looks like an Excel workbook (.xlsx) or a ZIP archive; save it as CSV and upload again"
)
_XLS_MESSAGE = "This looks like an Excel workbook (.xls); save it as CSV and upload again"
_BINARY_SIGNATURES = (
    (b"%PDF", "This is a PDF document, not a CSV; export the data as CSV and upload again"),
    (b"PK\x03\x04", _XLSX_MESSAGE),
    (b"PK\x05\x06", "This is a ZIP archive; upload the CSV file itself"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", _XLS_MESSAGE),
    (b"\x89PNG\r\n\x1a\n", "This is a PNG image, not a CSV; upload a CSV file"),
    (b"\xff\xd8\xff", "This is a JPEG image, not a CSV; upload a CSV file"),
    (b"GIF87a", "This is a GIF image, not a CSV; upload a CSV file"),
    (b"GIF89a", "This is a GIF image, not a CSV; upload a CSV file"),
    (b"\x1f\x8b", "This is a gzip-compressed file; decompress it and upload the CSV inside"),
    (b"\xff\xfe", "This file is UTF-16 text; save it as CSV UTF-8 and upload again"),
    (b"\xfe\xff", "This file is UTF-16 text; save it as CSV UTF-8 and upload again"),
)
_BINARY_MESSAGE = "This file contains binary data, not CSV text; upload a plain-text CSV file"
_EMPTY_MESSAGE = "The file is empty; upload a CSV with one URL per row"
_NO_URL_COLUMN_MESSAGE = 'No column of URLs found; name it "url" or pass url_column'


class CsvError(ValueError):
    """An upload we cannot use; ``code`` and ``message`` go into the API error body."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def to_dict(self) -> dict:
        """The API error body: ``{"error": {"code", "message"}}``."""
        return {"error": {"code": self.code, "message": self.message}}


@dataclass(frozen=True)
class Layout:
    """How to read a file, as guessed from its first bytes."""

    encoding: str  # 'utf-8' or 'cp1252'; a UTF-8 BOM is skipped either way
    delimiter: str  # one of DELIMITERS
    has_header: bool
    columns: tuple[str, ...]  # header cells (stripped), or generated names for a header-less file
    url_index: int  # 0-based index of the URL column
    url_reason: str = ""  # why that column, in words ("header Website names a company site")
    url_alternatives: tuple[str, ...] = ()  # the other columns that name or hold URLs, likeliest first

    @property
    def url_column(self) -> str:
        return self.columns[self.url_index]


@dataclass(slots=True)
class Row:
    """The URL verdict for one data record."""

    row: int  # 1-based data row number: the header and blank lines are not counted
    url: str | None  # normalised URL, None when the value is not a URL we process
    value: str  # the raw cell ('' when the record is too short to have one)
    error: str | None  # why the value was rejected (an InvalidUrl message)


@dataclass
class Summary:
    """What an upload holds, for the upload response."""

    layout: Layout
    total_rows: int  # rows with a valid URL
    invalid_rows: int
    errors: list[dict]  # the first MAX_ERRORS invalid rows as {"row", "value", "message"}


# --- decoding -------------------------------------------------------------------------------


def _fallback_char(byte: int) -> str:
    try:
        return bytes([byte]).decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8D, 0x8F, 0x90, 0x9D: undefined in cp1252
        return chr(byte)


_FALLBACK_CHARS = tuple(_fallback_char(byte) for byte in range(256))


def _decode_as_cp1252(exc: UnicodeError) -> tuple[str, int]:
    """Codec error handler: read undecodable bytes as cp1252 (Latin-1 where cp1252 has a gap)."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    bad = exc.object[exc.start:exc.end]
    return "".join(_FALLBACK_CHARS[byte] for byte in bad), exc.end


codecs.register_error(_DECODE_ERRORS, _decode_as_cp1252)
csv.field_size_limit(FIELD_SIZE_LIMIT)


def _strip_bom(data: bytes) -> bytes:
    return data.removeprefix(codecs.BOM_UTF8)


def _detect_encoding(data: bytes) -> str:
    """UTF-8 when ``data`` decodes as UTF-8, ignoring a sequence cut at the end; else cp1252."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
    except UnicodeDecodeError:
        return "cp1252"
    return "utf-8"


def _without_bom(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The byte stream of ``chunks`` minus a leading UTF-8 BOM (which may span chunks)."""
    iterator = iter(chunks)
    head = b""
    for chunk in iterator:
        head += bytes(chunk)
        if len(head) >= len(codecs.BOM_UTF8):
            break
    head = _strip_bom(head)
    if head:
        yield head
    for chunk in iterator:
        if chunk:
            yield bytes(chunk)


class _ChunkStream(io.RawIOBase):
    """A readable raw stream over an iterable of byte chunks."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__()
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def _text_lines(chunks: Iterable[bytes], encoding: str) -> Iterator[str]:
    """Decoded physical lines, line endings kept (what csv.reader wants), each bounded."""
    raw = _ChunkStream(_without_bom(chunks))
    text = io.TextIOWrapper(io.BufferedReader(raw), encoding=encoding, errors=_DECODE_ERRORS,
                            newline="")
    while line := text.readline(MAX_LINE_LENGTH):
        if len(line) >= MAX_LINE_LENGTH and line[-1] not in "\r\n":
            raise csv.Error(f"a line is longer than {MAX_LINE_LENGTH} characters")
        if "\x00" in line:  # the sample check sees only the first 64 KiB
            raise CsvError("not_csv", _BINARY_MESSAGE, 415)
        yield line


# --- parsing --------------------------------------------------------------------------------


def _reader(lines: Iterable[str], delimiter: str) -> Iterator[list[str]]:
    """csv.reader with default quoting; a space after a delimiter may precede a quote."""
    return csv.reader(lines, delimiter=delimiter, skipinitialspace=True)


def _is_blank(record: list[str]) -> bool:
    return not any(cell.strip() for cell in record)


def iter_records(chunks: Iterable[bytes], layout: Layout) -> Iterator[list[str]]:
    """The decoded data records of the file (after the header), blank records skipped."""
    header_pending = layout.has_header
    row = 0
    try:
        for record in _reader(_text_lines(chunks, layout.encoding), layout.delimiter):
            first = record[0] if record else ""
            if (not first or first.isspace()) and _is_blank(record):  # the first cell decides most
                continue
            if header_pending:
                header_pending = False
                continue
            row += 1
            yield record
    except csv.Error as exc:
        where = "the header row" if header_pending else f"data row {row + 1}"
        raise CsvError("unparseable_csv", f"The CSV could not be read at {where} ({exc}); "
                       "a quote that is opened but never closed is the usual cause") from exc


def iter_rows(chunks: Iterable[bytes], layout: Layout) -> Iterator[tuple[Row, list[str]]]:
    """Each data record with its URL verdict."""
    index = layout.url_index
    for number, record in enumerate(iter_records(chunks, layout), start=1):
        value = record[index] if index < len(record) else ""
        try:
            url, error = normalize_url(value), None
        except InvalidUrl as exc:
            url, error = None, str(exc)
        yield Row(number, url, value, error), record


# --- layout detection -----------------------------------------------------------------------


def detect_layout(sample: bytes, url_column: str | None = None) -> Layout:
    """Guess how to read a file from its first bytes (``SAMPLE_SIZE`` of them, or all of it).

    The sample may end mid-line or mid-character. ``url_column`` names the URL column (a header
    cell, case and spacing ignored, or a 1-based column number); by default it is found from the
    header names, then from the values.
    """
    _reject_binary(sample)
    data = _strip_bom(sample)
    encoding = _detect_encoding(data)
    text = data.decode(encoding, _DECODE_ERRORS)
    if not text.strip():
        raise CsvError("empty_file", _EMPTY_MESSAGE)
    truncated = len(sample) >= SAMPLE_SIZE
    delimiter = _detect_delimiter(text, truncated)
    records = _sample_records(text, delimiter, truncated, _SCORING_RECORDS + 1)
    if not records:
        raise CsvError("empty_file", _EMPTY_MESSAGE)
    wanted = url_column.strip() if url_column and url_column.strip() else None
    has_header = _has_header(records, wanted)
    columns, url_index = _url_column(records, has_header, wanted)
    data = records[1:] if has_header else records
    return Layout(encoding=encoding, delimiter=delimiter, has_header=has_header,
                  columns=columns, url_index=url_index,
                  url_reason=_url_reason(columns if has_header else None, data, url_index, wanted),
                  url_alternatives=_url_alternatives(columns if has_header else None, data, url_index))


def _reject_binary(sample: bytes) -> None:
    for magic, message in _BINARY_SIGNATURES:
        if sample.startswith(magic):
            raise CsvError("not_csv", message, 415)
    if b"\x00" in sample:
        raise CsvError("not_csv", _BINARY_MESSAGE, 415)


def _sample_records(text: str, delimiter: str, truncated: bool, limit: int) -> list[list[str]]:
    """Up to ``limit`` non-blank records of the sample, minus one cut by the sample's end."""
    reader = _reader(io.StringIO(text, newline=""), delimiter)
    records: list[list[str]] = []
    try:
        for record in reader:
            if not _is_blank(record):
                records.append(record)
            if len(records) > limit:
                return records[:limit]
    except csv.Error:
        return records[:limit]
    if truncated and len(records) > 1:
        records.pop()
    return records


def _detect_delimiter(text: str, truncated: bool) -> str:
    """The delimiter giving the most records with the same field count (> 1); ',' otherwise."""
    best, best_score = ",", 0
    for delimiter in DELIMITERS:
        score = _consistency(_sample_records(text, delimiter, truncated, _DELIMITER_RECORDS))
        if score > best_score:
            best, best_score = delimiter, score
    return best


def _consistency(records: list[list[str]]) -> int:
    """How many records share the most common field count, or 0 when that count is 1."""
    widths = Counter(len(record) for record in records)
    if not widths:
        return 0
    width, count = max(widths.items(), key=lambda item: (item[1], item[0]))
    return count if width > 1 else 0


def _header_key(cell: str) -> str:
    return re.sub(r"[\s_\-]+", "", cell).lower()


def _known_header_index(header: list[str]) -> int | None:
    keys = [_header_key(cell) for cell in header]
    for name in URL_HEADERS:
        if name in keys:
            return keys.index(name)
    return None


def _named_index(header: list[str], wanted: str) -> int | None:
    """The header cell matching ``wanted``: case-insensitively, then ignoring spacing too."""
    lowered = [cell.strip().casefold() for cell in header]
    if wanted.casefold() in lowered:
        return lowered.index(wanted.casefold())
    keys = [_header_key(cell) for cell in header]
    key = _header_key(wanted)
    return keys.index(key) if key and key in keys else None


def _best_url_column(records: list[list[str]], width: int) -> int | None:
    """The column whose values most often look like URLs (leftmost on ties), if any does."""
    scores = [0] * width
    for record in records:
        for index, cell in enumerate(record[:width]):
            scores[index] += looks_like_url(cell)
    best = max(scores, default=0)
    return scores.index(best) if best else None


def _has_header(records: list[list[str]], wanted: str | None) -> bool:
    """Whether the first record names the columns rather than holding data."""
    first = records[0]
    if _known_header_index(first) is not None:
        return True
    if wanted is not None and _named_index(first, wanted) is not None:
        return True
    if any(looks_like_url(cell) for cell in first):
        return False
    rest = records[1:]
    best = _best_url_column(rest, max((len(record) for record in rest), default=0))
    if best is None or best >= len(first):
        return False
    cell = first[best].strip()
    return bool(cell) and not any(mark in cell for mark in "./:@")  # not a broken URL


def _url_column(records: list[list[str]], has_header: bool,
                wanted: str | None) -> tuple[tuple[str, ...], int]:
    """The column names and the URL column's index."""
    if has_header:
        header = [cell.strip() for cell in records[0]]
        index = _header_url_index(header, records[1:], wanted)
        return tuple(header), index
    width = max(len(record) for record in records)
    index = _headerless_url_index(records, width, wanted)
    return _generated_columns(width, index), index


# --- which URL column, and why ------------------------------------------------------------
# A wide export (Apollo, Sales Navigator, HubSpot, Clay) has several URL columns: the company's
# site, the person's and the company's LinkedIn, Facebook, Twitter... The opener is about the
# company, so its site wins over a profile, and a person's profile over a social page.

_SITE_WORDS = ("website", "site", "domain", "homepage")
_PROFILE_WORDS = ("linkedin", "profile")
_SOCIAL_WORDS = ("facebook", "twitter", "instagram", "youtube", "tiktok", "github", "angellist", "crunchbase")
_URL_WORDS = ("url", "link", "uri", "href")


def _header_rank(cell: str) -> int | None:
    """How likely a header names the URL column worth writing to: 0 a company site, 1 a plain
    URL/link, 2 a company profile, 3 a person's profile, 4 a social page; None: not a URL name."""
    key = _header_key(cell)
    if not key:
        return None
    if any(word in key for word in _SOCIAL_WORDS):
        return 4
    if any(word in key for word in _PROFILE_WORDS):
        return 2 if "company" in key or "organization" in key or "account" in key else 3
    if any(word in key for word in _SITE_WORDS):
        return 0
    if any(key.endswith(word) or key.startswith(word) for word in _URL_WORDS):
        return 1
    return None


_RANK_WORDS = {0: "a company site", 1: "a URL column", 2: "a company profile", 3: "a person's profile",
               4: "a social page"}


def _ranked_header_index(header: list[str], data: list[list[str]]) -> int | None:
    """The header that most likely names the company's site (leftmost on ties), among those whose
    sampled values hold a URL (any, when the sample has no data rows)."""
    ranks = [(rank, index) for index, cell in enumerate(header)
             if (rank := _header_rank(cell)) is not None
             and (not data or any(index < len(r) and looks_like_url(r[index]) for r in data))]
    return min(ranks)[1] if ranks else None


def _url_reason(header: tuple[str, ...] | None, data: list[list[str]], index: int, wanted: str | None) -> str:
    if wanted is not None:
        return f"url_column {wanted!r} was asked for"
    share = sum(looks_like_url(record[index]) for record in data if index < len(record))
    if header is None:
        return f"no header row; its values look like URLs ({share} of {len(data)} sampled rows)"
    name = header[index]
    rank = _header_rank(name)
    if _known_header_index(list(header)) == index or rank is not None:
        return f"header {name} names {_RANK_WORDS.get(rank if rank is not None else 1, 'a URL column')}"
    return f"its values look like URLs ({share} of {len(data)} sampled rows)"


def _url_alternatives(header: tuple[str, ...] | None, data: list[list[str]], index: int) -> tuple[str, ...]:
    """The other columns a caller might mean: named like URLs, or holding URL-like values."""
    width = len(header) if header is not None else max((len(record) for record in data), default=0)
    scores = [0] * width
    for record in data:
        for column, cell in enumerate(record[:width]):
            scores[column] += looks_like_url(cell)
    names = header or _generated_columns(width, index)
    candidates = []
    for column in range(width):
        rank = _header_rank(names[column]) if header is not None else None
        if column != index and (rank is not None or scores[column]):
            candidates.append((rank if rank is not None else 5, -scores[column], column))
    return tuple(names[column] for _rank, _score, column in sorted(candidates))


def _header_url_index(header: list[str], data: list[list[str]], wanted: str | None) -> int:
    if wanted is not None:
        index = _named_index(header, wanted)
        if index is None:
            index = _column_number(wanted, len(header))
        if index is None:
            raise CsvError("unknown_url_column",
                           f"Column '{wanted}' not found; the columns are: {', '.join(header)}")
        return index
    index = _known_header_index(header)
    ranked = _ranked_header_index(header, data)
    if index is None or (ranked is not None and (_header_rank(header[index]) or 0) >= 2
                         and (_header_rank(header[ranked]) or 0) < 2):
        index = ranked if ranked is not None else index  # a company's site over a profile
    if index is None:
        index = _best_url_column(data, len(header))
    if index is None:
        raise CsvError("no_url_column", _NO_URL_COLUMN_MESSAGE)
    return index


def url_choice(layout: Layout) -> dict:
    """The URL column chosen, why, and the other URL-like columns (for the upload answer)."""
    return {"column": layout.url_column, "why": layout.url_reason, "alternatives": list(layout.url_alternatives)}


def _headerless_url_index(records: list[list[str]], width: int, wanted: str | None) -> int:
    best = _best_url_column(records, width)
    if wanted is None:
        if best is None:
            raise CsvError("no_url_column", _NO_URL_COLUMN_MESSAGE)
        return best
    if _header_key(wanted) == "url" and best is not None:
        return best
    generated = re.fullmatch(r"column[\s_\-]*(\d+)", wanted, re.IGNORECASE)
    index = _column_number(generated.group(1) if generated else wanted, width)
    if index is None:
        raise CsvError("unknown_url_column",
                       f"Column '{wanted}' not found; the file has no header row, "
                       f"so pass a column number from 1 to {width}")
    return index


def _column_number(wanted: str, width: int) -> int | None:
    """The 0-based index for a 1-based column number given as text, if in range."""
    if wanted.isascii() and wanted.isdigit() and 1 <= int(wanted) <= width:
        return int(wanted) - 1
    return None


def _generated_columns(width: int, url_index: int) -> tuple[str, ...]:
    if width == 1:
        return ("url",)
    return tuple("url" if index == url_index else f"column_{index + 1}" for index in range(width))


# --- whole-file summary ---------------------------------------------------------------------


def split_sample(chunks: Iterable[bytes]) -> tuple[bytes, Iterator[bytes]]:
    """Read just enough of ``chunks`` for :func:`detect_layout`.

    Returns the first ``SAMPLE_SIZE`` bytes and an iterator over the whole stream again
    (the buffered bytes followed by the rest), so a one-shot stream is read once.
    """
    iterator = iter(chunks)
    head: list[bytes] = []
    size = 0
    for chunk in iterator:
        head.append(bytes(chunk))
        size += len(chunk)
        if size >= SAMPLE_SIZE:
            break
    buffered = b"".join(head)
    return buffered[:SAMPLE_SIZE], itertools.chain([buffered], iterator)


def summarize(chunks: Iterable[bytes], url_column: str | None = None) -> Summary:
    """Detect the layout, then stream every row, counting valid and invalid URLs."""
    sample, stream = split_sample(chunks)
    layout = detect_layout(sample, url_column)
    total = invalid = 0
    errors: list[dict] = []
    for row, _record in iter_rows(stream, layout):
        if row.url is not None:
            total += 1
            continue
        invalid += 1
        if len(errors) < MAX_ERRORS:
            errors.append({"row": row.row, "value": _clip(row.value), "message": row.error})
    if total == 0:
        raise CsvError("no_valid_urls", _no_valid_urls_message(layout, invalid, errors))
    return Summary(layout=layout, total_rows=total, invalid_rows=invalid, errors=errors)


def _clip(value: str) -> str:
    if len(value) <= MAX_ERROR_VALUE_LENGTH:
        return value
    return value[:MAX_ERROR_VALUE_LENGTH - 1] + "…"


def _no_valid_urls_message(layout: Layout, invalid: int, errors: list[dict]) -> str:
    message = f"The file has no valid URL in column '{layout.url_column}'"
    if errors:
        first = errors[0]
        message += f" ({invalid} rows checked; row {first['row']}: {first['message']})"
    return message + "; URLs must be http(s) addresses of public websites, like acme.com"


# --- a sample of a big file -----------------------------------------------------------------


@dataclass
class SampleSummary:
    """What the first bytes of a file say about all of it."""

    summary: Summary  # total_rows: valid URLs estimated for the whole file (exact when `whole`)
    whole: bool  # the sample is the whole file
    rows: int  # data rows read in the sample


def summarize_sample(sample: bytes, size: int, url_column: str | None = None) -> SampleSummary:
    """Layout, first errors and the file's valid URL count from its first bytes: counted exactly
    when ``sample`` is the whole file (``size`` bytes), else the sample's valid ratio times its
    rows per byte times ``size`` (the last record, which the sample may cut, is not counted).
    Raises CsvError as :func:`summarize` does (a sample without one valid URL included)."""
    whole = len(sample) >= size
    if whole:
        return SampleSummary(summarize([sample], url_column), True, -1)
    layout = detect_layout(sample[:SAMPLE_SIZE], url_column)
    cut = max(sample.rfind(b"\n"), sample.rfind(b"\r"))
    body = sample[:cut + 1] if cut >= 0 else b""
    valid = invalid = 0
    errors: list[dict] = []
    last: Row | None = None
    try:
        for row, _record in iter_rows([body], layout):
            last = row
            if row.url is not None:
                valid += 1
            else:
                invalid += 1
                if len(errors) < MAX_ERRORS:
                    errors.append({"row": row.row, "value": _clip(row.value), "message": row.error})
    except CsvError:  # a quoted field the cut left open: the rows before it are the sample
        pass
    rows = valid + invalid
    if last is not None and last.url is None and rows > 1:  # may be a record the cut split
        rows, invalid = rows - 1, invalid - 1
    if valid == 0:
        raise CsvError("no_valid_urls", _no_valid_urls_message(layout, invalid, errors)
                       .replace("in column", f"in the first {rows:,} rows of column"))
    estimate = max(valid, round(valid * size / max(1, len(body))))  # valid ratio x rows per byte x size
    return SampleSummary(Summary(layout=layout, total_rows=estimate, invalid_rows=invalid, errors=errors),
                         False, rows)
