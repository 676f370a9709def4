"""One ``http_request`` log line per HTTP request, written after the response (CONTRACT §6)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect

from aicm.logs.context import client_ip

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AccessLogMiddleware"]

CLIENT_CLOSED_REQUEST = 499  # nginx's code for a request cancelled before it was answered


class AccessLogMiddleware:
    """Logs ``method``, ``path`` (never the query string: it may carry tokens), ``status``, ``duration_ms``,
    ``ip``, ``user_id`` and ``request_id`` of each HTTP request; INFO below 400, WARNING 4xx, ERROR 5xx.

    ``ip`` is ``scope["state"]["client_ip"]`` when another middleware set it, else the socket peer;
    ``user_id`` is ``scope["state"]["user_id"]`` as the GraphQL context left it. A request whose app raised is
    logged with status 500 and the exception (``error``, ``stack``), then the exception goes on up. 5xx lines
    without an exception carry the status phrase as ``error``. A client that went away before the request was
    read (``ClientDisconnect``) is one ``client_disconnected`` line with status 499, at INFO, no traceback.
    Paths in ``exclude_paths`` are not logged.

    >>> Middleware(AccessLogMiddleware, exclude_paths={"/metrics"})  # doctest: +SKIP
    """

    def __init__(
        self, app: ASGIApp, *, exclude_paths: Iterable[str] = (), logger: logging.Logger | None = None
    ) -> None:
        self.app = app
        self.exclude_paths = frozenset(exclude_paths)
        self.logger = logger or logging.getLogger("aicm.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exclude_paths:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        except ClientDisconnect:  # nobody is left to answer: not a server error, and nothing to re-raise
            self._log(scope, CLIENT_CLOSED_REQUEST, started, event="client_disconnected")
            return
        except Exception as exc:
            self._log(scope, 500, started, exc)
            raise
        except BaseException:  # cancelled: the client went away or the server is stopping
            self._log(scope, status or CLIENT_CLOSED_REQUEST, started)
            raise
        # An app that returns without starting a response gets a 500 from the server.
        self._log(scope, status if status is not None else 500, started)

    def _log(
        self,
        scope: Scope,
        status: int,
        started: float,
        exc: BaseException | None = None,
        *,
        event: str = "http_request",
    ) -> None:
        state = scope.get("state") or {}
        fields: dict[str, Any] = {
            "event": event,
            "ip": client_ip(scope),
            "request_id": state.get("request_id"),
            "method": scope.get("method"),
            "path": scope.get("path"),
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "user_id": state.get("user_id"),
        }
        if status >= 500 and exc is None:
            fields["error"] = _phrase(status)
        level = logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else logging.INFO
        if status == CLIENT_CLOSED_REQUEST:  # the client's choice, not a fault of the request
            level = logging.INFO
        self.logger.log(
            level,
            "%s %s %s",
            fields["method"],
            fields["path"],
            status,
            extra=fields,
            exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None,
        )


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"
