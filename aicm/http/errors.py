"""Error bodies outside GraphQL execution, and the HTTP status of each code (CONTRACT §3).

Refusals before a resolver runs (middleware, request checks, the OAuth routes) answer the same
``{"errors": [{"message", "extensions": {"code", ...}}]}`` body as a GraphQL error; ``envelope`` builds it
and ``HTTP_STATUS`` says which status goes with a code when the transport is plain HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse

from aicm.errors import AppError

if TYPE_CHECKING:
    from starlette.types import Send

__all__ = ["HTTP_STATUS", "envelope", "error_response", "send_error", "status_of"]

HTTP_STATUS: Mapping[str, int] = {
    "BAD_USER_INPUT": 400,
    "QUERY_TOO_COMPLEX": 400,
    "UNAUTHENTICATED": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "CONFLICT": 409,
    "RATE_LIMITED": 429,
    "INTERNAL_SERVER_ERROR": 500,
}


def status_of(code: str) -> int:
    return HTTP_STATUS.get(code, 500)


def error_item(error: AppError) -> dict[str, Any]:
    """One entry of ``errors``, as GraphQL results carry it."""
    return {"message": error.message, "extensions": {"code": error.code, **error.extensions}}


def envelope(error: AppError) -> dict[str, Any]:
    return {"errors": [error_item(error)]}


def error_response(
    error: AppError, status: int | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """``status`` defaults to the code's (``HTTP_STATUS``)."""
    return JSONResponse(
        envelope(error), status_code=status or status_of(error.code), headers=dict(headers or {})
    )


async def send_error(
    send: Send,
    error: AppError,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    prefix: str = "http.response",
) -> None:
    """The same body from a pure ASGI middleware; ``prefix="websocket.http.response"`` refuses a handshake."""
    body = json.dumps(envelope(error)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": f"{prefix}.start", "status": status or status_of(error.code), "headers": raw})
    await send({"type": f"{prefix}.body", "body": body})
