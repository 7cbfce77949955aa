"""Page context (issue 11): does fetching each URL's page slow the pipeline below the provider's
rate limit, and how big does it make the prompt?

The utilization benchmark's setup (bench/utilization.py): a fake OpenAI server enforcing R
requests per minute (token bucket, one second of burst) with 200 ms latency, our Redis limiter at
the same R, a job of N URLs in 4 chunks run by 4 chunk handlers in 4 processes (16 calls in
flight each). Two runs per round, on the same kind of job:

  A  page_context off: today's pipeline.
  B  page_context on: every URL is a distinct page (a unique path, so the page cache cannot help)
     on one of H fake sites (tests/support/fake_site.py), each bound to its own loopback address
     127.0.0.2 … 127.0.0.(H+1) (a host of its own for the fetcher's per-host limit), answering
     every request (robots.txt included) after PAGE_MS. Each page is a realistic HTML page of a
     few KB (head with title, description, Open Graph, styles, scripts, JSON-LD; nav, hero,
     sections with headings, a testimonial, a footer). The handlers reach the sites through
     OUTBOUND_ALLOW_NETWORKS=127.0.0.0/8.

Rows of both jobs point at the same kind of local URL (an upload refuses local addresses, so the
rows are pointed there after the start, as tests/integration/test_page_context.py does), with the
same instructions, so the prompts differ only by the page summary.

Figures: achieved rate / R (the fake's own count of successful calls between its first and last
request) for A and B, the ratio B / A (goal ≥ 0.95), the share of calls answered 429, each row's
context_status (from the database), and prompt tokens per URL (`urls.prompt_tokens`, the fake's
usage numbers): median (goal ≤ 600 with page context), p90, max, for A and B.

    make bench BENCH=pagecontext                       # 3 rounds of A then B
    make bench BENCH="pagecontext --rounds 1"
    BENCH_PAGE_MS=1000 make bench BENCH=pagecontext    # slower pages (also BENCH_HOSTS, BENCH_URLS,
                                                       # BENCH_RPM, BENCH_CHUNK_CONCURRENCY,
                                                       # BENCH_HOST_CONCURRENCY)
"""

from __future__ import annotations

import argparse
import html as html_lib
import json
import multiprocessing
import os
import random
import statistics
import time
from contextlib import ExitStack

from bench.common import bench_account, fake_call, fake_openai, job_counts, use_fake
from bench.utilization import rate_figures

RPM = int(os.environ.get("BENCH_RPM", "3000"))
URLS = int(os.environ.get("BENCH_URLS", "2000"))
HOSTS = int(os.environ.get("BENCH_HOSTS", "32"))
PAGE_MS = int(os.environ.get("BENCH_PAGE_MS", "300"))
CHUNK_CONCURRENCY = os.environ.get("BENCH_CHUNK_CONCURRENCY", "16")
HOST_CONCURRENCY = os.environ.get("BENCH_HOST_CONCURRENCY", "")  # empty: the app's default
WORKERS = 4
LATENCY_MS = "200"
INSTRUCTIONS = ("We are Acme Analytics: we help operations teams at mid-size companies cut the time they spend "
                "on weekly reporting. Keep it friendly and specific; mention what the prospect does.")
ENV_PREFIXES = ("OPENAI_", "CHUNK_", "RATELIMIT_", "OUTBOUND_", "PAGE_")


# --- the pages ----------------------------------------------------------------------------------

_NAMES = ("Northwind", "Bluebird", "Ironbark", "Harbor", "Copperline", "Silverleaf", "Redwood", "Kestrel",
          "Lumen", "Brightwater", "Oakridge", "Summit", "Meridian", "Granite", "Willow", "Falcon", "Cedar",
          "Atlas", "Beacon", "Riverstone", "Pinecrest", "Larkspur", "Evergreen", "Stonebridge")
_INDUSTRIES = (
    ("Logistics", "freight forwarding and warehousing", "shippers", "on-time delivery",
     ("Ocean and air freight", "Contract warehousing", "Customs brokerage", "Last-mile delivery")),
    ("Dental Group", "family and cosmetic dentistry", "patients", "gentle, same-week care",
     ("Cleanings and checkups", "Invisalign", "Implants", "Emergency visits")),
    ("Software", "workflow software for field service teams", "dispatchers and technicians", "fewer missed jobs",
     ("Scheduling", "Mobile work orders", "Invoicing", "Integrations")),
    ("Architects", "sustainable commercial architecture", "developers and city planners", "buildings that last",
     ("Master planning", "Adaptive reuse", "Interior design", "LEED consulting")),
    ("Manufacturing", "precision CNC machining", "aerospace and medical OEMs", "tight tolerances at scale",
     ("5-axis machining", "Rapid prototyping", "Quality inspection", "Assembly")),
    ("Insurance", "commercial insurance for small businesses", "owners and contractors", "claims paid fast",
     ("General liability", "Workers' compensation", "Commercial auto", "Cyber cover")),
    ("Foods", "organic snacks made from local ingredients", "grocers and cafés", "clean labels",
     ("Granola", "Trail mixes", "Private label", "Wholesale")),
    ("Consulting", "supply-chain and operations consulting", "COOs and plant managers", "measurable savings",
     ("Network design", "S&OP", "Procurement", "Lean programs")),
)
_CITIES = ("Portland, OR", "Austin, TX", "Denver, CO", "Raleigh, NC", "Columbus, OH", "Madison, WI", "Boise, ID",
           "Tampa, FL", "Pittsburgh, PA", "Sacramento, CA")
_OPENINGS = (
    "Since {year}, {name} has provided {what} to {who} across {region}.",
    "{name} is a {size}-person team in {city} focused on {what}.",
    "For more than {age} years, {who} have trusted {name} for {promise}.",
    "We started {name} in {city} with one idea: {what} should be simple, honest and fast.",
)
_MIDDLES = (
    "Our {service_l} team works side by side with yours, from the first call to the last detail.",
    "Every engagement starts with listening: we learn how your team works today before we change anything.",
    "We measure ourselves on {promise}, and we publish the numbers every quarter.",
    "Clients stay with us because we answer the phone, keep our promises and fix problems before they grow.",
    "Our people hold industry certifications and spend a week each year in training on new methods.",
    "We invest in tools that give {who} a clear view of progress, cost and quality at any moment.",
    "Last year we served {clients} clients in {states} states and kept a {nps} customer satisfaction score.",
    "Whether you need {service_l} once or every week, we scale to fit without long contracts.",
)


def _sentences(rng: random.Random, count: int, facts: dict) -> str:
    return " ".join(rng.choice(_MIDDLES).format(**facts) for _ in range(count))


def make_page(rng: random.Random, i: int) -> tuple[bytes, str]:
    """A realistic small-business home page (a few KB) and its company name."""
    e = html_lib.escape
    name = f"{rng.choice(_NAMES)} {i}"
    label, what, who, promise, services = rng.choice(_INDUSTRIES)
    company = f"{name} {label}"
    city = rng.choice(_CITIES)
    facts = {"name": company, "what": what, "who": who, "promise": promise, "city": city,
             "region": rng.choice(("the Pacific Northwest", "the Midwest", "the Southeast", "New England",
                                   "the Mountain West")),
             "year": rng.randint(1978, 2019), "age": rng.randint(5, 40), "size": rng.randint(8, 400),
             "clients": rng.randint(40, 2000), "states": rng.randint(2, 48), "nps": f"{rng.randint(82, 99)}%",
             "service_l": rng.choice(services).lower()}
    tagline = f"{what[0].upper()}{what[1:]} for {who}"
    description = (f"{company} offers {what} for {who} in {city} and beyond. {promise[0].upper()}{promise[1:]}, "
                   f"clear pricing and a team that answers the phone.")
    sections = []
    for service in services:
        sections.append(f"<div class='card'><h3>{e(service)}</h3><p>{e(_sentences(rng, 2, facts))}</p>"
                        f"<a href='/services/{e(service.lower().replace(' ', '-'))}'>Learn more</a></div>")
    people = rng.sample(("Maria Lopez", "James Chen", "Priya Patel", "Tom O'Neill", "Aisha Bello", "Lars Berg"), 2)
    main_tag, main_end = ("<main id='content'>", "</main>") if rng.random() < 0.7 else ("<div class='page'>", "</div>")
    page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(company)} | {e(tagline)}</title>
<meta name="description" content="{e(description)}">
<meta property="og:title" content="{e(company)}">
<meta property="og:description" content="{e(tagline)} in {e(city)}.">
<meta property="og:image" content="/static/og-{i}.jpg">
<meta property="og:type" content="website">
<link rel="canonical" href="/">
<link rel="icon" href="/favicon.ico">
<link rel="stylesheet" href="/static/site.css?v={rng.randint(100, 999)}">
<style>
:root {{ --brand: #1b4d7a; --accent: #f2a541; }}
body {{ font-family: system-ui, sans-serif; margin: 0; color: #222; }}
.hero {{ padding: 4rem 2rem; background: var(--brand); color: #fff; }}
.cards {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(220px, 1fr)); gap: 1.5rem; }}
.card {{ border: 1px solid #ddd; border-radius: 8px; padding: 1.25rem; }}
footer {{ background: #111; color: #bbb; padding: 2rem; font-size: .9rem; }}
</style>
<script async src="https://www.googletagmanager.com/gtag/js?id=G-{rng.randint(10**9, 10**10 - 1)}"></script>
<script>window.dataLayer = window.dataLayer || []; function gtag(){{dataLayer.push(arguments);}}
gtag('js', new Date()); gtag('config', 'G-XXXXXXX', {{ anonymize_ip: true }});</script>
<script type="application/ld+json">{json.dumps({"@context": "https://schema.org", "@type": "Organization",
                                                "name": company, "address": city, "url": "/"})}</script>
</head>
<body>
<header class="site-header">
<a class="logo" href="/"><img src="/static/logo.svg" alt="{e(company)} logo"></a>
<nav aria-label="Main"><ul><li><a href="/">Home</a></li><li><a href="/services">Services</a></li>
<li><a href="/about">About</a></li><li><a href="/case-studies">Case studies</a></li>
<li><a href="/careers">Careers</a></li><li><a href="/contact" class="button">Contact us</a></li></ul></nav>
</header>
{main_tag}
<section class="hero">
<h1>{e(tagline)}</h1>
<p>{e(rng.choice(_OPENINGS).format(**facts))} {e(_sentences(rng, 1, facts))}</p>
<a class="button" href="/contact">Get a quote</a>
</section>
<section id="services">
<h2>What we do</h2>
<p>{e(_sentences(rng, 3, facts))}</p>
<div class="cards">{"".join(sections)}</div>
</section>
<section id="why">
<h2>Why {e(who)} choose {e(company)}</h2>
<ul><li>{e(promise[0].upper() + promise[1:])}, backed by our service guarantee</li>
<li>One point of contact from start to finish</li><li>Transparent, fixed pricing</li>
<li>Based in {e(city)}, working nationwide</li></ul>
<p>{e(_sentences(rng, 2, facts))}</p>
</section>
<section id="testimonials">
<h2>What our clients say</h2>
<blockquote><p>"{e(_sentences(rng, 1, facts))}"</p><cite>{e(people[0])}, Operations Director</cite></blockquote>
<blockquote><p>"They made {e(rng.choice(services).lower())} painless for us."</p>
<cite>{e(people[1])}</cite></blockquote>
</section>
<section id="about">
<h2>About {e(company)}</h2>
<p>{e(rng.choice(_OPENINGS).format(**facts))} {e(_sentences(rng, 2, facts))}</p>
</section>
{main_end}
<footer>
<p>{e(company)} · {rng.randint(10, 9999)} {rng.choice(("Main", "Oak", "Market", "Harbor"))} Street · {e(city)}</p>
<ul><li><a href="/privacy">Privacy</a></li><li><a href="/terms">Terms</a></li>
<li><a href="/sitemap.xml">Sitemap</a></li></ul>
<p>© {time.gmtime().tm_year} {e(company)}. All rights reserved.</p>
</footer>
<script src="/static/site.js" defer></script>
</body>
</html>
"""
    return page.encode(), company


class Sites:
    """H fake sites on 127.0.0.2 … 127.0.0.(H+1), each its own host for the fetcher; every
    request answered after PAGE_MS (robots.txt too: a real site's robots.txt costs a round trip)."""

    def __init__(self, stack: ExitStack, hosts: int, page_ms: int) -> None:
        from tests.support.fake_site import FakeSite

        self.delay_s = page_ms / 1000
        self.sites = [stack.enter_context(FakeSite(host=f"127.0.0.{2 + k}")) for k in range(hosts)]
        for site in self.sites:
            site.add("/robots.txt", b"User-agent: *\nDisallow: /private/\n", content_type="text/plain",
                     delay_s=self.delay_s)
        self.rng = random.Random(11)
        self.sizes: list[int] = []
        self.summary_chars: list[int] = []
        self.published: list[tuple] = []

    def publish(self, n: int, tag: str) -> list[str]:
        """n new pages with unique paths, spread round-robin over the sites; their URLs in row order."""
        from chalicelib.outbound.summaries import summarize_html

        for site, path in self.published:  # the previous run's pages go (no run fetches another's)
            site.routes.pop(path, None)
        self.published = []
        urls = []
        self.sizes, self.summary_chars = [], []
        for i in range(n):
            site = self.sites[i % len(self.sites)]
            body, company = make_page(self.rng, i)
            path = f"/{tag}/{company.lower().replace(' ', '-')}/"
            site.add(path, body, delay_s=self.delay_s)
            self.published.append((site, path))
            urls.append(site.url(path))
            self.sizes.append(len(body))
            self.summary_chars.append(len(summarize_html(body, "utf-8")))
        return urls

    def reset_counts(self) -> None:
        for site in self.sites:
            site.reset_counts()

    def counts(self) -> dict:
        hits = [site.hits for site in self.sites]
        return {"page_requests": sum(n for h in hits for p, n in h.items() if p != "/robots.txt"),
                "robots_requests": sum(h["/robots.txt"] for h in hits),
                "max_concurrent_per_host": max(site.max_concurrent for site in self.sites)}


# --- a run --------------------------------------------------------------------------------------


def make_job(urls: list[str], tag: str, page_context: bool) -> tuple[str, dict]:
    """A started job whose rows point at `urls` (its SQS messages purged: the bench drives the
    handlers) and the start's cost estimate."""
    from chalicelib import deps, jobs

    conn = deps.conn()
    account_id = bench_account(conn)
    data = ("website\n" + "".join(f"{tag}-company-{i}.example.com\n" for i in range(len(urls)))).encode()
    job_id = jobs.create_from_upload(conn, deps.storage(), account_id=account_id, file_name=f"{tag}.csv", data=data,
                                     url_column=None)["job"]["id"]
    started = jobs.start(conn, deps.storage(), deps.chunk_queue(), deps.settings(), account_id, job_id,
                         instructions=INSTRUCTIONS, page_context=page_context)
    deps.chunk_queue().sqs.purge_queue(QueueUrl=deps.settings().chunk_queue_url)
    updated = conn.execute(
        "UPDATE urls u SET url = v.url FROM unnest(%s::int[], %s::text[]) AS v(rn, url) "
        "WHERE u.job_id = %s AND u.row_number = v.rn",
        (list(range(1, len(urls) + 1)), urls, job_id)).rowcount
    if updated != len(urls):
        raise RuntimeError(f"pointed {updated} of {len(urls)} rows at the fake sites")
    return job_id, started["estimate"]


def row_figures(job_id: str) -> dict:
    from chalicelib import deps

    conn = deps.conn()
    statuses = {r["status"]: r["n"] for r in conn.execute(
        "SELECT coalesce(context_status, '(none)') AS status, count(*) AS n FROM urls WHERE job_id = %s "
        "GROUP BY 1 ORDER BY 2 DESC", (job_id,)).fetchall()}
    tokens = sorted(r["prompt_tokens"] for r in conn.execute(
        "SELECT prompt_tokens FROM urls WHERE job_id = %s AND prompt_tokens IS NOT NULL", (job_id,)).fetchall())
    return {"context_status": statuses, "prompt_tokens": _distribution(tokens)}


def _distribution(values: list[int]) -> dict:
    if not values:
        return {"n": 0}
    values = sorted(values)
    return {"n": len(values), "median": statistics.median(values),
            "p90": values[min(len(values) - 1, int(0.9 * len(values)))], "max": values[-1], "min": values[0]}


class TimedPages:
    """The handler's page summaries, each page's time from its submit to its answer recorded."""

    def __init__(self, summaries, page_s: list[float]) -> None:
        self.summaries, self.page_s = summaries, page_s

    def __call__(self, *args):
        started = time.monotonic()
        try:
            return self.summaries(*args)
        finally:
            self.page_s.append(time.monotonic() - started)

    def submit(self, *args):
        started = time.monotonic()
        future = self.summaries.submit(*args)
        future.add_done_callback(lambda _: self.page_s.append(time.monotonic() - started))
        return future


def _handle_chunk(args: tuple[str, int, dict]) -> dict:
    """One chunk in this process, as bench/common.py's, timing each URL's two steps as the worker
    runs them on its threads: the page summary (fetch, robots.txt, waiting for a host slot,
    parsing) and the generation (waiting in the limiter, the call, retries)."""
    job_id, chunk, env = args
    os.environ.update(env)
    from chalicelib import deps

    worker = deps.chunk_worker()
    fetch_s: list[float] = []
    generate_s: list[float] = []

    def timed(record: list[float], call):
        def wrapper(*a, **kw):
            started = time.monotonic()
            try:
                return call(*a, **kw)
            finally:
                record.append(time.monotonic() - started)
        return wrapper

    if worker.page_summary is not None:
        worker.page_summary = TimedPages(worker.page_summary, fetch_s)
    worker.generator.generate = timed(generate_s, worker.generator.generate)
    started = time.monotonic()
    worker.process_chunk(job_id, chunk, lambda: float("inf"))
    return {"wall_s": time.monotonic() - started, "fetch_s": fetch_s, "generate_s": generate_s}


def run_chunks_in_processes(job_id: str, chunks: int, env: dict[str, str]) -> tuple[float, list[float], list[float]]:
    """Each chunk in its own process, all at once: wall time until the last ends, and every URL's
    page-summary and generation seconds."""
    context = multiprocessing.get_context("spawn")
    started = time.monotonic()
    with context.Pool(chunks) as pool:
        results = pool.map(_handle_chunk, [(job_id, k, env) for k in range(chunks)])
    wall = time.monotonic() - started
    return wall, [t for r in results for t in r["fetch_s"]], [t for r in results for t in r["generate_s"]]


def _seconds(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    values = sorted(values)
    return {"n": len(values), "mean": round(statistics.fmean(values), 3), "median": round(statistics.median(values), 3),
            "p90": round(values[int(0.9 * len(values))], 3), "max": round(values[-1], 3)}


def run(base_url: str, sites: Sites, page_context: bool, tag: str) -> dict:
    fake_call(base_url, "/_fake/reset", {"keep_config": True})
    settings = {"OPENAI_RPM": str(RPM), "OPENAI_TPM": "0", "CHUNK_SIZE": str(-(-URLS // WORKERS)),
                "CHUNK_CONCURRENCY": CHUNK_CONCURRENCY, "OPENAI_TIMEOUT_S": "10",
                "OUTBOUND_ALLOW_NETWORKS": "127.0.0.0/8",
                "RATELIMIT_PREFIX": f"{os.environ.get('RATELIMIT_PREFIX', 'bench')}:page:{time.time_ns()}"}
    if HOST_CONCURRENCY:
        settings["PAGE_HOST_CONCURRENCY"] = HOST_CONCURRENCY
    use_fake(base_url, **settings)
    urls = sites.publish(URLS, tag)  # new pages every run: nothing cached, nothing fetched before
    job_id, estimate = make_job(urls, tag, page_context)
    sites.reset_counts()
    env = {k: os.environ[k] for k in os.environ if k.startswith(ENV_PREFIXES)}
    wall, fetch_s, generate_s = run_chunks_in_processes(job_id, WORKERS, env)
    stats = fake_call(base_url, "/_fake/stats")
    figures = rate_figures(stats, RPM)
    figures.update(wall_s=round(wall, 1), job=job_counts(job_id), sites=sites.counts(),
                   max_in_flight=stats.get("max_in_flight"), estimate_per_url=estimate["prompt_tokens_per_url"],
                   page_summary_s=_seconds(fetch_s), generate_s=_seconds(generate_s),
                   page_bytes=_distribution(sites.sizes), summary_chars=_distribution(sites.summary_chars),
                   **row_figures(job_id))
    return figures


def _load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.pagecontext")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of run A then run B (default 3)")
    args = parser.parse_args(argv)
    rounds = []
    with ExitStack() as stack:
        base_url = stack.enter_context(fake_openai("--latency-ms", LATENCY_MS, "--rpm", str(RPM)))
        sites = Sites(stack, HOSTS, PAGE_MS)
        for number in range(1, args.rounds + 1):
            tag = f"pc{number}-{time.time_ns() % 10**9}"
            load_before = _load()
            a = run(base_url, sites, False, f"{tag}a")
            b = run(base_url, sites, True, f"{tag}b")
            rounds.append({"a": a, "b": b, "ratio": b["utilization"] / a["utilization"],
                           "load": f"{load_before} → {_load()}"})
            _print_round(number, rounds[-1])
    ratios = [r["ratio"] for r in rounds]
    print(f"\nPage context: fake provider at R = {RPM} RPM, {LATENCY_MS} ms latency, {URLS} URLs, {WORKERS} "
          f"handler processes × {CHUNK_CONCURRENCY} calls; pages at {PAGE_MS} ms on {HOSTS} hosts"
          + (f", PAGE_HOST_CONCURRENCY={HOST_CONCURRENCY}" if HOST_CONCURRENCY else ""))
    print(f"{'round':>5} {'A util':>7} {'B util':>7} {'B/A':>6} {'A 429':>6} {'B 429':>6} {'A tok med/p90/max':>18} "
          f"{'B tok med/p90/max':>18}  B context_status")
    for number, r in enumerate(rounds, start=1):
        a, b = r["a"], r["b"]
        print(f"{number:>5} {a['utilization']:>7.3f} {b['utilization']:>7.3f} {r['ratio']:>6.3f} "
              f"{a['share_429']:>6.2%} {b['share_429']:>6.2%} {_tok(a):>18} {_tok(b):>18}  {b['context_status']}")
    print(f"median B/A = {statistics.median(ratios):.3f} (goal ≥ 0.95); "
          f"median B prompt tokens = {statistics.median(r['b']['prompt_tokens']['median'] for r in rounds)} "
          f"(goal ≤ 600)")
    return {"rounds": rounds, "rpm": RPM, "urls": URLS, "hosts": HOSTS, "page_ms": PAGE_MS}


def _tok(figures: dict) -> str:
    t = figures["prompt_tokens"]
    return f"{t.get('median'):g}/{t.get('p90')}/{t.get('max')}" if t["n"] else "-"


def _secs(t: dict) -> str:
    return f"{t['mean']:.2f}/{t['p90']:.2f}" if t["n"] else "-"


def _print_round(number: int, r: dict) -> None:
    print(f"\nround {number} (load average {r['load']})")
    print(f"{'':34}{'A: page_context off':>22}{'B: page_context on':>22}")
    a, b = r["a"], r["b"]
    for label, key, fmt in (("achieved rate / R", "utilization", "{:.3f}"),
                            ("share of calls answered 429", "share_429", "{:.2%}"),
                            ("achieved RPM", "achieved_rpm", "{}"), ("successful calls", "ok", "{}"),
                            ("calls", "calls", "{}"), ("seconds (first→last call)", "seconds", "{}"),
                            ("wall seconds", "wall_s", "{}"),
                            ("max calls in flight at the fake", "max_in_flight", "{}"),
                            ("estimate per URL (process answer)", "estimate_per_url", "{}")):
        print(f"{label:34}{fmt.format(a[key]):>22}{fmt.format(b[key]):>22}")
    print(f"{'prompt tokens per URL med/p90/max':34}{_tok(a):>22}{_tok(b):>22}")
    print(f"{'generate s per URL mean/p90':34}{_secs(a['generate_s']):>22}{_secs(b['generate_s']):>22}")
    print(f"{'page summary s per URL mean/p90':34}{'':>22}{_secs(b['page_summary_s']):>22}")
    print(f"B/A = {r['ratio']:.3f}")
    print(f"A job {a['job']}  context_status {a['context_status']}")
    print(f"B job {b['job']}  context_status {b['context_status']}  sites {b['sites']}")
    print(f"pages: bytes {b['page_bytes']}; summary characters {b['summary_chars']}")


if __name__ == "__main__":
    main()
