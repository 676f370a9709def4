"""The Strawberry ASGI app at ``/graphql``, with our context and authentication."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL

from aicm.config import Settings
from aicm.errors import Unauthenticated
from aicm.schema import build_schema
from aicm.schema.context import Context, viewer_from_authorization


class GraphQLApp(GraphQL[Context, None]):
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
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except Unauthenticated as exc:
            if scope["type"] != "http":
                raise
            body = {"errors": [{"message": exc.message, "extensions": {"code": exc.code, **exc.extensions}}]}
            await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})(
                scope, receive, send
            )

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        runtime = request.app.state.runtime
        authorization: Any = request.headers.get("authorization")
        viewer = await viewer_from_authorization(runtime, authorization, request)
        return Context(request=request, response=response, runtime=runtime, viewer=viewer)
