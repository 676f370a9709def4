"""WebSocket protocol handlers: Strawberry's, with our error codes, metrics, limits and the legacy protocol's
checks.

- A subscription whose stream fails (not found when it starts, access lost, fell behind) gets an ``error``
  message carrying ``extensions.code``; Strawberry would send a ``next`` with the errors, then ``complete``.
- The limits of HTTP hold here too: a message over ``graphql.max_body_bytes`` closes the socket with 1009
  (HTTP answers 413); every ``subscribe`` (queries and mutations included) draws from the client's rate-limit
  bucket like an HTTP request, and passes the same query limits (schema extensions). A user holds at most
  ``security.rate_limit.max_ws_connections_per_user`` connections (4429 beyond); one connection runs at most
  ``graphql.max_subscriptions_per_connection`` operations at once (``RATE_LIMITED`` beyond).
- A ``next`` whose rendering is shared with other subscribers (``aicm.schema.rendering``) is sent as the
  payload JSON encoded once, with this operation's id spliced in, straight to the server's socket: the
  outermost layer (``RawSend``) records uvicorn's own ``send``, so frames skip the per-frame ASGI wrappers.
- Each ``graphql-transport-ws`` operation may be delivered to directly (``aicm.subscriptions.direct``): its
  events written during the fan-out, while the socket is writable; otherwise (paused, closing, the operation
  completed) they go the per-subscriber way.
- The legacy ``graphql-ws`` protocol (off unless configured) gets the same guarantees as
  ``graphql-transport-ws``: ``connection_init`` within the timeout, and 4403 for a refused connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from json import JSONDecodeError
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect, WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http.exceptions import NonJsonMessageReceived, NonTextMessageReceived
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ConnectionInitMessage as TransportInitMessage,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import SubscribeMessage
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import ConnectionInitMessage, StartMessage
from strawberry.types.execution import ExecutionResult, PreExecutionError
from websockets.exceptions import InvalidState
from websockets.protocol import State

from aicm.errors import RateLimited
from aicm.http.middleware.rate_limit import subscribe_refusal
from aicm.metrics import WEBSOCKET_CONNECTIONS
from aicm.ratelimit import ConnectionSlot, RateLimits
from aicm.schema.rendering import RenderedData
from aicm.subscriptions.direct import DIRECT, Direct, Setup

try:  # uvicorn's default WebSocket implementation since 0.35; with an older one, frames go through its send
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # pragma: no cover
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]

MESSAGE_TOO_BIG = 1009  # RFC 6455
RAW_SEND = "aicm.raw_send"  # scope key: the server's own send of a WebSocket connection


class RawSend:
    """Outermost: records the server's ``send`` of each WebSocket connection in its scope, so that frames can
    skip the middleware's per-message wrappers (none of which does anything with a frame)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[RAW_SEND] = send
        await self.app(scope, receive, send)


def frame_writer(scope: Scope) -> WebSocketsSansIOProtocol | None:
    """The uvicorn protocol behind a connection, when frames can be written to it synchronously (uvicorn's
    default ``websockets-sansio`` implementation); None for any other server or implementation."""
    protocol = getattr(scope.get(RAW_SEND), "__self__", None)
    sansio = WebSocketsSansIOProtocol is not None and isinstance(protocol, WebSocketsSansIOProtocol)
    return protocol if sansio else None


def write_now(protocol: WebSocketsSansIOProtocol, frame: bytes) -> bool:
    """Write a text frame unless the socket cannot take it right now (closing, closed, or paused because its
    transport buffer is over the high-water mark): what uvicorn's ``send`` does, without waiting.

    Without extensions the frame is framed here (RFC 6455 §5.2: FIN and text opcode, the length, no mask from
    a server): websockets' ``send_text`` and ``data_to_send`` cost ~10 µs per frame, as much as the write.
    With permessage-deflate, websockets compresses it (per connection: its compression context)."""
    if protocol.close_sent or protocol.disconnected or not protocol.writable.is_set():
        return False
    conn = protocol.conn
    if conn.extensions:
        try:
            conn.send_text(frame)
        except InvalidState:
            return False
        protocol.transport.write(b"".join(conn.data_to_send()))
        return True
    if conn.state is not State.OPEN or conn.expect_continuation_frame:
        return False
    size = len(frame)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 65536:
        header = b"\x81\x7e" + size.to_bytes(2, "big")
    else:
        header = b"\x81\x7f" + size.to_bytes(8, "big")
    protocol.transport.write(header + frame)
    return True


def larger_than(text: str, limit: int) -> bool:
    """Whether ``text`` takes more than ``limit`` bytes in UTF-8; encoded only when its length cannot tell."""
    if len(text) > limit:
        return True
    return len(text) * 4 > limit and len(text.encode("utf-8", "surrogatepass")) > limit


class CappedWebSocketAdapter(ASGIWebSocketAdapter):
    """Strawberry's adapter; a message over ``graphql.max_body_bytes`` closes the socket (1009) unparsed."""

    async def iter_json(self, *, ignore_parsing_errors: bool = False) -> AsyncGenerator[object, None]:
        limit: int = self.view.max_body_bytes  # type: ignore[attr-defined]
        try:
            while self.ws.application_state != WebSocketState.DISCONNECTED:
                text = await self.ws.receive_text()
                if larger_than(text, limit):
                    await self.close(MESSAGE_TOO_BIG, f"Message is larger than {limit} bytes")
                    return
                try:
                    yield self.view.decode_json(text)
                except JSONDecodeError as exc:
                    if not ignore_parsing_errors:
                        raise NonJsonMessageReceived from exc
        except KeyError as exc:  # a binary frame
            raise NonTextMessageReceived from exc
        except WebSocketDisconnect:
            pass


def _error_payload(error: RateLimited) -> dict[str, Any]:
    return {"message": error.message, "extensions": {"code": error.code, **error.extensions}}


def too_many_operations(running: int, maximum: int | None) -> dict[str, Any] | None:
    """The error for an operation beyond ``graphql.max_subscriptions_per_connection``, else None."""
    if maximum is None or running < maximum:
        return None
    message = f"Too many operations on this connection: at most {maximum} run at once"
    return _error_payload(RateLimited(message, reason="TOO_MANY_SUBSCRIPTIONS", maximum=maximum))


class _OneSlotPerConnection:
    """A signed-in connection holds one of its user's ``max_ws_connections_per_user`` slots till it closes."""

    context: Any
    websocket: Any
    _slot: tuple[RateLimits, ConnectionSlot] | None = None  # given back to the limits it came from

    async def _take_slot(self) -> bool:
        """False (and the socket closed with 4429) when the user holds every slot already."""
        limits = self.context.runtime.rate_limits
        user_id = self.context.viewer.user_id
        if limits is None or user_id is None:
            return True
        if (slot := await limits.open_connection(user_id)) is not None:
            self._slot = (limits, slot)
            return True
        maximum = limits.config.max_ws_connections_per_user
        await self.websocket.close(
            code=4429, reason=f"Too many connections for this user (at most {maximum})"
        )
        return False

    async def _release_slot(self) -> None:
        held, self._slot = self._slot, None
        if held is not None:
            limits, slot = held
            await limits.close_connection(slot)


class _OperationDirect(Direct):
    """Direct delivery for one operation: its frames written while it runs and the socket is writable."""

    __slots__ = ("_handler", "_operation", "_prefix", "_protocol")

    def __init__(
        self,
        handler: TransportWSHandler,
        operation: Operation[Any, Any],
        protocol: WebSocketsSansIOProtocol,
    ) -> None:
        super().__init__()
        self._handler, self._operation, self._protocol = handler, operation, protocol
        self._prefix = b'{"id":' + orjson.dumps(operation.id) + b',"type":"next","payload":'

    def write(self, payload: bytes) -> bool:
        operation = self._operation
        if operation.completed or self._handler.operations.get(operation.id) is not operation:
            return False  # completed, or completed by the client (its task is being cancelled)
        return write_now(self._protocol, self._prefix + payload + b"}")


class TransportWSHandler(_OneSlotPerConnection, BaseGraphQLTransportWSHandler[Any, Any]):
    _protocol: WebSocketsSansIOProtocol | bool | None = False  # False: not looked up yet

    def _frames(self) -> WebSocketsSansIOProtocol | None:
        protocol = self._protocol
        if protocol is False:
            protocol = self._protocol = frame_writer(self.websocket.ws.scope)  # type: ignore[attr-defined]
        return protocol  # type: ignore[return-value]

    async def run_operation(self, operation: Operation[Any, Any]) -> None:
        """Strawberry's, within a context that lets the operation's stream deliver directly."""
        protocol = self._frames()
        if protocol is None:
            await super().run_operation(operation)
            return
        setup = Setup(_OperationDirect(self, operation, protocol))
        DIRECT.set(setup)  # this operation's task only
        try:
            await super().run_operation(operation)
        finally:
            setup.clear()

    async def handle(self) -> None:
        WEBSOCKET_CONNECTIONS.inc()
        try:
            await super().handle()
        finally:
            WEBSOCKET_CONNECTIONS.dec()
            self.context.close_timers()
            await self._release_slot()

    async def handle_connection_init(self, message: TransportInitMessage) -> None:
        """Strawberry's, with the user's connection slot taken between authentication and the ack."""
        if self.connection_timed_out:
            return
        if self.connection_init_timeout_task:
            self.connection_init_timeout_task.cancel()
            self.connection_init_timeout_task = None  # the connection keeps no finished Task
        payload = message.get("payload", {})
        if not isinstance(payload, dict):
            await self.websocket.close(code=4400, reason="Invalid connection init payload")
            return
        if self.connection_init_received:
            await self.websocket.close(code=4429, reason="Too many initialisation requests")
            return
        self.connection_init_received = True
        self.context.connection_params = payload
        try:
            await self.view.on_ws_connect(self.context)
        except ConnectionRejectionError:
            await self.websocket.close(code=4403, reason="Forbidden")
            return
        if not await self._take_slot():
            return
        await self.send_message({"type": "connection_ack"})
        self.connection_acknowledged = True

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        """Beyond the connection's operations, RATE_LIMITED; each subscribe message draws from the client's
        rate-limit bucket (RATE_LIMITED when empty)."""
        if self.connection_acknowledged and message["id"] not in self.operations:
            refusal = too_many_operations(len(self.operations), self.max_subscriptions_per_connection)
            if refusal or (refusal := await subscribe_refusal(self.context)):
                await self.send_message({"id": message["id"], "type": "error", "payload": [refusal]})  # type: ignore[typeddict-item]
                return
        await super().handle_subscribe(message)

    async def _send_result_stream(self, operation: Operation[Any, Any], result_source: Any) -> None:
        first = True
        async for result in result_source:
            if first and isinstance(result, PreExecutionError):
                await self._handle_pre_execution_error(operation, result)
                return
            if not isinstance(result, ExecutionResult):
                await self._reject_incremental_delivery(operation)
                return
            if result.data is None and result.errors:  # the stream itself failed: that ends the operation
                await operation.send_initial_errors(result.errors)
                return
            if isinstance(result.data, RenderedData) and not result.errors and not result.extensions:
                await self._send_shared(operation, result.data)
            else:
                await operation.send_next(result)
            first = False

    async def _send_shared(self, operation: Operation[Any, Any], data: RenderedData) -> None:
        """A rendering shared with other subscribers: its payload was encoded once; only the id is this
        operation's own. Straight to the socket, without re-encoding."""
        if operation.completed:
            return
        frame = f'{{"id":{orjson.dumps(operation.id).decode()},"type":"next","payload":{data.encoded}}}'
        protocol = self._frames()
        ws = self.websocket.ws  # type: ignore[attr-defined]
        connected = ws.application_state == WebSocketState.CONNECTED
        if protocol is not None and connected and write_now(protocol, frame.encode()):
            return
        await ws.send_text(frame)  # waits for a paused socket, and says what a closed one is


class LegacyWSHandler(_OneSlotPerConnection, BaseGraphQLWSHandler[Any, Any]):
    """``graphql-ws``, only with ``graphql.legacy_ws_protocol: true``; it still needs ``connection_init``."""

    init_timeout: float = 5.0

    async def handle(self) -> None:
        WEBSOCKET_CONNECTIONS.inc()
        watchdog = asyncio.create_task(self._require_init())
        try:
            await super().handle()
        finally:
            watchdog.cancel()
            WEBSOCKET_CONNECTIONS.dec()
            self.context.close_timers()
            await self._release_slot()

    async def _require_init(self) -> None:
        await asyncio.sleep(self.init_timeout)
        if not self.connection_acknowledged:
            with contextlib.suppress(Exception):
                await self.websocket.close(code=4408, reason="Connection initialisation timeout")

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        if self.connection_acknowledged:
            await self.websocket.close(code=4429, reason="Too many initialisation requests")
            return
        payload = message.get("payload")
        self.context.connection_params = payload if isinstance(payload, dict) else None
        try:
            await self.view.on_ws_connect(self.context)
        except ConnectionRejectionError:
            await self.websocket.close(code=4403, reason="Forbidden")
            return
        if not await self._take_slot():
            return
        await self.send_message({"type": "connection_ack"})
        self.connection_acknowledged = True

    async def handle_start(self, message: StartMessage) -> None:
        if self.connection_acknowledged and message["id"] not in self.tasks:
            refusal = too_many_operations(len(self.tasks), self.max_subscriptions_per_connection)
            if refusal or (refusal := await subscribe_refusal(self.context)):
                await self.send_message({"type": "error", "id": message["id"], "payload": refusal})  # type: ignore[typeddict-item]
                return
        await super().handle_start(message)

    async def send_data_message(self, execution_result: ExecutionResult, operation_id: str) -> None:
        if execution_result.data is None and execution_result.errors:  # the stream itself failed
            error = execution_result.errors[0].formatted
            await self.send_message({"type": "error", "id": operation_id, "payload": error})  # type: ignore[typeddict-item]
            return
        await super().send_data_message(execution_result, operation_id)
