"""``X-Request-ID``: accepted from the client when it is a sane token, else generated; echoed back."""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING

from aicm.logs.context import bind_request, reset_request

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HEADER", "RequestIdMiddleware", "sane_request_id"]

HEADER = "X-Request-ID"
_HEADER_KEY = HEADER.lower().encode("latin-1")
_SANE = re.compile(r"[A-Za-z0-9._-]{1,128}")


def sane_request_id(value: str | None) -> str | None:
    """``value`` when it is 1-128 characters of ``[A-Za-z0-9._-]``, else None."""
    return value if value is not None and _SANE.fullmatch(value) else None


class RequestIdMiddleware:
    """Gives every HTTP request and WebSocket connection a request id.

    The id goes to ``scope["state"]["request_id"]`` (``request.state.request_id`` in Starlette), to every log
    record emitted while the request runs (through :func:`aicm.logs.context.bind_request`) and to the
    ``X-Request-ID`` header of the response (and of the WebSocket accept).

    >>> app = Starlette(routes=routes, middleware=[Middleware(RequestIdMiddleware), ...])  # doctest: +SKIP
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = sane_request_id(_incoming(scope)) or uuid.uuid4().hex
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = request_id
        header = (_HEADER_KEY, request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                headers = [(k, v) for k, v in message.get("headers") or () if k.lower() != _HEADER_KEY]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        token = bind_request(request_id, scope)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            reset_request(token)


def _incoming(scope: Scope) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == _HEADER_KEY:
            return bytes(value).decode("latin-1")
    return None
