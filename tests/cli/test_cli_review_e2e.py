"""`csv-opener review`, `regenerate` and `download --approved` as a user runs them (subprocesses)
against the real local stack (conftest.py): commands typed on stdin, an edit through $EDITOR,
a regeneration through the runner, and the approved-only download."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.support.e2e import make_csv
from tests.support.util import ROOT


def csv_opener(stack, *args: str, stdin: str = "", env: dict | None = None,
               timeout: float = 90) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CSV_OPENER_")}
    return subprocess.run([sys.executable, "-m", "csv_opener_cli", *args], cwd=ROOT, input=stdin,
                          env={**base, "CSV_OPENER_API": stack.api.base, "CSV_OPENER_KEY": stack.key,
                               "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def wait_completed(stack, job_id: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = json.loads(csv_opener(stack, "status", job_id, "--json").stdout)["job"]
        if job["status"] == "completed" or time.monotonic() > deadline:
            return job
        time.sleep(0.5)


def test_review_edit_regenerate_and_download_approved_from_the_command_line(fresh, tmp_path: Path):
    csv_file = make_csv(f"clirev{uuid.uuid4().hex[:6]}", 6)
    path = tmp_path / csv_file.name
    path.write_bytes(csv_file.data)
    ran = csv_opener(fresh, "run", str(path), "--instructions", "We make maps.", "-o", str(tmp_path / "all.csv"),
                     "--json")
    assert ran.returncode == 0, ran.stderr
    job_id = json.loads(ran.stdout)["job"]["id"]

    editor = tmp_path / "editor.py"
    editor.write_text("import sys\nopen(sys.argv[1], 'w').write('A line a person wrote for this prospect.')\n")
    done = csv_opener(fresh, "review", job_id, stdin="a 1-2\nr 3\ne 4\na 4\ng 3\nShorter please.\nq\n",
                      env={"EDITOR": f"{sys.executable} {editor}"})
    assert done.returncode == 0, done.stderr
    assert "OPENER / ERROR" in done.stdout and "EVIDENCE" in done.stdout
    assert "2 row(s) approved." in done.stdout and "1 row(s) rejected." in done.stdout
    assert "saved: A line a person wrote for this prospect." in done.stdout
    assert "1 row(s) regenerating" in done.stdout
    assert wait_completed(fresh, job_id)["status"] == "completed"

    rows = json.loads(csv_opener(fresh, "results", job_id, "--json").stdout)["results"]
    assert [r["review"] for r in rows] == ["approved", "approved", None, "approved", None, None]
    assert rows[3]["edited"] and rows[3]["opener"] == "A line a person wrote for this prospect."
    again = csv_opener(fresh, "regenerate", job_id, "--review", "approved", "--feedback", "Warmer.", "--wait",
                       "-o", str(tmp_path / "after.csv"))
    assert again.returncode == 0, again.stderr  # rows 1 and 2: the edited row 4 is left alone
    assert "2 row(s) regenerating" in again.stderr

    got = csv_opener(fresh, "download", job_id, "--approved", "-o", str(tmp_path / "approved.csv"))
    assert got.returncode == 0, got.stderr
    table = list(csv.reader(io.StringIO((tmp_path / "approved.csv").read_text(encoding="utf-8"), newline="")))
    assert len(table) == 2 and table[1][3] == "A line a person wrote for this prospect."
