"""Ingest benchmark: a 10 MB (~150,000-row) CSV through upload + process, against `psql \\copy`.

    make bench                                            # every benchmark, on a private stack
    .venv/bin/python infra/devstack.py bench ingest       # just this one
    .venv/bin/python infra/devstack.py bench ingest --profile   # one cProfile'd run, no RESULTS.md

`infra/devstack.py bench` provides what this needs: a throwaway database with the migrations, a
private LocalStack with the bucket and queues, and the settings in the environment.

What is measured, each step in a fresh Python process (so its peak RSS is its own; the clients
and the connection are built before the clock starts, as in a warm Lambda container):

- upload:  `jobs.create_from_upload(...)`, what POST /api/upload runs (parse, S3 put, job row);
- process: `jobs.start(...)`, what POST /api/upload/process runs, plus `jobs.ingest_file(...)`, the
  background ingest a file above INGEST_INLINE_BYTES gets (S3 stream, parse, COPY, SQS);
- baseline: `psql \\copy` of the very rows `start` stored, (job_id, row_number, chunk, url), from a
  pre-written file into a scratch table `LIKE urls INCLUDING ALL` plus the same foreign key;
- HTTP-shaped (unless --no-http): the same two steps through `chalice.test.Client`, the upload as
  a multipart body (middleware, rate limit, multipart parsing included).

Each side runs --runs times (default 3, interleaved); the medians are reported, with each step's
own CPU time (steadier than wall time on a shared machine). Jobs are deleted between runs. Then
one upload + process at twice the rows shows whether peak memory grows with the file
(--no-scale-check skips it). Results go to stdout and to bench/RESULTS.md under
"## Ingest (10 MB CSV)" (other sections are kept; --no-write leaves the file alone).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
import uuid
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADING = "## Ingest (10 MB CSV)"
API_GATEWAY_LIMIT_S = 29.0
SEED = 20240601
ROWS = 150_000
INVALID_SHARE = 0.03
FILE_NAME = "leads-10mb.csv"

# ---------------------------------------------------------------- the input file

_FIRST = ("Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Hooli", "Vandelay", "Wonka", "Cyberdyne",
          "Soylent", "Tyrell", "Massive", "Aperture", "Black Mesa", "Blue Sun", "Oscorp", "Pied Piper",
          "Nakatomi", "Gringotts", "Müller", "Société Générale", "Zürich Re", "São Paulo Tech", "Nordwind",
          "Bluth", "Dunder Mifflin", "Sterling Cooper", "Prestige", "Monarch", "Wolfram", "Kruger", "Olivetti")
_SECOND = ("Logistics", "Labs", "Systems", "Holdings", "Analytics", "Foods", "Robotics", "Health", "Capital",
           "Software", "Media", "Energy", "Partners", "Studio", "Networks", "Bio", "Consulting", "Retail")
_SUFFIX = ("", "", "", " Inc", " Ltd", " GmbH", " LLC", " SA", ", Inc.", " & Sons", ", LLP")
_TLDS = ("com", "com", "com", "io", "co.uk", "de", "fr", "net", "org", "ai", "com.br", "ch", "nl")
_PATHS = ("about", "en/contact", "products", "company/team", "careers", "blog/2024/launch", "de/ueber-uns")
_CITIES = ("London", "Berlin", "New York", "San Francisco", "Austin", "Toronto", "Sydney", "Zürich", "Lyon",
           "São Paulo", "Paris, France", "Washington, D.C.", "Portland, OR", "Cambridge, MA", "Dublin",
           "Amsterdam", "Bengaluru", "Singapore", "Tel Aviv", "")
_NOTES = ("met at SaaStr", "follow up in Q3", "decision maker: CTO", "uses Salesforce, HubSpot",
          'asked for "enterprise" pricing', "warm intro from Dana", "no budget until 2025",
          "churned, win back?", "500+ employees", "Series B, hiring", "cold", "")
_INVALID = ("", "n/a", "N/A", "-", "javascript:alert(1)", "localhost:3000", "http://10.0.0.5/admin",
            "sales@acme.com", "acme", "see notes", "http://169.254.169.254/latest/meta-data/",
            "ftp://files.acme.com", "www.acme .com", "TBD")


def _slug(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-") or "company"


def _website(rng: random.Random, first: str, second: str) -> str:
    if rng.random() < INVALID_SHARE:
        return rng.choice(_INVALID)
    name = _slug(first) + (f"-{_slug(second)}" if rng.random() < 0.3 else "")
    domain = f"{name}{rng.randrange(1, 999)}.{rng.choice(_TLDS)}"
    form = rng.random()
    if form < 0.35:
        return domain
    if form < 0.50:
        return f"www.{domain}"
    if form < 0.65:
        return f"https://{domain}"
    if form < 0.75:
        return f"https://www.{domain}/{rng.choice(_PATHS)}"
    if form < 0.85:
        return f"http://{domain}/{rng.choice(_PATHS)}?ref=list{rng.randrange(100)}"
    if form < 0.90:
        return f"  {domain.upper()}  "
    return f"https://shop.{domain}/p?id={rng.randrange(10**6)}&lang=en#top"


def make_csv(rows: int = ROWS, seed: int = SEED) -> bytes:
    """A realistic, seeded leads export: company,website,city,notes; Excel line endings; some
    quoted fields with commas and quotes; INVALID_SHARE of the websites are not usable URLs."""
    rng = random.Random(seed)
    out = io.StringIO()
    writer = csv.writer(out)  # QUOTE_MINIMAL, \r\n: as Excel and most exporters write
    writer.writerow(("company", "website", "city", "notes"))
    for _ in range(rows):
        first, second = rng.choice(_FIRST), rng.choice(_SECOND)
        notes = ", ".join(rng.sample(_NOTES, rng.choices((0, 1, 2), (62, 34, 4))[0])).strip(", ")
        writer.writerow((f"{first} {second}{rng.choice(_SUFFIX)}", _website(rng, first, second),
                         rng.choice(_CITIES), notes))
    return out.getvalue().encode("utf-8")


# ---------------------------------------------------------------- one measured step (child)

def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _vmhwm_mib() -> float:
    """This process image's own peak RSS (VmHWM), a cross-check of ru_maxrss."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _multipart(file_name: str, data: bytes) -> tuple[dict, bytes]:
    boundary = "----csvopenerbench" + uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
            "Content-Type: text/csv\r\n\r\n").encode()
    return ({"Content-Type": f"multipart/form-data; boundary={boundary}"},
            head + data + f"\r\n--{boundary}--\r\n".encode())


def child(step: str, arg: str, out: str, profile: str | None) -> None:
    """Run one step in this (fresh) process and write its figures as JSON to `out`."""
    t0 = time.perf_counter()
    from bench.common import bench_account
    from chalicelib import deps, jobs

    if step == "http":
        # The handler's own cost on a 10 MB body, measured locally. On AWS one request carries at
        # most ~4.5 MB (6 MB base64-encoded): bigger files take the presigned path.
        os.environ["MAX_DIRECT_UPLOAD"] = str(64 * 1024 * 1024)
        from chalice.test import Client

        from app import app
    import_s = time.perf_counter() - t0
    rss_imports = _maxrss_mib()
    settings, conn, storage, queue = deps.settings(), deps.conn(), deps.storage(), deps.chunk_queue()
    rss_ready = _maxrss_mib()
    result: dict = {}
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
    if step == "upload":
        data = Path(arg).read_bytes()
        cpu = _cpu_seconds()
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        body = jobs.create_from_upload(conn, storage, account_id=bench_account(conn), file_name=FILE_NAME, data=data,
                                       url_column=None)
        if profiler:
            profiler.disable()
        result["seconds"] = time.perf_counter() - start
        result.update(job_id=body["job"]["id"], total_rows=body["total_rows"], invalid_rows=body["invalid_rows"])
    elif step == "process":
        cpu = _cpu_seconds()
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        body = jobs.start(conn, storage, queue, settings, bench_account(conn), arg)
        if body["job"]["status"] == "ingesting":  # above INGEST_INLINE_BYTES: the ingest function's part too
            body["job"] = jobs.job_json(jobs.ingest_file(conn, storage, queue, settings, arg))
            body["chunks"] = body["job"]["chunks"]
        if profiler:
            profiler.disable()
        result["seconds"] = time.perf_counter() - start
        result.update(job_id=body["job"]["id"], chunks=body["chunks"], total_rows=body["job"]["total_rows"])
    elif step == "http":
        from chalicelib import accounts

        headers, payload = _multipart(FILE_NAME, Path(arg).read_bytes())
        key, _ = accounts.create_key(conn, bench_account(conn), name="bench http step")
        headers["Authorization"] = f"Bearer {key}"
        with Client(app, stage_name="local") as client:
            cpu = _cpu_seconds()
            start = time.perf_counter()
            response = client.http.post("/api/upload", headers=headers, body=payload)
            result["upload_seconds"] = time.perf_counter() - start
            if response.status_code != 201:
                sys.exit(f"POST /api/upload -> {response.status_code}: {response.body[:500]!r}")
            job_id = json.loads(response.body)["job"]["id"]
            del payload
            start = time.perf_counter()
            response = client.http.post("/api/upload/process", body=json.dumps({"job_id": job_id}),
                                        headers={"Content-Type": "application/json",
                                                 "Authorization": headers["Authorization"]})
            result["process_seconds"] = time.perf_counter() - start
            if response.status_code != 202:
                sys.exit(f"POST /api/upload/process -> {response.status_code}: {response.body[:500]!r}")
        result["seconds"] = result["upload_seconds"] + result["process_seconds"]
        result.update(job_id=job_id, chunks=json.loads(response.body)["chunks"])
    else:
        sys.exit(f"unknown step {step!r}")
    result["cpu_seconds"] = _cpu_seconds() - cpu
    if profiler:
        profiler.dump_stats(profile)
    result.update(import_seconds=import_s, rss_imports_mib=rss_imports, rss_ready_mib=rss_ready,
                  rss_peak_mib=_maxrss_mib(), vmhwm_peak_mib=_vmhwm_mib())
    Path(out).write_text(json.dumps(result))


# ---------------------------------------------------------------- the benchmark (parent)

def run_child(step: str, arg: str, tmp: Path, profile: Path | None = None) -> dict:
    out = tmp / f"{step}-{uuid.uuid4().hex[:8]}.json"
    cmd = [sys.executable, "-m", "bench.ingest", "--child", step, arg, str(out)]
    if profile:
        cmd += ["--profile-out", str(profile)]
    # On Linux, ru_maxrss survives fork + exec: a child started from this process would report
    # this process's RSS (the generated CSV and all) as its own peak. A shell in between that
    # forks the child (it does not exec it: a command follows) hands down only its own ~2 MiB.
    cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh", *cmd]
    # The app logs one JSON line per step to stdout; keep the table readable.
    done = subprocess.run(cmd, cwd=ROOT, env=os.environ, stdout=subprocess.DEVNULL)
    if done.returncode != 0:
        sys.exit(f"[bench] step {step} failed with exit code {done.returncode}")
    return json.loads(out.read_text())


def psql_copy(database_url: str, table: str, rows_file: Path) -> float:
    command = f"\\copy {table} (job_id, row_number, chunk, url) FROM '{rows_file}'"
    start = time.perf_counter()
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database_url, "-c", command], check=True)
    return time.perf_counter() - start


def psql_startup(database_url: str) -> float:
    """Wall time of a `psql` that only connects and runs `SELECT 1`: the baseline's fixed part."""
    times = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run(["psql", "-X", "-q", "-d", database_url, "-c", "SELECT 1"], check=True,
                       stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def delete_job(conn, job_id: str) -> None:
    conn.execute("DELETE FROM jobs WHERE id = %s", (job_id,))  # its urls go by ON DELETE CASCADE


def check_started(conn, job_id: str, expected_rows: int, chunk_size: int) -> None:
    job = conn.execute("SELECT status, total_rows, chunks FROM jobs WHERE id = %s", (job_id,)).fetchone()
    stored = conn.execute("SELECT count(*) AS n FROM urls WHERE job_id = %s", (job_id,)).fetchone()["n"]
    chunks = -(-expected_rows // chunk_size)
    if (job["status"], job["total_rows"], job["chunks"], stored) != ("processing", expected_rows, chunks,
                                                                      expected_rows):
        sys.exit(f"[bench] job {job_id} not started as expected: {dict(job)}, {stored} url rows")


def machine() -> dict:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = re.sub(r"\s+", " ", line.split(":", 1)[1]).strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip() or str(os.cpu_count())
    return {"nproc": nproc, "cpu": cpu, "mem_gib": mem_gib, "python": platform.python_version()}


def print_profile(path: Path, title: str) -> None:
    import pstats

    print(f"\n==== cProfile: {title} (top 25 by cumulative, then by own time) ====")
    stats = pstats.Stats(str(path))
    stats.strip_dirs().sort_stats("cumulative").print_stats(25)
    stats.sort_stats("tottime").print_stats(20)


def bench(args: argparse.Namespace) -> int:
    from bench.common import bench_account
    from chalicelib import deps
    from chalicelib.adapters import db

    settings = deps.settings()
    db_name = settings.database_url.rsplit("/", 1)[-1]
    if "_bench_" not in db_name and "_test_" not in db_name and not args.any_database:
        sys.exit(f"[bench] refusing to run against database {db_name!r}: run it through "
                 "`infra/devstack.py bench` (throwaway database, private LocalStack) or pass --any-database")
    conn = db.connect(settings.database_url)
    info = machine()
    version = conn.execute("SHOW server_version").fetchone()["server_version"]
    info["psql"] = re.match(r"[\d.]+", version).group()
    with tempfile.TemporaryDirectory(prefix="csv-opener-bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        data = make_csv(args.rows)
        csv_path = tmp / FILE_NAME
        csv_path.write_bytes(data)
        print(f"[bench] input: {args.rows:,} rows, {len(data):,} bytes ({len(data) / 1e6:.2f} MB), seed {SEED}",
              flush=True)
        if len(data) > settings.max_file_size and not args.no_http:
            print(f"[bench] larger than MAX_FILE_SIZE ({settings.max_file_size:,}): skipping the HTTP path")
            args.no_http = True

        if args.profile:
            up = run_child("upload", str(csv_path), tmp, tmp / "upload.prof")
            pr = run_child("process", up["job_id"], tmp, tmp / "process.prof")
            print(f"[bench] profiled run: upload {up['seconds']:.2f} s, process {pr['seconds']:.2f} s "
                  "(cProfile slows both down)")
            print_profile(tmp / "upload.prof", "upload = jobs.create_from_upload")
            print_profile(tmp / "process.prof", "process = jobs.start")
            delete_job(conn, up["job_id"])
            return 0

        baseline_job = str(uuid.uuid4())
        db.insert_job(conn, job_id=baseline_job, account_id=bench_account(conn), file_name="psql-baseline",
                      file_path="-", source="upload")
        conn.execute("DROP TABLE IF EXISTS bench_urls")
        conn.execute("CREATE TABLE bench_urls (LIKE urls INCLUDING ALL)")
        conn.execute("ALTER TABLE bench_urls ADD FOREIGN KEY (job_id) REFERENCES jobs (id) ON DELETE CASCADE")
        rows_file = tmp / "rows.tsv"

        uploads, processes, copies, https = [], [], [], []
        loads = [os.getloadavg()[0]]
        for run in range(1, args.runs + 1):
            up = run_child("upload", str(csv_path), tmp)
            pr = run_child("process", up["job_id"], tmp)
            check_started(conn, up["job_id"], up["total_rows"], settings.chunk_size)
            uploads.append(up)
            processes.append(pr)
            if run == 1:  # the very rows `start` stored, as (baseline job, row_number, chunk, url)
                with conn.cursor() as cur, rows_file.open("wb") as f, cur.copy(
                        "COPY (SELECT %s::uuid, row_number, chunk, url FROM urls WHERE job_id = %s "
                        "ORDER BY row_number) TO STDOUT", (baseline_job, up["job_id"])) as copy:
                    for block in copy:
                        f.write(block)
            delete_job(conn, up["job_id"])
            conn.execute("VACUUM urls")
            conn.execute("TRUNCATE bench_urls")
            copies.append(psql_copy(settings.database_url, "bench_urls", rows_file))
            copied = conn.execute("SELECT count(*) AS n FROM bench_urls").fetchone()["n"]
            if copied != up["total_rows"]:
                sys.exit(f"[bench] psql copied {copied} rows, expected {up['total_rows']}")
            line = (f"[bench] run {run}: upload {up['seconds']:.2f} s, process {pr['seconds']:.2f} s, "
                    f"psql \\copy {copies[-1]:.2f} s")
            if not args.no_http:
                http = run_child("http", str(csv_path), tmp)
                check_started(conn, http["job_id"], up["total_rows"], settings.chunk_size)
                delete_job(conn, http["job_id"])
                conn.execute("VACUUM urls")
                https.append(http)
                line += f", HTTP {http['upload_seconds']:.2f} + {http['process_seconds']:.2f} s"
            loads.append(os.getloadavg()[0])
            print(f"{line} (load avg {loads[-1]:.1f})", flush=True)
        conn.execute("DROP TABLE bench_urls")
        startup = psql_startup(settings.database_url)
        scale = None
        if not args.no_scale_check:  # does peak memory grow with the file? one run at twice the rows
            big_path = tmp / "leads-2x.csv"
            big_path.write_bytes(make_csv(args.rows * 2, seed=SEED + 1))
            up2 = run_child("upload", str(big_path), tmp)
            pr2 = run_child("process", up2["job_id"], tmp)
            check_started(conn, up2["job_id"], up2["total_rows"], settings.chunk_size)
            delete_job(conn, up2["job_id"])
            scale = {"rows": args.rows * 2, "bytes": big_path.stat().st_size, "upload": up2, "process": pr2}
            print(f"[bench] 2x file ({scale['bytes']:,} bytes): upload {up2['seconds']:.2f} s, "
                  f"process {pr2['seconds']:.2f} s", flush=True)
        delete_job(conn, baseline_job)
        try:  # no worker should ever pick up the benchmark's chunk messages
            deps.chunk_queue().sqs.purge_queue(QueueUrl=settings.chunk_queue_url)
        except Exception as exc:  # best effort; the private LocalStack goes away anyway
            print(f"[bench] could not purge the chunk queue ({type(exc).__name__})")

    figures = summarize(args, info, len(data), uploads, processes, copies, https)
    figures.update(psql_startup=startup, load_max=max(loads), scale=scale)
    print_table(figures)
    if args.no_write:
        print("[bench] --no-write: bench/RESULTS.md left alone")
    else:
        write_results(figures)
        print(f"[bench] wrote {HEADING!r} in {RESULTS.relative_to(ROOT)}")
    return 0


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


RSS_KEYS = ("rss_imports_mib", "rss_ready_mib", "rss_peak_mib", "vmhwm_peak_mib")


def _growth(rss: dict) -> float:
    """Peak RSS over the "ready" point (imports done, clients and connection built)."""
    return rss["rss_peak_mib"] - rss["rss_ready_mib"]


def summarize(args, info, size, uploads, processes, copies, https) -> dict:
    upload_s, process_s, copy_s = _median(uploads, "seconds"), _median(processes, "seconds"), statistics.median(copies)
    totals = [u["seconds"] + p["seconds"] for u, p in zip(uploads, processes, strict=True)]
    steps = {step: runs for step, runs in (("upload", uploads), ("process", processes), ("http", https)) if runs}
    figures = {
        "date": date.today().isoformat(), "machine": info, "rows": args.rows, "bytes": size, "runs": args.runs,
        "valid": uploads[0]["total_rows"], "invalid": uploads[0]["invalid_rows"], "chunks": processes[0]["chunks"],
        "upload": upload_s, "process": process_s, "total": statistics.median(totals), "copy": copy_s,
        "upload_runs": [u["seconds"] for u in uploads], "process_runs": [p["seconds"] for p in processes],
        "total_runs": totals, "copy_runs": copies,
        "cpu": {step: _median(runs, "cpu_seconds") for step, runs in steps.items()},
        "rss": {step: {k: max(r[k] for r in runs) for k in RSS_KEYS} for step, runs in steps.items()},
    }
    if https:
        figures.update(http_upload=_median(https, "upload_seconds"), http_process=_median(https, "process_seconds"),
                       http_total=_median(https, "seconds"), http_runs=[h["seconds"] for h in https])
    return figures


def _rss_cells(figures: dict, step: str) -> tuple[str, str, str]:
    rss = figures["rss"].get(step)
    if not rss:
        return "", "", ""
    return f"{rss['rss_peak_mib']:.0f}", f"+{rss['rss_peak_mib'] - rss['rss_imports_mib']:.0f}", f"+{_growth(rss):.0f}"


def table_rows(figures: dict) -> list[tuple[str, ...]]:
    def runs(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    cpu = figures["cpu"]
    rows = [
        ("upload: `jobs.create_from_upload` (parse + S3 put + job row)", f"{figures['upload']:.2f}",
         runs(figures["upload_runs"]), f"{cpu['upload']:.2f}", *_rss_cells(figures, "upload")),
        ("process: `jobs.start` (S3 stream → parse → COPY → SQS)", f"{figures['process']:.2f}",
         runs(figures["process_runs"]), f"{cpu['process']:.2f}", *_rss_cells(figures, "process")),
        ("**total: upload + process**", f"**{figures['total']:.2f}**", runs(figures["total_runs"]),
         f"{cpu['upload'] + cpu['process']:.2f}", "", "", ""),
        ("baseline: `psql \\copy` of the same rows", f"{figures['copy']:.2f}", runs(figures["copy_runs"]), "", "", "",
         ""),
    ]
    if "http_total" in figures:
        rows.append(("HTTP: POST /api/upload (multipart) + POST /api/upload/process, `chalice.test.Client`",
                     f"{figures['http_upload']:.2f} + {figures['http_process']:.2f} = {figures['http_total']:.2f}",
                     runs(figures["http_runs"]), f"{cpu['http']:.2f}", *_rss_cells(figures, "http")))
    return rows


def interpretation(figures: dict) -> str:
    steps = {"upload": figures["upload"], "process": figures["process"]}
    slowest = max(steps, key=steps.get)
    limit = API_GATEWAY_LIMIT_S

    def verdict(seconds: float) -> str:
        return "well inside" if seconds <= limit / 3 else "inside" if seconds < limit else "NOT inside"

    rss = figures["rss"]
    growth = {step: _growth(rss[step]) for step in steps}
    peak = max(r["rss_peak_mib"] for r in rss.values())
    return (f"Each request finishes {verdict(steps[slowest])} API Gateway's {limit:.0f} s (slowest: {slowest}, "
            f"{steps[slowest]:.1f} s median, {max(figures[f'{slowest}_runs']):.1f} s worst); upload + process "
            f"together take {figures['total']:.1f} s, {verdict(figures['total'])} it too. Memory is bounded: "
            f"processing streams (+{growth['process']:.0f} MiB over ready), the upload holds its body "
            f"(+{growth['upload']:.0f} MiB); the peak, {peak:.0f} MiB, is far below the API Lambda's 1024 MB. "
            f"Processing costs {figures['process'] / figures['copy']:.1f}× a bare `psql \\copy`.")


def print_table(figures: dict) -> None:
    info = figures["machine"]
    print(f"\nIngest of {figures['rows']:,} rows / {figures['bytes']:,} bytes — median of {figures['runs']} runs "
          f"— {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, PostgreSQL {info['psql']}")
    header = ("step", "median s", "runs s", "CPU s", "peak RSS MiB", "Δ imports", "Δ ready")
    rows = [header, *table_rows(figures)]
    widths = [max(len(r[i].replace("`", "").replace("*", "")) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(c.replace("`", "").replace("*", "").ljust(w) for c, w in zip(r, widths, strict=True)))
    print(f"ratio process / psql \\copy = {figures['process'] / figures['copy']:.1f}×; "
          f"ratio total / psql \\copy = {figures['total'] / figures['copy']:.1f}×")
    print(interpretation(figures))


def section(figures: dict) -> str:
    info = figures["machine"]
    rss = figures["rss"]
    lines = [
        HEADING,
        "",
        f"Measured {figures['date']} with `make bench` (`infra/devstack.py bench ingest`, script "
        f"`bench/ingest.py`) on {info['nproc']} CPUs (`nproc`; {info['cpu']}), {info['mem_gib']:.0f} GiB RAM, "
        f"Python {info['python']}, PostgreSQL {info['psql']} and a private LocalStack (S3, SQS) on the same "
        f"machine. Median of {figures['runs']} runs; each step in a fresh process with clients and connection "
        "already built (a warm Lambda container); jobs deleted between runs. The machine is shared: the "
        f"highest 1-minute load average seen during the runs was {figures['load_max']:.1f} on {info['nproc']} CPUs "
        "(wall times grow with it; the CPU column, the step's own user + system time, much less).",
        "",
        f"Input: {figures['rows']:,} data rows, {figures['bytes']:,} bytes (seeded; company, website, city, notes; "
        f"quoted fields with commas; CRLF) → {figures['valid']:,} valid URLs, {figures['invalid']:,} invalid rows "
        f"({100 * figures['invalid'] / figures['rows']:.1f} %), {figures['chunks']} chunk messages.",
        "",
        "| step | median wall s | runs wall s | median CPU s (Python) | peak RSS MiB | Δ over imports MiB "
        "| Δ over ready MiB |",
        "|---|---:|---|---:|---:|---:|---:|",
        *(f"| {' | '.join(r)} |" for r in table_rows(figures)),
        "",
        f"- Ratio process / `psql \\copy` = **{figures['process'] / figures['copy']:.1f}×**; "
        f"total (upload + process) / `psql \\copy` = **{figures['total'] / figures['copy']:.1f}×**. The baseline "
        "copies the rows `start` stored, pre-written as a COPY text file, into `bench_urls (LIKE urls INCLUDING "
        "ALL)` plus the same foreign key to `jobs`; timed as the `psql` process's wall time (start + connect + "
        f"COPY); a `psql -c 'SELECT 1'` alone takes {figures['psql_startup']:.2f} s here.",
        "- Peak RSS is `ru_maxrss` of the step's own process; the import baseline (after `import chalicelib.jobs`"
        ", before anything runs) was "
        + ", ".join(f"{step} {r['rss_imports_mib']:.0f} MiB" for step, r in rss.items())
        + "; with the S3/SQS clients and the connection built (\"ready\"), "
        + ", ".join(f"{step} {r['rss_ready_mib']:.0f} MiB" for step, r in rss.items())
        + "; `/proc/self/status` VmHWM agrees on the peaks ("
        + ", ".join(f"{step} {r['vmhwm_peak_mib']:.0f} MiB" for step, r in rss.items())
        + "). Children are started through `sh`, which forks them: on Linux `ru_maxrss` survives fork + exec, "
        "so a child started straight from the benchmark would report the benchmark's own RSS. The upload's "
        "delta includes the 10 MB request body it is handed (the HTTP step also builds the multipart body).",
        *scale_lines(figures),
        f"- {interpretation(figures)}",
        "",
    ]
    return "\n".join(lines)


def scale_lines(figures: dict) -> list[str]:
    scale = figures.get("scale")
    if not scale:
        return []
    rss = figures["rss"]
    return [f"- Peak memory against file size: at twice the rows ({scale['rows']:,} rows, {scale['bytes']:,} bytes, "
            f"one run: upload {scale['upload']['seconds']:.1f} s, process {scale['process']['seconds']:.1f} s) the "
            f"process step peaks at +{_growth(scale['process']):.0f} MiB over ready (1×: "
            f"+{_growth(rss['process']):.0f}) and the upload at +{_growth(scale['upload']):.0f} MiB (1×: "
            f"+{_growth(rss['upload']):.0f}): processing memory does not grow with the file; the upload's grows "
            "with the body it is handed."]


def write_results(figures: dict) -> None:
    """Replace this benchmark's section of RESULTS.md (up to the next "## "), or append it."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n\nWritten by `make bench`.\n"
    new = section(figures)
    found = re.search(rf"^{re.escape(HEADING)}[ \t]*$", text, re.MULTILINE)
    if found is None:
        RESULTS.write_text(text.rstrip("\n") + "\n\n" + new)
        return
    following = re.compile(r"^## ", re.MULTILINE).search(text, found.end())
    after = text[following.start():] if following else ""
    RESULTS.write_text(text[:found.start()] + new + ("\n" + after if after else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per side; the median is reported (default 3)")
    parser.add_argument("--rows", type=int, default=ROWS, help=f"data rows in the generated CSV (default {ROWS:,})")
    parser.add_argument("--no-http", action="store_true", help="skip the chalice.test.Client path")
    parser.add_argument("--profile", action="store_true", help="one cProfile'd upload + process; prints hotspots")
    parser.add_argument("--no-scale-check", action="store_true", help="skip the one run at twice the rows")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    parser.add_argument("--any-database", action="store_true", help="allow a database not named *_bench_*/*_test_*")
    parser.add_argument("--child", nargs=3, metavar=("STEP", "ARG", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.profile_out)
        return 0
    if args.profile:
        args.no_write = True
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
