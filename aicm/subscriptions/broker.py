"""The live-event broker's interface: publish JSON payloads on named channels, subscribe to several at once.

Two implementations (``aicm.subscriptions.factory.make_broker`` picks one):

- ``InProcessBroker`` (``in_process.py``, the embedded default): publishing fans out to the local
  subscribers directly.
- ``RedisBroker`` (``redis_broker.py``): one listener connection per process carries every subscription;
  after a lost connection the subscribers live across the gap receive a ``Missed`` marker.

The subscriptions themselves, and what they yield, are ``subscription.py``.

>>> async def demo(broker: Broker) -> None:
...     async with broker.subscribe([channels.project(1), channels.user(2)]) as sub:
...         await broker.publish(channels.project(1), {"type": "PROJECT_UPDATED"})
...         async for item in sub:
...             if isinstance(item, Missed):
...                 ...  # refetch whatever state the events were keeping current
...             else:
...                 print(item.channel, item.payload)
...             break
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar

from aicm.metrics import EVENTS_DELIVERED
from aicm.subscriptions.subscription import Event, Subscription

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_QUEUE",
    "Broker",
    "BrokerStats",
    "Encoded",
    "PublishError",
    "encode",
]

DEFAULT_MAX_QUEUE = 1000
DEFAULT_MAX_BYTES = 4 * 1024 * 1024  # graphql.subscription_backlog_bytes


class PublishError(Exception):
    """The event could not be handed to Redis; the caller decides whether that matters."""


@dataclass
class BrokerStats:
    """Counters for the metrics endpoint."""

    delivered: int = 0  # events handed to a consumer by a subscription's iterator, or directly
    direct: int = 0  # of those, delivered during the fan-out (aicm.subscriptions.direct)
    dropped: int = 0  # events discarded because their subscriber fell behind
    reconnects: int = 0  # successful reconnections of the Redis listener after a loss
    # gauge: open subscriptions in this process (not the internal ones: ``Subscription.internal``)
    subscribers: int = 0


class Encoded(dict[str, Any]):
    """A payload that carries its own JSON text (``json``), made by a publisher that can build it cheaper
    than encoding the dict (the log writer splices each agent line's JSON in as it was printed).

    ``json`` must decode to exactly this dict: the Redis broker sends the text, the in-process broker hands
    the dict itself to its subscribers (no round trip), and both must give them the same payload.
    """

    __slots__ = ("json",)
    json: str


def encode(payload: Mapping[str, Any]) -> str:
    """Strict JSON (no NaN); TypeError/ValueError for what JSON cannot carry, on both brokers alike."""
    if isinstance(payload, Encoded):
        return payload.json
    if not isinstance(payload, Mapping):
        raise TypeError(f"event payload must be a mapping, got {type(payload).__name__}")
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class Broker(abc.ABC):
    """Publish/subscribe for live events. Start it before use; close it to end every subscription."""

    mode: ClassVar[str]

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.max_bytes = max_bytes  # each subscriber's backlog bound, unless it asks for its own
        self.stats = BrokerStats()
        self._subs: dict[str, set[Subscription]] = {}  # channel -> its open local subscriptions
        self._open_subs: set[Subscription] = set()
        self._internal = 0  # how many of them are internal (not counted in stats.subscribers)
        self._running = False
        self._closed = False

    @property
    def connected(self) -> bool:
        """Whether events flow right now (always true in process, once started)."""
        return self._running

    @property
    def channel_count(self) -> int:
        """Channels with at least one local subscriber."""
        return len(self._subs)

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("broker is closed")
        self._running = True

    async def close(self) -> None:
        """End every subscription (their iterators stop) and release resources; idempotent."""
        self._running = False
        self._closed = True
        for sub in list(self._open_subs):
            sub._end()

    @abc.abstractmethod
    async def publish(self, channel: str, payload: Mapping[str, Any]) -> None:
        """Send a JSON-serialisable payload to every subscriber of ``channel``, in any process."""

    def subscribe(
        self,
        channels: Sequence[str],
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_bytes: int | None = None,
        catch_up: bool = False,
    ) -> Subscription:
        """A subscription to ``channels``; it starts receiving once opened with ``async with``.

        Its backlog holds at most ``max_queue`` events and ``max_bytes`` (default: the broker's) bytes of
        them; beyond, it ends with ``FellBehind``, or with ``catch_up`` yields ``Missed`` in their place.
        """
        return Subscription(self, channels, max_queue, max_bytes or self.max_bytes, catch_up=catch_up)

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- registry shared by both implementations -----------------------------------------------------------

    def _check_running(self) -> None:
        if not self._running:
            raise RuntimeError("broker is closed" if self._closed else "broker is not started")

    async def _open(self, sub: Subscription) -> None:
        self._register(sub)

    def _register(self, sub: Subscription) -> list[str]:
        """Add an open subscription; returns the channels it is the first local subscriber of."""
        self._check_running()
        sub._opened()
        self._open_subs.add(sub)
        self._internal += sub.internal
        self.stats.subscribers = len(self._open_subs) - self._internal
        added = []
        for channel in sub.channels:
            holders = self._subs.get(channel)
            if holders is None:
                holders = self._subs[channel] = set()
                added.append(channel)
            holders.add(sub)
        if added:
            self._channels_added(added)
        return added

    def _release(self, sub: Subscription) -> None:
        if sub in self._open_subs:
            self._open_subs.discard(sub)
            self._internal -= sub.internal
        self.stats.subscribers = len(self._open_subs) - self._internal
        removed = []
        for channel in sub.channels:
            holders = self._subs.get(channel)
            if holders is None:
                continue
            holders.discard(sub)
            if not holders:
                del self._subs[channel]
                removed.append(channel)
        if removed:
            self._channels_removed(removed)

    def _channels_added(self, channels: list[str]) -> None:  # noqa: B027 - optional hook
        """Hook: these channels got their first local subscriber."""

    def _channels_removed(self, channels: list[str]) -> None:  # noqa: B027 - optional hook
        """Hook: these channels lost their last local subscriber."""

    def _fan_out(self, channel: str, payload: dict[str, Any], size: int) -> None:
        holders = self._subs.get(channel)
        if not holders:
            return
        event = Event(channel, payload, size)
        direct = 0
        for sub in tuple(holders):  # a subscriber that falls behind leaves the set meanwhile
            if sub._offer(event):
                direct += 1
        if direct:
            self.stats.delivered += direct
            self.stats.direct += direct
            EVENTS_DELIVERED.inc(direct)
