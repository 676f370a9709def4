"""The Strawberry ASGI app at ``/graphql``: our context, authentication over HTTP and WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL

from aicm.auth.tokens import bearer_token
from aicm.auth.viewer import Viewer
from aicm.config import Settings
from aicm.errors import Unauthenticated
from aicm.http.websocket import LegacyWSHandler, TransportWSHandler
from aicm.schema import build_schema
from aicm.schema.context import Context, viewer_from_authorization, viewer_from_claims

log = logging.getLogger("aicm.http")


def _error(
    message: str, code: str, status: int, headers: dict[str, str], **extensions: object
) -> JSONResponse:
    body = {"errors": [{"message": message, "extensions": {"code": code, **extensions}}]}
    return JSONResponse(body, status_code=status, headers=headers)


class GraphQLApp(GraphQL[Context, None]):
    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler

    def __init__(self, settings: Settings) -> None:
        protocols = [GRAPHQL_TRANSPORT_WS_PROTOCOL]
        if settings.graphql.legacy_ws_protocol:
            protocols.append(GRAPHQL_WS_PROTOCOL)
        super().__init__(
            build_schema(settings),
            graphql_ide="graphiql" if settings.graphiql_enabled else None,
            allow_queries_via_get=True,
            subscription_protocols=protocols,
            connection_init_wait_timeout=timedelta(seconds=5),
            max_subscriptions_per_connection=settings.graphql.max_subscriptions_per_connection,
            # Browsers on other origins need an allowed origin; clients sending no Origin are accepted.
            allowed_origins=settings.security.cors.allowed_origins,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Failures before any resolver runs (authenticating the caller) answer JSON, never a bare 500."""
        try:
            await super().__call__(scope, receive, send)
        except Unauthenticated as exc:
            if scope["type"] != "http":
                raise
            headers = {"WWW-Authenticate": "Bearer"}
            await _error(exc.message, exc.code, 401, headers, **exc.extensions)(scope, receive, send)
        except (RedisError, OSError):
            if scope["type"] != "http":
                raise
            log.warning("session store unreachable", extra={"event": "dependency_unavailable"}, exc_info=True)
            message = "Service temporarily unavailable; retry shortly"
            await _error(message, "INTERNAL_SERVER_ERROR", 503, {"Retry-After": "1"})(scope, receive, send)

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        runtime = request.app.state.runtime
        if isinstance(request, WebSocket):  # the viewer is set by on_ws_connect, from connection_init
            return Context(request=request, response=response, runtime=runtime, viewer=Viewer())
        viewer = await viewer_from_authorization(runtime, request.headers.get("authorization"), request)
        return Context(request=request, response=response, runtime=runtime, viewer=viewer)

    async def on_ws_connect(self, context: Context) -> None:
        """Authenticate from connection_init (or the upgrade request header); close the socket at expiry."""
        params = context.connection_params or {}
        header = params.get("authorization") or params.get("Authorization")
        if not isinstance(header, str):
            header = context.request.headers.get("authorization")
        try:
            token = bearer_token(header)
            if token is None:
                raise Unauthenticated()
            claims = context.runtime.tokens.decode_access(token)
            context.viewer = await viewer_from_claims(context.runtime, claims, context.request)
        except Unauthenticated as exc:
            raise ConnectionRejectionError({"message": exc.message}) from exc
        websocket = context.request
        assert isinstance(websocket, WebSocket)

        async def expire() -> None:
            with contextlib.suppress(Exception):
                await websocket.close(code=4403, reason="Access token expired")

        delay = max(0.0, claims.expires_at - time.time())
        loop = asyncio.get_running_loop()
        context.timers.append(loop.call_later(delay, lambda: asyncio.ensure_future(expire())))
