"""Direct delivery: an event written to a caught-up subscriber's socket during the fan-out itself.

Per-subscriber delivery wakes a task per subscriber and runs each event through its stream, Strawberry's and
graphql-core's per-result machinery and the ASGI send wrappers: ~150 µs each, 0.75 s for 5,000 subscribers.
Most events need none of that: the stream would yield them as they are (no access re-check), the operation
selects only what the event itself says (the same for every viewer), so every subscriber of the operation
gets the same payload. For those, the fan-out writes the frame itself, rendered once per operation and event.

Three layers set up one operation's ``Direct``, within the operation's task (``DIRECT``, a context variable
holding a ``Setup`` that is emptied once the stream has started: the context snapshots that timers and tasks
keep for a while must not keep the connection alive):

- the transport (``aicm.http.websocket``) makes it, with ``write``: the payload sent under the operation's
  id, if the socket takes it right now;
- the schema (``aicm.schema.subscriptions``) adds ``render``: the payload of what the stream would yield, for
  this operation's selection, when that can be rendered once for every subscriber (else it adds nothing);
- the stream (``aicm.resolvers.subscriptions``) arms it on its ``Subscription`` with ``route``: for an
  event, what it would yield, ``SKIP`` when it would yield nothing and do nothing else, ``None`` when it must
  see the event itself.

``Subscription`` calls it only while its consumer waits for the next item with nothing queued, so an event
taken directly is never overtaken by, nor overtakes, one going the per-subscriber way. Anything it declines
(``False``) is queued as before: access-changing events, errors, a socket that is not writable right now
(whose backlog is then bounded by the queue's bytes, as before).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aicm.subscriptions.subscription import Event, Subscription

__all__ = ["DIRECT", "SKIP", "Direct", "Each", "Setup", "arm"]

SKIP: Any = object()  # a route's answer: the stream would yield nothing for this event, and do nothing else

Route = Callable[["Event"], Any]  # what the stream yields for an event, SKIP, or None (not directly)


class Each:
    """A route's answer for an event the stream would yield several values for (a batch of log lines, one
    message each): each is written in order, and ``sent(value)`` is called once it is, so the stream knows
    where it stands. If the socket stops taking frames half-way, the event goes the usual way and the stream
    skips what was sent (its own bookkeeping, kept by ``sent``)."""

    __slots__ = ("sent", "values")

    def __init__(self, values: list[Any], sent: Callable[[Any], None]) -> None:
        self.values, self.sent = values, sent


Render = Callable[["Event", Any], "bytes | None"]  # a yielded value's encoded payload; None: not shared


class Direct(abc.ABC):
    """One operation's direct delivery; ``write`` is the transport's."""

    __slots__ = ("render", "route")

    def __init__(self) -> None:
        self.render: Render | None = None
        self.route: Route | None = None

    @abc.abstractmethod
    def write(self, payload: bytes) -> bool:
        """Send ``payload`` (a ``next`` message's JSON payload) now; False when the socket cannot take it."""

    def __call__(self, event: Event) -> bool:
        """Deliver ``event`` here and now; False: queue it for the subscriber's own task instead."""
        value = self.route(event)  # type: ignore[misc]  # armed: route and render are set
        if value is None:
            return False
        if value is SKIP:
            return True
        if isinstance(value, Each):
            payloads = [self.render(event, one) for one in value.values]  # type: ignore[misc]
            if None in payloads:
                return False
            for one, payload in zip(value.values, payloads, strict=True):
                if not self.write(payload):  # type: ignore[arg-type]
                    return False
                value.sent(one)
            return True
        payload = self.render(event, value)  # type: ignore[misc]
        return payload is not None and self.write(payload)


class Setup:
    """An operation's ``Direct`` while its stream starts, and the schema's executor of the operation (for its
    renderer); the transport empties it when the operation ends, the stream when it arms."""

    __slots__ = ("direct", "executor")

    def __init__(self, direct: Direct) -> None:
        self.direct: Direct | None = direct
        self.executor: Any = None

    def clear(self) -> None:
        self.direct = self.executor = None


DIRECT: ContextVar[Setup | None] = ContextVar("aicm_direct", default=None)


def arm(subscription: Subscription, route: Route) -> None:
    """Let ``subscription`` deliver directly through this operation's ``Direct``, if it has a renderer."""
    setup = DIRECT.get()
    if setup is None:
        return
    direct = setup.direct
    setup.clear()
    if direct is not None and direct.render is not None:
        direct.route = route
        subscription.direct = direct
