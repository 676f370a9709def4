"""``security.refresh_cookie``: browser clients keep the refresh token in an HttpOnly cookie.

Over HTTP, ``login``, ``register`` and ``refreshToken`` also set the ``aicm_refresh`` cookie (HttpOnly, path
of the GraphQL endpoint) and a fresh ``aicm_csrf`` cookie, whose value is echoed in the ``X-CSRF-Token``
response header too. ``refreshToken(refreshToken: "")`` takes the token from the cookie, and then the new
refresh token goes only into the cookie (the payload's ``refreshToken`` is empty), so page scripts never see
it. ``logout`` clears both cookies. ``aicm.http.middleware.csrf.CSRFMiddleware`` checks the double submit.
A schema extension, but an HTTP concern: ``GraphQLApp`` hands it to ``build_schema``.

Only installed when the option is on: a ``resolve`` hook runs for every field.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from strawberry.extensions import SchemaExtension
from strawberry.utils.await_maybe import await_maybe

from aicm.config import RefreshCookieConfig
from aicm.http.cookies import REFRESH_COOKIE, clear_refresh_cookies, set_refresh_cookies

__all__ = ["RefreshCookie"]

_ISSUING = frozenset({"login", "register", "refreshToken"})


class RefreshCookie(SchemaExtension):
    def __init__(self, config: RefreshCookieConfig, *, max_age: int, path: str = "/graphql") -> None:
        super().__init__()
        self.config = config
        self.max_age = max_age
        self.path = path

    async def resolve(self, _next: Any, root: Any, info: Any, *args: Any, **kwargs: Any) -> Any:
        name = info.field_name
        if (
            info.path.prev is not None
            or info.parent_type.name != "Mutation"
            or (name not in _ISSUING and name != "logout")
            or not isinstance(info.context.request, Request)
        ):
            return await await_maybe(_next(root, info, *args, **kwargs))
        from_cookie = False
        if name == "refreshToken" and not kwargs.get("refreshToken"):
            cookie = info.context.request.cookies.get(REFRESH_COOKIE)
            if cookie:
                kwargs["refreshToken"], from_cookie = cookie, True
        result = await await_maybe(_next(root, info, *args, **kwargs))
        response = info.context.response
        if not isinstance(response, Response):
            return result
        if name == "logout":
            if result:
                clear_refresh_cookies(response, config=self.config, path=self.path)
            return result
        token = getattr(result, "refresh_token", None)
        if isinstance(token, str) and token:
            set_refresh_cookies(response, token, config=self.config, max_age=self.max_age, path=self.path)
            if from_cookie:
                result.refresh_token = ""
        return result
