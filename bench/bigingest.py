"""Background ingest of a real lead export (issue 24): 100,000 rows x 40 columns (~105 MB,
Apollo-style), stored in S3 as a presigned upload would be, then `process` and the ingest function.

    .venv/bin/python infra/devstack.py bench bigingest                    # 100,000 rows (+ a 10 MB file)
    .venv/bin/python infra/devstack.py bench bigingest --rows 1000000 --no-small   # the million-row case
    .venv/bin/python infra/devstack.py bench bigingest --runs 6 --baseline /tmp/main   # medians, against a
        # baseline tree (`git archive main | tar -x -C /tmp/main`), interleaved; --variant LABEL:NAME=VALUE
        # adds an arm of this code with environment variables set

Each step runs in a fresh Python process (its peak RSS is its own; clients built before the clock):

- process: `jobs.start(...)`, what POST /api/upload/process runs: header + 1 MiB sample, quota on
  the estimate, job -> ingesting, one ingest message. Target: <= 2 s.
- ingest: `jobs.ingest_file(...)`, what the ingest function runs: S3 stream, parse, COPY per
  CHUNK_SIZE rows, chunk messages as batches commit. Reported: its time, the time from its start
  to the first chunk message sent, peak RSS (ru_maxrss and VmHWM; target <= 300 MB and within
  1.2x of the same step for a 10 MB file of the same shape).
- baseline: `psql \\copy` of the very rows the ingest stored (job_id, row_number, chunk, url) into
  a scratch `LIKE urls INCLUDING ALL` table with the same foreign key. Target: ingest / copy <= 2.
- first opener (`--first-opener`): a new job of the same stored file, `process`, and the event
  runner (`infra/runner.py`: the ingest function and the chunk workers, dummy provider) until the
  first opener is stored. Target: <= 15 s after `process` is called.

Files are generated in a temporary directory (never committed). Results go to stdout and, unless
--no-write, to bench/RESULTS.md under HEADING: a single run rewrites only the table between
TABLE_BEGIN and TABLE_END (notes around it are kept), `--runs` appends its runs at the end of the
section. The ingest step also reports its CPU time and its PostgreSQL backend's.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADING = "## Background ingest (issue 24: 100,000 rows x 40 columns, 105 MB)"
SEED = 20261202
BIG_FILE_LIMIT = str(2 * 1024**3)

COLUMNS = ("First Name", "Last Name", "Title", "Company", "Company Name for Emails", "Email", "Email Status",
           "Seniority", "Departments", "Contact Owner", "First Phone", "Work Direct Phone", "Home Phone",
           "Mobile Phone", "Corporate Phone", "Other Phone", "Stage", "Lists", "Last Contacted", "Account Owner",
           "# Employees", "Industry", "Keywords", "Person Linkedin Url", "Website", "Company Linkedin Url",
           "Facebook Url", "Twitter Url", "City", "State", "Country", "Company Address", "Company City",
           "Company State", "Company Country", "Company Phone", "SEO Description", "Technologies",
           "Annual Revenue", "Total Funding")
_FIRST = ("Ana", "Ben", "Chloé", "Dario", "Eva", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kofi", "Lena")
_LAST = ("Smith", "Müller", "Rossi", "Nguyen", "García", "Okafor", "Kowalski", "Dubois", "Tanaka", "Silva")
_WORDS = ("saas", "b2b", "analytics", "logistics", "fintech", "payments", "crm", "marketing automation",
          "supply chain", "cybersecurity", "devops", "cloud", "data platform", "ecommerce", "healthtech", "hr tech",
          "recruiting", "sales enablement", "customer success", "machine learning", "iot", "edtech", "insurtech")
_TECH = ("Salesforce", "HubSpot", "Google Analytics", "Segment", "Stripe", "Zendesk", "Intercom", "AWS",
         "Cloudflare", "React", "Shopify", "Marketo", "Outreach", "Gong", "Slack", "Okta", "Snowflake", "dbt")
_INDUSTRIES = ("information technology & services", "computer software", "logistics & supply chain",
               "financial services", "marketing & advertising", "hospital & health care", "retail")


def make_csv(path: Path, rows: int, seed: int = SEED) -> int:
    """Write an Apollo-style export of `rows` rows (about 1 KB each) to `path`; returns its size."""
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for n in range(rows):
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            company = f"{rng.choice(_LAST)} {rng.choice(('Labs', 'Systems', 'Logistics', 'Analytics'))} {n}"
            slug = company.lower().replace(" ", "-").replace("ü", "u").replace("í", "i")
            domain = f"{slug}.{rng.choice(('com', 'io', 'de', 'co.uk'))}"
            website = "" if rng.random() < 0.02 else rng.choice((f"http://www.{domain}", f"https://{domain}", domain))
            keywords = ", ".join(rng.sample(_WORDS, 8))
            tech = ", ".join(rng.sample(_TECH, 7))
            description = (f"{company} helps {rng.choice(_INDUSTRIES)} teams with {keywords}. "
                           f"Founded in {rng.randrange(1990, 2023)}, it serves customers in "
                           f"{rng.randrange(3, 60)} countries and runs on {tech}.")
            phone = f"+1 {rng.randrange(200, 999)}-{rng.randrange(200, 999)}-{rng.randrange(1000, 9999)}"
            writer.writerow((
                first, last, rng.choice(("VP Sales", "Head of Ops", "CTO", "Founder", "Marketing Manager")), company,
                company, f"{first.lower()}.{last.lower()}@{domain}", rng.choice(("Verified", "Unavailable")),
                rng.choice(("vp", "c_suite", "manager", "director")), rng.choice(("Sales", "Operations", "IT")),
                "Dana Owner", phone, phone, "", phone, phone, "", rng.choice(("Cold", "Approaching", "Replied")),
                "Q3 outbound; EU list", f"2026-0{rng.randrange(1, 9)}-1{rng.randrange(0, 9)}", "Dana Owner",
                rng.randrange(5, 5000), rng.choice(_INDUSTRIES), keywords, f"http://www.linkedin.com/in/{slug}-{n}",
                website, f"http://www.linkedin.com/company/{slug}", f"https://www.facebook.com/{slug}",
                f"https://twitter.com/{slug[:15]}", rng.choice(("Berlin", "Austin", "Lyon", "Leeds")), "", "Germany",
                f"{rng.randrange(1, 300)} Main Street, Suite {rng.randrange(1, 900)}", "Berlin", "Berlin", "Germany",
                phone, description, tech, rng.randrange(10**5, 10**9), rng.randrange(0, 10**8)))
    return path.stat().st_size


# ---------------------------------------------------------------- one measured step (child)

def _peaks() -> dict:
    import resource

    vmhwm = next((int(line.split()[1]) / 1024 for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmHWM:")), float("nan"))
    return {"rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "vmhwm_peak_mib": vmhwm}


def _cpu_s(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process so far (Linux /proc; NaN where unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child(step: str, job_id: str, out: str) -> None:
    from bench.common import bench_account
    from chalicelib import deps, jobs

    settings, conn, storage, queue = deps.settings(), deps.conn(), deps.storage(), deps.chunk_queue()
    ready = _peaks()
    result: dict = {"rss_ready_mib": ready["rss_peak_mib"]}
    backend = conn.info.backend_pid
    cpu = (_cpu_s(), _cpu_s(backend))
    start = time.perf_counter()
    if step == "process":
        body = jobs.start(conn, storage, queue, settings, bench_account(conn), job_id)
        result.update(seconds=time.perf_counter() - start, status=body["job"]["status"],
                      estimated_rows=body["job"]["estimated_rows"])
    elif step == "ingest":
        sends: list[float] = []
        real = queue.send_chunks

        def send_chunks(job, chunks):
            sends.append(time.perf_counter() - start)
            return real(job, chunks)

        queue.send_chunks = send_chunks
        profiler = writer_profiler = None
        if os.environ.get("BIGINGEST_PROFILE"):
            import cProfile

            from chalicelib.jobs import ingest

            profiler, writer_profiler = cProfile.Profile(), cProfile.Profile()
            store = ingest._store  # the writer thread's work, profiled on its own

            def profiled_store(*args, **kwargs):
                return writer_profiler.runcall(store, *args, **kwargs)

            ingest._store = profiled_store
            profiler.enable()
        job = jobs.ingest_file(conn, storage, queue, settings, job_id)
        if profiler:
            profiler.disable()
            profiler.dump_stats(os.environ["BIGINGEST_PROFILE"])
            writer_profiler.dump_stats(os.environ["BIGINGEST_PROFILE"] + ".writer")
        result.update(seconds=time.perf_counter() - start, first_chunk_s=sends[0] if sends else None,
                      chunk_messages=len(sends), status=job["status"], total_rows=job["total_rows"],
                      invalid_rows=job["invalid_rows"], ingested_rows=job["ingest_row"], chunks=job["chunks"],
                      cpu_s=_cpu_s() - cpu[0], pg_cpu_s=_cpu_s(backend) - cpu[1])
    else:
        sys.exit(f"unknown step {step!r}")
    result.update(_peaks())
    Path(out).write_text(json.dumps(result))


def run_child(step: str, job_id: str, tmp: Path, tree: Path = ROOT, env: dict | None = None) -> dict:
    """One step in a fresh process, with the code of source tree `tree` (this one, or a baseline's)
    and `env` added to the environment."""
    out = tmp / f"{step}-{uuid.uuid4().hex[:8]}.json"
    # a shell in between, so the child's ru_maxrss is its own (see bench/ingest.py run_child)
    cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-m", "bench.bigingest", "--child", step,
           job_id, str(out)]
    done = subprocess.run(cmd, cwd=tree, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL)
    if done.returncode != 0:
        sys.exit(f"[bench] step {step} failed with exit code {done.returncode}")
    return json.loads(out.read_text())


# ---------------------------------------------------------------- the benchmark (parent)

def stored_job(conn, path: Path, name: str) -> str:
    """A presigned-upload job whose file is in S3 (put as the client's PUT would leave it)."""
    from bench.common import bench_account
    from chalicelib import deps, jobs

    created = jobs.create_presigned_upload(conn, deps.storage(), deps.settings(), account_id=bench_account(conn),
                                           file_name=name, size=path.stat().st_size)
    job_id = created["job"]["id"]
    key = conn.execute("SELECT file_path FROM jobs WHERE id = %s", (job_id,)).fetchone()["file_path"]
    with path.open("rb") as data:
        deps.storage().put_file(key, data)
    return job_id


def psql_copy_seconds(database_url: str, job_id: str, tmp: Path) -> float:
    rows = tmp / "rows.tsv"
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database_url, "-c",
                    f"\\copy (SELECT job_id, row_number, chunk, url FROM urls WHERE job_id = '{job_id}' "
                    f"ORDER BY row_number) TO '{rows}'"], check=True)
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database_url, "-c",
                    "DROP TABLE IF EXISTS bench_urls; CREATE TABLE bench_urls (LIKE urls INCLUDING ALL); "
                    "ALTER TABLE bench_urls ADD FOREIGN KEY (job_id) REFERENCES jobs(id) ON DELETE CASCADE"],
                   check=True)
    start = time.perf_counter()
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database_url, "-c",
                    f"\\copy bench_urls (job_id, row_number, chunk, url) FROM '{rows}'"], check=True)
    seconds = time.perf_counter() - start
    subprocess.run(["psql", "-X", "-q", "-d", database_url, "-c", "DROP TABLE bench_urls"], check=True)
    return seconds


def first_opener_seconds(conn, settings, source_key: str, name: str, timeout_s: float = 300.0) -> dict:
    """The whole path as deployed, in this process: a new job of the same stored file, `process`
    (what the API runs), the event runner taking its ingest message and its chunk messages
    (`infra/runner.py`, the dummy provider at its default 2-3 s per answer, page context on as
    by default). -> seconds from the `process` call to the first opener stored (the database's
    clock at both ends), and the rows ingested by then."""
    from bench.common import bench_account
    from chalicelib import deps, jobs
    from infra.runner import Runner

    storage, queue = deps.storage(), deps.chunk_queue()
    for url in (settings.chunk_queue_url, settings.ingest_queue_url):  # the earlier steps' messages
        queue.sqs.purge_queue(QueueUrl=url)
    job_id = copied_job(conn, settings, source_key, name)
    runner = Runner(settings.chunk_queue_url, None, settings.max_concurrent_jobs, settings.aws_region,
                    ingest_queue_url=settings.ingest_queue_url).start()
    try:
        started_at = conn.execute("SELECT clock_timestamp() AS t").fetchone()["t"]
        jobs.start(conn, storage, queue, settings, bench_account(conn), job_id)
        deadline = time.monotonic() + timeout_s
        first = ingesting = claimed = None
        while first is None and time.monotonic() < deadline:
            now = conn.execute("SELECT clock_timestamp() AS t").fetchone()["t"]
            if ingesting is None and db_ingest_row(conn, job_id):
                ingesting = (now - started_at).total_seconds()
            if claimed is None and conn.execute("SELECT 1 FROM urls WHERE job_id = %s AND status <> 'pending' "
                                                "LIMIT 1", (job_id,)).fetchone():
                claimed = (now - started_at).total_seconds()
            first = conn.execute("SELECT min(finished_at) AS t FROM urls WHERE job_id = %s AND opener IS NOT NULL",
                                 (job_id,)).fetchone()["t"]
            time.sleep(0.1)
        ingested = conn.execute("SELECT ingest_row FROM jobs WHERE id = %s", (job_id,)).fetchone()["ingest_row"]
        # the provider calls the first stored row took: its prompt tokens over one request's
        calls = conn.execute(
            """SELECT u.prompt_tokens::float / nullif((j.estimate->>'prompt_tokens_per_url')::float, 0) AS calls
               FROM urls u JOIN jobs j ON j.id = u.job_id WHERE u.job_id = %s AND u.opener IS NOT NULL
               ORDER BY u.finished_at LIMIT 1""", (job_id,)).fetchone()
        jobs.cancel(conn, bench_account(conn), job_id)
    finally:
        runner.stop()
    conn.execute("DELETE FROM jobs WHERE id = %s", (job_id,))
    return {"first_opener_s": None if first is None else (first - started_at).total_seconds(),
            "ingested_rows_then": ingested, "first_batch_stored_s": ingesting, "first_row_claimed_s": claimed,
            "first_row_calls": calls and calls["calls"]}


def copied_job(conn, settings, source_key: str, name: str) -> str:
    """A new presigned-upload job whose file is a copy (in S3) of the stored `source_key`."""
    from bench.common import bench_account
    from chalicelib import deps, jobs

    storage = deps.storage()
    created = jobs.create_presigned_upload(conn, storage, settings, account_id=bench_account(conn), file_name=name,
                                           size=storage.head(source_key)[0])
    storage.copy(source_key, db_file_path(conn, created["job"]["id"]))
    return created["job"]["id"]


def db_ingest_row(conn, job_id: str) -> int:
    return conn.execute("SELECT ingest_row FROM jobs WHERE id = %s", (job_id,)).fetchone()["ingest_row"]


def db_file_path(conn, job_id: str) -> str:
    return conn.execute("SELECT file_path FROM jobs WHERE id = %s", (job_id,)).fetchone()["file_path"]


def measure(conn, settings, tmp: Path, rows: int, name: str, first_opener: bool = False) -> dict:
    path = tmp / name
    size = make_csv(path, rows)
    print(f"[bench] {name}: {rows:,} rows x {len(COLUMNS)} columns, {size:,} bytes ({size / 1e6:.1f} MB)",
          flush=True)
    job_id = stored_job(conn, path, name)
    path.unlink()
    process = run_child("process", job_id, tmp)
    ingest = run_child("ingest", job_id, tmp)
    copy_s = psql_copy_seconds(settings.database_url, job_id, tmp)
    first = first_opener_seconds(conn, settings, db_file_path(conn, job_id), name) if first_opener else None
    conn.execute("DELETE FROM jobs WHERE id = %s", (job_id,))
    figures = {"rows": rows, "bytes": size, "process": process, "ingest": ingest, "copy_s": copy_s,
               "first_opener": first}
    if first is not None:
        print(f"[bench]   first opener stored {first['first_opener_s']:.1f} s after process was called "
              f"(first batch stored after {first['first_batch_stored_s']} s, first row claimed after "
              f"{first['first_row_claimed_s']} s; {first['ingested_rows_then']:,} file rows ingested by then; "
              f"that row's prompt tokens = {first['first_row_calls']} requests' worth)",
              flush=True)
    print(f"[bench]   process {process['seconds']:.2f} s ({process['status']}, estimated "
          f"{process['estimated_rows']:,} URLs); ingest {ingest['seconds']:.1f} s for {ingest['total_rows']:,} URLs "
          f"({ingest['invalid_rows']:,} invalid), first chunk message after {ingest['first_chunk_s']:.2f} s; "
          f"psql \\copy {copy_s:.1f} s (ratio {ingest['seconds'] / copy_s:.2f}); ingest peak RSS "
          f"{ingest['rss_peak_mib']:.0f} MiB (VmHWM {ingest['vmhwm_peak_mib']:.0f})", flush=True)
    return figures


def compare(conn, settings, tmp: Path, rows: int, runs: int, arms: list[tuple[str, Path, dict]]) -> list[dict]:
    """`runs` ingests of one stored file per arm (label, source tree, environment added), each a
    new job and its own `psql \\copy` right after it; in each run the arms' ingests go back to
    back, in an order that alternates (so they share the load). -> one record per ingest;
    prints each and the medians per arm."""
    path, name = tmp / "apollo-export.csv", "apollo-export.csv"
    size = make_csv(path, rows)
    source_key = db_file_path(conn, stored_job(conn, path, name))
    path.unlink()
    print(f"[bench] {rows:,} rows x {len(COLUMNS)} columns ({size / 1e6:.1f} MB), {runs} runs of "
          + ", ".join(f"{label} ({tree}{' ' + str(env) if env else ''})" for label, tree, env in arms), flush=True)
    measured: list[dict] = []
    for n in range(runs):
        for label, tree, env in arms[::-1] if n % 2 else arms:
            job_id = copied_job(conn, settings, source_key, name)
            run_child("process", job_id, tmp)  # this tree's: the same job for both
            load = os.getloadavg()[0]
            ingest = run_child("ingest", job_id, tmp, tree, env)
            copy_s = psql_copy_seconds(settings.database_url, job_id, tmp)
            conn.execute("DELETE FROM jobs WHERE id = %s", (job_id,))
            conn.execute("VACUUM urls")  # every run starts from the same table
            measured.append({"run": n + 1, "code": label, "load": load, "ingest_s": ingest["seconds"], "copy_s": copy_s,
                             "ratio": ingest["seconds"] / copy_s, "rss_mib": ingest["rss_peak_mib"],
                             "cpu_s": ingest.get("cpu_s"), "pg_cpu_s": ingest.get("pg_cpu_s")})
            cpu = (f", CPU {ingest['cpu_s']:.2f} s + PostgreSQL {ingest['pg_cpu_s']:.2f} s" if "cpu_s" in ingest
                   else "")
            print(f"[bench]   run {n + 1} {label}: ingest {ingest['seconds']:.2f} s / psql \\copy {copy_s:.2f} s "
                  f"= {ingest['seconds'] / copy_s:.2f} at load {load:.1f}{cpu}, peak RSS "
                  f"{ingest['rss_peak_mib']:.0f} MiB", flush=True)
    for label, _tree, _env in arms:
        mine = [m for m in measured if m["code"] == label]
        print(f"[bench] {label}: median ingest {statistics.median(m['ingest_s'] for m in mine):.2f} s, median "
              f"ratio {statistics.median(m['ratio'] for m in mine):.2f} (runs {min(m['ratio'] for m in mine):.2f}-"
              f"{max(m['ratio'] for m in mine):.2f}), loads {min(m['load'] for m in mine):.1f}-"
              f"{max(m['load'] for m in mine):.1f}", flush=True)
    return measured


TABLE_BEGIN = "<!-- bigingest: the table below is rewritten by bench/bigingest.py; notes go outside it -->"
TABLE_END = "<!-- bigingest: end of the table -->"


def _section(text: str) -> tuple[str, str, str]:
    """RESULTS.md cut at this benchmark's section (HEADING up to the next "## " heading): before,
    section, after. A file without the section gets an empty one at its end."""
    if HEADING not in text:
        text = text.rstrip("\n") + f"\n\n{HEADING}\n"
    before, rest = text.split(HEADING, 1)
    section, _, after = rest.partition("\n## ")
    return before, HEADING + section, ("\n## " + after) if after else ""


def write_results(measured: list[dict]) -> None:
    """This benchmark's table in RESULTS.md (between TABLE_BEGIN and TABLE_END; the section's
    other text is kept): one row per file size, a new run replacing the row of its size (so the
    million-row run adds its row beside the 100,000-row one)."""
    def row(f: dict) -> str:
        i, p = f["ingest"], f["process"]
        return (f"| {f['rows']:,} | {f['bytes'] / 1e6:.1f} MB | {p['seconds']:.2f} s | {i['first_chunk_s']:.2f} s | "
                f"{i['seconds']:.1f} s | {f['copy_s']:.1f} s | {i['seconds'] / f['copy_s']:.2f} | "
                f"{i['rss_peak_mib']:.0f} MiB | {i['total_rows']:,} / {i['invalid_rows']:,} |")

    before, section, after = _section(RESULTS.read_text())
    if TABLE_BEGIN not in section:  # the table goes first, right under the heading
        section = section.replace(HEADING, f"{HEADING}\n\n{TABLE_BEGIN}\n{TABLE_END}", 1)
    above, rest = section.split(TABLE_BEGIN, 1)
    table, below = rest.split(TABLE_END, 1)
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip()[:1].isdigit()}
    rows.update({f"{f['rows']:,}": row(f) for f in measured})
    rss = {f["rows"]: f["ingest"]["rss_peak_mib"] for f in measured}
    notes = [line for line in table.splitlines() if line.startswith("Peak RSS of the ingest step")]
    if len(measured) > 1 and measured[0]["rows"] == 10 * measured[1]["rows"]:
        notes = [f"Peak RSS of the ingest step, {measured[0]['rows']:,}-row file ÷ {measured[1]['rows']:,}-row "
                 f"file: {rss[measured[0]['rows']] / rss[measured[1]['rows']]:.2f}."]
    lines = [f"Measured {date.today().isoformat()} by `bench/bigingest.py` on a private stack "
             "(`infra/devstack.py bench bigingest [--rows N]`), 2-core machine shared with other work; one run "
             f"each, load average {os.getloadavg()[0]:.1f} at the end. The file is generated (Apollo-style, 40 "
             "columns), put in S3 as a presigned upload, then `process` and the ingest step run in fresh processes.",
             "", "| rows | file | process answers | first chunk sent after | ingest | psql \\copy | ingest ÷ copy "
             "| ingest peak RSS | URLs / invalid |", "|---|---|---|---|---|---|---|---|---|",
             *sorted(rows.values(), key=lambda line: -int(line.split("|")[1].strip().replace(",", ""))),
             "", *notes]
    RESULTS.write_text(before + above + TABLE_BEGIN + "\n" + "\n".join(lines).rstrip("\n") + "\n" + TABLE_END
                       + below + after)


def append_runs(measured: list[dict], rows: int, command: str) -> None:
    """A `--runs` comparison added at the end of this benchmark's section (nothing is replaced)."""
    lines = ["", f"#### {rows:,} rows, {date.today().isoformat()}: `{command}`", "",
             "| run | code | ingest | psql \\copy | ingest ÷ copy | load (1 min) | CPU: ingest + PostgreSQL |",
             "|---|---|---|---|---|---|---|"]
    for m in measured:
        cpu = f"{m['cpu_s']:.2f} + {m['pg_cpu_s']:.2f} s" if m["cpu_s"] is not None else "—"
        lines.append(f"| {m['run']} | {m['code']} | {m['ingest_s']:.2f} s | {m['copy_s']:.2f} s | {m['ratio']:.2f} | "
                     f"{m['load']:.1f} | {cpu} |")
    lines.append("")
    for label in dict.fromkeys(m["code"] for m in measured):
        mine = [m for m in measured if m["code"] == label]
        lines.append(f"- {label}: median ingest {statistics.median(m['ingest_s'] for m in mine):.2f} s, median "
                     f"ratio **{statistics.median(m['ratio'] for m in mine):.2f}** ({len(mine)} runs, "
                     f"{min(m['ratio'] for m in mine):.2f}–{max(m['ratio'] for m in mine):.2f})")
    before, section, after = _section(RESULTS.read_text())
    RESULTS.write_text(before + section.rstrip("\n") + "\n" + "\n".join(lines) + "\n" + (after or ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=3, metavar=("STEP", "JOB", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--no-small", action="store_true", help="skip the 10 MB comparison file")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--profile", action="store_true", help="cProfile the ingest step (no RESULTS.md)")
    parser.add_argument("--runs", type=int, default=0,
                        help="N ingests of the --rows file, each with its own psql \\copy, and their medians")
    parser.add_argument("--baseline", type=Path, metavar="TREE",
                        help="with --runs: also ingest with the code of source tree TREE, interleaved")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:NAME=VALUE[,NAME=VALUE]",
                        help="with --runs: also ingest with this code and these environment variables, interleaved")
    parser.add_argument("--first-opener", action="store_true",
                        help="also: a job of the same file through the event runner, to its first opener stored")
    args = parser.parse_args()
    os.environ["MAX_FILE_SIZE"] = BIG_FILE_LIMIT  # until uploads of any real size are the default
    if args.child:
        child(*args.child)
        return
    from chalicelib import deps
    from chalicelib.adapters import db

    settings = deps.settings()
    if "_bench_" not in settings.database_url and "_test_" not in settings.database_url:
        sys.exit("[bench] run it through `infra/devstack.py bench bigingest` (throwaway database and LocalStack)")
    conn = db.connect(settings.database_url)
    with tempfile.TemporaryDirectory(prefix="csv-opener-bench-bigingest-") as tmp_name:
        tmp = Path(tmp_name)
        if args.profile:
            import pstats

            os.environ["BIGINGEST_PROFILE"] = str(tmp / "ingest.prof")
            measure(conn, settings, tmp, args.rows, "apollo-export.csv")
            print("[bench] the parsing thread (the caller of ingest_file):")
            pstats.Stats(str(tmp / "ingest.prof")).strip_dirs().sort_stats("tottime").print_stats(25)
            print("[bench] the writer thread (ingest._store: COPY, counters, commit, chunk messages):")
            pstats.Stats(str(tmp / "ingest.prof.writer")).strip_dirs().sort_stats("cumulative").print_stats(30)
            return
        if args.runs:
            arms = [("this", ROOT, {})] + ([("baseline", args.baseline.resolve(), {})] if args.baseline else [])
            for variant in args.variant:
                label, _, assignments = variant.partition(":")
                arms.append((label, ROOT, dict(pair.split("=", 1) for pair in assignments.split(",") if pair)))
            runs = compare(conn, settings, tmp, args.rows, args.runs, arms)
            if not args.no_write:
                append_runs(runs, args.rows, "infra/devstack.py bench bigingest " + " ".join(sys.argv[1:]))
            return
        measured = [measure(conn, settings, tmp, args.rows, "apollo-export.csv", first_opener=args.first_opener)]
        if not args.no_small:
            measured.append(measure(conn, settings, tmp, max(1, args.rows // 10), "apollo-small.csv"))
    if not args.no_write:
        write_results(measured)


if __name__ == "__main__":
    main()
