"""WebSocket connections skip the HTTP-only layers of the middleware stack.

Every ASGI layer a connection passes through keeps a coroutine frame alive for the connection's whole life
(0.5-0.7 KiB each; docs/performance.md "Idle memory and opening cost"), and those below this one (access log,
metrics, security headers, CORS, CSRF) pass WebSocket scopes straight on anyway. This layer sends WebSocket
scopes to a chain of just the layers that do something for them (the rate limit of the handshake), then
Starlette's exception layer (it answers a refused handshake, e.g. a browser from an unknown origin) and the
router. HTTP requests go down the whole stack as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from starlette.middleware import Middleware
from starlette.middleware.exceptions import ExceptionMiddleware

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["WebSocketShortcut"]


class WebSocketShortcut:
    """>>> Middleware(WebSocketShortcut, websocket_middleware=[Middleware(RateLimit)])  # doctest: +SKIP

    ``websocket_middleware`` (outermost first) is what a WebSocket scope still passes through below here.
    """

    def __init__(self, app: ASGIApp, *, websocket_middleware: Sequence[Middleware] = ()) -> None:
        self.app = app
        self.websocket_middleware = list(websocket_middleware)
        self._websocket_app: ASGIApp | None = None  # built on first use: it ends at the app's router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        if self._websocket_app is None:
            self._websocket_app = self._build(scope["app"])
        await self._websocket_app(scope, receive, send)

    def _build(self, starlette: Any) -> ASGIApp:
        """The router behind Starlette's exception layer (as ``build_middleware_stack`` makes it), behind
        ``websocket_middleware``."""
        handlers = {k: v for k, v in starlette.exception_handlers.items() if k not in (500, Exception)}
        app: ASGIApp = ExceptionMiddleware(starlette.router, handlers=handlers, debug=starlette.debug)
        for cls, args, kwargs in reversed(self.websocket_middleware):
            app = cls(app, *args, **kwargs)
        return app
