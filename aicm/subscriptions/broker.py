"""The live-event broker: publish JSON payloads on named channels, subscribe to several channels at once.

Two implementations behind one interface:

- ``InProcessBroker`` (the embedded default): publishing fans out to the local subscribers directly.
- ``RedisBroker``: publishing goes through a normal pooled client; ONE dedicated connection per process (the
  listener) carries every subscription. It subscribes a channel when its first local subscriber arrives,
  unsubscribes it when the last one leaves, and fans each message out to bounded per-subscriber queues. A lost
  connection is re-established with exponential backoff and every channel is subscribed again; the subscribers
  that were live across the gap then receive a ``Missed`` marker, since events may have been lost meanwhile.

A subscriber that falls ``max_queue`` events behind is ended: its queue is dropped and its iterator raises
``FellBehind``. Nothing else holds events, so memory stays bounded by subscribers x max_queue.

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
import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

from redis.asyncio import Redis
from redis.asyncio.connection import Connection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from aicm.metrics import BROKER_RECONNECTS, EVENTS_DELIVERED, EVENTS_DROPPED

if TYPE_CHECKING:
    from aicm.config import Settings

__all__ = [
    "Broker",
    "BrokerStats",
    "Event",
    "FellBehind",
    "InProcessBroker",
    "Missed",
    "PublishError",
    "RedisBroker",
    "Subscription",
    "make_broker",
]

log = logging.getLogger("aicm.broker")

DEFAULT_MAX_QUEUE = 1000


@dataclass(frozen=True, slots=True)
class Event:
    """One published event. ``payload`` is shared by every subscriber of the channel: read-only."""

    channel: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Missed:
    """Events on this subscription's channels may have been lost (the broker reconnected)."""

    reason: str


class FellBehind(Exception):
    """Raised by a subscription's iterator once its queue overflowed; the subscription is over."""

    def __init__(self, max_queue: int) -> None:
        super().__init__(
            f"subscriber fell behind: more than {max_queue} events were waiting, so the subscription ended"
        )
        self.max_queue = max_queue


class PublishError(Exception):
    """The event could not be handed to Redis; the caller decides whether that matters."""


@dataclass
class BrokerStats:
    """Counters for the metrics endpoint."""

    delivered: int = 0  # events handed to a consumer by a subscription's iterator
    dropped: int = 0  # events discarded because their subscriber fell behind
    reconnects: int = 0  # successful reconnections of the Redis listener after a loss
    subscribers: int = 0  # gauge: open subscriptions in this process


def encode(payload: Mapping[str, Any]) -> str:
    """Strict JSON (no NaN); TypeError/ValueError for what JSON cannot carry, on both brokers alike."""
    if not isinstance(payload, Mapping):
        raise TypeError(f"event payload must be a mapping, got {type(payload).__name__}")
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


_OPEN, _NEW, _CLOSED = "open", "new", "closed"


class Subscription:
    """A live view of one or more channels: an async context manager and an async iterator.

    Yields ``Event`` and ``Missed`` items; ends with ``FellBehind`` when its queue overflows, and simply stops
    when it is closed (``aclose()``, leaving the context, or the broker closing).
    """

    def __init__(self, broker: Broker, channels: Sequence[str], max_queue: int) -> None:
        if isinstance(channels, str):
            raise TypeError("channels must be a sequence of channel names, not one string")
        names = tuple(dict.fromkeys(channels))
        if not names or not all(isinstance(c, str) and c for c in names):
            raise ValueError("subscribe needs at least one non-empty channel name")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.channels = names
        self.max_queue = max_queue
        self._broker = broker
        self._queue: deque[Event | Missed] = deque()
        self._wakeup = asyncio.Event()
        self._state = _NEW
        self._failure: FellBehind | None = None
        # Redis bookkeeping (owned by RedisBroker).
        self._unacked = 0  # channels whose SUBSCRIBE confirmation this subscriber still waits for
        self._confirmed = asyncio.Event()
        self._late = False  # opened without confirmation: tell it Missed when the confirmation comes
        self._missed = False  # was registered across a lost connection: tell it Missed after resubscribing

    @property
    def pending(self) -> int:
        """Items waiting in the queue (never more than ``max_queue``)."""
        return len(self._queue)

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
                    self._broker.stats.delivered += 1
                    EVENTS_DELIVERED.inc()
                return item
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure
            if self._state == _CLOSED:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    # -- called by the broker --------------------------------------------------------------------------------

    def _push(self, item: Event | Missed) -> None:
        if self._state != _OPEN:
            return
        if isinstance(item, Missed) and self._queue and isinstance(self._queue[-1], Missed):
            return  # one marker says it all
        if len(self._queue) >= self.max_queue:
            lost = sum(isinstance(queued, Event) for queued in (*self._queue, item))
            self._broker.stats.dropped += lost
            EVENTS_DROPPED.inc(lost)
            self._failure = FellBehind(self.max_queue)
            log.warning(
                "subscriber fell behind",
                extra={"event": "subscriber_fell_behind", "channels": list(self.channels), "dropped": lost},
            )
            self._end()
            return
        self._queue.append(item)
        self._wakeup.set()

    def _end(self) -> None:
        if self._state == _CLOSED:
            return
        was_open = self._state == _OPEN
        self._state = _CLOSED
        self._queue.clear()
        self._confirmed.set()
        self._wakeup.set()
        if was_open:
            self._broker._release(self)


class Broker(abc.ABC):
    """Publish/subscribe for live events. Start it before use; close it to end every subscription."""

    mode: ClassVar[str]

    def __init__(self) -> None:
        self.stats = BrokerStats()
        self._subs: dict[str, set[Subscription]] = {}  # channel -> its open local subscriptions
        self._open_subs: set[Subscription] = set()
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

    def subscribe(self, channels: Sequence[str], *, max_queue: int = DEFAULT_MAX_QUEUE) -> Subscription:
        """A subscription to ``channels``; it starts receiving once opened with ``async with``."""
        return Subscription(self, channels, max_queue)

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
        sub._state = _OPEN
        self._open_subs.add(sub)
        self.stats.subscribers = len(self._open_subs)
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
        self._open_subs.discard(sub)
        self.stats.subscribers = len(self._open_subs)
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

    def _fan_out(self, channel: str, payload: dict[str, Any]) -> None:
        holders = self._subs.get(channel)
        if not holders:
            return
        event = Event(channel, payload)
        for sub in tuple(holders):  # a subscriber that falls behind leaves the set meanwhile
            sub._push(event)


class InProcessBroker(Broker):
    """The embedded default: subscribers in this process only, delivery during ``publish``.

    Payloads go through a JSON round trip so subscribers see exactly what the Redis broker would give them.
    Nothing is lost silently: a subscriber too slow to keep up ends with ``FellBehind``.
    """

    mode = "embedded"

    async def publish(self, channel: str, payload: Mapping[str, Any]) -> None:
        self._check_running()
        data = encode(payload)
        if channel in self._subs:
            self._fan_out(channel, json.loads(data))


class RedisBroker(Broker):
    """Redis pub/sub with one listener connection per process, whatever the number of subscribers.

    ``client`` publishes (the app's pooled client if given, else one built from ``url``); the listener always
    opens its own dedicated connection from ``url``, named ``client_name`` (visible in ``CLIENT LIST``).
    After a lost connection it retries after ``backoff_initial`` seconds, doubling up to ``backoff_max``
    (back to ``backoff_initial`` once a connection held for ``backoff_max`` seconds).
    The listener PINGs after ``ping_interval`` idle seconds and gives the connection up after three
    intervals without any reply.
    """

    mode = "redis"

    def __init__(
        self,
        url: str,
        *,
        client: Redis | None = None,
        client_name: str = "aicm-broker",
        max_connections: int = 10,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        connect_timeout: float = 5.0,
        subscribe_timeout: float = 5.0,
        ping_interval: float = 10.0,
    ) -> None:
        super().__init__()
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("backoff needs 0 < backoff_initial <= backoff_max")
        self.client_name = client_name
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._connect_timeout = connect_timeout
        self._subscribe_timeout = subscribe_timeout
        self._ping_interval = ping_interval
        kwargs = parse_url(url)
        self._connection_class: type[Connection] = kwargs.pop("connection_class", Connection)
        self._connection_kwargs = {
            **kwargs,
            "client_name": client_name,
            "protocol": 2,  # subscription replies as plain arrays whatever the URL asks for
            "decode_responses": False,
            "socket_timeout": None,  # the listener idles for as long as nothing is published
            "socket_connect_timeout": connect_timeout,
            "health_check_interval": 0,  # liveness is checked here, with PINGs the reader sees
            "retry": Retry(NoBackoff(), 0),  # reconnecting is the listener's job, with its own backoff
        }
        self._own_client = client is None
        if client is None:
            client = Redis.from_url(
                url,
                client_name=f"{client_name}-pub",
                max_connections=max_connections,
                socket_connect_timeout=connect_timeout,
                socket_timeout=connect_timeout,
            )
        self._client = client
        self._task: asyncio.Task[None] | None = None
        self._first_attempt = asyncio.Event()
        # State of the current listener connection; reset whenever it is lost.
        self._connected = False
        self._ever_connected = False
        self._sent: set[str] = set()  # channels whose last command on this connection was SUBSCRIBE
        self._seq: dict[str, list[int]] = {}  # channel -> [SUBSCRIBEs sent, confirmations received]
        self._waiters: dict[str, list[tuple[int, Subscription]]] = {}  # channel -> (confirmation no., who)
        self._changed: set[str] = set()  # channels whose local interest changed since the last command
        self._resync: set[str] | None = None  # after a reconnect: channels still to be confirmed
        self._dirty = asyncio.Event()
        self._last_rx = 0.0

    @property
    def connected(self) -> bool:
        return self._running and self._connected

    async def start(self) -> None:
        """Start the listener and wait (at most ``connect_timeout``) for its first connection attempt.

        Redis being down does not fail the start: the listener keeps retrying, and subscribers opened
        meanwhile are told ``Missed`` once it is back.
        """
        await super().start()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="aicm-broker-listener")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._connect_timeout + 1):
                    await self._first_attempt.wait()

    async def close(self) -> None:
        await super().close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._own_client:
            self._own_client = False
            await self._client.aclose()

    async def publish(self, channel: str, payload: Mapping[str, Any]) -> None:
        """Publish through the pooled client; raises PublishError when Redis did not take it."""
        self._check_running()
        data = encode(payload)
        try:
            await self._client.publish(channel, data)
        except (RedisError, OSError) as exc:
            raise PublishError(f"could not publish on {channel}: {exc}") from exc

    # -- subscribing -----------------------------------------------------------------------------------------

    async def _open(self, sub: Subscription) -> None:
        """Register, then wait until Redis confirmed every channel (bounded by ``subscribe_timeout``)."""
        self._register(sub)
        if not self._connected:
            # The reconnect will subscribe the channel; if the listener was ever up, events may be lost.
            sub._missed = self._ever_connected
            return
        for channel in sub.channels:
            seq = self._seq.get(channel)
            live = channel in self._sent
            if live and seq is not None and seq[1] >= seq[0]:
                continue  # already confirmed on this connection
            target = (seq[0] if seq else 0) + (0 if live else 1)
            self._waiters.setdefault(channel, []).append((target, sub))
            sub._unacked += 1
        if not sub._unacked:
            return
        self._dirty.set()
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                await sub._confirmed.wait()
        except TimeoutError:
            sub._late = True
            log.warning("redis subscribe not confirmed in time", extra={"event": "broker_subscribe_slow"})
        except BaseException:
            sub._end()
            raise

    def _channels_added(self, channels: list[str]) -> None:
        self._changed.update(channels)
        self._dirty.set()

    def _channels_removed(self, channels: list[str]) -> None:
        for channel in channels:
            self._waiters.pop(channel, None)
        self._changed.update(channels)
        self._dirty.set()

    # -- the listener ----------------------------------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, serve until the connection fails, back off, repeat; only close() ends it."""
        delay = self.backoff_initial
        while True:
            conn = self._connection_class(**self._connection_kwargs)
            try:
                # The handshake (HELLO, CLIENT SETNAME, SELECT) has no socket timeout of its own here.
                async with asyncio.timeout(self._connect_timeout):
                    await conn.connect()
            except Exception as exc:
                await conn.disconnect(nowait=True)
                log.warning(
                    "redis listener cannot connect, retrying in %.1fs: %s",
                    delay,
                    exc,
                    extra={"event": "broker_connect_failed"},
                )
            except BaseException:
                await conn.disconnect(nowait=True)
                raise
            else:
                up_since = asyncio.get_running_loop().time()
                try:
                    await self._serve(conn)
                except Exception as exc:
                    level = logging.WARNING if isinstance(exc, RedisError | OSError) else logging.ERROR
                    log.log(
                        level,
                        "redis listener connection lost: %s",
                        exc,
                        exc_info=level == logging.ERROR,
                        extra={"event": "broker_connection_lost"},
                    )
                finally:
                    self._lost()
                    await conn.disconnect(nowait=True)
                # A connection that held for a while starts the backoff over; one that keeps failing at
                # once (an ACL refusing SUBSCRIBE, say) keeps backing off.
                if asyncio.get_running_loop().time() - up_since >= self.backoff_max:
                    delay = self.backoff_initial
            self._first_attempt.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    async def _serve(self, conn: Connection) -> None:
        reconnect = self._ever_connected
        self._connected = self._ever_connected = True
        self._first_attempt.set()
        self._last_rx = asyncio.get_running_loop().time()
        self._changed.clear()
        channels = list(self._subs)
        if reconnect:
            self.stats.reconnects += 1
            BROKER_RECONNECTS.inc()
            log.info("redis listener reconnected", extra={"event": "broker_reconnected"})
            self._resync = set(channels)
            if not channels:
                self._announce_missed()
        if channels:
            self._sent.update(channels)
            for channel in channels:
                self._seq[channel] = [1, 0]
            await self._send(conn, "SUBSCRIBE", *channels)
        tasks = [
            asyncio.create_task(self._read(conn), name="aicm-broker-reader"),
            asyncio.create_task(self._write(conn), name="aicm-broker-writer"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()
        raise RedisError("redis listener stopped")  # pragma: no cover - both loops only end by raising

    def _lost(self) -> None:
        """Forget the connection's state; every open subscriber will hear Missed after the reconnect."""
        self._connected = False
        self._sent.clear()
        self._seq.clear()
        self._changed.clear()
        self._resync = None
        self._waiters.clear()
        for sub in self._open_subs:
            sub._missed = True
            sub._late = False
            sub._unacked = 0
            sub._confirmed.set()

    async def _send(self, conn: Connection, *args: str) -> None:
        if not conn.is_connected:  # never let redis-py reconnect behind the listener's back
            raise RedisError("redis listener connection is closed")
        await conn.send_command(*args, check_health=False)

    async def _write(self, conn: Connection) -> None:
        """Turn changes in local interest into SUBSCRIBE/UNSUBSCRIBE commands; PING when idle."""
        loop = asyncio.get_running_loop()
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that races
            # with the event being set, and close() would then wait for the next ping failure.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._ping_interval):
                    await self._dirty.wait()
            self._dirty.clear()
            idle = loop.time() - self._last_rx
            if idle > 3 * self._ping_interval:
                raise RedisError(f"no reply from redis for {idle:.0f}s")
            changed, self._changed = self._changed, set()
            add, remove = [], []
            for channel in changed:
                wanted, subscribed = channel in self._subs, channel in self._sent
                if wanted and not subscribed:
                    add.append(channel)
                elif subscribed and not wanted:
                    remove.append(channel)
            if remove:
                self._sent.difference_update(remove)
                for channel in remove:
                    seq = self._seq.get(channel)
                    if seq is not None and seq[1] >= seq[0]:
                        del self._seq[channel]  # no confirmation in flight: nothing left to count
                await self._send(conn, "UNSUBSCRIBE", *remove)
            if add:
                self._sent.update(add)
                for channel in add:
                    self._seq.setdefault(channel, [0, 0])[0] += 1
                await self._send(conn, "SUBSCRIBE", *add)
            if idle >= self._ping_interval:
                await self._send(conn, "PING")

    async def _read(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # socket_timeout is None: wait as long as nothing is published
            reply = await conn.read_response(timeout=None, disconnect_on_error=False)
            self._last_rx = loop.time()
            if not isinstance(reply, list) or len(reply) < 3:
                continue  # PONG
            kind, channel = reply[0], _text(reply[1])
            if kind == b"message":
                self._on_message(channel, reply[2])
            elif kind == b"subscribe":
                self._on_confirmed(channel)

    def _on_message(self, channel: str, data: bytes) -> None:
        if channel not in self._subs:
            return  # its UNSUBSCRIBE is on the way
        try:
            payload = json.loads(data)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            log.warning("ignored a malformed event", extra={"event": "broker_bad_event", "channel": channel})
            return
        self._fan_out(channel, payload)

    def _on_confirmed(self, channel: str) -> None:
        seq = self._seq.get(channel)
        if seq is None:
            return
        seq[1] += 1
        confirmed = seq[1]
        if channel not in self._sent and confirmed >= seq[0]:
            del self._seq[channel]
        waiters = self._waiters.get(channel)
        if waiters:
            still = [(target, sub) for target, sub in waiters if target > confirmed]
            for target, sub in waiters:
                if target <= confirmed:
                    _confirm_one(sub)
            if still:
                self._waiters[channel] = still
            else:
                del self._waiters[channel]
        if self._resync is not None:
            self._resync.discard(channel)
            if not self._resync:
                self._announce_missed()

    def _announce_missed(self) -> None:
        self._resync = None
        for sub in tuple(self._open_subs):
            if sub._missed:
                sub._missed = False
                sub._push(Missed("the broker reconnected to Redis; events may have been missed"))


def _confirm_one(sub: Subscription) -> None:
    sub._unacked -= 1
    if sub._unacked <= 0:
        sub._unacked = 0
        sub._confirmed.set()
        if sub._late:
            sub._late = False
            sub._push(Missed("the subscription was confirmed late; events may have been missed"))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def make_broker(settings: Settings, *, client: Redis | None = None) -> Broker:
    """Redis when ``redis`` is configured, else in process. Not started yet: ``await broker.start()``."""
    if settings.redis.enabled:
        assert settings.redis.dsn is not None
        return RedisBroker(settings.redis.dsn, client=client, max_connections=settings.redis.pool_size)
    return InProcessBroker()
