"""A page's summary for the model: what a site says about itself, in at most 1,000 characters.

`summarize_page(url, fetcher, cache)` fetches the page through the SSRF-safe fetcher
(chalicelib/outbound/fetcher.py; `PageSummaries.submit`: many at once, on its event loop),
extracts title, meta and Open Graph descriptions, the first headings and the start of the main
text with selectolax (the lexbor HTML5 parser), and keeps the answer in
Redis by account and normalised URL, so a retry or a second job of the same account with the same
URL does not fetch it again. Per account, not shared: a cache hit (an answer with no fetch, or a
page's state from earlier) would tell one tenant which URLs another tenant fetched.
A failed fetch is kept too, briefly (`failure_ttl_s`), so a dead site is not hammered by every
row that names it, while a passing outage does not stick for a day. That cache is per URL: the
next rows of a host that timed out or did not resolve (other URLs of the same site) are spared
by the fetcher's own memory of failed hosts, per process (`HostFailures`, PAGE_HOST_FAILURE_TTL_S).
A page skipped that way is not cached for its URL: it was never tried, and the host is tried
again once that memory lapses.

The outcome is always a `(summary or None, context_status, reason)` triple; nothing raises.
A page that declares its language (`<html lang>`, else `og:locale`, else the first
`Content-Language`) has it as the summary's first line, `Language: de-AT`: it is part of what the
page says about itself, it is cached with the rest, and the quality checks read it back
(`declared_language_of`) to write the opener in it when a job's language is `auto`.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import re
import unicodedata
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from selectolax.lexbor import LexborHTMLParser, LexborNode

from chalicelib.outbound import ERROR, FETCHED, STATUSES, TIMEOUT, Fetcher, FetchResult

log = logging.getLogger(__name__)

SUMMARY_LIMIT = 1000  # keeps the median prompt with page context under 600 tokens (bench/RESULTS.md)
_TITLE_LIMIT = 200
_DESCRIPTION_LIMIT = 300
_HEADING_LIMIT = 120
_HEADINGS = 6
_HEADINGS_LIMIT = 400
_MIN_TEXT = 40  # below this, leave the main text out rather than add a stub
# Not the page's own words, or not words at all.
_NOT_CONTENT = ("script, style, noscript, template, svg, math, canvas, iframe, object, embed, nav, header, "
                "footer, aside, form, button, select, dialog, [hidden], [aria-hidden=true]")
_MAIN = ("main", "[role=main]", "article")
SUMMARY_THREADS = 8  # per process: cache lookups and summaries of pages fetched on the event loop
_DROPPED_CATEGORIES = frozenset({"Cf", "Cs", "Co", "Cn"})  # format (zero-width, bidi), surrogates, private, unassigned


class PageSummary(NamedTuple):
    summary: str | None
    context_status: str  # fetched, blocked, timeout, not_html, robots, error
    reason: str


# --- extraction (pure) ------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """Control characters become spaces, format characters (zero-width, bidi overrides) go,
    and runs of whitespace become one space."""
    kept = []
    for ch in text:
        if ch.isprintable() or ch.isspace():
            kept.append(ch)
            continue
        category = unicodedata.category(ch)
        if category == "Cc":
            kept.append(" ")
        elif category not in _DROPPED_CATEGORIES:
            kept.append(ch)  # e.g. a line separator: isspace() covers it, kept for safety
    return " ".join("".join(kept).split())


def clip(text: str, limit: int) -> str:
    """At most ``limit`` characters, cut at a word boundary with an ellipsis when cut."""
    if len(text) <= limit:
        return text
    if limit <= 1:
        return text[:limit]
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:-") + "…"


def _parse(html: bytes | str, charset: str | None) -> LexborHTMLParser:
    if isinstance(html, bytes) and charset:
        try:
            html = html.decode(charset, "replace")
        except (LookupError, TypeError):  # an unknown or non-text codec: let the parser sniff
            pass
    if isinstance(html, bytes):
        return LexborHTMLParser(html, encoding=True)  # BOM, then <meta charset>, else UTF-8
    return LexborHTMLParser(html)


def _text(node: LexborNode | None, limit: int) -> str:
    if node is None:
        return ""
    # Clip the raw text first (cheaply, generously) so cleaning never walks a megabyte.
    return clip(clean_text(node.text(separator=" ")[: limit * 4]), limit)


def _meta(tree: LexborHTMLParser, selector: str, limit: int) -> str:
    node = tree.css_first(selector)
    if node is None:
        return ""
    return clip(clean_text((node.attributes.get("content") or "")[: limit * 4]), limit)


_LANGUAGE_LINE = "Language: "
_LANGUAGE_TAG = re.compile(r"[A-Za-z]{1,8}(?:[-_][A-Za-z0-9]{1,8}){0,3}")


def _declared_language(tree: LexborHTMLParser, content_language: str | None) -> str | None:
    """The language tag the page declares (as written, if it looks like one), or None."""
    root = tree.css_first("html")
    og = tree.css_first('meta[property="og:locale" i], meta[name="og:locale" i]')
    first_header = (content_language or "").split(",")[0].split(";")[0]
    for tag in (root.attributes.get("lang") if root is not None else None,
                og.attributes.get("content") if og is not None else None, first_header):
        tag = (tag or "").strip()
        if _LANGUAGE_TAG.fullmatch(tag):
            return tag
    return None


def declared_language_of(summary: str | None) -> str | None:
    """The language tag a summary's first line declares (see the module docstring), or None."""
    first = (summary or "").split("\n", 1)[0]
    return first[len(_LANGUAGE_LINE):] if first.startswith(_LANGUAGE_LINE) else None


def summarize_html(html: bytes | str, charset: str | None = None, limit: int = SUMMARY_LIMIT,
                   content_language: str | None = None) -> str:
    """The summary of one HTML document, at most ``limit`` characters ("" when it says nothing):

        Language: <the declared language tag>   (only when the page declares one)
        Title: …
        Description: …
        Open Graph: <og:title> — <og:description>   (the parts that repeat nothing above)
        Headings: <h1/h2 text> | …
        Text: <the start of the main content>
    """
    tree = _parse(html, charset)
    declared = _declared_language(tree, content_language)
    title = _text(tree.css_first("title"), _TITLE_LIMIT)
    description = _meta(tree, 'meta[name="description" i]', _DESCRIPTION_LIMIT)
    og = [
        part for part in (
            _meta(tree, 'meta[property="og:title" i], meta[name="og:title" i]', _TITLE_LIMIT),
            _meta(tree, 'meta[property="og:description" i], meta[name="og:description" i]', _DESCRIPTION_LIMIT),
        )
        if part and part not in (title, description)
    ]
    headings: list[str] = []
    for node in tree.css("h1, h2"):  # before the page chrome (often holding the h1) is dropped
        heading = _text(node, _HEADING_LIMIT)
        if heading and heading not in headings and heading != title:
            headings.append(heading)
        if len(headings) == _HEADINGS:
            break
    lines = []
    if title:
        lines.append(f"Title: {title}")
    if description:
        lines.append(f"Description: {description}")
    if og:
        lines.append(f"Open Graph: {' — '.join(og)}")
    if headings:
        lines.append(clip(f"Headings: {' | '.join(headings)}", _HEADINGS_LIMIT))

    for node in tree.css(_NOT_CONTENT):
        node.decompose()
    main = next((n for n in (tree.css_first(s) for s in _MAIN) if n is not None and n.text(strip=True)), None)
    room = limit - sum(len(line) + 1 for line in lines) - len("Text: ")
    if room >= _MIN_TEXT:
        text = _text(main if main is not None else tree.body, room)
        if text:
            lines.append(f"Text: {text}")
    if lines and declared:
        lines.insert(0, f"{_LANGUAGE_LINE}{declared}")
    return clip("\n".join(lines), limit)


# --- cache ------------------------------------------------------------------------------------


def cache_key_url(url: str) -> str:
    """One spelling per page: lower-case scheme and host, no default port, no fragment, "/" for
    an empty path (the query is kept: it may pick the page)."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
        host = (parts.hostname or "").rstrip(".").encode("idna").decode("ascii").lower()
    except (ValueError, UnicodeError):
        return text
    scheme = parts.scheme.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != {"http": 80, "https": 443}.get(scheme):
        host = f"{host}:{port}"
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{host}{parts.path or '/'}{query}"


class PageCache:
    """Summaries in Redis (shared by every Lambda invocation), by account and normalised URL.

    ``ttl_s`` for a fetched page, ``failure_ttl_s`` (at most ``ttl_s``) for any other outcome.
    Best effort: a Redis error is logged and treated as a miss, never raised."""

    def __init__(self, redis_client: Any, prefix: str = "csv-opener:page", ttl_s: int = 86_400,
                 failure_ttl_s: int = 600) -> None:
        self.redis = redis_client
        self.prefix = prefix
        self.ttl_s = max(1, int(ttl_s))
        self.failure_ttl_s = max(1, min(int(failure_ttl_s), self.ttl_s))

    def key(self, url: str, account_id: str) -> str:
        digest = hashlib.sha256(cache_key_url(url).encode("utf-8", "surrogatepass")).hexdigest()[:40]
        return f"{self.prefix}:{account_id}:{digest}"

    def get(self, url: str, account_id: str) -> PageSummary | None:
        try:
            raw = self.redis.get(self.key(url, account_id))
        except Exception as exc:  # redis.RedisError and friends: the cache is optional
            log.warning("page cache read failed: %s", exc)
            return None
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            page = PageSummary(data["summary"], data["status"], data["reason"])
        except (ValueError, KeyError, TypeError):
            return None
        return page if page.context_status in STATUSES else None

    def put(self, url: str, account_id: str, page: PageSummary) -> None:
        ttl = self.ttl_s if page.context_status == FETCHED else self.failure_ttl_s
        value = json.dumps({"summary": page.summary, "status": page.context_status, "reason": page.reason})
        try:
            self.redis.set(self.key(url, account_id), value, ex=ttl)
        except Exception as exc:
            log.warning("page cache write failed: %s", exc)


# --- the service ------------------------------------------------------------------------------


def summary_of(result: FetchResult) -> PageSummary:
    """A fetch's outcome as a page summary (the HTML summarised when it came)."""
    if not result.ok:
        return PageSummary(None, result.status, result.reason)
    try:
        text = summarize_html(result.body, result.charset, content_language=result.headers.get("content-language"))
    except Exception:  # a parser bug must not fail the row
        log.exception("page summary failed for %r", result.url)
        text = ""
    return PageSummary(text, FETCHED, result.reason) if text else PageSummary(None, ERROR, "no readable text")


def summarize_page(url: str, fetcher: Fetcher, cache: PageCache | None = None,
                   account_id: str | None = None) -> PageSummary:
    """``(summary or None, context_status, reason)`` for ``url``: from ``account_id``'s cache, or
    fetched and summarised (then cached for that account). ``summary`` is set only when
    ``context_status`` is ``fetched``. Without an account nothing is cached."""
    if account_id is None:
        cache = None
    if cache is not None:
        cached = cache.get(url, account_id)
        if cached is not None:
            return cached
    result = fetcher.get_page(url)
    page = summary_of(result)
    if cache is not None and not result.skipped:
        cache.put(url, account_id, page)
    return page


class PageSummaries:
    """``(url, account_id) -> (summary or None, context_status)``, waited for (previews, batches),
    or :meth:`submit`: a Future of the same, for a chunk handler with hundreds of pages in flight.

    The fetch runs on the fetcher's event loop; what would block the loop runs on a few threads
    of this object's (``threads``): the Redis cache's get before the fetch and put after it, and
    the summary (selectolax parses up to 1 MB of HTML)."""

    def __init__(self, fetcher: Fetcher, cache: PageCache | None, threads: int = SUMMARY_THREADS) -> None:
        self.fetcher, self.cache = fetcher, cache
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="page-summary")

    def __call__(self, url: str, account_id: str) -> tuple[str | None, str]:
        page = summarize_page(url, self.fetcher, self.cache, account_id)
        return page.summary, page.context_status

    def submit(self, url: str, account_id: str, start_by: float | None = None) -> Future:
        """The page's (summary or None, context_status), to come; never an exception. Cancelling it
        ends the fetch. ``start_by`` (monotonic): a fetch not started by then ends as ``timeout``."""
        out: Future = Future()
        # the caller's log context on the summary threads: a copy per task (one context cannot be
        # entered by two threads at once, and `finish` may start while `start` is still in it)
        context = contextvars.copy_context()

        def settle(page: PageSummary) -> None:
            with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
                out.set_result((page.summary, page.context_status))

        def finish(fetched: Future) -> None:
            result = (FetchResult(TIMEOUT, "cancelled", url, skipped=True) if fetched.cancelled()
                      else fetched.result())
            page = summary_of(result)
            if self.cache is not None and not result.skipped:
                self.cache.put(url, account_id, page)
            settle(page)

        def start() -> None:
            if out.cancelled():
                return
            cached = self.cache.get(url, account_id) if self.cache is not None else None
            if cached is not None:
                settle(cached)
                return
            fetched = self.fetcher.submit_page(url, start_by=start_by)
            out.add_done_callback(lambda f: f.cancelled() and fetched.cancel())
            fetched.add_done_callback(hand_on)

        def hand_on(fetched: Future) -> None:  # on the loop's thread: the rest goes to the summary threads
            try:
                self.pool.submit(context.copy().run, guarded, finish, fetched)
            except RuntimeError:  # the pool is shut down (the process is ending): the row must not wait
                settle(PageSummary(None, ERROR, "internal error"))

        def guarded(step: Any, *args: Any) -> None:
            try:
                step(*args)
            except Exception:  # never leave a row waiting on a bug: its page is an error
                log.exception("page summary of %r failed unexpectedly", url)
                settle(PageSummary(None, ERROR, "internal error"))

        self.pool.submit(context.copy().run, guarded, start)
        return out
