"""The Strawberry ASGI app at ``/graphql``: our context, authentication over HTTP and WebSocket.

Request-level checks (CONTRACT §7 "Limits"), all before any resolver runs: bodies over
``graphql.max_body_bytes`` answer 413; a JSON array (batching) or anything but a JSON object answers 400;
``GET`` runs queries only (a mutation answers 405) and subscriptions need the WebSocket; persisted queries
(``extensions.persistedQuery``) are resolved here. Every such refusal answers a JSON ``errors`` body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import timedelta
from typing import Any

import orjson
from cross_web import AsyncHTTPRequestAdapter, HTTPException
from graphql import GraphQLError
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError, MissingQueryError
from strawberry.http import GraphQLRequestData
from strawberry.http.base import BaseRequestProtocol
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UNSET

from aicm.auth.tokens import AccessClaims, bearer_token
from aicm.auth.viewer import Viewer
from aicm.config import Settings
from aicm.errors import AppError, BadUserInput, Forbidden, NotFound, Unauthenticated
from aicm.http.console import GraphiQLPage
from aicm.http.errors import error_item, error_response
from aicm.http.persisted_queries import PersistedQueries
from aicm.http.refresh_cookie import RefreshCookie
from aicm.http.websocket import CappedWebSocketAdapter, LegacyWSHandler, TransportWSHandler
from aicm.runtime import Runtime
from aicm.schema import build_schema
from aicm.schema.context import Context, client_ip, viewer_from_authorization, viewer_from_claims
from aicm.schema.relay import encode_id

log = logging.getLogger("aicm.http")

# Over HTTP: GET runs queries only (CSRF: a link or <img> must not mutate), POST queries and mutations;
# subscriptions need the WebSocket.
HTTP_OPERATIONS = {
    "GET": frozenset({OperationType.QUERY}),
    "POST": frozenset({OperationType.QUERY, OperationType.MUTATION}),
}


class BodyTooLarge(Exception):
    pass


def _transport_extensions(settings: Settings) -> list[Any]:
    cookie = settings.security.refresh_cookie
    if not cookie.enabled:
        return []
    max_age = int(settings.jwt.refresh_token_duration)
    return [lambda: RefreshCookie(cookie, max_age=max_age)]


class GraphQLApp(GraphQL[Context, None]):
    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler
    websocket_adapter_class = CappedWebSocketAdapter  # type: ignore[assignment]

    def __init__(self, settings: Settings) -> None:
        protocols = [GRAPHQL_TRANSPORT_WS_PROTOCOL]
        if settings.graphql.legacy_ws_protocol:
            protocols.append(GRAPHQL_WS_PROTOCOL)
        super().__init__(
            build_schema(settings, _transport_extensions(settings)),
            graphql_ide="graphiql" if settings.graphiql_enabled else None,
            allow_queries_via_get=True,
            subscription_protocols=protocols,
            connection_init_wait_timeout=timedelta(seconds=5),
            max_subscriptions_per_connection=settings.graphql.max_subscriptions_per_connection,
            # Browsers on other origins need an allowed origin; clients sending no Origin are accepted.
            allowed_origins=settings.security.cors.allowed_origins,
        )
        self.max_body_bytes = settings.graphql.max_body_bytes
        self.persisted = PersistedQueries.from_settings(settings)
        self.graphiql = GraphiQLPage() if settings.graphiql_enabled else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Failures before any resolver runs (authenticating the caller) answer JSON, never a bare 500."""
        try:
            if scope["type"] == "http":
                receive = self._capped(scope, receive)
            await super().__call__(scope, receive, send)
        except BodyTooLarge:
            error = BadUserInput(f"Request body is larger than {self.max_body_bytes} bytes")
            await error_response(error, 413)(scope, receive, send)
        except Unauthenticated as exc:
            if scope["type"] != "http":
                raise
            await error_response(exc, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
        except (RedisError, OSError):
            if scope["type"] != "http":
                raise
            log.warning("session store unreachable", extra={"event": "dependency_unavailable"}, exc_info=True)
            unavailable = AppError("Service temporarily unavailable; retry shortly")
            await error_response(unavailable, 503, {"Retry-After": "1"})(scope, receive, send)

    def _capped(self, scope: Scope, receive: Receive) -> Receive:
        """``receive`` raising BodyTooLarge past ``graphql.max_body_bytes`` (declared or actually sent)."""
        limit = self.max_body_bytes
        declared = next((v for k, v in scope.get("headers") or () if k == b"content-length"), None)
        if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
            raise BodyTooLarge  # a malformed length is refused too: nothing can trust it
        received = 0

        async def capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        return capped

    async def run(self, request: Any, context: Any = UNSET, root_value: Any = UNSET) -> Any:
        """Strawberry's HTTP refusals as JSON ``errors`` bodies (it would answer plain text)."""
        try:
            return await super().run(request, context, root_value)
        except HTTPException as exc:
            if self.is_websocket_request(request):
                raise
            headers = {"Allow": "POST"} if exc.status_code == 405 else {}
            return error_response(_refusal(exc), exc.status_code, headers)

    def decode_json(self, data: str | bytes) -> object:
        """Any undecodable body (bad UTF-8, nesting past the interpreter's limit, huge numbers) is a 400."""
        try:
            return json.loads(data)
        except json.JSONDecodeError:
            raise
        except (ValueError, RecursionError) as exc:
            raise json.JSONDecodeError("Invalid JSON", "", 0) from exc

    def encode_json(self, data: object) -> str:
        """orjson: a page of a list is thousands of values, and ``json.dumps`` was ~4 % of answering it."""
        try:
            return orjson.dumps(data).decode()
        except TypeError:  # what orjson refuses (an integer past 64 bits, a non-string key) json.dumps takes
            return super().encode_json(data)  # type: ignore[return-value]

    def parse_json(self, data: str | bytes) -> Any:
        value = super().parse_json(data)
        if not isinstance(value, dict | list):
            raise HTTPException(400, "The request body must be a JSON object")
        return value

    async def parse_http_body(self, request: AsyncHTTPRequestAdapter) -> Any:
        data = await super().parse_http_body(request)
        if isinstance(data, GraphQLRequestData) and not isinstance(data.operation_name, str | None):
            raise HTTPException(400, "The GraphQL operation's `operationName` must be a string or null")
        return data

    def should_render_graphql_ide(self, request: BaseRequestProtocol) -> bool:
        """Not for a persisted query over GET (no ``query`` parameter, but ``extensions``)."""
        return super().should_render_graphql_ide(request) and request.query_params.get("extensions") is None

    async def render_graphql_ide(self, request: Request) -> Response:
        assert self.graphiql is not None
        return self.graphiql.response(request)

    async def execute_single(  # type: ignore[override]
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: Response,
        context: Context,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        method = request_adapter.method
        redis = context.runtime.redis
        try:
            query, to_store = await self.persisted.resolve(redis, request_data.query, request_data.extensions)
        except AppError as exc:  # answered inside the GraphQL result (HTTP 200), as Apollo clients expect
            item = error_item(exc)
            return ExecutionResult(
                data=None, errors=[GraphQLError(item["message"], extensions=item["extensions"])]
            )
        try:
            result = await self.schema.execute(
                query,
                root_value=root_value,
                variable_values=request_data.variables,
                context_value=context,
                operation_name=request_data.operation_name,
                allowed_operation_types=HTTP_OPERATIONS.get(method, frozenset()),
                operation_extensions=request_data.extensions,
            )
        except CannotGetOperationTypeError as exc:
            raise HTTPException(400, exc.as_http_error_reason()) from exc
        except InvalidOperationTypeError as exc:
            if exc.operation_type is OperationType.MUTATION:
                raise HTTPException(405, "Mutations are only accepted over POST") from exc
            raise HTTPException(
                400, "Subscriptions are served over WebSocket (graphql-transport-ws)"
            ) from exc
        except MissingQueryError as exc:
            raise HTTPException(400, "No GraphQL query found in the request") from exc
        if method == "GET":
            sub_response.headers.append("Vary", "Authorization")
        if to_store is not None and query is not None and result.data is not None:
            await self.persisted.remember(redis, to_store, query)
        return result

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
            context.viewer = await _connection_viewer(context.runtime, claims, context.request)
        except Unauthenticated as exc:
            raise ConnectionRejectionError({"message": exc.message}) from exc
        websocket = context.request
        assert isinstance(websocket, WebSocket)
        delay = max(0.0, claims.expires_at - time.time())
        context.timers.append(asyncio.get_running_loop().call_later(delay, _close_expired, websocket))


async def _connection_viewer(
    runtime: Runtime, claims: AccessClaims, websocket: Request | WebSocket
) -> Viewer:
    """``viewer_from_claims``, through ``OpenChecks``: a client opening many connections with one token reads
    its account and session once (kept until something that could change them is published, at most 1 s)."""
    opens = runtime.auth.opens
    if opens is None:
        return await viewer_from_claims(runtime, claims, websocket)
    viewer = await opens.viewer(runtime.auth, claims.user_id, claims.session_id)
    viewer.ip, viewer.user_agent = client_ip(websocket), websocket.headers.get("user-agent")
    await runtime.auth.sessions.touch(claims.session_id, viewer.ip, viewer.user_agent)
    websocket.state.user_id = encode_id("User", claims.user_id)  # the access log's user_id
    return viewer


_closing: set[asyncio.Task[None]] = set()  # expiry closes under way (the loop keeps only weak references)


def _close_expired(websocket: WebSocket) -> None:
    """At the access token's expiry: close its connection (4403). A plain callback: no closure per socket."""
    task = asyncio.ensure_future(_close_4403(websocket))
    _closing.add(task)
    task.add_done_callback(_closing.discard)


async def _close_4403(websocket: WebSocket) -> None:
    with contextlib.suppress(Exception):
        await websocket.close(code=4403, reason="Access token expired")


def _refusal(exc: HTTPException) -> AppError:
    """Strawberry's and our own request refusals, as the error whose code goes with their status."""
    by_status: dict[int, type[AppError]] = {401: Unauthenticated, 403: Forbidden, 404: NotFound}
    return by_status.get(exc.status_code, BadUserInput)(exc.reason)
