"""The web page: static files in chalicelib/web/, served by the app itself (no CDN, no build)."""

from __future__ import annotations

from pathlib import Path

from chalice import Response

from chalicelib.errors import NotFound
from chalicelib.settings import Settings

WEB_DIR = Path(__file__).with_name("web")
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}


def asset_response(name: str, settings: Settings) -> Response:
    path = WEB_DIR / name
    if "/" in name or name.startswith(".") or path.suffix not in TYPES or not path.is_file():
        raise NotFound(f"No such file: {name[:100]}", code="not_found")
    return Response(path.read_text(encoding="utf-8"), headers={
        "Content-Type": TYPES[path.suffix],
        "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                   "img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        "Cache-Control": "no-cache",
    })
