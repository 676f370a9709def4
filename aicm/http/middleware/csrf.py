"""CSRF defences on the GraphQL endpoint, for the refresh-token cookies of ``aicm.http.cookies``.

- A ``POST`` must say ``Content-Type: application/json``: a cross-site form or ``no-cors`` fetch cannot send
  that without a CORS preflight, so a page on another site cannot make the browser post a mutation. Other
  types answer ``415``. (``GET`` runs queries only: :mod:`aicm.http.graphql` refuses mutations over it.)
- With ``security.refresh_cookie.enabled`` a browser client keeps its refresh token in an HttpOnly
  cookie (``aicm_refresh``, path ``/graphql``). A request that carries it must also send ``X-CSRF-Token``
  equal to the readable ``aicm_csrf`` cookie (double submit): another site can make the browser send
  cookies, but cannot read them to fill the header. Otherwise ``403``.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from starlette.requests import cookie_parser

from aicm.errors import AppError, BadUserInput, Forbidden
from aicm.http.cookies import CSRF_COOKIE, CSRF_HEADER, REFRESH_COOKIE
from aicm.http.errors import send_error

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["CSRFMiddleware"]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class CSRFMiddleware:
    """>>> Middleware(CSRFMiddleware, path="/graphql", double_submit=True)  # doctest: +SKIP"""

    def __init__(self, app: ASGIApp, *, path: str = "/graphql", double_submit: bool = False) -> None:
        self.app = app
        self.path = path
        self.double_submit = double_submit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != self.path:
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        method = scope.get("method", "GET")
        if method == "POST":
            media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media_type != "application/json":
                error: AppError = BadUserInput("POST /graphql takes Content-Type: application/json")
                await send_error(send, error, 415)
                return
        if self.double_submit and method not in _SAFE_METHODS:
            cookies = cookie_parser(headers.get("cookie", ""))
            if REFRESH_COOKIE in cookies and not _same(
                headers.get(CSRF_HEADER.lower()), cookies.get(CSRF_COOKIE)
            ):
                message = f"Missing or wrong {CSRF_HEADER} header (it must equal the {CSRF_COOKIE} cookie)"
                await send_error(send, Forbidden(message, reason="CSRF_TOKEN_MISMATCH"))
                return
        await self.app(scope, receive, send)


def _headers(scope: Scope) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in scope.get("headers") or ():
        name = bytes(key).decode("latin-1").lower()
        text = bytes(value).decode("latin-1")
        found[name] = f"{found[name]}; {text}" if name == "cookie" and name in found else text
    return found


def _same(sent: str | None, expected: str | None) -> bool:
    if not sent or not expected:
        return False
    return hmac.compare_digest(sent.encode("utf-8", "replace"), expected.encode("utf-8", "replace"))
