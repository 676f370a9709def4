"""Per-client rate limiting of HTTP requests and WebSocket connects (``security.rate_limit``).

The client is the user when the request carries a valid access token (the signature is checked, so nobody can
spend another's bucket), else the IP that :class:`~aicm.http.middleware.client_ip.ClientIPMiddleware` found.
Paths under ``auth_paths`` (the OAuth routes) also draw from the stricter sign-in bucket of the IP.

Over the limit an HTTP request answers ``429`` with ``Retry-After`` and a ``RATE_LIMITED`` error body; a
WebSocket handshake is refused the same way (or closed with 1008 where the server cannot send a response).
The buckets come from ``app.state.runtime.rate_limits``; without a runtime (no lifespan) nothing is limited.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aicm.auth.tokens import bearer_token
from aicm.errors import AppError, RateLimited
from aicm.http.errors import error_item, send_error
from aicm.logs.context import client_ip
from aicm.ratelimit import Decision, RateLimits, client_key
from aicm.schema.relay import encode_id

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["RateLimitMiddleware", "subscribe_refusal"]

_AUTHORIZATION = b"authorization"


def _rate_limited(decision: Decision) -> RateLimited:
    return RateLimited("Too many requests; retry later", retryAfter=int(decision.retry_after_header))


class RateLimitMiddleware:
    """>>> Middleware(RateLimitMiddleware, exempt_paths={"/health"}, auth_paths=("/auth/oauth/",))"""

    def __init__(
        self, app: ASGIApp, *, exempt_paths: Iterable[str] = (), auth_paths: Iterable[str] = ()
    ) -> None:
        self.app = app
        self.exempt_paths = frozenset(exempt_paths)
        self.auth_paths = tuple(auth_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limits = _limits(scope)
        if (
            limits is None
            or not limits.enabled
            or scope["type"] not in ("http", "websocket")
            or scope.get("method") == "OPTIONS"  # CORS preflights are answered before this layer anyway
            or scope.get("path") in self.exempt_paths
        ):
            await self.app(scope, receive, send)
            return
        ip = client_ip(scope)
        user_id = _user_id(scope)
        decision = await limits.hit_client(client_key(user_id=user_id, ip=ip))
        kind = "websocket" if scope["type"] == "websocket" else "http"
        if decision.allowed and str(scope.get("path", "")).startswith(self.auth_paths):
            decision, kind = await limits.hit_auth(ip=ip), "auth"
        if decision.allowed:
            await self.app(scope, receive, send)
            return
        if user_id is not None:  # the log line's user_id, as the GraphQL context would have set it
            scope.setdefault("state", {})["user_id"] = encode_id("User", user_id)
        limits.record_exceeded(kind, decision, path=scope.get("path"))
        retry_after = {"Retry-After": decision.retry_after_header}
        if scope["type"] == "http":
            await send_error(send, _rate_limited(decision), headers=retry_after)
        elif "websocket.http.response" in (scope.get("extensions") or {}):
            await send_error(
                send, _rate_limited(decision), headers=retry_after, prefix="websocket.http.response"
            )
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": "Too many requests"})


def _limits(scope: Scope) -> RateLimits | None:
    app = scope.get("app")
    runtime = getattr(getattr(app, "state", None), "runtime", None)
    return getattr(runtime, "rate_limits", None)


def _user_id(scope: Scope) -> Any:
    """The user of a valid access token on the request, else None (the IP decides)."""
    header = next((v for k, v in scope.get("headers") or () if k == _AUTHORIZATION), None)
    if header is None:
        return None
    try:
        token = bearer_token(bytes(header).decode("latin-1"))
        return None if token is None else scope["app"].state.runtime.tokens.decode_access(token).user_id
    except AppError:
        return None


async def subscribe_refusal(context: Any) -> dict[str, Any] | None:
    """For a WebSocket ``subscribe`` (``start``) message: None when the client may go on, else the error to
    send for that operation. The client is the signed-in viewer of the connection, else its IP."""
    limits: RateLimits | None = getattr(context.runtime, "rate_limits", None)
    if limits is None or not limits.enabled:
        return None
    viewer = context.viewer
    decision = await limits.hit_client(client_key(user_id=viewer.user_id, ip=viewer.ip))
    if decision.allowed:
        return None
    limits.record_exceeded("subscribe", decision)
    return error_item(_rate_limited(decision))
