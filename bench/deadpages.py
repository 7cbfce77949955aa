"""Pages that never answer (issue 25, item 4): with page context on and every page timing out,
does the pipeline still run at the provider's rate?

Setup as bench/pagecontext.py: a fake OpenAI server enforcing R requests per minute (token bucket,
one second of burst) with 200 ms latency, our limiter at the same R, a job of N URLs in 4 chunks
run by 4 chunk handlers in 4 processes (`CHUNK_CONCURRENCY` 16 each), every other setting the
app's default (PAGE_FETCH_TIMEOUT_S, PAGE_FETCH_CONCURRENCY, PAGE_DNS_TIMEOUT_S,
PAGE_HOST_FAILURE_TTL_S). Runs, each on a new job:

  off        page_context off (the baseline).
  hang       page_context on; every row on a host of its own (site-<i>.hang.test) that accepts
             the connection, reads the request and never answers (one local server on 127.0.0.2
             behind every name), so neither the host memory nor the page cache can help: every
             page costs its whole PAGE_FETCH_TIMEOUT_S.
  hang-32    the same server behind 32 names, rows round-robin over them: the fetcher's memory of
             failed hosts skips a host after its first timeout in each process.
  nodns      page_context on; every row a name of its own whose lookup takes 5 s and then fails
             (a dead resolver: the handlers' fetcher gets a resolver that sleeps 5 s for
             *.nodns.test; getaddrinfo itself blocks, in the fetcher's resolver threads).

and, at 2R (fake and limiter), `off` and `hang` again: does a doubled limit get reached? A run
name ending in `-old` runs with the settings of before this change (PAGE_FETCH_CONCURRENCY 32,
PAGE_DNS_TIMEOUT_S 5, PAGE_HOST_FAILURE_TTL_S 0); the worker's own wait bound stays.

Figures: achieved rate / R (the fake's own count of successful calls between its first and last
request), ratio to `off` at the same R (goal ≥ 0.9), 429 share, each row's context_status, the
time each URL spent in the page callable, and each handler process's peak RSS (VmHWM) and
thread count at its end.

    make bench BENCH=deadpages                  # every run
    make bench BENCH="deadpages --runs off,hang"
    make bench BENCH="deadpages --memory"       # RSS of N fetches in flight on one process's loop
    BENCH_RPM=2400 BENCH_URLS=3000 ...          # R and the job size
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

from bench.common import fake_call, fake_openai, job_counts, use_fake
from bench.pagecontext import INSTRUCTIONS, TimedPages, make_job, row_figures
from bench.utilization import rate_figures
from tests.support.hang_server import HangServer

RPM = int(os.environ.get("BENCH_RPM", "2400"))
URLS = int(os.environ.get("BENCH_URLS", "3000"))
DNS_S = float(os.environ.get("BENCH_DNS_S", "5"))
CHUNK_CONCURRENCY = os.environ.get("BENCH_CHUNK_CONCURRENCY", "16")
WORKERS = 4
LATENCY_MS = "200"
HANG_IP = "127.0.0.2"
ENV_PREFIXES = ("OPENAI_", "CHUNK_", "RATELIMIT_", "OUTBOUND_", "PAGE_", "BENCH_")
RUNS = ("off", "hang", "hang-32", "nodns", "off-2R", "hang-2R", "hang-2R-old")
OLD = {"PAGE_FETCH_CONCURRENCY": "32", "PAGE_DNS_TIMEOUT_S": "5", "PAGE_HOST_FAILURE_TTL_S": "0"}
assert INSTRUCTIONS  # the same instructions as pagecontext's jobs (make_job uses them)


# --- the site that never answers ----------------------------------------------------------------


def hang_server() -> HangServer:
    """Accepts every connection on HANG_IP, reads whatever comes, never answers (robots.txt neither)."""
    return HangServer(HANG_IP)


def bench_resolver(real=socket.getaddrinfo, dns_s: float = DNS_S):
    """*.hang.test -> the hang server; *.nodns.test -> nothing, after dns_s; anything else: real."""
    def resolve(host, port, family=0, type=0, proto=0, flags=0):
        if host.endswith(".hang.test"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (HANG_IP, port))]
        if host.endswith(".nodns.test"):
            time.sleep(dns_s)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, port, family, type, proto, flags)
    return resolve


def urls_for(run: str, n: int, port: int, tag: str) -> list[str]:
    kind = run.removesuffix("-old").removesuffix("-2R")
    if kind in ("off", "hang"):
        return [f"http://{tag}-site-{i}.hang.test:{port}/" for i in range(n)]
    if kind == "hang-32":
        return [f"http://{tag}-site-{i % 32}.hang.test:{port}/p{i}" for i in range(n)]
    if kind == "nodns":
        return [f"http://{tag}-site-{i}.nodns.test/" for i in range(n)]
    raise ValueError(run)


# --- handlers -----------------------------------------------------------------------------------


def _proc_status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmHWM", "VmRSS", "Threads"):
                out[name] = int(value.split()[0])
    return out


def _handle_chunk(args: tuple[str, int, dict]) -> dict:
    job_id, chunk, env = args
    os.environ.update(env)
    from chalicelib import deps

    worker = deps.chunk_worker()
    deps.outbound_fetcher().resolver = bench_resolver()
    page_s: list[float] = []
    if worker.page_summary is not None:
        worker.page_summary = TimedPages(worker.page_summary, page_s)
    started = time.monotonic()
    worker.process_chunk(job_id, chunk, lambda: float("inf"))
    return {"wall_s": time.monotonic() - started, "page_s": page_s, **_proc_status()}


def run_chunks(job_id: str, env: dict[str, str]) -> tuple[float, list[dict]]:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    started = time.monotonic()
    with context.Pool(WORKERS) as pool:
        results = pool.map(_handle_chunk, [(job_id, k, env) for k in range(WORKERS)])
    return time.monotonic() - started, results


def _seconds(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    values = sorted(values)
    return {"n": len(values), "mean": round(statistics.fmean(values), 2),
            "p90": round(values[int(0.9 * len(values))], 2), "max": round(values[-1], 2)}


def run(base_url: str, server: HangServer, name: str) -> dict:
    rpm = RPM * (2 if name.removesuffix("-old").endswith("-2R") else 1)
    fake_call(base_url, "/_fake/reset", {"keep_config": True})
    fake_call(base_url, "/_fake/config", {"rpm": rpm})
    settings = {"OPENAI_RPM": str(rpm), "OPENAI_TPM": "0", "CHUNK_SIZE": str(-(-URLS // WORKERS)),
                "CHUNK_CONCURRENCY": CHUNK_CONCURRENCY, "OPENAI_TIMEOUT_S": "10",
                "OUTBOUND_ALLOW_NETWORKS": "127.0.0.0/8",
                "RATELIMIT_PREFIX": f"{os.environ.get('RATELIMIT_PREFIX', 'bench')}:dead:{time.time_ns()}"}
    for key in OLD:
        os.environ.pop(key, None)
    if name.endswith("-old"):
        settings.update(OLD)
    use_fake(base_url, **settings)
    tag = f"d{time.time_ns() % 10**9}"
    job_id, _ = make_job(urls_for(name, URLS, server.port, tag), tag, page_context=not name.startswith("off"))
    server.reset_counts()
    env = {k: os.environ[k] for k in os.environ if k.startswith(ENV_PREFIXES)}
    wall, handlers = run_chunks(job_id, env)
    figures = rate_figures(fake_call(base_url, "/_fake/stats"), rpm)
    figures.update(run=name, rpm=rpm, wall_s=round(wall, 1), job=job_counts(job_id),
                   page_s=_seconds([t for h in handlers for t in h["page_s"]]),
                   peak_rss_mb=[round(h["VmHWM"] / 1024) for h in handlers],
                   threads_at_end=[h["Threads"] for h in handlers],
                   hang_connections=server.accepted, hang_max_open=server.max_open,
                   context_status=row_figures(job_id)["context_status"])
    return figures


# --- memory of N fetches in flight ----------------------------------------------------------------


def _memory_one(args: tuple[int, bool, int]) -> dict:
    """In a fresh process: RSS before and 2 s after starting N fetches (``names``: each URL a name
    of its own, looked up on the resolver threads as in production; else the server's address,
    nothing to look up: the fetches' own cost)."""
    from chalicelib.outbound import Fetcher

    n, names, port = args
    fetcher = Fetcher(allow_networks=["127.0.0.0/8"], resolver=bench_resolver(), timeout_s=5.0,
                      pages_in_flight=n, host_concurrency=n)
    fetcher.get_page(f"http://warm.hang.test:{port}/")  # imports, the loop started
    fetcher.host_failures.forget("warm.hang.test")
    time.sleep(0.5)
    before = _proc_status()
    host = "m{i}.hang.test" if names else HANG_IP
    futures = [fetcher.submit_page(f"http://{host.format(i=i)}:{port}/p{i}") for i in range(n)]
    time.sleep(2.0)
    during = _proc_status()
    in_flight = fetcher.pages.running
    results = [f.result() for f in futures]
    return {"in_flight": n, "hosts": "names" if names else "address", "running": in_flight,
            "rss_before_mb": round(before["VmRSS"] / 1024, 1), "rss_during_mb": round(during["VmRSS"] / 1024, 1),
            "kb_per_fetch": round((during["VmRSS"] - before["VmRSS"]) / n, 1),
            "threads_before": before["Threads"], "threads_during": during["Threads"],
            "timeouts": sum(r.status == "timeout" for r in results)}


def memory(counts: tuple[int, ...] = (32, 128, 256, 512, 1024)) -> list[dict]:
    """RSS of one process with N page fetches in flight on the event loop (each to the hang
    server, 5 s deadline, PAGE_FETCH_CONCURRENCY = N), each N in a process of its own, as a chunk
    handler's pages (issue 25: the threads they replaced cost 43-57 KB each)."""
    import multiprocessing

    server = hang_server()
    rows = []
    try:
        for names in (True, False):
            for n in counts:
                with multiprocessing.get_context("spawn").Pool(1) as pool:
                    rows.append(pool.apply(_memory_one, ((n, names, server.port),)))
                rows[-1]["open_at_server_max"] = server.max_open
                server.reset_counts()
                print(rows[-1], flush=True)
    finally:
        server.close()
    return rows


# --- main -------------------------------------------------------------------------------------


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.deadpages")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of {', '.join(RUNS)}")
    parser.add_argument("--memory", action="store_true", help="only the RSS of N fetches in flight")
    args = parser.parse_args(argv)
    if args.memory:
        return {"memory": memory()}
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    results: dict[str, dict] = {}
    server = hang_server()
    try:
        with fake_openai("--latency-ms", LATENCY_MS, "--rpm", str(RPM)) as base_url:
            for name in names:
                load = _load()
                results[name] = r = run(base_url, server, name)
                r["load"] = f"{load} → {_load()}"
                print(f"\n{name}: rate/R {r['utilization']:.3f} ({r['achieved_rpm']} of {r['rpm']} RPM), "
                      f"429s {r['share_429']:.2%} ({r['rate_limited']} of {r['calls']}), {r['seconds']} s first→last "
                      f"call, wall {r['wall_s']} s, job {r['job']}\n  context_status {r['context_status']}; "
                      f"page s {r['page_s']}; peak RSS MB {r['peak_rss_mb']}; threads at end "
                      f"{r['threads_at_end']}; hang server: {r['hang_connections']} connections, at most "
                      f"{r['hang_max_open']} open; load {r['load']}", flush=True)
    finally:
        server.close()
    print(f"\nDead pages: fake provider at R = {RPM} RPM, {LATENCY_MS} ms latency, {URLS} URLs, {WORKERS} handler "
          f"processes × {CHUNK_CONCURRENCY} calls")
    for name, r in results.items():
        base = results.get("off-2R" if "-2R" in name else "off")
        ratio = f"{r['utilization'] / base['utilization']:.3f}" if base else "-"
        print(f"{name:>8}: rate/R {r['utilization']:.3f}  ÷ off {ratio}  429s {r['share_429']:.2%}  "
              f"peak RSS MB {r['peak_rss_mb']}")
    return results


if __name__ == "__main__":
    main()
