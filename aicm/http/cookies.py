"""The refresh-token cookies of ``security.refresh_cookie`` and the CSRF token that goes with them.

``aicm.http.refresh_cookie`` sets and clears them around the sign-in mutations; ``aicm.http.middleware.csrf``
checks the double submit.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.responses import Response

    from aicm.config import RefreshCookieConfig

__all__ = ["CSRF_COOKIE", "CSRF_HEADER", "REFRESH_COOKIE", "clear_refresh_cookies", "set_refresh_cookies"]

CSRF_HEADER = "X-CSRF-Token"
CSRF_COOKIE = "aicm_csrf"
REFRESH_COOKIE = "aicm_refresh"


def set_refresh_cookies(
    response: Response, refresh_token: str, *, config: RefreshCookieConfig, max_age: int, path: str
) -> str:
    """Set the HttpOnly refresh cookie and a fresh CSRF cookie; returns the CSRF token (also sent as a header,
    for frontends that cannot read the cookie)."""
    csrf = secrets.token_urlsafe(32)
    common = {"max_age": max_age, "secure": config.secure, "samesite": config.same_site}
    response.set_cookie(REFRESH_COOKIE, refresh_token, path=path, httponly=True, **common)  # type: ignore[arg-type]
    response.set_cookie(CSRF_COOKIE, csrf, path="/", httponly=False, **common)  # type: ignore[arg-type]
    response.headers[CSRF_HEADER] = csrf
    return csrf


def clear_refresh_cookies(response: Response, *, config: RefreshCookieConfig, path: str) -> None:
    common = {"secure": config.secure, "samesite": config.same_site}
    response.delete_cookie(REFRESH_COOKIE, path=path, httponly=True, **common)  # type: ignore[arg-type]
    response.delete_cookie(CSRF_COOKIE, path="/", **common)  # type: ignore[arg-type]
