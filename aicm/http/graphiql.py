"""GraphiQL's page (Strawberry's), made to run under a nonce-based CSP and to keep secrets out of URLs.

Changes to Strawberry's page:

- every ``<script>`` and ``<style>`` carries the response's nonce (the CSP allows nothing else inline);
- request headers (where an ``Authorization`` header lives) are never read from nor written to the URL, nor
  kept in ``localStorage``; variables (which may hold passwords or tokens) are not written to the URL either;
- the CSRF header GraphiQL sends comes from our ``aicm_csrf`` cookie, as ``X-CSRF-Token``.
"""

from __future__ import annotations

import re
import secrets

from starlette.responses import HTMLResponse
from strawberry.http.ides import get_graphql_ide_html

from aicm.http.cookies import CSRF_COOKIE, CSRF_HEADER
from aicm.http.middleware.security_headers import graphiql_csp

__all__ = ["NONCE", "GraphiQLPage"]

NONCE = "__AICM_CSP_NONCE__"
_HOST = re.compile(r"[A-Za-z0-9.:\[\]-]{1,255}")

# (what Strawberry's page says, what ours says); each must be found, or the page is not served as safe.
_EDITS = [
    ("<script", f'<script nonce="{NONCE}"'),
    ("<style>", f'<style nonce="{NONCE}">'),
    (
        "      function updateURL(data) {",
        "      delete parameters.headers;\n\n      function updateURL(data) {",
    ),
    (
        "Object.assign(parameters, data);",
        "Object.assign(parameters, data);\n        delete parameters.headers;",
    ),
    ("React.useState(parameters.headers)", "React.useState(undefined)"),
    ("updateURL({ variables: newVariables });", ""),
    ("shouldPersistHeaders: true", "shouldPersistHeaders: false"),
    ('Cookies.get("csrftoken")', f'Cookies.get("{CSRF_COOKIE}")'),
    ('defaultHeaders["x-csrftoken"]', f'defaultHeaders["{CSRF_HEADER}"]'),
]


def template(html: str | None = None) -> str:
    """Strawberry's GraphiQL page with the edits above; ValueError if one no longer applies."""
    html = get_graphql_ide_html("graphiql") if html is None else html
    for old, new in _EDITS:
        if old not in html:
            raise ValueError(f"GraphiQL page changed: cannot find {old!r}")
        html = html.replace(old, new)
    return html


class GraphiQLPage:
    def __init__(self) -> None:
        self.html = template()

    def response(self, host: str | None) -> HTMLResponse:
        nonce = secrets.token_urlsafe(18)
        host = host if host and _HOST.fullmatch(host) else None
        headers = {"Content-Security-Policy": graphiql_csp(nonce, host), "Cache-Control": "no-store"}
        return HTMLResponse(self.html.replace(NONCE, nonce), headers=headers)
