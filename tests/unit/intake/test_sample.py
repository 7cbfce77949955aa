"""What `process` learns from the first bytes of a big file (csvfile.summarize_sample)."""

from __future__ import annotations

import pytest

from chalicelib.intake import csvfile


def export(rows: int, invalid_every: int = 0) -> bytes:
    lines = ["Company,Website,Notes"]
    for n in range(1, rows + 1):
        site = "n/a" if invalid_every and n % invalid_every == 0 else f"https://site{n:06d}.example.com/"
        lines.append(f'Company {n:06d},{site},"a note, with a comma"')
    return ("\n".join(lines) + "\n").encode()


def test_a_whole_file_in_the_sample_is_counted_exactly():
    data = export(300, invalid_every=10)
    sampled = csvfile.summarize_sample(data, len(data))
    assert sampled.whole and (sampled.summary.total_rows, sampled.summary.invalid_rows) == (270, 30)
    assert sampled.summary.layout.url_column == "Website"


def test_a_cut_sample_estimates_from_its_valid_share_and_rows_per_byte():
    data = export(20000, invalid_every=4)
    sampled = csvfile.summarize_sample(data[:100_000], len(data))
    assert not sampled.whole
    assert abs(sampled.summary.total_rows - 15000) < 15000 * 0.03, sampled.summary.total_rows
    assert sampled.summary.errors[0]["row"] == 4 and len(sampled.summary.errors) == csvfile.MAX_ERRORS


def test_a_sample_cut_inside_a_quoted_field_still_estimates():
    data = export(5000)
    cut = data.index(b'"a note', 50_000) + 3  # inside the quotes
    sampled = csvfile.summarize_sample(data[:cut], len(data))
    assert abs(sampled.summary.total_rows - 5000) < 5000 * 0.03


def test_a_sample_without_a_valid_url_is_refused():
    data = export(5000, invalid_every=1)
    with pytest.raises(csvfile.CsvError) as caught:
        csvfile.summarize_sample(data[:50_000], len(data))
    assert caught.value.code == "no_valid_urls" and "in the first" in caught.value.message
