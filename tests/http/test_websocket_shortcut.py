"""WebSocket scopes skip the HTTP-only middleware (each layer would hold a frame per connection); HTTP
requests still pass every layer, and the WebSocket chain still ends at the app's router."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from aicm.http.middleware.websocket_shortcut import WebSocketShortcut


class Seen:
    """A middleware that records the scope types it saw under ``name``."""

    def __init__(self, app: ASGIApp, *, name: str, log: list[tuple[str, str]]) -> None:
        self.app, self.name, self.log = app, name, log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            self.log.append((self.name, scope["type"]))
        await self.app(scope, receive, send)


async def test_websockets_pass_only_their_own_layers_and_http_passes_all() -> None:
    log: list[tuple[str, str]] = []

    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close()

    app = Starlette(
        routes=[Route("/", lambda request: PlainTextResponse("ok")), WebSocketRoute("/ws", socket)],
        middleware=[
            Middleware(WebSocketShortcut, websocket_middleware=[Middleware(Seen, name="limit", log=log)]),
            Middleware(Seen, name="http-only", log=log),
            Middleware(Seen, name="limit", log=log),
        ],
    )
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def connect() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    await app({"type": "websocket", "path": "/ws", "headers": [], "query_string": b""}, connect, send)
    assert log == [("limit", "websocket")]
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]

    log.clear()

    async def request() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    http = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
    await app(http, request, send)
    assert log == [("http-only", "http"), ("limit", "http")]
    assert sent[-1]["body"] == b"ok"
