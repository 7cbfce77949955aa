"""Unit tests for chalicelib.generation.reuse: what a fingerprint covers, and how an earlier
opener is matched to a row's page and turned into a reused result."""

from __future__ import annotations

import pytest

from chalicelib.generation import reuse

BASE = {"account_id": "acc-1", "url": "https://acme.com/", "instructions": "We sell robots. Mention {{city}}.",
        "fields": {"city": "Berlin"}, "model": "gpt-4o-mini", "language": "auto", "min_words": 8, "max_words": 40}


def fp(**changes) -> bytes:
    return reuse.fingerprint(**{**BASE, **changes})


def test_the_fingerprint_is_32_bytes_and_stable() -> None:
    assert len(fp()) == 32 and fp() == fp()


@pytest.mark.parametrize("spelling", ["https://ACME.com/", "https://acme.com:443/", "https://acme.com",
                                      "  https://acme.com/#team "])
def test_spellings_of_the_same_url_share_a_fingerprint(spelling: str) -> None:
    assert fp(url=spelling) == fp()


@pytest.mark.parametrize("change", [
    {"account_id": "acc-2"}, {"url": "https://acme.com/about"}, {"url": "http://acme.com/"},
    {"instructions": "We sell drones. Mention {{city}}."}, {"fields": {"city": "Paris"}},
    {"fields": {"city": "Berlin", "name": "Ann"}}, {"model": "gpt-4o"}, {"language": "de"},
    {"min_words": 9}, {"max_words": 30}, {"feedback": "Shorter, please."}, {"variants": 2},
])
def test_every_input_of_the_opener_changes_the_fingerprint(change: dict) -> None:
    assert fp(**change) != fp()


def test_field_order_and_surrounding_spaces_of_the_instructions_do_not_matter() -> None:
    two = {"city": "Berlin", "name": "Ann"}
    assert fp(fields=two) == fp(fields=dict(reversed(list(two.items()))))
    assert fp(instructions="  " + BASE["instructions"] + "\n") == fp()
    assert fp(fields=None) == fp(fields={})


def test_a_job_row_fingerprint_uses_the_jobs_options_and_the_rows_feedback() -> None:
    job = {"account_id": "acc-1", "instructions": BASE["instructions"], "model": "gpt-4o-mini", "language": "auto",
           "min_words": 8, "max_words": 40}
    row = {"url": "https://acme.com/", "fields": {"city": "Berlin"}}
    assert reuse.job_fingerprint(job, row) == fp()
    assert reuse.job_fingerprint(job, {**row, "feedback": "Shorter."}) == fp(feedback="Shorter.")


def test_the_page_hash_tells_pages_apart_and_is_none_without_one() -> None:
    assert reuse.page_hash(None) is None and reuse.page_hash("") is None
    assert reuse.page_hash("Title: Acme") == reuse.page_hash("Title: Acme") != reuse.page_hash("Title: Acme!")
    assert len(reuse.page_hash("x")) == 32


def earlier(**changes) -> dict:
    return {"opener": "Hello Acme.", "evidence": "Acme", "grounding": "verified", "quality": [], "words": 2,
            "language": "en", "context_status": "fetched", **changes}


def test_a_candidate_matches_only_the_same_page() -> None:
    found = reuse.Candidates(fp(), {reuse.page_hash("old page"): earlier(), None: earlier(opener="No page.")})
    assert found.match("old page")["opener"] == "Hello Acme."
    assert found.match(None)["opener"] == "No page."
    assert found.match("the page changed") is None


def test_a_reused_result_carries_the_earlier_opener_at_no_cost_without_a_persons_mark() -> None:
    result = reuse.reused_result("row-1", earlier(quality=["too_short", "edited"]))
    assert result["id"] == "row-1" and result["status"] == "completed" and result["reused"] is True
    assert (result["opener"], result["evidence"], result["grounding"], result["words"], result["language"],
            result["context_status"]) == ("Hello Acme.", "Acme", "verified", 2, "en", "fetched")
    assert result["quality"] == ["too_short"]
    assert (result["prompt_tokens"], result["completion_tokens"], result["cached_tokens"]) == (0, 0, 0)
    assert "fingerprint" not in result  # a reused row is not an opener written now: the window stays honest


class _NoQueries:
    def execute(self, *args, **kwargs):  # pragma: no cover - reaching it fails the test
        raise AssertionError("no query expected")


@pytest.mark.parametrize(("job_reuse", "days"), [(False, 30), (True, 0)])
def test_no_lookup_when_reuse_is_off(job_reuse: bool, days: int) -> None:
    job = {**BASE, "reuse": job_reuse}
    assert reuse.lookup(_NoQueries(), job, [{"id": 1, "url": "https://acme.com/"}], days) == {}


def test_rows_marked_no_reuse_are_not_looked_up() -> None:
    job = {**BASE, "reuse": True}
    assert reuse.lookup(_NoQueries(), job, [{"id": 1, "url": "https://acme.com/", "no_reuse": True}], 30) == {}


def old_fingerprint(**given) -> bytes:
    """The fingerprint as first written (sql/0016's rows carry it): one json.dumps of the list."""
    import hashlib
    import json

    from chalicelib.outbound.summaries import cache_key_url

    g = {"feedback": None, "variants": reuse.VARIANTS, **BASE, **given}
    parts = [str(g["account_id"]), cache_key_url(g["url"]), (g["instructions"] or "").strip(),
             sorted((g["fields"] or {}).items()), (g["feedback"] or "").strip(), g["model"] or "",
             g["language"] or "auto", g["min_words"], g["max_words"], g["variants"]]
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", "surrogatepass")).digest()


@pytest.mark.parametrize("given", [
    {}, {"url": "https://acme.com/a/b?x=1&y=é"}, {"url": "https://ACME.com/"}, {"url": "https://acme.com/?"},
    {"url": "https://acme.com."}, {"url": "https://a..b/"}, {"url": "https://bücher.de/x"},
    {"url": "https://acme.com:8443/p#f"}, {"url": "http://user@acme.com/"}, {"url": "https://" + "a" * 70 + ".com/"},
    {"instructions": None, "fields": None, "model": None, "language": None, "min_words": None, "max_words": None},
    {"feedback": " Shorter \"please\" ", "fields": {"b": "ü\u2028", "a": "x"}, "account_id": "ünï"},
])
def test_the_fingerprint_is_byte_for_byte_the_one_first_written(given: dict) -> None:
    """Rows written before the fast path keep matching (their fingerprints are stored)."""
    assert fp(**given) == old_fingerprint(**given)


def test_when_page_reuses_on_the_fetch_thread_and_calls_only_for_another_page() -> None:
    from concurrent.futures import Future

    earlier = {"opener": "Hi", "evidence": None, "grounding": "generic", "quality": [], "words": 1,
               "language": "en", "context_status": "fetched"}
    candidates = reuse.Candidates(b"f" * 32, {reuse.page_hash("page A"): earlier})
    calls: list = []

    def call(fetched: Future) -> Future:
        calls.append(fetched.result())
        done: Future = Future()
        done.set_result({"id": 1, "status": "completed"})
        return done

    for page, expected in (("page A", True), ("page B", False)):
        fetched: Future = Future()
        out = reuse.when_page(fetched, candidates, 1, call)
        assert not out.done()  # waits for the page
        fetched.set_result((page, "fetched"))
        assert out.result(timeout=1).get("reused", False) is expected
    assert calls == [("page B", "fetched")]
    # the generators shut down meanwhile, or the fetch cancelled: the row is given back
    fetched = Future()
    out = reuse.when_page(fetched, candidates, 1, lambda f: (_ for _ in ()).throw(RuntimeError("shut down")))
    fetched.set_result(("page B", "fetched"))
    assert out.result(timeout=1) is None
    fetched = Future()
    out = reuse.when_page(fetched, candidates, 1, call)
    fetched.cancel()
    assert out.result(timeout=1) is None


def test_a_page_fetch_for_a_reused_row_starts_only_in_time() -> None:
    import time

    fetch = reuse.in_time(lambda url, account: ("page", "fetched"), time.monotonic() + 60)
    late = reuse.in_time(lambda url, account: ("page", "fetched"), time.monotonic() - 1)
    assert fetch("u", "a") == ("page", "fetched") and late("u", "a") == (None, "timeout")
