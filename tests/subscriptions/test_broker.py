"""The live-event broker, in process and on Redis: delivery, leaving, slow consumers, scale, reconnects."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from aicm.subscriptions import channels
from aicm.subscriptions.broker import Broker, PublishError
from aicm.subscriptions.factory import make_broker
from aicm.subscriptions.in_process import InProcessBroker
from aicm.subscriptions.redis_broker import RedisBroker
from aicm.subscriptions.subscription import Event, FellBehind, Missed, Subscription
from tests.conftest import make_settings, require_services
from tests.subscriptions.conftest import OwnedRedis

MEMORY, REDIS = "memory", "redis"


def _client_name(prefix: str) -> str:
    return prefix.replace(":", "-").rstrip("-")


def _redis_broker(url: str, prefix: str, **options: float) -> RedisBroker:
    options = {"backoff_initial": 0.05, "backoff_max": 0.2, "connect_timeout": 1.0, **options}
    return RedisBroker(url, client_name=_client_name(prefix), **options)


@pytest.fixture(params=[MEMORY, REDIS])
async def broker(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Broker]:
    if request.param == REDIS:
        instance: Broker = _redis_broker(require_services()[1], prefix)
    else:
        instance = InProcessBroker()
    await instance.start()
    try:
        yield instance
    finally:
        await instance.close()


@pytest.fixture
async def inspector(broker: Broker) -> AsyncIterator[Redis | None]:
    """A plain client on the broker's Redis, to look at the server side (None in process)."""
    if not isinstance(broker, RedisBroker):
        yield None
        return
    client = Redis.from_url(require_services()[1], decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def next_item(sub: Subscription, within: float = 3.0) -> Event | Missed:
    async with asyncio.timeout(within):
        return await anext(sub)


async def eventually(check: Callable[[], object], within: float = 3.0) -> None:
    """Poll a sync or async predicate every 20 ms until it holds; fail after ``within`` seconds."""
    for _ in range(int(within / 0.02)):
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {within}s")


async def server_channels(client: Redis, prefix: str) -> set[str]:
    return set(await client.pubsub_channels(f"{prefix}*"))


async def _channels_are(client: Redis, prefix: str, expected: set[str]) -> bool:
    return await server_channels(client, prefix) == expected


async def test_published_event_reaches_the_subscriber(broker: Broker, prefix: str) -> None:
    # given
    channel = prefix + "a"
    async with broker.subscribe([channel]) as sub:
        # when
        await broker.publish(channel, {"type": "PING", "n": 1, "pair": (1, 2)})
        item = await next_item(sub)
    # then: the payload went through JSON on both brokers alike
    assert item == Event(channel, {"type": "PING", "n": 1, "pair": [1, 2]})
    assert broker.stats.delivered == 1
    assert broker.stats.subscribers == 0


async def test_an_idle_subscription_holds_no_queue_or_event_and_a_cancelled_wait_can_resume(
    broker: Broker, prefix: str
) -> None:
    # given: an open subscription whose consumer waits (docs/performance.md: memory per idle subscription)
    channel = prefix + "idle"
    async with broker.subscribe([channel]) as sub:
        waiting = asyncio.ensure_future(anext(sub))
        await eventually(lambda: sub._waiter is not None)
        assert sub._queue is None and sub._confirmed is None
        assert not any(isinstance(getattr(sub, name), asyncio.Event) for name in Subscription.__slots__)
        # when: the waiting consumer is cancelled, then another waits and an event comes
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert sub._waiter is None
        await broker.publish(channel, {"n": 1})
        item = await next_item(sub)
    # then
    assert item == Event(channel, {"n": 1})


async def test_one_subscriber_hears_several_channels_and_nothing_else(broker: Broker, prefix: str) -> None:
    # given
    first, second, other = prefix + "first", prefix + "second", prefix + "other"
    async with broker.subscribe([first, second, first]) as sub:
        # when
        await broker.publish(other, {"n": 0})
        await broker.publish(first, {"n": 1})
        await broker.publish(second, {"n": 2})
        items = [await next_item(sub), await next_item(sub)]
        # then
        assert items == [Event(first, {"n": 1}), Event(second, {"n": 2})]
        assert sub.channels == (first, second)
        assert sub.pending == 0


async def test_leaving_stops_delivery_and_the_listener_unsubscribes(
    broker: Broker, inspector: Redis | None, prefix: str
) -> None:
    # given
    only_a, shared = prefix + "a", prefix + "b"
    leaver = await broker.subscribe([only_a, shared]).__aenter__()
    stayer = await broker.subscribe([shared]).__aenter__()
    try:
        if inspector is not None:
            assert await server_channels(inspector, prefix) == {only_a, shared}
        # when
        await leaver.aclose()
        await broker.publish(only_a, {"n": 1})
        await broker.publish(shared, {"n": 2})
        # then
        assert await next_item(stayer) == Event(shared, {"n": 2})
        with pytest.raises(StopAsyncIteration):
            await next_item(leaver)
        assert broker.stats.subscribers == 1
        assert broker.channel_count == 1
        if inspector is not None:
            await eventually(lambda: _channels_are(inspector, prefix, {shared}))
    finally:
        await stayer.aclose()
    assert broker.channel_count == 0
    if inspector is not None:
        await eventually(lambda: _channels_are(inspector, prefix, set()))


async def test_rapid_leave_and_rejoin_keeps_the_channel_live(
    broker: Broker, inspector: Redis | None, prefix: str
) -> None:
    # given: SUBSCRIBE and UNSUBSCRIBE of one channel racing on the listener connection
    channel = prefix + "flap"
    for _ in range(25):
        async with broker.subscribe([channel]):
            pass
    # when
    async with broker.subscribe([channel]) as sub:
        await broker.publish(channel, {"n": 1})
        # then
        assert await next_item(sub) == Event(channel, {"n": 1})
        if inspector is not None:
            await asyncio.sleep(0.1)  # let every confirmation in flight arrive
            assert await server_channels(inspector, prefix) == {channel}
            await broker.publish(channel, {"n": 2})
            assert await next_item(sub) == Event(channel, {"n": 2})


async def test_slow_consumer_falls_behind_and_its_queue_stays_bounded(broker: Broker, prefix: str) -> None:
    # given
    channel = prefix + "busy"
    async with broker.subscribe([channel], max_queue=5) as slow, broker.subscribe([channel]) as fast:
        # when: 20 events, none read by the slow subscriber
        largest = 0
        for n in range(20):
            await broker.publish(channel, {"n": n})
            largest = max(largest, slow.pending)
        received = [await next_item(fast) for _ in range(20)]
        largest = max(largest, slow.pending)
        # then
        assert largest <= 5
        assert slow.pending == 0  # its queue was dropped
        with pytest.raises(FellBehind, match="fell behind"):
            await next_item(slow)
        with pytest.raises(StopAsyncIteration):
            await next_item(slow)
        assert [item.payload["n"] for item in received if isinstance(item, Event)] == list(range(20))
        assert broker.stats.dropped == 6  # five queued plus the one that did not fit
        assert broker.stats.subscribers == 1
        # the fast subscriber still gets what follows
        await broker.publish(channel, {"n": 20})
        assert await next_item(fast) == Event(channel, {"n": 20})


async def test_backlogs_are_bounded_in_bytes_and_a_catch_up_subscriber_hears_missed(
    broker: Broker, prefix: str
) -> None:
    # given three subscribers with room for about 2 KiB of events: one ends, one catches up, one reads
    channel, text = prefix + "big", "x" * 1000
    async with (
        broker.subscribe([channel], max_bytes=2100) as ending,
        broker.subscribe([channel], max_bytes=2100, catch_up=True) as catching_up,
        broker.subscribe([channel]) as reading,
    ):
        # when five 1 KiB events arrive before either of the first two reads
        for n in range(5):
            await broker.publish(channel, {"n": n, "text": text})
            assert ending.pending_bytes <= 2100 and catching_up.pending_bytes <= 2100
        # then the first ends with FellBehind, the second hears Missed in place of what was dropped
        with pytest.raises(FellBehind, match="2100 bytes"):
            await next_item(ending)
        items = [await next_item(catching_up) for _ in range(3)]  # 0, 1 queued; 2 did not fit: all dropped
        assert isinstance(items[0], Missed) and "fell behind" in items[0].reason
        assert [item.payload["n"] for item in items[1:] if isinstance(item, Event)] == [3, 4]
        assert catching_up.pending_bytes == 0
        # and the reader that kept up got all five; a single event larger than the bound still passes
        assert [(await next_item(reading)).payload["n"] for _ in range(5)] == list(range(5))
        await broker.publish(channel, {"n": 5, "text": text * 3})
        assert (await next_item(catching_up)).payload["n"] == 5


async def test_a_thousand_subscriptions_all_receive_over_one_connection(
    broker: Broker, inspector: Redis | None, prefix: str
) -> None:
    # given
    shared = prefix + "shared"
    subs = [broker.subscribe([shared, f"{prefix}own:{i}"]) for i in range(1000)]
    try:
        await asyncio.gather(*(sub.__aenter__() for sub in subs))
        assert broker.stats.subscribers == 1000
        # when
        await broker.publish(shared, {"n": 1})
        await broker.publish(f"{prefix}own:999", {"n": 2})
        items = await asyncio.gather(*(next_item(sub) for sub in subs))
        # then
        assert all(item == Event(shared, {"n": 1}) for item in items)
        assert await next_item(subs[999]) == Event(f"{prefix}own:999", {"n": 2})
        assert all(sub.pending == 0 for sub in subs)
        if inspector is not None:
            assert isinstance(broker, RedisBroker)
            listeners = [
                c for c in await inspector.client_list(_type="pubsub") if c["name"] == broker.client_name
            ]
            assert len(listeners) == 1
            assert await inspector.pubsub_numsub(shared) == [(shared, 1)]
    finally:
        for sub in subs:
            await sub.aclose()
    assert broker.stats.subscribers == 0
    assert broker.channel_count == 0


async def test_payloads_must_be_json(broker: Broker, prefix: str) -> None:
    with pytest.raises(TypeError):
        await broker.publish(prefix + "x", {"when": object()})
    with pytest.raises(ValueError):
        await broker.publish(prefix + "x", {"n": float("nan")})
    with pytest.raises(TypeError):
        await broker.publish(prefix + "x", ["not", "a", "mapping"])  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", [MEMORY, REDIS])
async def test_close_ends_subscriptions_and_leaves_no_tasks(kind: str, prefix: str) -> None:
    # given
    before = asyncio.all_tasks()
    broker = _redis_broker(require_services()[1], prefix) if kind == REDIS else InProcessBroker()
    await broker.start()
    sub = await broker.subscribe([prefix + "a", prefix + "b"]).__aenter__()
    waiting = asyncio.create_task(anext(sub))
    await asyncio.sleep(0.05)
    # when
    await broker.close()
    await broker.close()  # idempotent
    # then
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 2)
    assert sub.closed
    assert broker.stats.subscribers == 0
    assert asyncio.all_tasks() - before - {asyncio.current_task()} == set()
    with pytest.raises(RuntimeError, match="closed"):
        await broker.subscribe([prefix + "a"]).__aenter__()
    with pytest.raises(RuntimeError, match="closed"):
        await broker.publish(prefix + "a", {})


async def test_lost_redis_is_reconnected_and_subscribers_hear_missed(
    owned_redis: OwnedRedis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # given
    a, b, c = prefix + "a", prefix + "b", prefix + "c"
    async with (
        _redis_broker(owned_redis.url, prefix) as broker,
        broker.subscribe([a, b]) as both,
        broker.subscribe([b]) as one,
    ):
        await broker.publish(a, {"n": 1})
        assert await next_item(both) == Event(a, {"n": 1})
        # when: the server dies, a subscriber joins during the outage, the server comes back
        await owned_redis.stop()
        await eventually(lambda: not broker.connected)
        with pytest.raises(PublishError):
            await broker.publish(a, {"n": 2})
        async with broker.subscribe([c]) as joined_meanwhile:
            await asyncio.sleep(0.5)  # a few reconnect attempts fail meanwhile
            await owned_redis.start()
            # then
            for sub in (both, one, joined_meanwhile):
                item = await next_item(sub, within=5)
                assert isinstance(item, Missed)
                assert "missed" in item.reason
            assert broker.connected
            assert broker.stats.reconnects == 1
            await broker.publish(a, {"n": 3})
            await broker.publish(b, {"n": 4})
            await broker.publish(c, {"n": 5})
            assert [await next_item(both), await next_item(both)] == [Event(a, {"n": 3}), Event(b, {"n": 4})]
            assert await next_item(one) == Event(b, {"n": 4})
            assert await next_item(joined_meanwhile) == Event(c, {"n": 5})
            # the retries backed off exponentially (0.05 s doubling, capped at 0.2 s here)
            delays = [r.args[0] for r in caplog.records if getattr(r, "event", "") == "broker_connect_failed"]
            assert delays[:3] == [0.1, 0.2, 0.2]
            assert set(delays) <= {0.1, 0.2}
            inspector = Redis.from_url(owned_redis.url, decode_responses=True)
            try:
                assert await server_channels(inspector, prefix) == {a, b, c}
                names = [client["name"] for client in await inspector.client_list(_type="pubsub")]
                assert names == [broker.client_name]
            finally:
                await inspector.aclose()


async def test_an_unresponsive_server_is_detected_by_ping(owned_redis: OwnedRedis, prefix: str) -> None:
    # given
    channel = prefix + "a"
    async with (
        _redis_broker(owned_redis.url, prefix, ping_interval=0.1, connect_timeout=0.3) as broker,
        broker.subscribe([channel]) as sub,
    ):
        # when: the server stops answering without closing anything
        os.kill(owned_redis.pid, signal.SIGSTOP)
        try:
            await eventually(lambda: not broker.connected, within=3)
        finally:
            os.kill(owned_redis.pid, signal.SIGCONT)
        # then
        assert isinstance(await next_item(sub, within=5), Missed)
        await broker.publish(channel, {"n": 1})
        assert await next_item(sub) == Event(channel, {"n": 1})


async def test_starting_while_redis_is_down_connects_later(owned_redis: OwnedRedis, prefix: str) -> None:
    # given
    channel = prefix + "a"
    await owned_redis.stop()
    async with _redis_broker(owned_redis.url, prefix, connect_timeout=0.3) as broker:
        assert not broker.connected
        async with broker.subscribe([channel]) as sub:
            # when
            await owned_redis.start()
            await eventually(lambda: broker.connected)
            inspector = Redis.from_url(owned_redis.url, decode_responses=True)
            try:
                await eventually(lambda: _channels_are(inspector, prefix, {channel}))
            finally:
                await inspector.aclose()
            await broker.publish(channel, {"n": 1})
            # then: nothing was live before, so nothing is reported missed
            assert await next_item(sub) == Event(channel, {"n": 1})
            assert broker.stats.reconnects == 0


async def test_the_in_process_broker_never_reports_missed(prefix: str) -> None:
    async with InProcessBroker() as broker, broker.subscribe([prefix + "a"]) as sub:
        assert broker.connected
        await broker.publish(prefix + "a", {"n": 1})
        assert await next_item(sub) == Event(prefix + "a", {"n": 1})
        assert sub.pending == 0


def test_make_broker_follows_the_redis_setting(tmp_path) -> None:
    embedded = make_broker(make_settings(tmp_path, "embedded"))
    assert isinstance(embedded, InProcessBroker)
    assert embedded.mode == "embedded"
    settings = make_settings(tmp_path, "embedded", REDIS_URL="redis://127.0.0.1:6399/5")
    redis = make_broker(settings)
    assert isinstance(redis, RedisBroker)
    assert redis.mode == "redis"


def test_subscribe_rejects_bad_arguments() -> None:
    broker = InProcessBroker()
    with pytest.raises(ValueError):
        broker.subscribe([])
    with pytest.raises(TypeError):
        broker.subscribe("aicm:project:1")
    with pytest.raises(ValueError):
        broker.subscribe(["aicm:project:1"], max_queue=0)


async def test_a_subscription_must_be_opened_before_iterating(prefix: str) -> None:
    async with InProcessBroker() as broker:
        sub = broker.subscribe([prefix + "a"])
        with pytest.raises(RuntimeError, match="open"):
            await anext(sub)


def test_channel_names_are_built_in_one_place() -> None:
    assert channels.project(7) == "aicm:project:7"
    assert channels.task(3) == "aicm:task:3"
    assert channels.task_logs(3) == "aicm:task:3:logs"
    assert channels.user(12) == "aicm:user:12"
    assert channels.session("3f2a-b_c") == "aicm:session:3f2a-b_c"
    for bad in (True, -1, "7", None):
        with pytest.raises(ValueError):
            channels.project(bad)  # type: ignore[arg-type]
    for bad in ("", "a b", "a:b", "x" * 129):
        with pytest.raises(ValueError):
            channels.session(bad)
