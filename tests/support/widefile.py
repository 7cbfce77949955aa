"""A wide lead export as Apollo, Sales Navigator or Clay give them (issue 24): 40 columns with a
company website, a person's and the company's LinkedIn, Facebook and Twitter URLs, keywords,
technologies and a description: about 1 KB a row. Deterministic for a given row count."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

COLUMNS = (
    "First Name", "Last Name", "Title", "Company", "Company Name for Emails", "Email", "Email Status",
    "Seniority", "Departments", "Contact Owner", "First Phone", "Work Direct Phone", "Mobile Phone",
    "Stage", "Lists", "Last Contacted", "Account Owner", "# Employees", "Industry", "Keywords",
    "Person Linkedin Url", "Website", "Company Linkedin Url", "Facebook Url", "Twitter Url", "City",
    "State", "Country", "Company Address", "Company City", "Company State", "Company Country",
    "Company Phone", "SEO Description", "Technologies", "Annual Revenue", "Total Funding",
    "Latest Funding", "Latest Funding Amount", "Last Raised At",
)
WORDS = ("analytics", "cloud", "logistics", "payments", "security", "retail", "health", "data", "ops", "growth",
         "platform", "marketplace", "automation", "compliance", "insurance", "energy", "travel", "media")


def _row(i: int) -> list[str]:
    name = f"company{i}"
    words = [WORDS[(i * 7 + k) % len(WORDS)] for k in range(12)]
    return [
        f"Ann{i}", f"Lee{i}", "VP Operations", f"Company {i} Inc", f"Company {i}", f"ann{i}@{name}.example.com",
        "Verified", "VP", "Operations", "Sam", "+1 555 0100", "+1 555 0101", "+1 555 0102", "Cold",
        "Q3 leads", "2026-01-05", "Sam", str(10 + i % 5000), "Information Technology", ", ".join(words),
        f"http://www.linkedin.com/in/ann-lee-{i}", f"http://www.{name}.example.com",
        f"http://www.linkedin.com/company/{name}", f"https://facebook.com/{name}", f"https://twitter.com/{name}",
        "Austin", "Texas", "United States", f"{i} Main St, Austin, Texas, United States", "Austin", "Texas",
        "United States", "+1 555 0199",
        f"Company {i} builds {' and '.join(words[:6])} software for mid-sized teams across North America "
        f"and Europe, helping operations leaders cut reporting time and make better decisions every week.",
        ", ".join(w.title() for w in words[3:12]) + ", Google Analytics, Salesforce, Slack, Zendesk, AWS",
        str(1_000_000 + i * 37), str(5_000_000 + i), "Series A", str(2_000_000 + i), "2025-06-01",
    ]


def wide_rows(rows: int) -> Iterator[bytes]:
    """The file in pieces (header first), for writing big ones without holding them."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for i in range(rows):
        writer.writerow(_row(i))
        if buffer.tell() > 1 << 20:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def wide_csv(rows: int) -> bytes:
    return b"".join(wide_rows(rows))


def rows_for_size(size: int) -> int:
    """About how many rows make a file of `size` bytes."""
    return max(1, size * 10 // len(wide_csv(10)))


def padded_csv(urls: int, size: int) -> bytes:
    """A wide file of about `size` bytes with only `urls` rows (a person's LinkedIn, the company's
    site and Facebook page, then a long notes cell): big enough to be uploaded by parts, few
    enough URLs to process in seconds."""
    pad = max(0, size // urls - 150)
    assert pad < 1_000_000, "a cell holds at most 1 MiB"
    rows = [f"https://www.linkedin.com/in/ann-{i}/,https://company{i}.example.com/,"
            f"https://facebook.com/company{i},{chr(97 + i % 26) * pad}\n" for i in range(urls)]
    return ("Person Linkedin Url,Website,Facebook Url,Notes\n" + "".join(rows)).encode()
