"""The web page as served (GET /, GET /static/{name}) through chalice.test.Client: types, the
Content-Security-Policy, nothing outside chalicelib/web/static/ reachable, no inline script or style."""

from __future__ import annotations

import dataclasses
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from chalicelib import web

WEB_DIR = Path(web.__file__).with_name("static")


def expected_csp(connect: str) -> str:
    return ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            f"connect-src 'self' {connect}; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")


def header(response, name: str) -> str:
    return {k.lower(): v for k, v in response.headers.items()}[name.lower()]


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.script_text.append(data)


def test_page_is_html_with_the_strict_csp(client, settings):
    response = client.anonymous.get("/")  # no key needed for the page itself
    assert response.status_code == 200
    assert header(response, "Content-Type") == "text/html; charset=utf-8"
    endpoint = urlsplit(settings.aws_endpoint_url)
    assert header(response, "Content-Security-Policy") == expected_csp(f"{endpoint.scheme}://{endpoint.netloc}")
    assert header(response, "Cache-Control") == "no-cache"
    assert header(response, "X-Content-Type-Options") == "nosniff"
    body = response.body.decode()
    assert "{{" not in body  # every placeholder filled in
    assert f'content="{settings.max_direct_upload}"' in body
    assert 'src="/static/app.js"' in body and 'src="/static/review.js"' in body and 'href="/static/style.css"' in body


def test_csp_on_aws_names_the_buckets_s3_origins(settings):
    aws = dataclasses.replace(settings, aws_endpoint_url=None, aws_region="eu-west-1", upload_bucket="acme-uploads")
    assert web.content_security_policy(aws) == expected_csp(
        "https://acme-uploads.s3.amazonaws.com https://acme-uploads.s3.eu-west-1.amazonaws.com")


@pytest.mark.parametrize(("path", "base"), [("/", "/"), ("/api/", "/api/"), ("/api", "/api/"), (None, "/"),
                                            ("//evil.example/", "/"), ("x", "/")])
def test_base_path_behind_api_gateway(path, base):
    assert web.base_path(path) == base


@pytest.mark.parametrize(("name", "content_type"), [
    ("app.js", "text/javascript; charset=utf-8"),
    ("review.js", "text/javascript; charset=utf-8"),
    ("style.css", "text/css; charset=utf-8"),
    ("icon.svg", "image/svg+xml"),
])
def test_static_assets_have_their_types(client, name, content_type):
    response = client.anonymous.get(f"/static/{name}")
    assert response.status_code == 200
    assert header(response, "Content-Type") == content_type
    assert response.body == (WEB_DIR / name).read_bytes()


@pytest.mark.parametrize("path", [
    "/static/..%2Fapp.py", "/static/..%2F..%2Fapp.py", "/static/.env", "/static/..", "/static/app.py",
    "/static/index.html", "/static/missing.js", "/static/%2Fetc%2Fpasswd", "/static/..%5Capp.py",
    "/static/app.js%00.css",
])
def test_nothing_else_is_served(client, path):
    response = client.anonymous.get(path)
    assert response.status_code == 404, (path, response.body[:200])
    assert response.json_body["error"]["code"] == "not_found"


def test_page_has_no_inline_script_or_style():
    html = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    parser = Tags()
    parser.feed(html)
    scripts = [attrs for tag, attrs in parser.tags if tag == "script"]
    assert scripts and all(attrs.get("src") for attrs in scripts)
    assert not parser.script_text
    assert not [tag for tag, _ in parser.tags if tag == "style"]
    assert not [(tag, attrs) for tag, attrs in parser.tags if "style" in attrs]
    assert not [(tag, attrs) for tag, attrs in parser.tags if any(a.startswith("on") for a in attrs)]
    assert not re.search(r"\sstyle=", html) and "javascript:" not in html


def test_script_renders_values_as_text():
    """The page's own scripts (app.js, review.js, any other) never parse strings as HTML or code."""
    scripts = sorted(WEB_DIR.glob("*.js"))
    assert {"app.js", "review.js"} <= {p.name for p in scripts}
    for path in scripts:
        script = path.read_text(encoding="utf-8")
        for risky in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                      "localStorage"):
            assert risky not in script, (path.name, risky)
