"""End to end with page context ON and the quality checks through the whole stack: `chalice
local`, LocalStack, PostgreSQL, Redis, the event runner and the fake OpenAI server (the rest of
the e2e suite runs with page context off). Each prospect is a page of a local fake site, reached
through OUTBOUND_ALLOW_NETWORKS; the fake model grounds its opener on the page as a real one
asked for ``{"opener", "evidence"}`` does. Every opener must come back ``verified`` with
evidence taken from its own page, and the job's quality report must count what the rows say."""

from __future__ import annotations

import random
import uuid
from contextlib import ExitStack

from chalicelib.outbound.summaries import summarize_html
from tests.support.e2e import EXTRA_COLUMNS, assert_finished_cleanly, connect, url_rows
from tests.support.fake_site import FakeSite, html

PAGES = 6
SYLLABLES = ["ka", "lo", "mi", "ne", "pu", "ra", "si", "to", "vu", "ze", "ba", "do", "fe", "gi", "ho", "ju"]


def made_up_words(pick: random.Random, n: int) -> list[str]:
    """Words of four syllables found on no other page and in no CSV cell: evidence holding one
    came from that page. (Pages share few words, so their openers are not near-duplicates.)"""
    return ["".join(pick.choice(SYLLABLES) for _ in range(4)) for _ in range(n)]


def test_a_job_with_page_context_and_the_checks_ships_openers_grounded_on_each_page(fresh, capsys):
    stack, api = fresh, fresh.api
    stack.stop_runner()  # started below, once the rows point at the sites
    pick = random.Random(20)
    tag = f"pq{uuid.uuid4().hex[:6]}"
    with ExitStack() as sites:
        # One site per prospect, each on its own loopback address: the opener names its host, and
        # prospects on one address would share their first words (a duplicate, rightly).
        pages = []
        for i in range(PAGES):
            site = sites.enter_context(FakeSite(host=f"127.0.0.{i + 2}"))
            words = made_up_words(pick, 8)
            body = html(title=f"{' '.join(words[:4]).title()} bakery", description=f"We bake {' '.join(words[4:])}.")
            site.page("/", body)
            pages.append({"url": site.url("/"), "words": set(words), "summary": summarize_html(body), "site": site})
        data = "company,website\n" + "".join(f"Company {i},{tag}-{i}.example.com\n" for i in range(PAGES))
        job_id = api.upload(f"{tag}.csv", data.encode())["job"]["id"]
        started = api.process(job_id, page_context=True, instructions="We deliver flour to bakeries; be brief.")
        assert started["job"]["page_context"] is True
        # An upload refuses local addresses, rightly: the rows (made at the start) are pointed at
        # the sites before the runner takes the job's chunks.
        with connect(stack.database_url) as conn:
            for number, page in enumerate(pages, start=1):
                updated = conn.execute("UPDATE urls SET url = %s WHERE job_id = %s AND row_number = %s",
                                       (page["url"], job_id, number))
                assert updated.rowcount == 1, number
        stack.use_runner(OUTBOUND_ALLOW_NETWORKS="127.0.0.0/8")
        stack.wait_job(job_id, urls=PAGES)
        fetched = [dict(page["site"].hits) for page in pages]
        assert all(hits.get("/", 0) >= 1 for hits in fetched), (  # every page was fetched
            fetched, url_rows(stack.database_url, job_id))

    assert_finished_cleanly(stack.database_url, job_id, PAGES)
    results = api.call("GET", f"/api/jobs/{job_id}/results?limit=100").json()["results"]
    by_url = {page["url"]: page for page in pages}
    assert sorted(r["url"] for r in results) == sorted(by_url)
    for row in results:
        page = by_url[row["url"]]
        assert (row["status"], row["context_status"], row["grounding"], row["quality"]) == (
            "completed", "fetched", "verified", []), row
        evidence = row["evidence"]
        # The evidence is the page's own words: in the summary the model was given, holding a
        # word found on this page only (not in the row, not on another page).
        assert evidence and evidence.casefold() in page["summary"].casefold(), (evidence, page["summary"])
        assert {w for w in page["words"] if w in evidence.lower()}, (evidence, page["words"])
        assert evidence in row["opener"] and row["language"] == "en"

    job = api.job(job_id)
    quality = job["quality"]
    assert quality["verified"] == PAGES and quality["generic"] == 0, quality
    assert quality["flagged"] == {} and quality["duplicate_rate"] == 0 and quality["regenerated"] == 0, quality
    assert quality["median_words"] is not None and quality["median_words"] > 0, quality
    generic = api.call("GET", f"/api/jobs/{job_id}/results?limit=100&quality=generic").json()["results"]
    assert generic == []  # the quality filter: no row carries the flag

    header, *body = api.download(job_id)
    assert header[-len(EXTRA_COLUMNS):] == EXTRA_COLUMNS
    evidence_at, quality_at = header.index("opener_evidence"), header.index("opener_quality")
    assert len(body) == PAGES
    for row in results:
        line = next(line for line in body if line[header.index("opener")] == row["opener"])
        assert (line[evidence_at], line[quality_at], line[header.index("context_status")]) == (
            row["evidence"], "", "fetched")
    with capsys.disabled():
        print(f"\n[e2e] page context + checks: {PAGES} pages fetched, {quality['verified']} openers verified "
              f"on their page's words, report {quality}")
