"""A small graphql-transport-ws (and legacy graphql-ws) client for tests, over the websockets library."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

TRANSPORT_WS, LEGACY_WS = "graphql-transport-ws", "graphql-ws"


class GraphQLWS:
    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    @classmethod
    async def open(
        cls,
        server: str,
        token: str | None = None,
        *,
        init: bool = True,
        protocol: str = TRANSPORT_WS,
        origin: str | None = None,
        header_token: str | None = None,
    ) -> GraphQLWS:
        headers = {"Authorization": f"Bearer {header_token}"} if header_token else None
        connection = await websockets.connect(
            f"ws://{server}/graphql",
            subprotocols=[protocol],  # type: ignore[list-item]
            additional_headers=headers,
            origin=origin,  # type: ignore[arg-type]
            open_timeout=5,
            close_timeout=2,
        )
        ws = cls(connection)
        if init:
            payload = {"authorization": f"Bearer {token}"} if token else {}
            await ws.send({"type": "connection_init", "payload": payload})
        return ws

    async def send(self, message: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(message))

    async def receive(self, wait: float = 5.0) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.connection.recv(), wait))

    async def acked(self) -> GraphQLWS:
        message = await self.receive()
        assert message["type"] == "connection_ack", message
        return self

    async def subscribe(self, op_id: str, query: str, variables: dict[str, Any] | None = None) -> None:
        await self.send(
            {"id": op_id, "type": "subscribe", "payload": {"query": query, "variables": variables or {}}}
        )

    async def closed_with(self, wait: float = 5.0) -> int | None:
        """Wait until the server closes the socket; its close code."""
        try:
            while True:
                await asyncio.wait_for(self.connection.recv(), wait)
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None

    async def close(self) -> None:
        await self.connection.close()
