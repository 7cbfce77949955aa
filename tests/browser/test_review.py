"""The review queue of the web page (issue 21, SPEC "Review before sending") driven in headless
Chromium with the keyboard alone: move with j/k, edit in place (e, Enter saves, Esc cancels),
approve and reject (a, r, u), filter by review, select (x, space) and regenerate with feedback (g),
an edit that survives a regeneration of other rows, a stale edit refused, the approved-only
download. Each test makes its job through the API and checks what the page did through it too.
The stack and the browser come from conftest.py."""

from __future__ import annotations

import csv
import io
import json
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

REVIEW_PATHS = {"/api/jobs/{job_id}/results/{result_id}", "/api/jobs/{job_id}/regenerate", "/api/jobs/{job_id}/review"}
XSS = "<img src=x onerror=window.__xss=1>"
# A person's opener is checked like the model's (flags, language): the API process's first check
# loads the language detector (about 5 s on this machine), so a save may take that long once.
SAVE_WAIT = 20000


@pytest.fixture(autouse=True)
def review_api(stack):
    """These tests need the review endpoints; an API without them (named in its OpenAPI
    document) is the only reason to skip."""
    document = json.loads(urllib.request.urlopen(stack.url + "/api/openapi.json", timeout=10).read())
    missing = sorted(REVIEW_PATHS - set(document["paths"]))
    if missing:
        pytest.skip(f"the API has no review endpoints yet: {', '.join(missing)}")


def csv_bytes(rows: list[list[str]]) -> bytes:
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode("utf-8")


def finished_job(stack, tag: str, count: int, **options) -> tuple[str, list[dict]]:
    """A completed job of `count` rows made through the API (with the `process` options given),
    and its results in file order."""
    rows = [["company", "website"]] + [[f"Company {i}", f"https://{tag}-{i:03d}.example.com/"]
                                        for i in range(1, count + 1)]
    job_id = stack.api.upload(f"{tag}.csv", csv_bytes(rows))["job"]["id"]
    stack.api.process(job_id, **options)
    stack.wait_job(job_id, urls=count)
    return job_id, results(stack, job_id)


def results(stack, job_id: str, **query: str) -> list[dict]:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    reply = stack.api.call("GET", f"/api/jobs/{job_id}/results?limit=100{extra}")
    assert reply.status == 200, reply.body[:300]
    return reply.json()["results"]


def result(stack, job_id: str, result_id: str) -> dict:
    reply = stack.api.call("GET", f"/api/jobs/{job_id}/results/{result_id}")
    assert reply.status == 200, reply.body[:300]
    return reply.json()["result"]


def open_job(page: Page, key: str, file_name: str, rows: int) -> None:
    """Sign in (the key field has focus on arrival) and open the job from the job list, by
    keyboard; its `rows` results shown."""
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    expect(page.locator("#app")).to_be_visible()
    button = page.locator("#jobs-table tbody tr", has_text=file_name).get_by_role("button")
    button.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#job-file")).to_have_text(file_name)
    expect(page.locator("#job-status")).to_have_text("completed")
    expect(page.locator("#results-table tbody tr")).to_have_count(rows)


def into_table(page: Page) -> None:
    """Tab from the Refresh button past the review controls to the table's current row."""
    page.locator("#results-refresh").focus()
    for _ in range(8):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.matches('#results-table tbody tr')"):
            return
    raise AssertionError(f"Tab never reached the table (at #{page.evaluate('document.activeElement.id')})")


def focused_row(page: Page) -> str:
    return page.evaluate("document.activeElement.closest('#results-table tbody tr').cells[0].textContent")


def cells(page: Page, row: int) -> list[str]:
    return page.locator("#results-table tbody tr").nth(row - 1).locator("td").all_text_contents()


def test_move_edit_save_cancel_approve_reject(page: Page, fresh):
    stack = fresh
    job_id, before = finished_job(stack, "keys", 4)
    open_job(page, stack.key, "keys.csv", 4)
    into_table(page)
    assert focused_row(page) == "1"
    page.keyboard.press("j")
    page.keyboard.press("j")
    assert focused_row(page) == "3"
    page.keyboard.press("k")
    assert focused_row(page) == "2"
    page.keyboard.press("ArrowUp")
    assert focused_row(page) == "1"

    # e edits row 1 in place; Enter saves it (with the version it was read at).
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.method == "PATCH" else None)
    page.keyboard.press("e")
    editor = page.locator("#results-table textarea")
    expect(editor).to_be_focused()
    expect(editor).to_have_value(before[0]["opener"])  # the 'e' itself is not typed into it
    page.keyboard.press("Control+A")
    page.keyboard.type(XSS + " Loved your piece on onboarding.")
    page.keyboard.press("Enter")
    expect(page.locator("#review-message")).to_have_text("Row 1 saved.", timeout=SAVE_WAIT)
    assert focused_row(page) == "1"
    assert cells(page, 1)[3] == XSS + " Loved your piece on onboarding."
    assert "edited" in cells(page, 1)[4]
    assert sent == [{"opener": XSS + " Loved your piece on onboarding.", "version": before[0]["version"]}]
    saved = result(stack, job_id, before[0]["id"])
    assert saved["opener"] == XSS + " Loved your piece on onboarding." and saved["edited"] is True
    assert [h["source"] for h in saved["history"]] == ["model", "person"]
    assert saved["history"][0]["opener"] == before[0]["opener"]

    # Esc leaves the row as it was and sends nothing.
    page.keyboard.press("j")
    page.keyboard.press("e")
    page.keyboard.type(" and more")
    page.keyboard.press("Escape")
    assert focused_row(page) == "2"
    assert cells(page, 2)[3] == before[1]["opener"]
    assert len(sent) == 1

    # a approves, r rejects, u clears: on the row, and through the API.
    page.keyboard.press("k")
    page.keyboard.press("a")
    expect(page.locator("#results-table tbody tr").nth(0).locator(".review")).to_have_text("approved")
    page.keyboard.press("j")
    page.keyboard.press("r")
    expect(page.locator("#results-table tbody tr").nth(1).locator(".review")).to_have_text("rejected")
    page.keyboard.press("j")
    page.keyboard.press("a")
    expect(page.locator("#results-table tbody tr").nth(2).locator(".review")).to_have_text("approved")
    page.keyboard.press("u")
    expect(page.locator("#results-table tbody tr").nth(2).locator(".review")).to_have_text("")
    assert [r["review"] for r in results(stack, job_id)] == ["approved", "rejected", None, None]
    assert page.evaluate("typeof window.__xss") == "undefined"
    expect(page.locator("#error")).to_be_hidden()


def test_filter_by_review_and_download_the_approved(page: Page, fresh):
    stack = fresh
    job_id, before = finished_job(stack, "approve", 5)
    open_job(page, stack.key, "approve.csv", 5)
    into_table(page)
    for key in ("a", "j", "r", "j", "a", "j", "j", "a"):  # rows 1, 3 and 5 approved, 2 rejected
        page.keyboard.press(key)
    expect(page.locator("#results-table tbody tr").nth(4).locator(".review")).to_have_text("approved")

    # The review filter, by keyboard: Any, Not reviewed, Approved, Rejected.
    page.locator("#review-filter").focus()
    page.keyboard.press("ArrowDown")
    expect(page.locator("#results-table tbody tr")).to_have_count(1)
    assert cells(page, 1)[0] == "4"
    page.keyboard.press("ArrowDown")
    expect(page.locator("#results-table tbody tr")).to_have_count(3)
    assert [cells(page, i)[0] for i in (1, 2, 3)] == ["1", "3", "5"]
    page.keyboard.press("ArrowDown")
    expect(page.locator("#results-table tbody tr")).to_have_count(1)
    assert cells(page, 1)[0] == "2"

    # Every row matching the filters at once: the not reviewed ones (row 4) rejected.
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")
    expect(page.locator("#results-table tbody tr")).to_have_count(1)
    page.locator("#bulk-review").focus()
    page.keyboard.press("ArrowDown")  # approved -> rejected
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.locator("#review-message")).to_have_text("1 row(s) marked rejected.")
    expect(page.locator("#results-empty")).to_be_visible()
    assert [r["review"] for r in results(stack, job_id)] == ["approved", "rejected", "approved", "rejected",
                                                             "approved"]

    # Download approved: the approved rows only.
    page.locator("#download-approved-button").focus()
    with page.expect_download() as info:
        page.keyboard.press("Enter")
    assert info.value.suggested_filename == "approve-openers-approved.csv"
    got = list(csv.reader(io.StringIO(Path(info.value.path()).read_text(encoding="utf-8"), newline="")))
    assert got[0][:2] == ["company", "website"]
    assert [line[1] for line in got[1:]] == [before[i]["url"] for i in (0, 2, 4)], got
    expect(page.locator("#error")).to_be_hidden()


def test_select_and_regenerate_with_feedback_keeps_an_edit(page: Page, fresh):
    """Row 1 edited, rows 2 and 3 selected (x, space) and regenerated with feedback (g): the job
    goes back to processing and completes; rows 2 and 3 were asked again, nothing else was, and
    the person's opener of row 1 is still there."""
    stack = fresh
    job_id, before = finished_job(stack, "regen", 5)
    asked = stack.fake.stats()["by_url"]
    assert all(asked.get(r["url"]) == 1 for r in before), asked
    open_job(page, stack.key, "regen.csv", 5)
    into_table(page)
    page.keyboard.press("e")
    page.keyboard.press("Control+A")
    page.keyboard.type("Mine, not the model's: congratulations on the new bakery.")
    page.keyboard.press("Enter")
    expect(page.locator("#review-message")).to_have_text("Row 1 saved.", timeout=SAVE_WAIT)

    page.keyboard.press("g")  # nothing selected yet: said, and focus stays on the table
    expect(page.locator("#review-message")).to_contain_text("Select the rows")
    assert focused_row(page) == "1"
    page.keyboard.press("j")
    page.keyboard.press("x")
    page.keyboard.press("j")
    page.keyboard.press(" ")
    expect(page.locator("#review-selected")).to_have_text("2 row(s) selected")
    assert page.locator("#results-table tbody tr.selected td:first-child").all_text_contents() == ["2", "3"]
    page.keyboard.press("g")
    expect(page.locator("#regenerate-feedback")).to_be_focused()
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/regenerate") else None)
    page.keyboard.type("Shorter, and mention their bakery.")
    page.keyboard.press("Enter")
    expect(page.locator("#review-message")).to_have_text("Regeneration done: 2 row(s) written again.",
                                                         timeout=60000)
    expect(page.locator("#job-status")).to_have_text("completed")
    assert sent == [{"result_ids": [before[1]["id"], before[2]["id"]],
                     "feedback": "Shorter, and mention their bakery."}]
    expect(page.locator("#review-selected")).to_have_text("No rows selected")

    asked = stack.fake.stats()["by_url"]
    assert [asked.get(r["url"]) for r in before] == [1, 2, 2, 1, 1], asked
    after = results(stack, job_id)
    assert [r["status"] for r in after] == ["completed"] * 5
    assert after[0]["opener"] == "Mine, not the model's: congratulations on the new bakery." and after[0]["edited"]
    assert [r["version"] > b["version"] for r, b in zip(after, before, strict=True)] == [True, True, True, False, False]
    assert [cells(page, i)[3] for i in range(1, 6)] == [r["opener"] for r in after]
    expect(page.locator("#error")).to_be_hidden()


def test_stale_edit_is_refused_and_the_row_reloaded(page: Page, fresh):
    stack = fresh
    job_id, before = finished_job(stack, "stale", 3)
    open_job(page, stack.key, "stale.csv", 3)
    into_table(page)
    page.keyboard.press("j")
    page.keyboard.press("e")
    page.keyboard.press("Control+A")
    page.keyboard.type("Written in the browser.")

    # Meanwhile someone else edits row 2 through the API.
    reply = stack.api.call("PATCH", f"/api/jobs/{job_id}/results/{before[1]['id']}",
                           {"opener": "Written through the API.", "version": before[1]["version"]})
    assert reply.status == 200, reply.body[:300]

    page.keyboard.press("Enter")
    message = page.locator("#review-message")
    expect(message).to_contain_text("Row 2 was changed elsewhere")
    expect(message).to_contain_text("Written in the browser.")  # what was typed is not lost
    expect(message).to_have_class("review-message error")
    assert focused_row(page) == "2"
    assert cells(page, 2)[3] == "Written through the API."  # the row reloaded
    assert result(stack, job_id, before[1]["id"])["opener"] == "Written through the API."

    # Now it is the latest version: the same edit goes through.
    page.keyboard.press("e")
    page.keyboard.press("Control+A")
    page.keyboard.type("Written in the browser.")
    page.keyboard.press("Enter")
    expect(message).to_have_text("Row 2 saved.", timeout=SAVE_WAIT)
    saved = result(stack, job_id, before[1]["id"])
    assert saved["opener"] == "Written in the browser."
    assert [h["source"] for h in saved["history"]] == ["model", "person", "person"]

    # h: the row's openers, oldest first, and who wrote each.
    page.keyboard.press("h")
    expect(page.locator("#review-history-title")).to_have_text("Earlier openers of row 2")
    items = page.locator("#review-history-list li")
    expect(items).to_have_count(3)
    texts = items.all_text_contents()
    assert texts[0].startswith("the model, ") and texts[0].endswith(before[1]["opener"]), texts
    assert texts[1].startswith("a person, ") and texts[1].endswith(": Written through the API."), texts
    assert texts[2].startswith("a person, ") and texts[2].endswith(": Written in the browser."), texts
    assert focused_row(page) == "2"
    expect(page.locator("#error")).to_be_hidden()


def test_pick_a_variant_with_the_keyboard(page: Page, fresh):
    stack = fresh
    job_id, before = finished_job(stack, "variants", 2, variants=3)
    assert all(len(r["variants"]) == 3 and r["variant"] == 1 for r in before)
    open_job(page, stack.key, "variants.csv", 2)
    into_table(page)
    first = page.locator("#results-table tbody tr").nth(0)
    expect(first.locator(".variants li")).to_have_text([v["opener"] for v in before[0]["variants"]])
    expect(first.locator(".variants li.picked")).to_have_text(before[0]["variants"][0]["opener"])

    # 2 picks the second variant (sent with the version the row was read at); v the next one
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.method == "PATCH" else None)
    page.keyboard.press("2")
    expect(page.locator("#review-message")).to_have_text("Row 1: variant 2 picked.", timeout=SAVE_WAIT)
    expect(first.locator(".opener-text")).to_have_text(before[0]["variants"][1]["opener"])
    expect(first.locator(".variants li.picked")).to_have_text(before[0]["variants"][1]["opener"])
    assert focused_row(page) == "1"
    page.keyboard.press("v")
    expect(page.locator("#review-message")).to_have_text("Row 1: variant 3 picked.", timeout=SAVE_WAIT)
    assert sent[0] == {"variant": 2, "version": before[0]["version"]} and sent[1]["variant"] == 3
    picked = result(stack, job_id, before[0]["id"])
    assert picked["opener"] == before[0]["variants"][2]["opener"] and picked["variant"] == 3
    assert picked["edited"] is False
    assert [h["source"] for h in picked["history"]] == ["model", "person", "person"]
    page.keyboard.press("3")  # the one already picked: nothing sent
    expect(page.locator("#review-message")).to_have_text("Row 1: variant 3 is the one picked already.")
    assert len(sent) == 2


def test_a_preview_with_variants_shows_each_one(page: Page, fresh):
    """"Openers per row" 3 asks the real preview for 3 variants of each row (through the fake
    model), and the page lists the first as the opener and the other two under it, as text."""
    stack = fresh
    rows = [["company", "website"]] + [[f"Company {i}", f"https://preview-variants-{i:03d}.example.com/"]
                                        for i in range(1, 4)]
    page.keyboard.type(stack.key)
    page.keyboard.press("Enter")
    expect(page.locator("#app")).to_be_visible()
    page.set_input_files("#file-input", files=[{"name": "pv.csv", "mimeType": "text/csv", "buffer": csv_bytes(rows)}])
    expect(page.locator("#preview-button")).to_be_visible()
    page.select_option("#variants-select", "3")
    with page.expect_response(lambda r: r.url.endswith("/preview") and r.request.method == "POST") as answer:
        page.click("#preview-button")
    assert json.loads(answer.value.request.post_data)["variants"] == 3
    previews = answer.value.json()["previews"]
    assert len(previews) == 3 and all(len(p["variants"]) == 3 for p in previews), previews
    items = page.locator("#preview-list li")
    expect(items).to_have_count(3)
    for item, preview in zip(items.all(), previews, strict=True):
        expect(item.locator("p").first).to_have_text(preview["opener"])
        assert preview["opener"] == preview["variants"][0]["opener"]
        expect(item.locator("p.variant")).to_have_text(
            [f"Variant {i}: {v['opener']}" for i, v in enumerate(preview["variants"][1:], start=2)])
    expect(page.locator("#error")).to_be_hidden()


def test_a_download_waits_while_the_server_builds_the_csv(page: Page, fresh):
    """A big job's download answers 202 with Retry-After while the server builds the CSV (the
    first two answers stand in for that here): the page says so, asks again, and saves the CSV."""
    stack = fresh
    job_id, before = finished_job(stack, "building", 3)
    open_job(page, stack.key, "building.csv", 3)
    answered: list[int] = []

    def building(route):
        if len(answered) < 2:
            answered.append(202)
            route.fulfill(status=202, headers={"Retry-After": "1", "Content-Type": "application/json"},
                          body=json.dumps({"export": "building", "retry_after": 1}))
        else:
            answered.append(0)
            route.continue_()

    page.route(f"**/api/upload/{job_id}/download*", building)
    with page.expect_download() as info:
        page.click("#download-button")
        expect(page.locator("#notice")).to_contain_text("building the CSV")
    assert answered == [202, 202, 0]
    got = list(csv.reader(io.StringIO(Path(info.value.path()).read_text(encoding="utf-8"), newline="")))
    assert [line[1] for line in got[1:]] == [r["url"] for r in before]
    expect(page.locator("#notice")).to_contain_text("Downloaded building-openers.csv")
    expect(page.locator("#error")).to_be_hidden()
