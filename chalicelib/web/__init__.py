"""The web page: static files in chalicelib/web/static/, served by the app itself (no CDN, no build step),
so they ship with the Lambda and work offline under `make dev`.

`index.html` is the page at `/`; the other files are served at `/static/{name}`. The page gets a
strict Content-Security-Policy: scripts, styles and images from the page's own origin only (no
inline script or style, no third-party origin), and `connect-src` limited to the API itself plus
the S3 origin presigned URLs point at (uploads above the direct-upload limit go straight to S3,
and big downloads are a 302 to S3)."""

from __future__ import annotations

import html
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from chalice import Response

from chalicelib.errors import NotFound
from chalicelib.settings import Settings

WEB_DIR = Path(__file__).with_name("static")
PAGE = "index.html"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


def s3_origins(settings: Settings) -> list[str]:
    """The origins presigned S3 URLs point at: LocalStack's (AWS_ENDPOINT_URL, path-style URLs)
    locally; on AWS the bucket's virtual-hosted origins (boto3 signs with the global name, S3
    may answer from the regional one)."""
    if settings.aws_endpoint_url:
        parts = urlsplit(settings.aws_endpoint_url)
        return [f"{parts.scheme}://{parts.netloc}"]
    bucket, region = settings.upload_bucket, settings.aws_region
    return [f"https://{bucket}.s3.amazonaws.com", f"https://{bucket}.s3.{region}.amazonaws.com"]


def content_security_policy(settings: Settings) -> str:
    return "; ".join([
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src " + " ".join(["'self'", *s3_origins(settings)]),
        "form-action 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ])


def base_path(request_path: str | None) -> str:
    """Where the page lives, ending in '/': '/' under `chalice local`, '/api/' behind API
    Gateway (its request path includes the stage), whether or not the visitor typed the slash."""
    path = request_path or "/"
    if not path.startswith("/") or "//" in path:
        path = "/"
    return path if path.endswith("/") else path + "/"


@lru_cache(maxsize=16)
def _read(name: str) -> str:
    return (WEB_DIR / name).read_text(encoding="utf-8")


def _asset_names() -> frozenset[str]:
    return frozenset(p.name for p in WEB_DIR.iterdir() if p.is_file() and p.suffix in TYPES
                     and p.name != PAGE and not p.name.startswith("."))


def page_response(settings: Settings, request_path: str | None = None) -> Response:
    """The page, with where its files live and the direct-upload limit filled in."""
    text = (_read(PAGE)
            .replace("{{base}}", html.escape(base_path(request_path), quote=True))
            .replace("{{max_direct_upload}}", str(int(settings.max_direct_upload))))
    return _response(text, TYPES[".html"], settings)


def asset_response(name: str, settings: Settings) -> Response:
    """One of the page's files by bare name (an allow-list of what is in the folder: no path,
    no dot file, nothing else); anything else is a 404 in the API's error shape."""
    if not isinstance(name, str) or name not in _asset_names():
        raise NotFound(f"No such file: {str(name)[:100]}", code="not_found")
    return _response(_read(name), TYPES[Path(name).suffix], settings)


def _response(body: str, content_type: str, settings: Settings) -> Response:
    return Response(body, headers={
        "Content-Type": content_type,
        "Content-Security-Policy": content_security_policy(settings),
        "Cache-Control": "no-cache",
    })
