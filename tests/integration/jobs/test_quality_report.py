"""What the API and the download show of the quality checks (SPEC "Openers you can trust",
"Where it shows"): the job's `quality` summary and options, the result rows' fields, the
`?quality=<flag>` filter and the download's opener_evidence / opener_quality / opener_language.
The rows and counters are written here the way the worker's save writes them (sql/0012_quality.sql),
so these tests do not depend on generation."""

from __future__ import annotations

import csv
import io
import json

import pytest

from tests.support.api import body, download, error_of, mark_urls_done, purge_queue, upload_and_process

SITES = b"url\n" + b"".join(f"site{i}.com\n".encode() for i in range(1, 6))


@pytest.fixture(autouse=True)
def clean(settings):
    purge_queue(settings.chunk_queue_url)


def set_quality(conn, job_id, row, *, flags=(), evidence=None, grounding=None, words=None, language=None,
                reused=False):
    conn.execute("""UPDATE urls SET quality = %s, evidence = %s, grounding = %s, words = %s, language = %s,
                           reused = %s WHERE job_id = %s AND row_number = %s""",
                 (list(flags), evidence, grounding, words, language, reused, job_id, row))


def set_job_quality(conn, job_id, counters, **options):
    assignments = "".join(f", {name} = %s" for name in options)
    conn.execute(f"UPDATE jobs SET quality = %s{assignments} WHERE id = %s",
                 (json.dumps(counters), *options.values(), job_id))


def job_of(client, job_id):
    return body(client.http.get(f"/api/jobs/{job_id}"))["job"]


# ---------------------------------------------------------------- the job

def test_a_new_job_has_an_empty_quality_summary_and_the_default_options(client):
    job_id, _ = upload_and_process(client)
    job = job_of(client, job_id)
    assert job["quality"] == {"verified": 0, "generic": 0, "flagged": {}, "duplicate_rate": 0, "median_words": None,
                              "regenerated": 0, "reused": 0}
    assert (job["grounding"], job["min_words"], job["max_words"], job["language"]) == ("strict", 8, 40, "auto")


def test_the_job_summarises_the_workers_counters_with_its_options(client, conn):
    job_id, _ = upload_and_process(client, SITES)
    mark_urls_done(conn, job_id, failed_rows=[5])  # four openers written
    set_job_quality(conn, job_id, {"verified": 2, "generic": 1, "unsupported": 1, "regenerated": 3, "reused": 1,
                                   "flagged": {"duplicate": 1, "too_long": 2, "spammy": 0},
                                   "words": {"12": 1, "9": 1, "30": 1, "20": 1}},
                    grounding="flag", min_words=5, max_words=30, language="de")
    job = job_of(client, job_id)
    assert job["quality"] == {"verified": 2, "generic": 1, "flagged": {"duplicate": 1, "too_long": 2},
                              "duplicate_rate": 0.25, "median_words": 16, "regenerated": 3, "reused": 1}
    assert list(job["quality"]["flagged"]) == ["too_long", "duplicate"]  # SPEC's order, whatever jsonb's
    assert (job["grounding"], job["min_words"], job["max_words"], job["language"]) == ("flag", 5, 30, "de")
    listed = body(client.http.get("/api/jobs"))["jobs"]
    assert [j["quality"] for j in listed if j["id"] == job_id] == [job["quality"]]


@pytest.mark.parametrize("words, median", [
    ({"10": 2, "31": 1}, 10),           # odd count: the middle value
    ({"7": 1, "8": 1}, 7.5),            # even count: the mean of the two middle values
    ({"40": 3, "5": 1, "6": 0}, 40),    # keys are numbers (not sorted as text); empty bins count nothing
])
def test_median_words_comes_from_the_histogram(client, conn, words, median):
    job_id, _ = upload_and_process(client)
    set_job_quality(conn, job_id, {"words": words})
    assert job_of(client, job_id)["quality"]["median_words"] == median


# ---------------------------------------------------------------- results

def test_result_rows_carry_what_the_checks_found(client, conn):
    job_id, _ = upload_and_process(client, SITES)
    mark_urls_done(conn, job_id)
    set_quality(conn, job_id, 1, evidence="family bakery since 1921", grounding="verified", words=14, language="de",
                reused=True)
    set_quality(conn, job_id, 2, flags=["duplicate", "too_long"], grounding="generic", words=52, language="en")
    rows = body(client.http.get(f"/api/jobs/{job_id}/results?limit=2"))["results"]
    first, second = ({k: r[k] for k in ("evidence", "grounding", "quality", "words", "language", "reused")}
                     for r in rows)
    assert first == {"evidence": "family bakery since 1921", "grounding": "verified", "quality": [], "words": 14,
                     "language": "de", "reused": True}
    assert second == {"evidence": None, "grounding": "generic", "quality": ["duplicate", "too_long"], "words": 52,
                      "language": "en", "reused": False}


def test_results_filter_by_flag_with_keyset_pages_and_only_the_callers_rows(client, conn, make_account):
    job_id, _ = upload_and_process(client, SITES)
    mark_urls_done(conn, job_id)
    for row, flags in ((1, ["duplicate"]), (2, ["spammy"]), (3, ["too_long", "duplicate"]), (5, ["duplicate"])):
        set_quality(conn, job_id, row, flags=flags)
    other = client.as_account(make_account())
    other_job, _ = upload_and_process(other, SITES)
    mark_urls_done(conn, other_job)
    for row in range(1, 6):
        set_quality(conn, other_job, row, flags=["duplicate"])

    first = body(client.http.get(f"/api/jobs/{job_id}/results?quality=duplicate&limit=2"))
    assert [r["row"] for r in first["results"]] == [1, 3]
    rest = body(client.http.get(f"/api/jobs/{job_id}/results?quality=duplicate&limit=2&cursor={first['next_cursor']}"))
    assert [r["row"] for r in rest["results"]] == [5] and rest["next_cursor"] is None
    assert all("duplicate" in r["quality"] for r in first["results"] + rest["results"])
    spammy = body(client.http.get(f"/api/jobs/{job_id}/results?quality=spammy&status=completed"))["results"]
    assert [r["row"] for r in spammy] == [2]
    assert body(client.http.get(f"/api/jobs/{job_id}/results?quality=edited"))["results"] == []
    # another account's job is an unknown job, filter or not
    assert error_of(client.http.get(f"/api/jobs/{other_job}/results?quality=duplicate")) == (404, "job_not_found")
    assert error_of(other.http.get(f"/api/jobs/{job_id}/results?quality=duplicate")) == (404, "job_not_found")


@pytest.mark.parametrize("flag", ["dupe", "DUPLICATE", "duplicate,spammy"])
def test_an_unknown_flag_is_400_bad_quality_naming_the_flags(client, flag):
    job_id, _ = upload_and_process(client)
    response = client.http.get(f"/api/jobs/{job_id}/results?quality={flag}")
    assert error_of(response) == (400, "bad_quality")
    assert "too_long" in body(response)["error"]["message"] and "edited" in body(response)["error"]["message"]


# ---------------------------------------------------------------- download

def test_the_download_has_evidence_flags_and_language_after_the_other_columns(client, conn):
    data = b"name,website\nAcme,acme.com\nBad,javascript:x\nGlobex,globex.com\nInitech,initech.com\n"
    job_id, _ = upload_and_process(client, data)
    mark_urls_done(conn, job_id, failed_rows=[3])
    set_quality(conn, job_id, 1, evidence="=HYPERLINK(\"x\") since 1921", grounding="verified", words=12,
                language="fr")
    set_quality(conn, job_id, 4, flags=["too_long", "spammy", "duplicate"], words=60, language="en")
    rows = list(csv.reader(io.StringIO(download(client, job_id).body.decode("utf-8"), newline="")))
    assert rows[0][-7:] == ["opener", "opener_status", "opener_error", "context_status", "opener_evidence",
                            "opener_quality", "opener_language"]
    assert rows[1][-3:] == ["'=HYPERLINK(\"x\") since 1921", "", "fr"]  # neutralised like every cell
    assert rows[2][-3:] == ["", "", ""]  # an invalid row
    assert rows[3][-3:] == ["", "", ""]  # a failed one
    assert rows[4][-3:] == ["", "too_long;spammy;duplicate", "en"]
