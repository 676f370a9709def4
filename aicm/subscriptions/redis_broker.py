"""Redis pub/sub behind the broker interface, with one listener connection per process.

Publishing goes through a normal pooled client; ONE dedicated connection per process (the listener) carries
every subscription. It subscribes a channel when its first local subscriber arrives, unsubscribes it when the
last one leaves, and fans each message out to bounded per-subscriber queues. A lost connection is
re-established with exponential backoff and every channel is subscribed again; the subscribers that were
live across the gap then receive a ``Missed`` marker, since events may have been lost meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from aicm.metrics import BROKER_RECONNECTS
from aicm.subscriptions.broker import DEFAULT_MAX_BYTES, Broker, PublishError, encode
from aicm.subscriptions.subscription import Missed, Subscription

__all__ = ["RedisBroker"]

log = logging.getLogger("aicm.broker")


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
        max_bytes: int = DEFAULT_MAX_BYTES,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        connect_timeout: float = 5.0,
        subscribe_timeout: float = 5.0,
        ping_interval: float = 10.0,
    ) -> None:
        super().__init__(max_bytes=max_bytes)
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
        sub._confirmed = confirmed = asyncio.Event()
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                await confirmed.wait()
        except TimeoutError:
            sub._late = True
            log.warning("redis subscribe not confirmed in time", extra={"event": "broker_subscribe_slow"})
        except BaseException:
            sub._end()
            raise
        finally:
            sub._confirmed = None  # an idle subscription keeps no Event (and its deque)

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
            sub._confirm()

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
        self._fan_out(channel, payload, len(data))

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
        sub._confirm()
        if sub._late:
            sub._late = False
            sub._push(Missed("the subscription was confirmed late; events may have been missed"))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
