"""Lean load-generator clients on asyncio protocols: HTTP/1.1 keep-alive and graphql-transport-ws.

The machine has 2 cores and the client shares them with the server, so the client must cost as little as
possible per request and per message: no HTTP library, no WebSocket library, receive timestamps taken in
``data_received`` and JSON parsed after the measurement.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import struct
import time
from collections.abc import Callable
from typing import Any

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


class HTTPError(Exception):
    pass


def build_request(
    method: str, path: str, host: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: keep-alive"]
    for key, value in (headers or {}).items():
        lines.append(f"{key}: {value}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def graphql_request(
    host: str, query: str, variables: dict[str, Any] | None = None, token: str | None = None
) -> bytes:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return build_request("POST", "/graphql", host, body, headers)


class HTTPConnection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> HTTPConnection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, host, port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end])
        match = _CONTENT_LENGTH.search(head)
        if match is None:
            self._fail(HTTPError(f"response without Content-Length: {head[:200]!r}"))
            return
        total = end + 4 + int(match.group(1))
        if len(self.buffer) < total:
            return
        body = bytes(self.buffer[end + 4 : total])
        del self.buffer[:total]
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result((int(head[9:12]), body))

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(HTTPError(f"connection lost: {exc}"))

    async def request(self, raw: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
        assert self.transport is not None and self.waiter is None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        async with asyncio.timeout(timeout):
            return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def fetch_json(host: str, port: int, raw: bytes) -> tuple[int, Any]:
    """One request on a fresh connection (for setup steps)."""
    conn = await HTTPConnection.open(host, port)
    try:
        status, body = await conn.request(raw)
    finally:
        conn.close()
    return status, json.loads(body) if body else None


# --- graphql-transport-ws ----------------------------------------------------------------------------


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")


def client_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    return header + key + _mask(payload, key)


class WSConnection(asyncio.Protocol):
    """A graphql-transport-ws client connection.

    Text messages other than ``connection_ack`` are kept raw with their receive time (``time.time()``, the
    server's clock too) in ``received``; ``on_message`` is called for each, before anything else is parsed.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.upgrade_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.received: list[tuple[float, bytes]] = []
        self.on_message: Callable[[WSConnection, float, bytes], None] | None = None
        self.fragments: list[bytes] = []

    @classmethod
    async def open(
        cls, host: str, port: int, token: str, *, path: str = "/graphql", timeout: float = 20.0
    ) -> WSConnection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, conn = await loop.create_connection(cls, host, port)
            key = base64.b64encode(os.urandom(16)).decode()
            conn.transport.write(  # type: ignore[union-attr]
                (
                    f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                    "Sec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n"
                ).encode()
            )
            await conn.upgrade_done
            conn.send({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
            await conn.acked
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, message: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(client_frame(0x1, json.dumps(message).encode()))

    def subscribe(self, op_id: str, query: str, variables: dict[str, Any]) -> None:
        self.send({"id": op_id, "type": "subscribe", "payload": {"query": query, "variables": variables}})

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            del self.buffer[: end + 4]
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                self._abort(ConnectionError(f"upgrade refused: {head[:200]!r}"))
                return
            self.upgraded = True
            self.upgrade_done.set_result(None)
        buf = self.buffer
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            offset = pos + 2
            if length == 126:
                if size - offset < 2:
                    break
                length = int.from_bytes(buf[offset : offset + 2], "big")
                offset += 2
            elif length == 127:
                if size - offset < 8:
                    break
                length = int.from_bytes(buf[offset : offset + 8], "big")
                offset += 8
            if size - offset < length:
                break
            payload = bytes(buf[offset : offset + length])
            pos = offset + length
            self._frame(b0 & 0x80, b0 & 0x0F, payload, now)
        if pos:
            del buf[:pos]

    def _frame(self, fin: int, opcode: int, payload: bytes, now: float) -> None:
        if opcode == 0x0:  # continuation
            self.fragments.append(payload)
            if fin:
                self._message(b"".join(self.fragments), now)
                self.fragments = []
        elif opcode in (0x1, 0x2):
            if fin:
                self._message(payload, now)
            else:
                self.fragments = [payload]
        elif opcode == 0x9:  # ping: pong with the same payload
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(client_frame(0xA, payload))
        elif opcode == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(client_frame(0x8, payload[:2]))
                self.transport.close()
            if not self.closed.done():
                self.closed.set_result(code)
            self._abort(ConnectionError(f"closed by the server with code {code}"))

    def _message(self, payload: bytes, now: float) -> None:
        if not self.acked.done():
            message = json.loads(payload)
            if message.get("type") == "connection_ack":
                self.acked.set_result(None)
            elif message.get("type") != "ping":
                self.acked.set_exception(ConnectionError(f"expected connection_ack, got {message}"))
            return
        self.received.append((now, payload))
        if self.on_message is not None:
            self.on_message(self, now, payload)

    def _abort(self, exc: Exception) -> None:
        for future in (self.upgrade_done, self.acked):
            if not future.done():
                future.set_exception(exc)
                future.exception()  # mark retrieved

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self._abort(ConnectionError(f"connection lost: {exc}"))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(0x8, struct.pack("!H", 1000)))
            self.transport.close()
