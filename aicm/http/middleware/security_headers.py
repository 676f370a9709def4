"""Security headers on every HTTP response, and the CORS options built from ``security.cors``.

Every response gets ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``,
``Referrer-Policy: no-referrer``, ``Cross-Origin-Opener-Policy: same-origin`` and, unless the endpoint set
its own (the console's and GraphiQL's pages set ``page_csp``), the strict API ``Content-Security-Policy``.
``Strict-Transport-Security`` is added when ``security.hsts.enabled`` (deployments reached over TLS).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aicm.http.cookies import CSRF_HEADER

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from aicm.config import HSTSConfig, Settings

__all__ = ["API_CSP", "SecurityHeadersMiddleware", "cors_options", "hsts_value", "page_csp"]

# JSON responses never need to load, frame or submit anything.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def page_csp(host: str | None = None) -> str:
    """The web console's and GraphiQL's pages (``aicm.http.console``): scripts, styles and fonts only from
    this server (no inline script), requests only to it (HTTP and its WebSocket).

    Styles allow ``'unsafe-inline'``: GraphiQL's editor sets style attributes, which CSP cannot hash.
    """
    sockets = f" ws://{host} wss://{host}" if host else ""
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self' 'unsafe-inline'",
            "font-src 'self' data:",
            "img-src 'self' data:",
            f"connect-src 'self'{sockets}",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "object-src 'none'",
        ]
    )


def hsts_value(config: HSTSConfig) -> str | None:
    if not config.enabled:
        return None
    value = f"max-age={int(config.max_age)}"
    if config.include_subdomains:
        value += "; includeSubDomains"
    if config.preload:
        value += "; preload"
    return value


class SecurityHeadersMiddleware:
    """Adds the headers to ``http.response.start`` unless the response already has them.

    >>> Middleware(SecurityHeadersMiddleware, hsts="max-age=31536000; includeSubDomains")  # doctest: +SKIP
    """

    def __init__(self, app: ASGIApp, *, hsts: str | None = None, csp: str = API_CSP) -> None:
        self.app = app
        defaults = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"content-security-policy", csp.encode("latin-1")),
        ]
        if hsts:
            defaults.append((b"strict-transport-security", hsts.encode("latin-1")))
        self.defaults = defaults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or ())
                present = {bytes(key).lower() for key, _ in headers}
                headers += [(key, value) for key, value in self.defaults if key not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def cors_options(settings: Settings) -> dict[str, Any] | None:
    """Keyword arguments for Starlette's ``CORSMiddleware``; None when no origin is allowed (same origin).

    A wildcard origin never goes with credentials: Starlette would echo any caller's origin back.
    """
    cors = settings.security.cors
    if not cors.allowed_origins:
        return None
    headers = list(cors.allowed_headers)
    if settings.security.refresh_cookie.enabled and CSRF_HEADER.lower() not in {h.lower() for h in headers}:
        headers.append(CSRF_HEADER)
    return {
        "allow_origins": list(cors.allowed_origins),
        "allow_methods": list(cors.allowed_methods),
        "allow_headers": headers,
        "allow_credentials": cors.allow_credentials and "*" not in cors.allowed_origins,
        "max_age": cors.max_age,
        "expose_headers": ["X-Request-ID", "Retry-After", CSRF_HEADER],
    }
