"""csvfile: layout detection, streaming decode/parse across chunk boundaries, upload summary."""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Iterable

import pytest

from chalicelib.intake.csvfile import (
    FIELD_SIZE_LIMIT,
    MAX_ERRORS,
    MAX_LINE_LENGTH,
    SAMPLE_SIZE,
    CsvError,
    Layout,
    Row,
    detect_layout,
    iter_records,
    iter_rows,
    split_sample,
    summarize,
)


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def read(data: bytes, url_column: str | None = None,
         size: int | None = None) -> tuple[Layout, list[tuple[Row, list[str]]]]:
    layout = detect_layout(data[:SAMPLE_SIZE], url_column)
    chunks = chunked(data, size) if size else [data]
    return layout, list(iter_rows(chunks, layout))


def urls(rows: Iterable[tuple[Row, list[str]]]) -> list[str | None]:
    return [row.url for row, _ in rows]


def csv_error(data: bytes | Iterable[bytes], url_column: str | None = None) -> CsvError:
    with pytest.raises(CsvError) as caught:
        summarize([data] if isinstance(data, bytes) else data, url_column)
    return caught.value


# --- encodings ------------------------------------------------------------------------------


def test_utf8_bom_is_stripped() -> None:
    layout, rows = read("\ufeffurl,name\nacme.com,Zoë\n".encode())
    assert layout.encoding == "utf-8"
    assert layout.columns == ("url", "name")
    assert rows == [(Row(1, "https://acme.com/", "acme.com", None), ["acme.com", "Zoë"])]


def test_cp1252_file_is_decoded() -> None:
    data = b"name;url\nCaf\xe9 \x80;cafe.fr\nOdd \x81;odd.fr\n"
    layout, rows = read(data)
    assert layout.encoding == "cp1252"
    assert [record for _, record in rows] == [["Café €", "cafe.fr"], ["Odd \x81", "odd.fr"]]


def test_bom_with_cp1252_body_is_stripped_too() -> None:
    layout, rows = read(b"\xef\xbb\xbfurl,name\nacme.com,Caf\xe9\n")
    assert layout.encoding == "cp1252"
    assert layout.columns == ("url", "name")
    assert rows[0][1] == ["acme.com", "Café"]


def test_stray_byte_after_the_sample_falls_back_to_cp1252() -> None:
    head = b"url,name\n" + b"acme.com,plain ascii\n" * (SAMPLE_SIZE // 20 + 10)
    data = head + b"cafe.fr,Caf\xe9\n"
    layout, rows = read(data, size=4096)
    assert layout.encoding == "utf-8"
    assert rows[-1][1] == ["cafe.fr", "Café"]


def test_multibyte_char_cut_by_the_sample_keeps_utf8() -> None:
    line = "acme.com,Zoë\n".encode()
    data = b"url,name\n" + line * (SAMPLE_SIZE // len(line) + 5)
    cut = next(i for i in range(SAMPLE_SIZE - 20, SAMPLE_SIZE + 20) if data[i] == 0xC3)
    layout = detect_layout(data[:cut + 1])  # ends between the two bytes of "ë"
    assert layout.encoding == "utf-8"


# --- delimiters, quoting, line endings ------------------------------------------------------


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_delimiter_is_detected(delimiter: str) -> None:
    text = delimiter.join(["name", "website", "city"]) + "\n"
    text += delimiter.join(["Acme", "acme.com", "Paris, FR"]) + "\n"
    text += delimiter.join(["Beta", "beta.io", "Lyon; FR"]) + "\n"
    layout, rows = read(text.encode())
    assert layout.delimiter == delimiter
    assert layout.url_column == "website"
    assert urls(rows) == ["https://acme.com/", "https://beta.io/"]


def test_quoted_fields_with_delimiters_and_newlines_and_crlf() -> None:
    data = (b'name,url,notes\r\n"Acme, Inc.",acme.com,"line one\r\nline ""two"""\r\n'
            b'Beta, "https://beta.io/a,b", "x"\r\n')
    layout, rows = read(data)
    assert layout.delimiter == ","
    assert [record for _, record in rows] == [
        ["Acme, Inc.", "acme.com", 'line one\r\nline "two"'],
        ["Beta", "https://beta.io/a,b", "x"],
    ]
    assert [row.row for row, _ in rows] == [1, 2]


def test_bare_cr_line_endings() -> None:
    _, rows = read(b"url\racme.com\rbeta.io\r")
    assert urls(rows) == ["https://acme.com/", "https://beta.io/"]


RICH_FILE = (
    "\ufeffCompany;Web Site;Notes\r\n"
    '"Zoë & Co; Ltd";zoe.fr;"multi\r\nline ""quoted"" €"\r\n'
    "\r\n"
    "Ünïcode;https://bücher.de/straße;\n"
    "Bad;javascript:alert(1);x\r"
    "Short\r\n"
    "Last;last.io;no newline at end"
).encode()


def test_chunk_boundaries_do_not_change_anything() -> None:
    layout, whole = read(RICH_FILE)
    assert layout.delimiter == ";"
    assert layout.url_column == "Web Site"
    for size in (1, 2, 3, 7, 64):
        assert read(RICH_FILE, size=size) == (layout, whole), size
    assert [row.row for row, _ in whole] == [1, 2, 3, 4, 5]
    assert urls(whole) == ["https://zoe.fr/", "https://xn--bcher-kva.de/straße", None, None,
                           "https://last.io/"]
    assert whole[0][1][2] == 'multi\r\nline "quoted" €'
    assert whole[3][0].error == "empty value"  # ragged row: no URL cell


def test_sample_cut_mid_record_gives_the_same_layout() -> None:
    data = b"name,url\n" + b"".join(b"n%d,site%d.com\n" % (i, i) for i in range(10_000))
    assert len(data) > SAMPLE_SIZE
    assert detect_layout(data[:SAMPLE_SIZE]) == detect_layout(data[:SAMPLE_SIZE - 3])


# --- header and URL column ------------------------------------------------------------------


def test_known_header_name_wins_by_priority() -> None:
    layout, _ = read(b"LinkedIn,Company URL,Website,URL\nx.com,y.com,z.com,w.com\n")
    assert layout.has_header
    assert layout.url_column == "URL"
    layout, _ = read(b"linkedin_url,Web-Site\nx.com,y.com\n")
    assert layout.url_column == "Web-Site"


def test_header_without_known_names_is_detected_by_content() -> None:
    layout, rows = read(b"Company,Homepage address\nAcme,acme.com\nBeta,beta.io\n")
    assert layout.has_header
    assert layout.columns == ("Company", "Homepage address")
    assert layout.url_index == 1
    assert urls(rows) == ["https://acme.com/", "https://beta.io/"]


def test_headerless_file_gets_generated_column_names() -> None:
    layout, rows = read(b"Acme,acme.com,FR\nBeta,localhost,DE\nGamma,gamma.io,US\n")
    assert not layout.has_header
    assert layout.columns == ("column_1", "url", "column_3")
    assert layout.url_column == "url"
    assert urls(rows) == ["https://acme.com/", None, "https://gamma.io/"]


def test_headerless_single_column() -> None:
    layout, rows = read(b"acme.com\nwww.beta.io/about\n")
    assert (layout.has_header, layout.columns, layout.url_index) == (False, ("url",), 0)
    assert urls(rows) == ["https://acme.com/", "https://www.beta.io/about"]


def test_headerless_first_row_with_a_broken_url_is_still_data() -> None:
    layout, rows = read(b"Acme,http://localhost/\nBeta,beta.io\n")
    assert not layout.has_header
    assert [row.error is None for row, _ in rows] == [False, True]


def test_url_column_is_chosen_by_content() -> None:
    layout, _ = read(b"name,email,link_to_site\nAcme,a@acme.com,acme.com\nB,b@b.io,b.io\n")
    assert layout.url_column == "link_to_site"


@pytest.mark.parametrize("wanted", ["Second Site", "second_site", "SECOND-SITE", " second site "])
def test_explicit_url_column_by_name(wanted: str) -> None:
    data = b"website,Second Site\nacme.com,beta.io\n"
    layout, rows = read(data, wanted)
    assert layout.url_column == "Second Site"
    assert urls(rows) == ["https://beta.io/"]


def test_explicit_url_column_makes_an_unusual_first_row_the_header() -> None:
    layout, _ = read(b"a,b\nacme.com,beta.io\n", "b")
    assert layout.has_header
    assert layout.url_index == 1


def test_explicit_column_number_for_a_headerless_file() -> None:
    data = b"acme.com,beta.io\ngamma.io,delta.io\n"
    for wanted in ("2", "column_2"):
        layout, rows = read(data, wanted)
        assert (layout.has_header, layout.columns, layout.url_index) == (
            False, ("column_1", "url"), 1)
        assert urls(rows) == ["https://beta.io/", "https://delta.io/"]


def test_unknown_url_column_lists_the_columns() -> None:
    error = csv_error(b"name,website,city\nAcme,acme.com,Paris\n", "homepage")
    assert (error.code, error.status) == ("unknown_url_column", 400)
    assert error.message == "Column 'homepage' not found; the columns are: name, website, city"
    error = csv_error(b"acme.com,x\n", "9")
    assert error.code == "unknown_url_column"
    assert "from 1 to 2" in error.message


def test_no_url_column() -> None:
    error = csv_error(b"name,city\nAcme,Paris\nBeta,Lyon\n")
    assert (error.code, error.status) == ("no_url_column", 400)
    assert "url_column" in error.message


# --- rows -----------------------------------------------------------------------------------


def test_blank_lines_are_not_rows() -> None:
    data = b"\n\nurl,name\n\nacme.com,a\n,\n  ,  \n\t\nbeta.io,b\n\n"
    layout, rows = read(data)
    assert layout.has_header
    assert [(row.row, row.url) for row, _ in rows] == [(1, "https://acme.com/"),
                                                      (2, "https://beta.io/")]
    assert list(iter_records([data], layout)) == [["acme.com", "a"], ["beta.io", "b"]]


def test_summary_counts_every_invalid_row_but_lists_twenty() -> None:
    lines = ["url"] + [f"bad value {i}" if i % 2 else f"site{i}.com" for i in range(60)]
    summary = summarize(chunked("\n".join(lines).encode(), 100))
    assert (summary.total_rows, summary.invalid_rows) == (30, 30)
    assert len(summary.errors) == MAX_ERRORS
    assert summary.errors[0] == {"row": 2, "value": "bad value 1", "message": "contains spaces"}
    assert summary.errors[-1]["row"] == 40
    assert summary.layout.url_column == "url"


def test_reported_values_are_clipped() -> None:
    summary = summarize([b"url\nacme.com\n" + b"x" * 5000 + b"\n"])
    assert len(summary.errors[0]["value"]) <= 200


def test_no_valid_urls() -> None:
    error = csv_error(b"url\nlocalhost\nftp://acme.com\n")
    assert (error.code, error.status) == ("no_valid_urls", 400)
    assert "no valid URL" in error.message
    assert csv_error(b"url\n").code == "no_valid_urls"


def test_split_sample_replays_the_whole_stream() -> None:
    data = bytes(range(256)) * 600
    sample, stream = split_sample(iter(chunked(data, 1000)))
    assert sample == data[:SAMPLE_SIZE]
    assert b"".join(stream) == data


# --- rejected files -------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "hint"), [
    (b"url\nacme.com\x00\n", "binary"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF"),
    (b"PK\x03\x04\x14\x00\x06\x00", "Excel"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\x00", "Excel"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG"),
    (b"\x1f\x8b\x08\x00", "gzip"),
    ("url\nacme.com\n".encode("utf-16"), "UTF-16"),
])
def test_binary_files_are_not_csv(data: bytes, hint: str) -> None:
    error = csv_error(data)
    assert (error.code, error.status) == ("not_csv", 415)
    assert hint in error.message
    assert error.to_dict() == {"error": {"code": "not_csv", "message": error.message}}


@pytest.mark.parametrize("data", [b"", b"  \r\n\t\n", b"\xef\xbb\xbf", b",,\n , \n"])
def test_empty_files(data: bytes) -> None:
    error = csv_error(data)
    assert (error.code, error.status) == ("empty_file", 400)


def test_empty_iterable_is_an_empty_file() -> None:
    assert csv_error([]).code == "empty_file"


def test_oversized_field_is_unparseable_with_its_row() -> None:
    data = b'url,notes\nacme.com,ok\nbeta.io,"' + b"x" * (FIELD_SIZE_LIMIT + 10) + b'"\n'
    error = csv_error(chunked(data, SAMPLE_SIZE))
    assert (error.code, error.status) == ("unparseable_csv", 400)
    assert "data row 2" in error.message


def test_overlong_line_is_unparseable() -> None:
    data = b"url,notes\nacme.com,ok\n" + b"a," * (MAX_LINE_LENGTH // 2 + 1) + b"\n"
    error = csv_error(chunked(data, SAMPLE_SIZE))
    assert error.code == "unparseable_csv"
    assert "data row 2" in error.message


# --- memory ---------------------------------------------------------------------------------


def test_100k_rows_stream_in_bounded_memory() -> None:
    block = b"".join(b"Company %d,https://company%d.example.com/about,\"note, %d\"\r\n" % (i, i, i)
                     for i in range(1000))
    file_size = len(block) * 100 + len(b"name,website,notes\r\n")
    layout = detect_layout(b"name,website,notes\r\n" + block[:SAMPLE_SIZE])

    def chunks() -> Iterable[bytes]:
        return itertools.chain([b"name,website,notes\r\n"], itertools.repeat(block, 100))

    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_records(chunks(), layout))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 100_000
    assert peak < 1_000_000 < file_size // 5
