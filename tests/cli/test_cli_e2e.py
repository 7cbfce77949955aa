"""`csv-opener` as a user runs it (`python -m csv_opener_cli`, a subprocess with CSV_OPENER_API and
CSV_OPENER_KEY) against the real local stack: `chalice local`, the event runner, LocalStack,
PostgreSQL, a private Redis and the fake OpenAI server (conftest.py)."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from tests.support.e2e import EXTRA_COLUMNS, make_csv, neutralize
from tests.support.stack import SMALL_DIRECT_UPLOAD
from tests.support.util import ROOT
from tests.support.widefile import padded_csv

INSTRUCTIONS = "We are Acme Analytics; we help ops teams cut reporting time. Friendly tone."


def cli_env(stack, key: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSV_OPENER_")}
    return {**env, "CSV_OPENER_API": stack.api.base, "CSV_OPENER_KEY": key or stack.key, "PYTHONUNBUFFERED": "1"}


def csv_opener(stack, *args: str, key: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "csv_opener_cli", *args], cwd=ROOT, env=cli_env(stack, key),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def write_csv(tmp_path: Path, n_urls: int, invalid_every: int = 0):
    csv_file = make_csv(f"cli{uuid.uuid4().hex[:6]}", n_urls, invalid_every=invalid_every)
    path = tmp_path / csv_file.name
    path.write_bytes(csv_file.data)
    return csv_file, path


def assert_result_file(path: Path, csv_file) -> None:
    """Every input row in order, its cells kept, plus the opener columns filled in."""
    table = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
    header, *body = csv_file.rows
    assert table[0] == [neutralize(c) for c in header] + EXTRA_COLUMNS
    assert len(table) - 1 == len(body)
    for index, (original, got) in enumerate(zip(body, table[1:], strict=True)):
        assert got[:3] == [neutralize(c) for c in original], (index, got)
        opener, status, error, context = got[3:7]
        if index in csv_file.invalid_rows:
            assert (opener, status, context) == ("", "invalid", "") and error, (index, got)
        else:
            assert (status, context) == ("completed", "off") and opener and not error, (index, got)


def job_id_in(text: str) -> str:
    return re.search(r"Job ([0-9a-f-]{36})", text).group(1)


def test_run_uploads_follows_and_downloads(fresh, tmp_path):
    csv_file, path = write_csv(tmp_path, 12, invalid_every=5)
    assert len(csv_file.data) < SMALL_DIRECT_UPLOAD  # the direct path
    began = time.monotonic()
    done = csv_opener(fresh, "run", str(path), "--instructions", INSTRUCTIONS)
    assert done.returncode == 0, done.stderr
    out = tmp_path / f"{path.stem}-openers.csv"
    assert_result_file(out, csv_file)
    job_id = job_id_in(done.stdout)
    assert f"Job {job_id} completed: 12 processed · 0 failed · 12 total → {out}" in done.stdout
    assert f"12 URLs in column 'website', {csv_file.invalid} invalid row(s)" in done.stderr
    assert "completed 12/12 (12 processed, 0 failed) 100%" in done.stderr  # the last progress line
    assert "presigned" not in done.stderr
    prefix, secret = fresh.key[:12], fresh.key[13:]  # cso_<8 hex>_<secret>
    assert secret not in done.stdout + done.stderr and f"with key {prefix}" in done.stderr
    print(f"[cli] run of 12 URLs: {time.monotonic() - began:.1f} s")


def test_json_output_parses_for_every_command(fresh, tmp_path):
    csv_file, path = write_csv(tmp_path, 6)
    done = csv_opener(fresh, "run", str(path), "--instructions", INSTRUCTIONS, "-o", str(tmp_path / "o.csv"),
                      "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    job_id = document["job"]["id"]
    assert document["job"]["status"] == "completed" and document["job"]["processed_rows"] == 6
    assert document["output"] == str(tmp_path / "o.csv") and document["upload"]["how"] == "direct"
    assert_result_file(tmp_path / "o.csv", csv_file)

    status = json.loads(csv_opener(fresh, "status", job_id, "--json").stdout)
    assert status["job"]["id"] == job_id and status["job"]["progress"] == 100
    jobs = json.loads(csv_opener(fresh, "--json", "jobs", "--limit", "2").stdout)
    assert jobs["jobs"][0]["id"] == job_id
    results = json.loads(csv_opener(fresh, "results", job_id, "--limit", "4", "--json").stdout)
    assert [r["status"] for r in results["results"]] == ["completed"] * 4
    downloaded = json.loads(csv_opener(fresh, "download", job_id, "-o", str(tmp_path / "d.csv"), "--json").stdout)
    assert downloaded["bytes"] == (tmp_path / "d.csv").stat().st_size > 0
    assert (tmp_path / "d.csv").read_bytes() == (tmp_path / "o.csv").read_bytes()


def test_presigned_path_for_a_file_above_the_direct_limit(fresh, tmp_path):
    csv_file, path = write_csv(tmp_path, 60, invalid_every=7)
    assert len(csv_file.data) > SMALL_DIRECT_UPLOAD
    done = csv_opener(fresh, "run", str(path), "--instructions", INSTRUCTIONS, "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["upload"]["how"] == "presigned" and document["job"]["total_rows"] == 60
    assert "using a presigned upload" in done.stderr
    assert_result_file(Path(document["output"]), csv_file)


def test_bad_file_exits_2_with_the_api_message(fresh, tmp_path):
    path = tmp_path / "names.csv"
    path.write_text("name,city\nAlice,Paris\nBob,Oslo\n")
    done = csv_opener(fresh, "run", str(path), "--instructions", INSTRUCTIONS)
    assert done.returncode == 2
    assert "No column of URLs found" in done.stderr and "[400 no_url_column]" in done.stderr
    assert "{" not in done.stderr and "Traceback" not in done.stderr
    # the same file past the direct limit: the API's answer to /api/upload/process, for the presigned upload
    path.write_text("name,city\n" + "".join(f"Person {i},City {i}\n" for i in range(200)))
    done = csv_opener(fresh, "run", str(path), "--instructions", INSTRUCTIONS)
    assert done.returncode == 2 and "No column of URLs found" in done.stderr and "(job " in done.stderr


def test_wrong_key_exits_2_unauthorized(fresh, tmp_path):
    _, path = write_csv(tmp_path, 2)
    wrong = "cso_0badc0de_" + "x" * 43
    done = csv_opener(fresh, "run", str(path), "--instructions", INSTRUCTIONS, key=wrong)
    assert done.returncode == 2
    assert "unauthorized" in done.stderr and "cso_0badc0de" in done.stderr and "x" * 43 not in done.stderr
    done = csv_opener(fresh, "jobs", "--json", key=wrong)
    assert done.returncode == 2 and json.loads(done.stdout)["error"]["code"] == "unauthorized"


def test_preview_reports_a_missing_endpoint(fresh, tmp_path):
    done = csv_opener(fresh, "preview", str(uuid.uuid4()), "--instructions", INSTRUCTIONS)
    assert done.returncode == 2
    assert "job_not_found" in done.stderr  # the API offers previews: the job is unknown
    assert fresh.key.split("_", 2)[2] not in done.stderr  # chalice local's 403 quotes the Authorization header


# ---------------------------------------------------------------- cancel and Ctrl-C


class Background:
    """`csv-opener run …` in the background; its stderr collected as it comes."""

    def __init__(self, stack, *args: str, stdin=subprocess.DEVNULL) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "csv_opener_cli", *args], cwd=ROOT,
                                     env=cli_env(stack), stdin=stdin, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.err = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while chunk := self.proc.stderr.read1(4096):
            self.err += chunk

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := re.search(pattern, self.err.decode("utf-8", "replace")):
                return match
            assert self.proc.poll() is None or self.reader.is_alive(), self.err.decode()
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not seen in {self.err.decode()!r}")

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        code = self.proc.wait(timeout)
        self.reader.join(5)
        return code, self.proc.stdout.read().decode(), self.err.decode()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def slow_run(fresh, tmp_path, *extra: str, stdin=subprocess.DEVNULL) -> tuple[Background, str]:
    """A run of 120 URLs at 1 s per LLM call (a dozen seconds), seen processing."""
    fresh.fake.configure(latency_ms=1000)
    _, path = write_csv(tmp_path, 120)
    run = Background(fresh, "run", str(path), "--instructions", INSTRUCTIONS, *extra, stdin=stdin)
    job_id = run.wait_for(r"job ([0-9a-f-]{36}): processing")[1]
    return run, job_id


def test_cancel_from_another_shell_ends_the_run_with_exit_1(fresh, tmp_path):
    run, job_id = slow_run(fresh, tmp_path)
    try:
        canceled = csv_opener(fresh, "cancel", job_id)
        assert canceled.returncode == 0 and "canceled" in canceled.stdout
        code, out, err = run.finish()
        assert code == 1 and f"Job {job_id} canceled" in err and f"csv-opener download {job_id}" in err
        assert not (tmp_path / "out.csv").exists()
    finally:
        run.kill()


def test_ctrl_c_without_a_terminal_leaves_the_job_running(fresh, tmp_path):
    run, job_id = slow_run(fresh, tmp_path)
    try:
        run.proc.send_signal(signal.SIGINT)
        code, _, err = run.finish()
        assert code == 130
        assert f"csv-opener status {job_id}" in err and f"csv-opener download {job_id}" in err
        assert json.loads(csv_opener(fresh, "status", job_id, "--json").stdout)["job"]["status"] == "processing"
    finally:
        run.kill()
        csv_opener(fresh, "cancel", job_id)


def test_ctrl_c_at_a_terminal_asks_and_cancels(fresh, tmp_path):
    master, slave = pty.openpty()  # stdin is a terminal: the command asks
    try:
        run, job_id = slow_run(fresh, tmp_path, "--json", stdin=slave)
        os.close(slave)
        try:
            run.proc.send_signal(signal.SIGINT)
            run.wait_for(rf"Cancel job {job_id}\? \[y/N\]")
            os.write(master, b"y\n")
            code, out, err = run.finish()
            assert code == 1, err
            document = json.loads(out)
            assert document["canceled"] is True and document["job"]["status"] == "canceled"
            assert json.loads(csv_opener(fresh, "status", job_id, "--json").stdout)["job"]["status"] == "canceled"
        finally:
            run.kill()
    finally:
        os.close(master)


def test_a_big_file_is_uploaded_by_parts_with_one_progress_bar(fresh, tmp_path):
    path = tmp_path / "big.csv"
    path.write_bytes(padded_csv(12, 11 * 1024 * 1024))
    done = csv_opener(fresh, "run", str(path), "--instructions", INSTRUCTIONS, "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["upload"]["how"] == "multipart" and document["job"]["total_rows"] == 12
    assert "uploaded through a presigned URL by parts" in done.stderr
    shown = [line for line in done.stderr.splitlines() if line.startswith("Uploading big.csv: ")]
    assert shown[0] == f"Uploading big.csv: 0% of {path.stat().st_size:,} bytes"
    assert shown[-1].startswith("Uploading big.csv: 100%") and len(shown) == 11  # one bar, each tenth once
    limit = csv.field_size_limit(1 << 21)  # the notes cells are ~1 MB
    try:
        table = list(csv.reader(io.StringIO(Path(document["output"]).read_text(encoding="utf-8"), newline="")))
    finally:
        csv.field_size_limit(limit)
    assert table[0][:4] == ["Person Linkedin Url", "Website", "Facebook Url", "Notes"]
    assert len(table) == 13 and all(row[4] and row[5] == "completed" for row in table[1:])
    assert document["upload"]["url_choice"]["column"] == "Website"
    assert "URL column 'Website' (header Website names a company site); other URL columns: " in done.stderr
