"""WebSocket protocol handlers: Strawberry's, with our error codes, metrics and the legacy protocol's checks.

- A subscription whose stream fails (not found when it starts, access lost, fell behind) gets an ``error``
  message carrying ``extensions.code``; Strawberry would send a ``next`` with the errors, then ``complete``.
- The legacy ``graphql-ws`` protocol (off unless configured) gets the same guarantees as
  ``graphql-transport-ws``: ``connection_init`` within the timeout, and 4403 for a refused connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import SubscribeMessage
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import ConnectionInitMessage, StartMessage
from strawberry.types.execution import ExecutionResult, PreExecutionError

from aicm.http.middleware.rate_limit import subscribe_refusal
from aicm.metrics import WEBSOCKET_CONNECTIONS


class TransportWSHandler(BaseGraphQLTransportWSHandler[Any, Any]):
    async def handle(self) -> None:
        WEBSOCKET_CONNECTIONS.inc()
        try:
            await super().handle()
        finally:
            WEBSOCKET_CONNECTIONS.dec()
            self.context.close_timers()

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        """Each subscribe message draws from the client's rate-limit bucket (RATE_LIMITED when empty)."""
        if self.connection_acknowledged and (refusal := await subscribe_refusal(self.context)):
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
            await operation.send_next(result)
            first = False


class LegacyWSHandler(BaseGraphQLWSHandler[Any, Any]):
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
        await self.send_message({"type": "connection_ack"})
        self.connection_acknowledged = True

    async def handle_start(self, message: StartMessage) -> None:
        if self.connection_acknowledged and (refusal := await subscribe_refusal(self.context)):
            await self.send_message({"type": "error", "id": message["id"], "payload": refusal})  # type: ignore[typeddict-item]
            return
        await super().handle_start(message)

    async def send_data_message(self, execution_result: ExecutionResult, operation_id: str) -> None:
        if execution_result.data is None and execution_result.errors:  # the stream itself failed
            error = execution_result.errors[0].formatted
            await self.send_message({"type": "error", "id": operation_id, "payload": error})  # type: ignore[typeddict-item]
            return
        await super().send_data_message(execution_result, operation_id)
