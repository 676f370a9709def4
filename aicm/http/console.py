"""The web console (CONTRACT §12) and GraphiQL, both from the built files shipped in the package.

``web/`` holds their sources (TypeScript, Vite); ``make web`` builds them into ``aicm/web/static/`` with
content-hashed names, and that folder ships in the wheel, so a server needs no Node. ``BUILD.json`` records a
hash of the sources the build came from (:func:`sources_digest`; a test compares it with the checkout).

- ``GET /`` (``web.enabled``) is the console's page, with the server's public settings in a ``<meta>`` tag
  (configured OAuth providers, whether the refresh cookie flow is on); the page runs no inline script.
- ``GET /assets/<name>``: the built files; hashed names are cached for a year as ``immutable``.
- GraphiQL (:class:`GraphiQLPage`, served by the GraphQL endpoint) is the same build's ``graphiql.html``.
"""

from __future__ import annotations

import hashlib
import html
import json
import mimetypes
import re
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from aicm.http.middleware.security_headers import page_csp

if TYPE_CHECKING:
    from starlette.requests import Request

    from aicm.config import Settings

__all__ = ["STATIC", "WEB_SOURCES", "Console", "GraphiQLPage", "routes", "sources_digest"]

STATIC = Path(__file__).resolve().parent.parent / "web" / "static"
# What ``web/scripts/stamp.mjs`` hashes (the same algorithm as sources_digest), relative to ``web/``.
WEB_SOURCES = (
    "index.html",
    "graphiql.html",
    "package.json",
    "package-lock.json",
    "tsconfig.json",
    "vite.config.ts",
    "src",
)
_HASHED = re.compile(r"[A-Za-z0-9_.-]+-[A-Za-z0-9_-]{8}\.(?:js|css|woff2?|svg|png)")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")
_HOST = re.compile(r"[A-Za-z0-9.:\[\]-]{1,255}")
IMMUTABLE = "public, max-age=31536000, immutable"


def sources_digest(web_dir: Path) -> str:
    """SHA-256 over the sources' relative paths and contents, in sorted order."""
    files: list[Path] = []
    for name in WEB_SOURCES:
        path = web_dir / name
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for rel in sorted(p.relative_to(web_dir).as_posix() for p in files):
        body = hashlib.sha256((web_dir / rel).read_bytes()).hexdigest()
        digest.update(f"{rel}\0{body}\n".encode())
    return digest.hexdigest()


def _page(name: str) -> str:
    path = STATIC / name
    if not path.is_file():
        raise RuntimeError(f"the web build is missing {path}: run `make web`")
    return path.read_text(encoding="utf-8")


def _html(body: str, request: Request) -> HTMLResponse:
    host = request.headers.get("host")
    csp = page_csp(host if host and _HOST.fullmatch(host) else None)
    headers = {"Content-Security-Policy": csp, "Cache-Control": "no-cache"}
    return HTMLResponse(body, headers=headers)


class GraphiQLPage:
    """GraphiQL from the shipped build: no CDN, and a storage that never keeps request headers."""

    def __init__(self) -> None:
        self.html = _page("graphiql.html")

    def response(self, request: Request) -> HTMLResponse:
        return _html(self.html, request)


class Console:
    def __init__(self, settings: Settings) -> None:
        public = {
            "oauthProviders": sorted(settings.oauth),
            "refreshCookie": settings.security.refresh_cookie.enabled,
            "allowRegistration": settings.auth.allow_registration,
        }
        meta = f'<meta name="aicm-config" content="{html.escape(json.dumps(public), quote=True)}" />'
        page = _page("index.html")
        placeholder = '<meta name="aicm-config" content="{}" />'
        if placeholder not in page:
            raise RuntimeError("the web build's index.html has no aicm-config placeholder: run `make web`")
        self.index = page.replace(placeholder, meta)
        self.assets = {p.name for p in STATIC.iterdir() if p.is_file() and not p.name.endswith(".html")}

    async def page(self, request: Request) -> Response:
        return _html(self.index, request)

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if not _NAME.fullmatch(name) or name not in self.assets:
            return Response("Not Found", status_code=404, media_type="text/plain")
        media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        cache = IMMUTABLE if _HASHED.fullmatch(name) else "no-cache"
        body = (STATIC / name).read_bytes()
        return Response(body, media_type=media_type, headers={"Cache-Control": cache})


def routes(settings: Settings) -> list[Route]:
    """``/`` and ``/assets/{name}`` when ``web.enabled``; GraphiQL needs the assets too."""
    if not settings.web.enabled and not settings.graphiql_enabled:
        return []
    console = Console(settings)
    found = [Route("/assets/{name}", console.asset, methods=["GET", "HEAD"])]
    if settings.web.enabled:
        found.append(Route("/", console.page, methods=["GET", "HEAD"]))
    return found
