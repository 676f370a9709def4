"""Subscriptions over one ``graphql-transport-ws`` connection, several operations at once.

The server closes the socket (4403) when the access token it was opened with expires; callers reconnect,
and :meth:`Socket.open` signs the new connection in with a fresh token.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from aicm.aicli.api import USER_AGENT, Api, websocket_url
from aicm.aicli.errors import ApiError, Dropped, Unreachable

PROTOCOL = "graphql-transport-ws"
REFUSED = 4403  # connection_init with a missing, invalid or expired token (or the token expired since)
ACK_TIMEOUT = 10.0


@dataclass(frozen=True)
class Message:
    """A ``next``, ``error`` or ``complete`` for operation ``id``."""

    id: str
    type: str
    payload: Any = None

    def error(self) -> ApiError:
        first = self.payload[0] if isinstance(self.payload, list) and self.payload else self.payload
        return ApiError.from_error(first)


class Socket:
    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection

    @classmethod
    async def open(cls, api: Api) -> Socket:
        """Connect and sign in; one refresh and retry if the server refuses the token."""
        token = await api.access_token(for_socket=True)
        try:
            return await cls._open(api.url, token)
        except Dropped as exc:
            if exc.code != REFUSED:
                raise
        return await cls._open(api.url, await api.refresh(stale=token, for_socket=True))

    @classmethod
    async def _open(cls, base: str, token: str) -> Socket:
        url = websocket_url(base)
        try:
            connection = await websockets.connect(
                url,
                subprotocols=[PROTOCOL],  # type: ignore[list-item]
                user_agent_header=USER_AGENT,
                open_timeout=ACK_TIMEOUT,
                close_timeout=2,
                max_size=None,
            )
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            raise Unreachable(f"cannot open {url}: {exc}") from exc
        socket = cls(connection)
        try:
            await socket._send({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
            async with asyncio.timeout(ACK_TIMEOUT):
                while True:  # until the ack; pings may come first
                    message = await socket._receive()
                    if message.get("type") == "connection_ack":
                        return socket
                    await socket._answer_ping(message)
        except BaseException:
            await socket.close()
            raise

    async def subscribe(self, op_id: str, query: str, variables: dict[str, Any] | None = None) -> None:
        await self._send(
            {"id": op_id, "type": "subscribe", "payload": {"query": query, "variables": variables or {}}}
        )

    async def messages(self) -> AsyncIterator[Message]:
        """Every ``next``/``error``/``complete``, in order; raises :class:`Dropped` when the socket closes."""
        while True:
            raw = await self._receive()
            if await self._answer_ping(raw):
                continue
            kind = raw.get("type")
            if kind in ("next", "error", "complete") and isinstance(raw.get("id"), str):
                yield Message(raw["id"], kind, raw.get("payload"))

    async def close(self) -> None:
        await self._connection.close()

    async def __aenter__(self) -> Socket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _answer_ping(self, message: dict[str, Any]) -> bool:
        if message.get("type") == "ping":
            await self._send({"type": "pong"})
            return True
        return message.get("type") == "pong"

    async def _send(self, message: dict[str, Any]) -> None:
        try:
            await self._connection.send(json.dumps(message))
        except websockets.ConnectionClosed as exc:
            raise _dropped(exc) from exc

    async def _receive(self) -> dict[str, Any]:
        try:
            raw = await self._connection.recv()
        except websockets.ConnectionClosed as exc:
            raise _dropped(exc) from exc
        try:
            message = json.loads(raw)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            await self.close()
            raise Dropped(None, "the server sent something that is not a graphql-transport-ws message")
        return message


def _dropped(exc: websockets.ConnectionClosed) -> Dropped:
    return Dropped(exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else Dropped(None, "no close frame")
