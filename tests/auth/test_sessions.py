"""The session store on both backends: in-process and Redis (``AICM_TEST_REDIS_URL``; skipped without it).

Time is a fake clock wherever the store reads it; only Redis key expiry needs short real waits.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from aicm.auth.session_stores import make_session_store
from aicm.auth.sessions import (
    REASON_REUSED,
    RefreshTokenInvalid,
    RefreshTokenReused,
    SessionRecord,
    SessionStore,
)
from aicm.auth.sessions_memory import MemorySessionStore
from aicm.auth.sessions_redis import RedisSessionStore
from aicm.config import Settings
from tests.conftest import require_services

MEMORY, REDIS = "memory", "redis"


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Stores:
    """Makes stores of one kind. Redis stores share a random key prefix, each with its own client
    (so two stores are two instances)."""

    def __init__(self, kind: str, redis_url: str | None) -> None:
        self.kind = kind
        self.clock = FakeClock()
        self.prefix = f"aicm-test:{secrets.token_hex(6)}:"
        self._redis_url = redis_url
        self.clients: list[Redis] = []

    def redis(self, **options: Any) -> Redis:
        assert self._redis_url is not None
        client = Redis.from_url(self._redis_url, **options)
        self.clients.append(client)
        return client

    def make(self, *, decode_responses: bool = False, **options: Any) -> SessionStore:
        options = {"refresh_lifetime": 3600, "max_sessions_per_user": 10, "clock": self.clock} | options
        if self.kind == MEMORY:
            return MemorySessionStore(**options)
        return RedisSessionStore(self.redis(decode_responses=decode_responses), prefix=self.prefix, **options)

    async def keys(self) -> list[str]:
        client = self.clients[0]
        keys = [k async for k in client.scan_iter(match=f"{self.prefix}*")]
        return [k.decode() if isinstance(k, bytes) else k for k in keys]

    async def cleanup(self) -> None:
        if self.clients:
            keys = await self.keys()
            if keys:
                await self.clients[0].delete(*keys)
        for client in self.clients:
            await client.aclose()


@pytest.fixture(params=[MEMORY, REDIS])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[Stores]:
    redis_url = require_services()[1] if request.param == REDIS else None
    factory = Stores(request.param, redis_url)
    yield factory
    await factory.cleanup()


@pytest.fixture
async def redis_stores() -> AsyncIterator[Stores]:
    factory = Stores(REDIS, require_services()[1])
    yield factory
    await factory.cleanup()


def access_factory() -> tuple[Callable[[SessionRecord], str], list[str]]:
    """An ``issue_access`` stand-in that makes a distinct token per call and remembers them."""
    issued: list[str] = []

    def issue(session: SessionRecord) -> str:
        issued.append(f"access-{session.id}-{len(issued)}-{secrets.token_hex(4)}")
        return issued[-1]

    return issue, issued


async def test_create_returns_a_session_and_its_refresh_token(stores: Stores) -> None:
    # given
    store = stores.make()
    # when
    record, token = await store.create(7, "10.0.0.1", "pytest/1")
    other, other_token = await store.create(7, None, None)
    # then
    assert record.user_id == 7 and record.ip == "10.0.0.1" and record.user_agent == "pytest/1"
    assert record.created_at == record.last_seen_at == stores.clock.now
    assert len(record.id) >= 22 and record.id != other.id  # >= 128 bits, url-safe
    assert len(token) >= 43 and token != other_token
    assert await store.get(record.id) == record
    assert (await store.get(other.id)).ip is None
    assert await store.is_active(record.id)
    assert await store.get("no-such-session") is None
    assert not await store.is_active("no-such-session")


async def test_list_for_user_is_newest_first_and_only_that_users(stores: Stores) -> None:
    # given
    store = stores.make()
    first, _ = await store.create(1, "1.1.1.1", "a")
    stores.clock.advance(1)
    second, _ = await store.create(1, "2.2.2.2", "b")
    await store.create(2, None, None)
    # when
    listed = await store.list_for_user(1)
    # then
    assert [r.id for r in listed] == [second.id, first.id]
    assert await store.list_for_user(3) == []


async def test_rotation_issues_a_new_token_and_a_retry_within_grace_gets_the_identical_pair(
    stores: Stores,
) -> None:
    # given
    store = stores.make()
    record, token = await store.create(1, "1.1.1.1", "ua")
    issue, issued = access_factory()
    stores.clock.advance(5)
    # when
    rotated = await store.rotate(token, ip="9.9.9.9", issue_access=issue)
    stores.clock.advance(9)  # still inside the 10 s window
    retried = await store.rotate(token, ip="9.9.9.9", issue_access=issue)
    # then
    assert rotated.refresh_token != token and not rotated.replayed
    assert rotated.access_token == issued[0]
    assert rotated.session.id == record.id and rotated.session.ip == "9.9.9.9"
    assert rotated.session.last_seen_at == record.created_at + 5
    assert retried.replayed
    assert (retried.refresh_token, retried.access_token) == (rotated.refresh_token, rotated.access_token)
    assert retried.session.id == record.id
    assert await store.is_active(record.id)
    # and the new token goes on working
    again = await store.rotate(rotated.refresh_token)
    assert not again.replayed and again.access_token is None


async def test_reuse_after_the_grace_window_ends_the_whole_session(stores: Stores) -> None:
    # given
    store = stores.make()
    record, token = await store.create(1, None, None)
    kept, _ = await store.create(1, None, None)
    rotated = await store.rotate(token)
    stores.clock.advance(10.5)
    # when
    with pytest.raises(RefreshTokenReused) as reused:
        await store.rotate(token)
    # then
    assert reused.value.session_id == record.id and reused.value.user_id == 1
    assert reused.value.extensions == {"reason": "TOKEN_REUSED"}
    assert not await store.is_active(record.id)
    assert await store.get(record.id) is None
    assert await store.revocation_reason(record.id) == REASON_REUSED
    with pytest.raises(RefreshTokenReused):
        await store.rotate(rotated.refresh_token)  # the newest token is dead too
    assert [r.id for r in await store.list_for_user(1)] == [kept.id]
    assert await store.count_active() == 1
    assert not await store.revoke(record.id)  # already ended; its reason stays
    assert await store.revocation_reason(record.id) == REASON_REUSED


async def test_a_token_two_rotations_old_counts_as_reuse_even_inside_the_window(stores: Stores) -> None:
    # given
    store = stores.make()
    record, first = await store.create(1, None, None)
    second = (await store.rotate(first)).refresh_token
    await store.rotate(second)
    # when / then
    with pytest.raises(RefreshTokenReused):
        await store.rotate(first)
    assert not await store.is_active(record.id)


async def test_concurrent_rotations_of_one_token_have_exactly_one_winner(stores: Stores) -> None:
    # given
    store = stores.make()
    other = stores.make()  # on Redis: a second instance
    record, token = await store.create(1, None, None)
    issue, _ = access_factory()
    # when
    results = await asyncio.gather(
        store.rotate(token, issue_access=issue),
        other.rotate(token, issue_access=issue)
        if stores.kind == REDIS
        else store.rotate(token, issue_access=issue),
    )
    # then
    assert sorted(r.replayed for r in results) == [False, True]
    first, second = results
    assert (first.refresh_token, first.access_token) == (second.refresh_token, second.access_token)
    assert first.access_token is not None
    nxt = await store.rotate(first.refresh_token)
    assert not nxt.replayed and await store.is_active(record.id)


async def test_unknown_and_garbage_tokens_are_invalid(stores: Stores) -> None:
    store = stores.make()
    await store.create(1, None, None)
    for token in ["", "nope", secrets.token_urlsafe(32)]:
        with pytest.raises(RefreshTokenInvalid) as invalid:
            await store.rotate(token)
        assert invalid.value.extensions == {"reason": "TOKEN_INVALID"}


async def test_revoke_ends_a_session_and_its_refresh_token(stores: Stores) -> None:
    # given
    store = stores.make()
    record, token = await store.create(1, None, None)
    # when
    ended = await store.revoke(record.id)
    # then
    assert ended and not await store.revoke(record.id)
    assert not await store.is_active(record.id)
    assert await store.revocation_reason(record.id) is None
    assert await store.list_for_user(1) == []
    with pytest.raises(RefreshTokenInvalid):
        await store.rotate(token)
    await store.touch(record.id, "1.1.1.1", "ua")  # touching an ended session does not bring it back
    assert await store.get(record.id) is None
    assert not await store.revoke("no-such-session")


async def test_revoke_all_ends_every_other_session_and_counts_them(stores: Stores) -> None:
    # given
    store = stores.make()
    current, _ = await store.create(1, None, None)
    for _ in range(3):
        await store.create(1, None, None)
    elsewhere, _ = await store.create(2, None, None)
    # when
    ended = await store.revoke_all(1, except_session_id=current.id)
    # then
    assert ended == 3
    assert [r.id for r in await store.list_for_user(1)] == [current.id]
    assert await store.is_active(elsewhere.id)
    assert await store.revoke_all(1) == 1
    assert await store.list_for_user(1) == []


async def test_a_new_session_beyond_the_limit_ends_the_least_recently_used(stores: Stores) -> None:
    # given
    store = stores.make(max_sessions_per_user=2)
    oldest, _ = await store.create(1, None, None)
    stores.clock.advance(1)
    idle, idle_token = await store.create(1, None, None)
    stores.clock.advance(40)
    await store.touch(oldest.id, None, None)  # the oldest is now the most recently used
    stores.clock.advance(1)
    # when
    newest, _ = await store.create(1, None, None)
    # then
    assert {r.id for r in await store.list_for_user(1)} == {oldest.id, newest.id}
    assert not await store.is_active(idle.id)
    with pytest.raises(RefreshTokenInvalid):
        await store.rotate(idle_token)


async def test_touch_writes_last_seen_at_at_most_every_30_seconds(stores: Stores) -> None:
    # given
    store = stores.make()
    record, _ = await store.create(1, "1.1.1.1", "old")
    start = stores.clock.now
    # when / then
    stores.clock.advance(10)
    await store.touch(record.id, "2.2.2.2", "new")
    assert (await store.get(record.id)).last_seen_at == start  # just written by create
    stores.clock.advance(25)
    await store.touch(record.id, "2.2.2.2", "new")
    seen = await store.get(record.id)
    assert (seen.last_seen_at, seen.ip, seen.user_agent) == (start + 35, "2.2.2.2", "new")
    stores.clock.advance(5)
    await store.touch(record.id, None, None)
    assert (await store.get(record.id)).last_seen_at == start + 35


async def test_count_active_counts_live_sessions(stores: Stores) -> None:
    store = stores.make()
    assert await store.count_active() == 0
    first, _ = await store.create(1, None, None)
    await store.create(1, None, None)
    await store.create(2, None, None)
    assert await store.count_active() == 3
    await store.revoke(first.id)
    assert await store.count_active() == 2


async def test_sessions_expire_after_the_refresh_lifetime(stores: Stores) -> None:
    if stores.kind == MEMORY:
        store = stores.make(refresh_lifetime=60)
        record, token = await store.create(1, None, None)
        stores.clock.advance(61)
    else:  # Redis key expiry runs on real time
        store = stores.make(refresh_lifetime=0.5, clock=time.time)
        record, token = await store.create(1, None, None)
        await asyncio.sleep(0.6)
    assert not await store.is_active(record.id)
    assert await store.get(record.id) is None
    assert await store.list_for_user(1) == []
    assert await store.count_active() == 0
    with pytest.raises(RefreshTokenInvalid):
        await store.rotate(token)


async def test_rotation_renews_the_lifetime(stores: Stores) -> None:
    if stores.kind == MEMORY:
        store = stores.make(refresh_lifetime=60)
        _, token = await store.create(1, None, None)
        stores.clock.advance(40)
        token = (await store.rotate(token)).refresh_token
        stores.clock.advance(40)  # 80 s after login, 40 s after the rotation
    else:
        store = stores.make(refresh_lifetime=0.8, clock=time.time)
        _, token = await store.create(1, None, None)
        await asyncio.sleep(0.5)
        token = (await store.rotate(token)).refresh_token
        await asyncio.sleep(0.5)
    rotated = await store.rotate(token)
    assert await store.is_active(rotated.session.id)


async def test_memory_store_forgets_expired_entries() -> None:
    # given
    clock = FakeClock()
    store = MemorySessionStore(refresh_lifetime=60, max_sessions_per_user=10, clock=clock)
    for user_id in range(50):
        _, token = await store.create(user_id, None, None)
        await store.rotate(token)
    # when
    clock.advance(120)
    await store.count_active()
    # then
    assert not store._sessions and not store._lookup and not store._by_user


async def test_a_revocation_on_one_instance_is_seen_by_another_at_once(redis_stores: Stores) -> None:
    # given
    one, two = redis_stores.make(), redis_stores.make()
    record, token = await one.create(1, None, None)
    other, other_token = await one.create(1, None, None)
    assert await two.is_active(record.id)
    # when
    await one.revoke(record.id)
    rotated = await one.rotate(other_token)
    redis_stores.clock.advance(11)
    with pytest.raises(RefreshTokenReused):
        await one.rotate(other_token)
    # then
    assert not await two.is_active(record.id)
    assert not await two.is_active(other.id)
    assert await two.revocation_reason(other.id) == REASON_REUSED
    with pytest.raises(RefreshTokenReused):
        await two.rotate(rotated.refresh_token)
    with pytest.raises(RefreshTokenInvalid):
        await two.rotate(token)


async def test_redis_never_holds_a_refresh_or_access_token_in_plain(redis_stores: Stores) -> None:
    # given
    store = redis_stores.make()
    client = redis_stores.clients[0]
    _, token = await store.create(1, "1.1.1.1", "ua")
    rotated = await store.rotate(token, issue_access=lambda s: "header.payload-secret.signature")
    # when
    dump = []
    for key in await redis_stores.keys():
        kind = (await client.type(key)).decode()
        if kind == "hash":
            dump += [*(await client.hgetall(key)).values()]
        elif kind == "string":
            dump.append(await client.get(key))
        dump.append(key.encode())
    blob = b"\n".join(dump)
    # then
    for secret in (token, rotated.refresh_token, "payload-secret"):
        assert secret.encode() not in blob


async def test_every_redis_key_but_the_index_expires(redis_stores: Stores) -> None:
    store = redis_stores.make()
    client = redis_stores.clients[0]
    record, token = await store.create(1, "1.1.1.1", "ua")
    await store.rotate(token)
    await store.touch(record.id, None, None)
    keys = await redis_stores.keys()
    assert {k.removeprefix(redis_stores.prefix).split(":")[0] for k in keys} == {
        "session",
        "user_sessions",
        "refresh",
        "session_expiry",
    }
    for key in keys:
        ttl = await client.pttl(key)
        assert (ttl == -1) if key.endswith("session_expiry") else (0 < ttl <= 3600_000), key


async def test_redis_store_works_with_decoded_responses(redis_stores: Stores) -> None:
    store = redis_stores.make(decode_responses=True)
    record, token = await store.create(1, "1.1.1.1", "ua")
    rotated = await store.rotate(token, issue_access=lambda s: "access")
    retried = await store.rotate(token)
    assert retried.replayed and retried.access_token == "access"
    assert (await store.list_for_user(1))[0].id == record.id
    assert await store.is_active(record.id) and await store.count_active() == 1
    assert rotated.refresh_token == retried.refresh_token


async def test_make_session_store_uses_redis_only_when_configured() -> None:
    settings = Settings()
    settings.jwt.refresh_token_duration = 120
    settings.auth.max_sessions_per_user = 3
    memory = make_session_store(settings, None)
    assert isinstance(memory, MemorySessionStore)
    assert (memory.refresh_lifetime, memory.max_sessions_per_user) == (120, 3)
    client = Redis.from_url("redis://127.0.0.1:1/0")  # never connected
    try:
        assert isinstance(make_session_store(settings, client), RedisSessionStore)
    finally:
        await client.aclose()
