"""Publishing events from code that runs under a request or a runner task, without passing the broker down.

The app's lifespan builds one ``Publisher`` around the process's broker and keeps it on
``Runtime.publisher``. ``installed`` makes it the current publisher of a context: the app installs it for
every HTTP and WebSocket request (``http/middleware/publisher.py``) and around the lifespan, whose background
tasks (the embedded runner) inherit it; ``aicli-api worker`` sets it for its whole run. ``publish`` and
``unit_of_work`` then reach it without a module global that outlives the app and without changing every
resolver's signature. Where none is installed (a script, a test without an app) events are dropped: nothing
could subscribe to them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from aicm.subscriptions.broker import Broker

log = logging.getLogger("aicm.events")


class Publisher:
    """The broker's publish, made safe for callers that must not fail because an event could not be sent."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def publish(self, channel: str, payload: Mapping[str, Any]) -> None:
        try:
            await self.broker.publish(channel, payload)
        except Exception:
            log.exception("event publish failed", extra={"event": "event_publish_failed", "channel": channel})


_current: ContextVar[Publisher | None] = ContextVar("aicm_publisher", default=None)


def set_current(publisher: Publisher | None) -> None:
    """Make ``publisher`` the current one for the rest of this context (a process's main task)."""
    _current.set(publisher)


@contextlib.contextmanager
def installed(publisher: Publisher | None) -> Iterator[None]:
    """Make ``publisher`` the current one in this context (and the tasks it starts) until the block ends."""
    token = _current.set(publisher)
    try:
        yield
    finally:
        _current.reset(token)


async def publish(channel: str, payload: Mapping[str, Any]) -> None:
    """Publish through the current publisher; failures are logged, never raised to callers."""
    publisher = _current.get()
    if publisher is not None:
        await publisher.publish(channel, payload)
