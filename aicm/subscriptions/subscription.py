"""A subscriber's live view of one or more channels, and the items it yields.

A subscription is opened on a broker (``broker.subscribe(channels)``) and yields ``Event`` and ``Missed``
items from a queue bounded in events (``max_queue``) and in bytes (``max_bytes``, the events' encoded size).
One that falls further behind either is ended (its queue is dropped and its iterator raises ``FellBehind``)
or, opened with ``catch_up=True`` (streams whose events are also in storage: task logs), has its queue
dropped and replaced by one ``Missed`` marker, after which the consumer reads what it lost from storage.
Publishing never waits for a subscriber, and nothing else holds events, so memory stays bounded by
subscribers x max_bytes (plus one event: an event arriving at an empty queue is always taken).

A subscription with a ``direct`` delivery (``aicm.subscriptions.direct``) hands it each event that arrives
while its consumer waits with nothing queued; what it declines is queued as above.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

from aicm.metrics import EVENTS_DELIVERED, EVENTS_DROPPED

if TYPE_CHECKING:
    from aicm.subscriptions.broker import Broker

__all__ = ["FELL_BEHIND", "Event", "FellBehind", "Missed", "Subscription"]

log = logging.getLogger("aicm.broker")


@dataclass(frozen=True, slots=True)
class Event:
    """One published event. ``payload`` is shared by every subscriber of the channel: read-only."""

    channel: str
    payload: dict[str, Any]
    size: int = field(default=0, compare=False)  # bytes of the encoded payload, for the backlog bound


@dataclass(frozen=True, slots=True)
class Missed:
    """Events on this subscription's channels may have been lost (the broker reconnected)."""

    reason: str


class FellBehind(Exception):
    """Raised by a subscription's iterator once its queue overflowed; the subscription is over."""

    def __init__(self, max_queue: int, max_bytes: int) -> None:
        super().__init__(
            f"subscriber fell behind: more than {max_queue} events or {max_bytes} bytes were waiting, "
            "so the subscription ended"
        )
        self.max_queue = max_queue
        self.max_bytes = max_bytes


FELL_BEHIND = "the subscriber fell behind: events were dropped, read them from storage"


_OPEN, _NEW, _CLOSED = "open", "new", "closed"


class Subscription:
    """A live view of one or more channels: an async context manager and an async iterator.

    Yields ``Event`` and ``Missed`` items; when its queue overflows it ends with ``FellBehind``, or with
    ``catch_up`` yields ``Missed(FELL_BEHIND)`` instead of what was dropped; it simply stops when it is closed
    (``aclose()``, leaving the context, or the broker closing).
    """

    internal: ClassVar[bool] = False  # the broker's own bookkeeping (no consumer): not in stats.subscribers

    __slots__ = (
        "_broker",
        "_confirmed",
        "_failure",
        "_late",
        "_missed",
        "_queue",
        "_state",
        "_unacked",
        "_waiter",
        "catch_up",
        "channels",
        "direct",
        "max_bytes",
        "max_queue",
        "pending_bytes",
    )

    def __init__(
        self,
        broker: Broker,
        channels: Sequence[str],
        max_queue: int,
        max_bytes: int,
        *,
        catch_up: bool = False,
    ) -> None:
        if isinstance(channels, str):
            raise TypeError("channels must be a sequence of channel names, not one string")
        names = tuple(dict.fromkeys(channels))
        if not names or not all(isinstance(c, str) and c for c in names):
            raise ValueError("subscribe needs at least one non-empty channel name")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.channels = names
        self.max_queue = max_queue
        self.max_bytes = max_bytes
        self.catch_up = catch_up
        # Set by the stream (aicm.subscriptions.direct): delivers an event during the fan-out, True when done.
        self.direct: Callable[[Event], bool] | None = None
        self.pending_bytes = 0  # encoded size of the queued events
        self._broker = broker
        # Made on first use: an idle subscription holds no deque, and no Event, only the future it awaits.
        self._queue: deque[Event | Missed] | None = None
        self._waiter: asyncio.Future[None] | None = None  # set while the iterator waits for an item
        self._state = _NEW
        self._failure: FellBehind | None = None
        # Redis bookkeeping (owned by RedisBroker).
        self._unacked = 0  # channels whose SUBSCRIBE confirmation this subscriber still waits for
        self._confirmed: asyncio.Event | None = None  # only while RedisBroker waits for the confirmation
        self._late = False  # opened without confirmation: tell it Missed when the confirmation comes
        self._missed = False  # was registered across a lost connection: tell it Missed after resubscribing

    @property
    def pending(self) -> int:
        """Items waiting in the queue (never more than ``max_queue``)."""
        return len(self._queue) if self._queue else 0

    @property
    def closed(self) -> bool:
        return self._state == _CLOSED

    async def __aenter__(self) -> Subscription:
        if self._state != _NEW:
            raise RuntimeError("a subscription can be opened only once")
        await self._broker._open(self)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Unregister (idempotent); an iterator waiting in another task stops."""
        self._end()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event | Missed:
        if self._state == _NEW:
            raise RuntimeError("open the subscription first: `async with broker.subscribe(...) as sub`")
        while True:
            if self._queue:
                item = self._queue.popleft()
                if isinstance(item, Event):
                    self.pending_bytes -= item.size
                    self._broker.stats.delivered += 1
                    EVENTS_DELIVERED.inc()
                return item
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure
            if self._state == _CLOSED:
                raise StopAsyncIteration
            waiter = self._waiter = asyncio.get_running_loop().create_future()  # one consumer at a time
            try:
                await waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- called by the broker --------------------------------------------------------------------------------

    def _confirm(self) -> None:
        """Wake a RedisBroker ``_open`` waiting for this subscription's channels to be confirmed."""
        if self._confirmed is not None:
            self._confirmed.set()

    def _opened(self) -> None:
        self._state = _OPEN

    def _offer(self, event: Event) -> bool:
        """``_push`` for a fanned-out event; True when it was delivered directly (the broker counts those)."""
        direct, waiter = self.direct, self._waiter
        # Directly only while the consumer waits with nothing queued: nothing of this subscriber's in flight.
        if direct is not None and waiter is not None and not waiter.done() and self._state == _OPEN:
            try:
                if direct(event):
                    return True
            except Exception:  # never the publisher's problem: this subscriber goes the usual way from now on
                log.exception("direct delivery failed", extra={"event": "direct_delivery_failed"})
                self.direct = None
        self._push(event)
        return False

    def _push(self, item: Event | Missed) -> None:
        if self._state != _OPEN:
            return
        queue = self._queue
        if isinstance(item, Missed) and queue and isinstance(queue[-1], Missed):
            return  # one marker says it all
        size = item.size if isinstance(item, Event) else 0
        if queue and (len(queue) >= self.max_queue or self.pending_bytes + size > self.max_bytes):
            self._overflow(item)
            return
        if queue is None:
            queue = self._queue = deque()
        queue.append(item)
        self.pending_bytes += size
        self._wake()

    def _overflow(self, item: Event | Missed) -> None:
        """Drop the backlog: end the subscription, or (``catch_up``) leave one marker in its place."""
        lost = sum(isinstance(queued, Event) for queued in (*(self._queue or ()), item))
        self._broker.stats.dropped += lost
        EVENTS_DROPPED.inc(lost)
        log.warning(
            "subscriber fell behind",
            extra={
                "event": "subscriber_fell_behind",
                "channels": list(self.channels),
                "dropped": lost,
                "catch_up": self.catch_up,
            },
        )
        self.pending_bytes = 0
        if self.catch_up:
            self._queue = deque([Missed(FELL_BEHIND)])
            self._wake()
            return
        self._queue = None
        self._failure = FellBehind(self.max_queue, self.max_bytes)
        self._end()

    def _end(self) -> None:
        if self._state == _CLOSED:
            return
        was_open = self._state == _OPEN
        self._state = _CLOSED
        self._queue = None
        self.pending_bytes = 0
        self._confirm()
        self._wake()
        if was_open:
            self._broker._release(self)
