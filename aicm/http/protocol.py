"""The HTTP/1.1 connection ``aicli-api serve`` runs: uvicorn's httptools protocol plus the limits uvicorn
lacks, from ``server.*`` (CONTRACT §1).

- ``read_timeout``: a request must arrive whole (request line, headers and body) within it, counted from the
  connection's start or, on a kept-alive connection, from the request's first byte. Against slowloris: a
  client still sending headers then gets ``408`` and the connection closes; one still sending its body is
  cut off (the app sees a disconnect).
- ``write_timeout``: a response whose writes stay blocked that long (the client does not read) ends the
  connection. Long responses that keep flowing are not cut.
- ``max_header_bytes``: a request line plus headers larger than this gets ``431`` and the connection closes.
- ``idle_timeout`` is uvicorn's own ``timeout_keep_alive``.

uvicorn takes ``http=`` as a protocol class or any callable with the same arguments; :class:`HTTPLimits` is
that callable, and a plain picklable value, so ``serve --workers N`` hands it to every worker process::

    uvicorn.run(app, http=HTTPLimits.of(settings.server), timeout_keep_alive=...)
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from aicm.config import ServerConfig

log = logging.getLogger("aicm.http")


@dataclass(frozen=True, slots=True)
class HTTPLimits:
    read_timeout: float
    write_timeout: float
    max_header_bytes: int

    @classmethod
    def of(cls, server: ServerConfig) -> HTTPLimits:
        return cls(server.read_timeout, server.write_timeout, server.max_header_bytes)

    def __call__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> LimitedHttpToolsProtocol:
        return LimitedHttpToolsProtocol(config, server_state, app_state, _loop, limits=self)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: HTTPLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self._read_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._in_headers = False
        self._received = 0  # bytes received since the request began, while its headers are incomplete
        self._parsed = 0  # size of the request line and headers the parser reported

    # --- reading ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_headers = True  # the first request is due now
        self._arm_read()

    def data_received(self, data: bytes) -> None:
        if self._read_timer is None and not self.transport.is_closing():
            # the previous request was read whole: this is the first byte of the next one (kept alive)
            self._in_headers, self._received = True, 0
            self._arm_read()
        if self._in_headers:
            self._received += len(data)
        super().data_received(data)
        # Headers still incomplete after all of it: every byte received was part of them.
        if self._in_headers and self._received > self.limits.max_header_bytes:
            self._refuse(431, "Request Header Fields Too Large", "request_headers_too_large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers, self._parsed = True, 0

    # Headers that arrive whole with a body in the same read: their sizes as the parser reports them.
    def on_url(self, url: bytes) -> None:
        self._parsed += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._parsed > self.limits.max_header_bytes:
            self._refuse(431, "Request Header Fields Too Large", "request_headers_too_large")
            return  # no app runs; the rest of the request is ignored
        self._in_headers = False
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel_read()
        if not self.transport.is_closing():
            super().on_message_complete()

    def _arm_read(self) -> None:
        self._read_timer = self.loop.call_later(self.limits.read_timeout, self._read_timed_out)

    def _cancel_read(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self._in_headers:
            self._refuse(408, "Request Timeout", "request_read_timeout")
        else:  # the body is late: the app waiting for it sees the client go away
            self._note("request_read_timeout", "the request body did not arrive within server.read_timeout")
            self.transport.close()

    # --- writing ------------------------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.write_timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_write()

    def _cancel_write(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timed_out(self) -> None:
        self._write_timer = None
        if not self.transport.is_closing():
            self._note("response_write_timeout", "the client read nothing for server.write_timeout")
            self.transport.abort()  # the buffered response cannot be delivered: drop it

    # --- the end ------------------------------------------------------------------------------------

    def handle_websocket_upgrade(self) -> None:
        self._cancel_read()  # the WebSocket protocol takes the connection over
        self._cancel_write()
        super().handle_websocket_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read()
        self._cancel_write()
        super().connection_lost(exc)

    def _refuse(self, status: int, reason: str, event: str) -> None:
        self._cancel_read()
        self._note(event, reason, status=status)
        body = reason.encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
        self._in_headers = False

    def _note(self, event: str, message: str, **fields: Any) -> None:
        ip = self.client[0] if self.client else None
        log.info(message, extra={"event": event, "ip": ip, **fields})
