"""Makes the app's event publisher the current one for each HTTP request and WebSocket connection.

Resolvers publish through ``subscriptions/publisher.py`` (``unit_of_work`` after its commit); a context
variable set in the lifespan does not reach request tasks, so each request installs ``Runtime.publisher``
here. Without a runtime (no lifespan) nothing is installed and events are dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aicm.subscriptions.publisher import installed

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["PublisherMiddleware"]


class PublisherMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = getattr(getattr(scope.get("app"), "state", None), "runtime", None)
        if scope["type"] not in ("http", "websocket") or runtime is None:
            await self.app(scope, receive, send)
            return
        with installed(runtime.publisher):
            await self.app(scope, receive, send)
