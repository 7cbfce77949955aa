"""`csv-opener review`, `regenerate` and `download --approved` without a server: the table, the
commands read from stdin (approve, reject, unmark, edit in $EDITOR, regenerate with feedback),
the HTTP they send, and what a stale edit does, against a scripted API (httpx.MockTransport)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import httpx
import pytest

from csv_opener_cli.main import main

KEY = "cso_1a2b3c4d_" + "S" * 43
API = "http://api.test"
JOB_ID = "3f2c9a1e-5b6d-4e8f-9a0b-1c2d3e4f5a6b"
ENV = {"CSV_OPENER_API": API, "CSV_OPENER_KEY": KEY, "COLUMNS": "200"}
IDS = ["00000000-0000-4000-8000-00000000000" + str(i) for i in range(1, 4)]


def row(n: int, **extra) -> dict:
    return {"id": IDS[n - 1], "row": n + 1, "url": f"https://site{n}.example.com/", "status": "completed",
            "opener": f"Opener number {n} for site {n}.", "error": None, "quality": [], "evidence": None,
            "review": None, "version": 3, "edited": False, "feedback": None, **extra}


class FakeApi:
    """The review routes; every request recorded with its JSON body."""

    def __init__(self) -> None:
        self.rows = [row(1, quality=["duplicate"], evidence="We make [bold]anvils[/bold]"), row(2), row(3)]
        self.sent: list[tuple[str, str, dict | None, dict]] = []
        self.stale = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        data = json.loads(request.content) if request.content else None
        self.sent.append((request.method, request.url.path, data, dict(request.url.params)))
        path = request.url.path
        if request.method == "GET" and path == f"/api/jobs/{JOB_ID}/results":
            return httpx.Response(200, json={"results": self.rows, "next_cursor": None})
        if request.method == "POST" and path == f"/api/jobs/{JOB_ID}/review":
            for r in self.rows:
                if r["id"] in data["result_ids"]:
                    r["review"] = data["review"]
            return httpx.Response(200, json={"reviewed": len(data["result_ids"])})
        if request.method == "PATCH" and path.startswith(f"/api/jobs/{JOB_ID}/results/"):
            if self.stale:
                return httpx.Response(409, json={"error": {"code": "stale_version",
                                                           "message": "This result changed since you read it"}})
            target = next(r for r in self.rows if r["id"] == path.rsplit("/", 1)[1])
            if "variant" in data:
                target.update(opener=target["variants"][data["variant"] - 1]["opener"], variant=data["variant"],
                              version=target["version"] + 1)
                return httpx.Response(200, json={"result": target})
            target.update(opener=data["opener"], edited=True, version=target["version"] + 1)
            return httpx.Response(200, json={"result": target})
        if request.method == "POST" and path == f"/api/jobs/{JOB_ID}/regenerate":
            return httpx.Response(202, json={"job": {"id": JOB_ID, "status": "processing"},
                                             "regenerating": len(data.get("result_ids") or self.rows)})
        if request.method == "GET" and path == f"/api/upload/{JOB_ID}/download":
            return httpx.Response(200, content=b"website,opener\r\nsite1.example.com,Approved one\r\n", headers={
                "Content-Type": "text/csv", "Content-Disposition": 'attachment; filename="leads-openers.csv"'})
        return httpx.Response(404, json={"error": {"code": "not_found", "message": f"no route {path}"}})


def cli(fake: FakeApi, *argv: str, stdin: str = "", env: dict | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), transport=httpx.MockTransport(fake.handle), environ={**ENV, **(env or {})},
                stdin=io.StringIO(stdin), stdout=out, stderr=err, sleep=lambda _: None)
    return code, out.getvalue(), err.getvalue()


def sent(fake: FakeApi, method: str) -> list[tuple]:
    return [s for s in fake.sent if s[0] == method]


def test_review_shows_a_table_with_flags_and_evidence_as_text():
    fake = FakeApi()
    code, out, err = cli(fake, "review", JOB_ID, "--quality", "duplicate")
    assert code == 0
    assert "OPENER / ERROR" in out and "EVIDENCE" in out and "duplicate" in out
    assert "We make [bold]anvils[/bold]" in out  # markup in the data is shown, not interpreted
    assert "approve" in err and "review> " in err
    assert fake.sent[0][3] == {"quality": "duplicate", "limit": "50"}


def test_review_commands_from_stdin_approve_reject_unmark_and_regenerate():
    fake = FakeApi()
    script = "a 1,3\nr 2\nu 3\ng 1-2\nShorter, mention their product.\nx\na 9\nq\n"
    code, out, err = cli(fake, "review", JOB_ID, stdin=script)
    assert code == 0
    reviews = [s[2] for s in sent(fake, "POST") if s[1].endswith("/review")]
    assert reviews == [{"review": "approved", "result_ids": [IDS[0], IDS[2]]},
                       {"review": "rejected", "result_ids": [IDS[1]]},
                       {"review": None, "result_ids": [IDS[2]]}]
    [regenerate] = [s[2] for s in sent(fake, "POST") if s[1].endswith("/regenerate")]
    assert regenerate == {"result_ids": IDS[:2], "feedback": "Shorter, mention their product."}
    assert "2 row(s) approved." in out and "2 row(s) regenerating" in out
    assert "unknown command 'x'" in err and "9 is not a row number" in err


def test_edit_opens_the_editor_and_sends_the_version_read(tmp_path: Path):
    editor = tmp_path / "editor.py"
    editor.write_text("import sys\nopen(sys.argv[1], 'w').write('  A person wrote\\nthis opener.  \\n')\n")
    fake = FakeApi()
    code, out, _ = cli(fake, "review", JOB_ID, stdin="e 2\nq\n", env={"EDITOR": f"{sys.executable} {editor}"})
    assert code == 0
    [(_, path, data, _)] = sent(fake, "PATCH")
    assert path.endswith(IDS[1]) and data == {"opener": "A person wrote this opener.", "version": 3}
    assert "saved: A person wrote this opener." in out


def test_an_unchanged_edit_sends_nothing_and_a_stale_one_reloads(tmp_path: Path):
    fake = FakeApi()
    code, out, _ = cli(fake, "review", JOB_ID, stdin="e 1\n", env={"EDITOR": "true"})
    assert code == 0 and "Unchanged." in out and not sent(fake, "PATCH")
    fake.stale, fake.sent = True, []
    editor = tmp_path / "editor.py"
    editor.write_text("import sys\nopen(sys.argv[1], 'w').write('Something new entirely.')\n")
    code, out, err = cli(fake, "review", JOB_ID, stdin="e 1\n", env={"EDITOR": f"{sys.executable} {editor}"})
    assert code == 0 and "changed since you read it [409 stale_version]" in err
    assert len([s for s in fake.sent if s[0] == "GET"]) == 2  # read again after the refusal
    assert cli(fake, "review", JOB_ID, stdin="e 1 2\n")[2].count("edit one row at a time") == 1


def test_review_json_prints_the_rows_and_reads_nothing():
    fake = FakeApi()
    code, out, _ = cli(fake, "review", JOB_ID, "--json", stdin="a all\n")
    assert code == 0 and [r["id"] for r in json.loads(out)["results"]] == IDS
    assert not sent(fake, "POST")


def test_regenerate_by_filter_or_ids_with_feedback():
    fake = FakeApi()
    code, out, _ = cli(fake, "regenerate", JOB_ID, "--quality", "duplicate", "--feedback", "Shorter.")
    assert code == 0 and "3 row(s) regenerating" in out
    assert sent(fake, "POST")[-1][2] == {"filter": {"quality": "duplicate"}, "feedback": "Shorter."}
    code, _, _ = cli(fake, "regenerate", JOB_ID, "--ids", f"{IDS[0]}, {IDS[1]}")
    assert code == 0 and sent(fake, "POST")[-1][2] == {"result_ids": IDS[:2]}
    code, _, err = cli(fake, "regenerate", JOB_ID, "--ids", IDS[0], "--status", "failed")
    assert code == 2 and "--ids names the rows" in err


@pytest.mark.parametrize("argv", [["regenerate", JOB_ID, "--quality", "shiny"], ["review", "not-an-id"],
                                  ["download", JOB_ID, "--approved", "--review"]])
def test_bad_arguments_are_usage_errors(argv, capsys):
    assert cli(FakeApi(), *argv)[0] == 2


def test_download_approved_asks_for_approved_rows_and_names_the_file(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake = FakeApi()
    code, out, _ = cli(fake, "download", JOB_ID, "--approved")
    assert code == 0 and "leads-openers-approved.csv" in out
    assert sent(fake, "GET")[-1][3] == {"review": "approved"}
    assert (tmp_path / "leads-openers-approved.csv").read_bytes().startswith(b"website,opener")


def test_review_lists_variants_and_p_picks_one_with_the_version_read():
    fake = FakeApi()
    variants = [{"opener": f"Variant {n} of the second row.", "evidence": None, "grounding": "generic",
                 "quality": [], "words": 6} for n in (1, 2, 3)]
    fake.rows[1].update(opener=variants[0]["opener"], variants=variants, variant=1)
    script = "p 2 3\np 1 2\np 2 4\np 2\nq\n"
    code, out, err = cli(fake, "review", JOB_ID, stdin=script)
    assert code == 0
    assert "*1 Variant 1 of the second row." in out and " 3 Variant 3 of the second row." in out
    [(_, path, data, _)] = sent(fake, "PATCH")
    assert path.endswith(IDS[1]) and data == {"variant": 3, "version": 3}
    assert "Row 3: variant 3 picked: Variant 3 of the second row." in out
    assert "row 2 has no variants to pick from" in err and "row 3 has 3 variants: V is 1 to 3" in err
    assert "pick one variant of one row: p N V" in err

