"""The web page driven in headless Chromium as a person would use it: paste the key, drop or pick
a CSV, check the URL column and the invalid rows, start, watch the progress, browse and filter
the results, download, cancel, retry; errors in words; nothing from a CSV or the model run as
HTML. The stack and the browser come from conftest.py."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import urllib.request
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.support.util import wait_for
from tests.support.widefile import padded_csv

XSS = "<img src=x onerror=window.__xss=1>"
OPENER_COLUMNS = ["opener", "opener_status", "opener_error", "context_status", "opener_evidence", "opener_quality",
                  "opener_language"]
CONTEXT_STATUSES = {"fetched", "blocked", "timeout", "not_html", "robots", "error", "off"}


def csv_bytes(rows: list[list[str]]) -> bytes:
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode("utf-8")


def leads(tag: str, count: int, invalid: dict[int, str] | None = None) -> list[list[str]]:
    """A header and `count` rows: company, website (the detected URL column), profile (URLs
    too, for picking another column), notes; `invalid` puts bad values in website."""
    rows = [["company", "website", "profile", "notes"]]
    for i in range(1, count + 1):
        website = (invalid or {}).get(i, f"https://{tag}-{i:03d}.example.com/")
        rows.append([f"Company {i}", website, f"https://profiles.{tag}-{i:03d}.example.org/team", f"note {i}"])
    return rows


def sign_in(page: Page, key: str) -> None:
    expect(page.locator("#key-input")).to_be_focused()
    page.fill("#key-input", key)
    page.click("#key-submit")
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#key-section")).to_be_hidden()


def pick_file(page: Page, name: str, data: bytes) -> None:
    page.set_input_files("#file-input", files=[{"name": name, "mimeType": "text/csv", "buffer": data}])


def drop_file(page: Page, name: str, data: bytes) -> None:
    """A real drop event on the drop zone, with the file in its DataTransfer."""
    page.evaluate(
        """([name, text]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([text], name, {type: "text/csv"}));
            const zone = document.getElementById("drop-zone");
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
            }
        }""",
        [name, data.decode("utf-8")],
    )


def no_error(page: Page) -> None:
    expect(page.locator("#error")).to_be_hidden()


def number(page: Page, selector: str) -> int:
    return int(page.locator(selector).inner_text().replace(",", "") or 0)


def wait_status(page: Page, status: str, timeout: float = 30000) -> None:
    expect(page.locator("#job-status")).to_have_text(status, timeout=timeout)


def table(page: Page, selector: str) -> list[list[str]]:
    return page.locator(f"{selector} tbody tr").evaluate_all(
        "rows => rows.map(r => Array.from(r.cells, c => c.textContent))")


def test_upload_pick_column_start_progress_results_download(page: Page, fresh, tmp_path_factory):
    stack = fresh
    stack.fake.configure(latency_ms=[250, 350])  # slow enough to see the job mid-way
    rows = leads("dl", 120, invalid={7: "http://localhost:8080/admin", 19: "not a url"})
    data = csv_bytes(rows)
    assert len(data) < 16384  # the direct path (MAX_DIRECT_UPLOAD in conftest)

    sign_in(page, stack.key)
    expect(page.locator("#who-text")).to_contain_text(stack.account_name)
    pick_file(page, "leads.csv", data)

    # What the API found: the URL column, the rows, the invalid ones with their reasons.
    expect(page.locator("#summary-section")).to_be_visible()
    expect(page.locator("#summary-column")).to_have_text("website")
    expect(page.locator("#summary-rows")).to_have_text("118")
    expect(page.locator("#summary-invalid")).to_have_text("2")
    invalid = table(page, "#invalid-table")
    assert [r[:2] for r in invalid] == [["7", "http://localhost:8080/admin"], ["19", "not a url"]], invalid
    assert all(r[2] for r in invalid), invalid

    # Another URL column: the file is checked again with url_column.
    page.select_option("#column-select", "profile")
    page.click("#column-apply")
    expect(page.locator("#summary-column")).to_have_text("profile")
    expect(page.locator("#summary-rows")).to_have_text("120")
    expect(page.locator("#summary-invalid")).to_have_text("0")
    expect(page.locator("#invalid-box")).to_be_hidden()

    page.fill("#instructions", "We are Acme Analytics; we help ops teams cut reporting time.")
    page.click("#start-button")
    expect(page.locator("#job-section")).to_be_visible()
    expect(page.locator("#job-status")).to_have_text("processing")
    expect(page.locator("#jobs-table tbody tr").first).to_contain_text("leads.csv")  # the job list has it
    no_error(page)

    # Mid-job: some done, some remaining, an ETA; the screenshot for the README. Once 20 rows are
    # done a call takes 2.5 s (under the 3 s timeout), so the other ~100 need 30 s or more: the
    # page surely sees the job mid-way, however slow the machine is.
    job_id = stack.api.call("GET", "/api/jobs?limit=1").json()["jobs"][0]["id"]
    wait_for(lambda: stack.api.call("GET", f"/api/jobs/{job_id}").json()["job"]["processed_rows"] >= 20, 30,
             what="20 rows done")
    stack.fake.configure(latency_ms=[2500, 2500])
    page.wait_for_function(
        """() => {
            const n = (id) => Number(document.getElementById(id).textContent.replace(/,/g, ""));
            const first = document.querySelector("#results-table tbody tr");
            return n("job-processed") >= 20 && n("job-remaining") > 0
                && /about|estimating/.test(document.getElementById("job-eta").textContent)
                && first && first.cells[2].textContent === "completed";
        }""", timeout=20000)
    expect(page.locator("#job-eta")).to_contain_text("about", timeout=5000)
    assert 0 < page.locator("#job-progress").evaluate("p => p.value") < 100
    # 20 or more calls admitted for the job within the last minute: calls per minute now
    expect(page.locator("#job-calls")).to_have_text(re.compile(r"^[1-9][\d,]*$"))
    no_error(page)
    page.evaluate("window.scrollTo(0, 0)")
    # written where CSV_OPENER_SCREENSHOT says (e.g. docs/screenshot.png to refresh the README's),
    # else to a temporary file: a test run never changes the checkout
    target = os.environ.get("CSV_OPENER_SCREENSHOT") or str(tmp_path_factory.mktemp("shot") / "screenshot.png")
    page.screenshot(path=target)

    stack.fake.configure(latency_ms=[20, 50])
    wait_status(page, "completed")
    expect(page.locator("#job-processed")).to_have_text("120")
    expect(page.locator("#job-remaining")).to_have_text("0")
    expect(page.locator("#job-percent")).to_contain_text("100 %")
    # what it cost beside what it was expected to cost (the estimate corrected by the rows done)
    expect(page.locator("#job-cost")).to_contain_text("$")
    expect(page.locator("#job-estimate")).to_contain_text("from the first rows")

    # Results, page by page (20 a page): rows 1-20, then 21-40, and back.
    expect(page.locator("#results-table tbody tr")).to_have_count(20)
    first = table(page, "#results-table")
    assert first[0][0] == "1" and first[0][2] == "completed" and first[0][3], first[0]
    page.click("#results-next")
    expect(page.locator("#results-page")).to_have_text("Page 2")
    expect(page.locator("#results-table tbody tr").first.locator("td").first).to_have_text("21")
    page.click("#results-prev")
    expect(page.locator("#results-table tbody tr").first.locator("td").first).to_have_text("1")
    expect(page.locator("#results-prev")).to_be_disabled()

    expect(page.locator("#jobs-table tbody tr").first).to_contain_text("completed")

    # The download: a completed job's is a 302 to S3, followed by the page.
    with page.expect_download() as info:
        page.click("#download-button")
    download = info.value
    assert download.suggested_filename == "leads-openers.csv"
    got = list(csv.reader(io.StringIO(Path(download.path()).read_text(encoding="utf-8"), newline="")))
    assert got[0] == rows[0] + OPENER_COLUMNS
    assert len(got) == len(rows)
    for original, line in zip(rows[1:], got[1:], strict=True):
        assert line[:4] == original, (original, line)
        assert line[5] == "completed" and line[4] and line[6] == "" and line[7] in CONTEXT_STATUSES, line
    expect(page.locator("#notice")).to_contain_text("Downloaded leads-openers.csv")
    no_error(page)


def test_presigned_upload_with_progress(page: Page, fresh):
    stack = fresh
    rows = leads("big", 260)
    data = csv_bytes(rows)
    assert len(data) > 16384  # above MAX_DIRECT_UPLOAD: POST /api/upload/url, then a PUT to S3

    sign_in(page, stack.key)
    page.evaluate("""() => {  // count the XMLHttpRequest upload progress events the page gets
        window.__progress = 0;
        const open = XMLHttpRequest.prototype.open;
        XMLHttpRequest.prototype.open = function (...args) {
            this.upload.addEventListener("progress", () => { window.__progress += 1; });
            return open.apply(this, args);
        };
    }""")
    pick_file(page, "big.csv", data)
    expect(page.locator("#upload-progress-text")).to_contain_text("(100 %)")
    expect(page.locator("#upload-progress-label")).to_contain_text("to storage")
    assert page.evaluate("window.__progress") >= 1
    expect(page.locator("#summary-later")).to_be_visible()
    expect(page.locator("#summary-rows")).to_have_text("counted when the job starts")
    # The columns come from the file's header, read in the browser.
    assert page.locator("#column-select option").all_inner_texts() == ["(detect it)", *rows[0]]

    page.click("#start-button")
    wait_status(page, "completed")
    expect(page.locator("#job-processed")).to_have_text("260")
    no_error(page)
    job = stack.api.call("GET", "/api/jobs?limit=1").json()["jobs"][0]
    assert (job["file_name"], job["url_column"], job["source"]) == ("big.csv", "website", "presigned")


def test_a_big_file_goes_by_parts_with_one_progress_bar_and_its_url_column_can_be_rechosen(page: Page, fresh):
    """Above MULTIPART_THRESHOLD (6 MiB here) the page PUTs 5 MiB parts to S3 in parallel (the
    ETag of each read through the bucket's CORS rule), completes, shows the URL column the file's
    first bytes name with why, offers the other URL columns first, and starts with the one picked."""
    stack = fresh
    data = padded_csv(12, 7 * 1024 * 1024)  # parts of 5 MiB and ~2 MiB
    sign_in(page, stack.key)
    parts: list[str] = []
    page.on("request", lambda r: parts.append(r.url) if r.method == "PUT" and "partNumber=" in r.url else None)
    page.set_input_files("#file-input", files=[{"name": "wide.csv", "mimeType": "text/csv", "buffer": data}],
                         timeout=120000)  # 7 MB through the browser's debugging protocol
    expect(page.locator("#summary-section")).to_be_visible(timeout=60000)
    expect(page.locator("#upload-progress-text")).to_contain_text("(100 %)")
    expect(page.locator("#upload-progress-label")).to_have_text("Uploaded wide.csv to storage")
    assert len({re.search(r"partNumber=(\d+)", url).group(1) for url in parts}) == 2
    expect(page.locator("#summary-column")).to_have_text("Website")
    expect(page.locator("#summary-why")).to_have_text("(header Website names a company site)")
    assert page.locator("#column-select option").all_inner_texts()[:2] == [
        "Person Linkedin Url (URLs)", "Facebook Url (URLs)"]
    page.select_option("#column-select", "Facebook Url")
    page.click("#column-apply")
    expect(page.locator("#summary-column")).to_have_text("Facebook Url")
    page.click("#start-button")
    wait_status(page, "completed", timeout=60000)
    expect(page.locator("#job-processed")).to_have_text("12")
    no_error(page)
    job = stack.api.call("GET", "/api/jobs?limit=1").json()["jobs"][0]
    assert (job["file_name"], job["url_column"], job["source"]) == ("wide.csv", "Facebook Url", "presigned")


def test_bad_file_is_explained_in_words(page: Page, fresh):
    sign_in(page, fresh.key)

    pick_file(page, "people.csv", csv_bytes([["name", "city"], ["Ada", "London"], ["Grace", "Arlington"]]))
    error = page.locator("#error")
    expect(error).to_be_visible()
    text = error.inner_text()
    assert text and "{" not in text and '"error"' not in text, text
    assert re.search(r"[Uu][Rr][Ll]", text), text  # it says what is wrong: no URL (column)
    expect(page.locator("#summary-section")).to_be_hidden()

    page.set_input_files("#file-input", files=[{"name": "logo.png", "mimeType": "image/png",
                                                "buffer": b"\x89PNG\r\n\x1a\n" + bytes(64)}])
    expect(error).not_to_have_text(text)
    assert "{" not in error.inner_text(), error.inner_text()


def test_batch_mode_is_asked_for_and_the_job_says_when_to_expect_it(page: Page, fresh):
    """The batch-mode box sends mode "batch"; the job's chunk goes to the provider's Batch API
    (the fake counts the batch) and the page says the openers come within 24 hours."""
    sign_in(page, fresh.key)
    pick_file(page, "b.csv", csv_bytes(leads("batch", 3)))
    expect(page.locator("#summary-section")).to_be_visible()
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/api/upload/process")
            else None)
    page.check("#batch-mode")
    page.click("#start-button")
    expect(page.locator("#job-section")).to_be_visible()
    expect(page.locator("#job-eta")).to_have_text("within 24 hours (batch mode)")
    assert len(sent) == 1 and sent[0]["mode"] == "batch", sent
    wait_for(lambda: fresh.fake.stats()["batch_requests"] == 3, 20, what="the batch at the provider")
    page.click("#cancel-button")
    expect(page.locator("#job-status")).to_have_text("canceled")
    no_error(page)


def test_wrong_key_goes_back_to_the_prompt(page: Page, fresh):
    wrong = "cso_00000000_" + "A" * 43
    page.fill("#key-input", wrong)
    page.click("#key-submit")
    message = page.locator("#key-error")
    expect(message).to_be_visible()
    assert "{" not in message.inner_text() and message.inner_text().strip(), message.inner_text()
    expect(page.locator("#app")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('csv-opener-key')") is None

    sign_in(page, fresh.key)
    assert page.evaluate("sessionStorage.getItem('csv-opener-key')") == fresh.key
    # The key stops working mid-session (revoked): the next call leads back to the prompt.
    page.evaluate(f"sessionStorage.setItem('csv-opener-key', '{wrong}')")
    page.click("#jobs-refresh")
    expect(page.locator("#key-section")).to_be_visible()
    expect(message).to_be_visible()
    expect(page.locator("#key-input")).to_be_focused()
    assert page.evaluate("localStorage.length") == 0  # the key is never kept beyond the tab


def test_cancel_retry_and_failed_rows(page: Page, fresh):
    stack = fresh
    sign_in(page, stack.key)

    # A slow job, canceled mid-way, then retried to the end.
    stack.fake.configure(latency_ms=[300, 400])
    pick_file(page, "slow.csv", csv_bytes(leads("cancel", 80)))
    expect(page.locator("#summary-rows")).to_have_text("80")
    page.click("#start-button")
    page.wait_for_function("() => Number(document.getElementById('job-processed').textContent) >= 8", timeout=20000)
    # From now on a call takes 2.5 s (under the 3 s timeout): the other ~70 rows need 20 s or more,
    # so the job is surely mid-way when the click lands, however slow the machine is.
    stack.fake.configure(latency_ms=[2500, 2500])
    page.click("#cancel-button")
    wait_status(page, "canceled", timeout=10000)
    expect(page.locator("#notice")).to_contain_text("canceled")
    assert number(page, "#job-processed") < 80
    expect(page.locator("#retry-button")).to_be_enabled()
    expect(page.locator("#cancel-button")).to_be_disabled()

    stack.fake.configure(latency_ms=[20, 50])
    page.click("#retry-button")
    wait_status(page, "completed")
    expect(page.locator("#job-processed")).to_have_text("80")
    expect(page.locator("#job-failed")).to_have_text("0")

    # Every call fails (a 400 is not retried): failed rows, filtered, then retried.
    stack.fake.configure(error_rate=1.0, error_statuses=[400])
    page.click("#new-button")
    pick_file(page, "fails.csv", csv_bytes(leads("fail", 12)))
    page.click("#start-button")
    wait_status(page, "completed")
    expect(page.locator("#job-failed")).to_have_text("12")
    page.select_option("#results-filter", "failed")
    expect(page.locator("#results-table tbody tr")).to_have_count(12)
    failed = table(page, "#results-table")
    assert all(r[2] == "failed" and r[3] for r in failed), failed
    page.select_option("#results-filter", "completed")
    expect(page.locator("#results-empty")).to_be_visible()

    stack.fake.configure(error_rate=0.0)
    page.click("#retry-button")
    wait_status(page, "completed")
    expect(page.locator("#job-processed")).to_have_text("12")
    expect(page.locator("#job-failed")).to_have_text("0")
    page.select_option("#results-filter", "failed")
    expect(page.locator("#results-empty")).to_be_visible()
    no_error(page)


def test_csv_cells_and_model_answers_stay_text(page: Page, fresh):
    stack = fresh
    # The model answers with markup: the app refuses it as an opener and says why, never quoting it.
    stack.fake.configure(content=XSS + " Hello {host}, your team does great work.")
    rows = [["company", "website", XSS], ["Evil", XSS, XSS], ["Fine", "https://fine.example.com/", XSS],
            ["Also", "https://also.example.com/", "x"]]
    sign_in(page, stack.key)
    drop_file(page, "xss.csv", csv_bytes(rows))

    expect(page.locator("#invalid-table tbody tr")).to_have_count(1)
    assert table(page, "#invalid-table")[0][1] == XSS  # the CSV cell, as text
    assert XSS in page.locator("#column-select option").all_inner_texts()  # a header cell, as text
    page.click("#start-button")
    wait_status(page, "completed")
    expect(page.locator("#job-failed")).to_have_text("2")
    errors = [r[3] for r in table(page, "#results-table")]
    assert errors == ["The model returned no usable opener: the answer contained a placeholder or template "
                      "brackets"] * 2, errors

    assert page.locator("img[src='x']").count() == 0
    assert page.evaluate("typeof window.__xss") == "undefined"
    no_error(page)


def test_keyboard_and_phone(page: Page, fresh):
    """Signed in and a file chosen with the keyboard alone; focus is visible; on a phone-sized
    screen nothing is wider than the screen."""
    page.set_viewport_size({"width": 375, "height": 740})
    page.keyboard.type(fresh.key)  # the key field has focus on arrival
    page.keyboard.press("Enter")
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#file-input")).to_be_focused()  # next: the file picker
    outline = page.locator("label[for=file-input]").evaluate("l => getComputedStyle(l).outlineStyle")
    assert outline == "solid", outline  # the picker's visible focus
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "jobs-refresh"  # hidden sections are skipped

    pick_file(page, "phone.csv", csv_bytes(leads("phone", 5, invalid={2: "ftp://files.example.org/x"})))
    expect(page.locator("#summary-rows")).to_have_text("4")
    page.focus("#instructions")
    for control in ("batch-mode", "grounding-select", "min-words", "max-words", "language-input", "variants-select"):
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == control
    page.keyboard.press("Tab")
    if page.evaluate("document.activeElement.id") == "preview-button":  # the API offers previews
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "start-button"
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.keyboard.press("Enter")
    wait_status(page, "completed")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    for button in page.locator("button:visible").all():
        assert button.bounding_box()["height"] >= 40  # big enough to tap
    no_error(page)


def test_preview_shown_when_the_api_offers_it(page: Page, fresh):
    """The preview control shows because the OpenAPI document names POST /api/jobs/{id}/preview;
    it shows the previews, as text. The preview's answer is stood in for here, as the SPEC
    describes it."""
    document = json.loads(urllib.request.urlopen(fresh.url + "/api/openapi.json", timeout=10).read())
    assert any(re.fullmatch(r"/api/jobs/\{[^}]+\}/preview", path) for path in document["paths"])
    sign_in(page, fresh.key)
    pick_file(page, "p.csv", csv_bytes(leads("preview", 3)))
    expect(page.locator("#summary-section")).to_be_visible()
    expect(page.locator("#preview-button")).to_be_visible()

    sent: list[dict] = []

    def preview(route):
        sent.append(json.loads(route.request.post_data))
        route.fulfill(json={"previews": [{"row": 1, "url": "https://preview-001.example.com/",
                                          "opener": XSS + " Hello preview-001.", "context_status": "off",
                                          "prompt_tokens": 90, "completion_tokens": 30}],
                            "estimate": {"urls": 3, "cost_usd": 0.0123, "batch_cost_usd": 0.0062}})

    page.route("**/api/jobs/*/preview", preview)
    page.reload()  # the key is still in this tab's sessionStorage
    expect(page.locator("#app")).to_be_visible()
    pick_file(page, "p.csv", csv_bytes(leads("preview", 3)))
    page.fill("#instructions", "Short and friendly.")
    page.click("#preview-button")
    expect(page.locator("#preview-list li")).to_have_count(1)
    expect(page.locator("#preview-list li p")).to_have_text(XSS + " Hello preview-001.")
    expect(page.locator("#preview-estimate")).to_contain_text("$0.01, $0.01 in batch mode")
    assert sent == [{"rows": 3, "instructions": "Short and friendly."}]
    assert page.evaluate("typeof window.__xss") == "undefined"
    no_error(page)


def test_quality_summary_flags_evidence_and_the_flag_filter(page: Page, fresh):
    """The start form sends the quality options a person changed (and only those); a job's
    quality summary, each row's flags and evidence (as text) show, and the flag filter asks the
    API for the flagged rows. The checks' findings are written to the job's rows the way the
    worker's save writes them (sql/0012_quality.sql), so the page is tested on its own."""
    import psycopg

    stack = fresh
    sign_in(page, stack.key)
    pick_file(page, "q.csv", csv_bytes(leads("quality", 4)))
    expect(page.locator("#summary-section")).to_be_visible()
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/api/upload/process")
            else None)
    page.select_option("#grounding-select", "flag")
    page.fill("#min-words", "5")
    page.fill("#max-words", "0")
    page.fill("#language-input", "DE")
    page.click("#start-button")
    expect(page.locator("#error")).to_have_text("Words at most must be a whole number from 1 to 200.")
    assert sent == []  # nothing sent while an option is wrong
    page.fill("#max-words", "40")
    page.click("#start-button")
    expect(page.locator("#job-section")).to_be_visible()
    assert len(sent) == 1 and {k: sent[0].get(k) for k in ("grounding", "min_words", "max_words", "language")} == {
        "grounding": "flag", "min_words": 5, "max_words": None, "language": "de"}, sent
    wait_status(page, "completed")

    job_id = stack.api.call("GET", "/api/jobs?limit=1").json()["jobs"][0]["id"]
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        for row, flags, evidence in ((1, ["duplicate"], None), (2, [], XSS + " since 1921"),
                                     (3, ["duplicate", "too_long"], None), (4, [], None)):
            conn.execute("UPDATE urls SET quality = %s, evidence = %s WHERE job_id = %s AND row_number = %s",
                         (flags, evidence, job_id, row))
        conn.execute("UPDATE jobs SET quality = %s WHERE id = %s", (json.dumps({
            "verified": 1, "generic": 2, "regenerated": 3, "reused": 0,
            "flagged": {"duplicate": 2, "too_long": 1}, "words": {"12": 2, "20": 2}}), job_id))

    page.click("#jobs-refresh")
    page.locator("#jobs-table tbody tr").first.get_by_role("button").click()
    expect(page.locator("#quality-box")).to_be_visible()
    expect(page.locator("#quality-flagged")).to_have_text("too_long 1, duplicate 2")  # SPEC's order of flags
    expect(page.locator("#quality-verified")).to_have_text("1")
    expect(page.locator("#quality-duplicates")).to_have_text("50.0 %")
    expect(page.locator("#quality-words")).to_have_text("16")
    expect(page.locator("#quality-regenerated")).to_have_text("3")
    expect(page.locator("#results-table tbody tr")).to_have_count(4)
    rows = table(page, "#results-table")
    assert [(r[0], r[4], r[5]) for r in rows] == [("1", "duplicate", ""), ("2", "", XSS + " since 1921"),
                                                  ("3", "duplicate too_long", ""), ("4", "", "")], rows
    expect(page.locator("#results-table .flag")).to_have_count(3)

    page.select_option("#quality-filter", "duplicate")
    expect(page.locator("#results-table tbody tr")).to_have_count(2)
    assert [r[0] for r in table(page, "#results-table")] == ["1", "3"]
    page.select_option("#quality-filter", "spammy")
    expect(page.locator("#results-empty")).to_be_visible()
    assert page.evaluate("typeof window.__xss") == "undefined"
    no_error(page)
