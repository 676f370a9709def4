"""The per-request GraphQL context: who is calling, the request's DataLoaders, and the runtime."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.types import Info as StrawberryInfo

from aicm.auth.tokens import AccessClaims, bearer_token
from aicm.auth.viewer import Viewer, load_viewer
from aicm.resolvers.auth import session_check
from aicm.resolvers.loaders import Loaders
from aicm.runtime import Runtime
from aicm.schema.relay import encode_id


@dataclass
class Context:
    request: Request | WebSocket
    response: Response | WebSocket | None
    runtime: Runtime
    viewer: Viewer
    connection_params: dict[str, Any] | None = None  # the WebSocket connection_init payload
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    _loaders: Loaders | None = field(default=None, init=False, repr=False)

    @property
    def loaders(self) -> Loaders:
        """The DataLoaders of the current viewer, built on first use and again whenever the viewer changes
        (a WebSocket's ``connection_init`` sets it after the context exists)."""
        if self._loaders is None or self._loaders.viewer is not self.viewer:
            self._loaders = Loaders(self.viewer)
        return self._loaders

    def renew_loaders(self) -> None:
        """Forget everything loaded so far: a subscription resolves each event against fresh data."""
        self._loaders = None

    def close_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()

    @property
    def request_id(self) -> str | None:
        return getattr(self.request.state, "request_id", None)


Info = StrawberryInfo[Context, None]


def client_ip(request: Request | WebSocket) -> str | None:
    return getattr(request.state, "client_ip", None) or (request.client.host if request.client else None)


async def viewer_from_authorization(
    runtime: Runtime, authorization: str | None, request: Request | WebSocket
) -> Viewer:
    """The caller of a request; anonymous without a token, ``Unauthenticated`` for a bad or ended one."""
    ip, user_agent = client_ip(request), request.headers.get("user-agent")
    token = bearer_token(authorization)
    if token is None:
        return Viewer(ip=ip, user_agent=user_agent)
    return await viewer_from_claims(runtime, runtime.tokens.decode_access(token), request)


async def viewer_from_claims(runtime: Runtime, claims: AccessClaims, request: Request | WebSocket) -> Viewer:
    ip, user_agent = client_ip(request), request.headers.get("user-agent")
    await session_check(runtime.auth, claims.session_id, claims.user_id)
    viewer = await load_viewer(claims.user_id, claims.session_id, ip, user_agent)
    await runtime.auth.sessions.touch(claims.session_id, ip, user_agent)
    request.state.user_id = encode_id("User", claims.user_id)  # the access log's user_id
    return viewer
