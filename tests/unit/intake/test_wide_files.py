"""The URL column of a wide export (issue 24): the company site over profiles and social pages,
with why and the other URL-like columns, and the caller's choice over all of them."""

from __future__ import annotations

import pytest

from chalicelib.intake import csvfile
from tests.support.widefile import wide_csv


def choice(data: bytes, url_column: str | None = None) -> dict:
    return csvfile.url_choice(csvfile.detect_layout(data[:csvfile.SAMPLE_SIZE], url_column))


def test_an_apollo_export_reads_the_company_website_and_names_the_others():
    assert choice(wide_csv(50)) == {
        "column": "Website", "why": "header Website names a company site",
        "alternatives": ["Company Linkedin Url", "Person Linkedin Url", "Facebook Url", "Twitter Url"]}


def test_the_callers_column_wins_and_the_website_becomes_an_alternative():
    got = choice(wide_csv(5), "person linkedin url")
    assert got["column"] == "Person Linkedin Url" and got["why"] == "url_column 'person linkedin url' was asked for"
    assert got["alternatives"][0] == "Website"


@pytest.mark.parametrize(("header", "row", "column", "why"), [
    # a header naming a company site that is not an exact name beats an exact "linkedin"
    ("Name,LinkedIn,Company Website Address", "Ann,https://linkedin.com/in/ann,acme.com",
     "Company Website Address", "header Company Website Address names a company site"),
    # profiles only: the company's over the person's, the person's over a social page
    ("Facebook Url,Person Linkedin Url,Company Linkedin Url",
     "https://facebook.com/acme,https://linkedin.com/in/ann,https://linkedin.com/company/acme",
     "Company Linkedin Url", "header Company Linkedin Url names a company profile"),
    ("Facebook Url,Person Linkedin Url", "https://facebook.com/acme,https://linkedin.com/in/ann",
     "Person Linkedin Url", "header Person Linkedin Url names a person's profile"),
    # an exact name keeps its place ("url" before "website", as before)
    ("url,website", "https://a.example.com,https://b.example.com", "url", "header url names a URL column"),
    # a header that only looks like a site name, with no URL among its values, is passed over
    ("Site Visits,Domain", "12,acme.com", "Domain", "header Domain names a company site"),
    # no URL-like header: the values decide, and say so
    ("Name,Where", "Ann,acme.com", "Where", "its values look like URLs (1 of 1 sampled rows)"),
])
def test_which_column_and_why(header, row, column, why):
    got = choice(f"{header}\n{row}\n".encode())
    assert (got["column"], got["why"]) == (column, why)


def test_a_headerless_file_says_its_values_decided():
    got = choice(b"Ann,acme.com\nBob,globex.com\n")
    assert got == {"column": "url", "why": "no header row; its values look like URLs (2 of 2 sampled rows)",
                   "alternatives": []}


def test_alternatives_are_columns_that_name_or_hold_urls_only():
    got = choice(b"Company,Website,Notes,Blog Link,Other\nAcme,acme.com,great,,https://x.example.com\n")
    assert got["alternatives"] == ["Blog Link", "Other"]


def test_an_old_stored_layout_without_the_new_fields_still_reads():
    layout = csvfile.Layout(encoding="utf-8", delimiter=",", has_header=True, columns=("url",), url_index=0)
    assert csvfile.url_choice(layout) == {"column": "url", "why": "", "alternatives": []}
