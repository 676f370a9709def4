"""Login lockout on both backends: in-process and Redis (``AICM_TEST_REDIS_URL``; skipped without it)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from aicm.auth.lockout import (
    LoginThrottle,
    MemoryLoginThrottle,
    RedisLoginThrottle,
    email_key,
    make_login_throttle,
)
from aicm.config import Settings
from tests.conftest import require_services

MEMORY, REDIS = "memory", "redis"
EMAIL = "Alice@Example.com"


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Throttles:
    """Makes throttles of one kind; Redis ones share a random key prefix, each with its own client."""

    def __init__(self, kind: str, redis_url: str | None) -> None:
        self.kind = kind
        self.clock = FakeClock()
        self.prefix = f"aicm-test:{secrets.token_hex(6)}:"
        self._redis_url = redis_url
        self.clients: list[Redis] = []

    def make(self, **options: Any) -> LoginThrottle:
        options = {"max_failures": 3, "lockout_seconds": 60, "clock": self.clock} | options
        if self.kind == MEMORY:
            return MemoryLoginThrottle(**options)
        assert self._redis_url is not None
        self.clients.append(Redis.from_url(self._redis_url))
        return RedisLoginThrottle(self.clients[-1], prefix=self.prefix, **options)

    async def keys(self) -> list[str]:
        return [k.decode() async for k in self.clients[0].scan_iter(match=f"{self.prefix}*")]

    async def cleanup(self) -> None:
        if self.clients:
            keys = await self.keys()
            if keys:
                await self.clients[0].delete(*keys)
        for client in self.clients:
            await client.aclose()


@pytest.fixture(params=[MEMORY, REDIS])
async def throttles(request: pytest.FixtureRequest) -> AsyncIterator[Throttles]:
    redis_url = require_services()[1] if request.param == REDIS else None
    factory = Throttles(request.param, redis_url)
    yield factory
    await factory.cleanup()


async def attempt(throttle: LoginThrottle, email: str, *, password_ok: bool) -> str:
    """The login flow the auth resolver follows: refuse while locked, then count or reset."""
    if await throttle.is_locked(email):
        return "ACCOUNT_LOCKED"
    if password_ok:
        await throttle.reset(email)
        return "OK"
    return "LOCKED_NOW" if await throttle.record_failure(email) else "WRONG_PASSWORD"


async def test_max_failures_lock_the_email(throttles: Throttles) -> None:
    throttle = throttles.make()
    results = [await attempt(throttle, EMAIL, password_ok=False) for _ in range(3)]
    assert results == ["WRONG_PASSWORD", "WRONG_PASSWORD", "LOCKED_NOW"]
    assert await throttle.is_locked(EMAIL)


async def test_a_locked_email_refuses_even_the_right_password(throttles: Throttles) -> None:
    # given
    throttle = throttles.make()
    for _ in range(3):
        await attempt(throttle, EMAIL, password_ok=False)
    # when
    throttles.clock.advance(59)
    # then
    assert await attempt(throttle, EMAIL, password_ok=True) == "ACCOUNT_LOCKED"
    assert await attempt(throttle, EMAIL, password_ok=False) == "ACCOUNT_LOCKED"
    assert not await throttle.record_failure(EMAIL)  # failures while locked neither count nor re-lock


async def test_the_lock_ends_after_the_lockout_duration_and_counting_starts_afresh(
    throttles: Throttles,
) -> None:
    # given
    throttle = throttles.make()
    for _ in range(3):
        await throttle.record_failure(EMAIL)
    # when
    throttles.clock.advance(60)
    # then
    assert not await throttle.is_locked(EMAIL)
    assert [await throttle.record_failure(EMAIL) for _ in range(3)] == [False, False, True]


async def test_a_successful_login_resets_the_count(throttles: Throttles) -> None:
    throttle = throttles.make()
    await attempt(throttle, EMAIL, password_ok=False)
    await attempt(throttle, EMAIL, password_ok=False)
    assert await attempt(throttle, EMAIL, password_ok=True) == "OK"
    assert [await attempt(throttle, EMAIL, password_ok=False) for _ in range(2)] == ["WRONG_PASSWORD"] * 2
    assert not await throttle.is_locked(EMAIL)


async def test_emails_are_counted_apart_and_case_insensitively(throttles: Throttles) -> None:
    throttle = throttles.make()
    await throttle.record_failure("alice@example.com")
    await throttle.record_failure("ALICE@example.COM ")
    await throttle.record_failure("bob@example.com")
    assert await throttle.record_failure(EMAIL)
    assert await throttle.is_locked("alice@example.com")
    assert not await throttle.is_locked("bob@example.com")
    assert not await throttle.is_locked("nobody@example.com")


async def test_failures_are_forgotten_after_a_quiet_lockout_duration(throttles: Throttles) -> None:
    throttle = throttles.make()
    await throttle.record_failure(EMAIL)
    await throttle.record_failure(EMAIL)
    throttles.clock.advance(60)
    assert not await throttle.record_failure(EMAIL)
    assert not await throttle.record_failure(EMAIL)
    assert not await throttle.is_locked(EMAIL)


async def test_instances_share_the_count_on_redis() -> None:
    factory = Throttles(REDIS, require_services()[1])
    try:
        one, two = factory.make(), factory.make()
        await one.record_failure(EMAIL)
        await two.record_failure(EMAIL)
        assert await one.record_failure(EMAIL)
        assert await two.is_locked(EMAIL)
        await two.reset(EMAIL)
        assert not await one.is_locked(EMAIL)
    finally:
        await factory.cleanup()


async def test_redis_keys_hold_a_hash_of_the_email_never_the_email() -> None:
    factory = Throttles(REDIS, require_services()[1])
    try:
        throttle = factory.make()
        client = factory.clients[0]
        await throttle.record_failure("carol@example.com")
        for _ in range(3):
            await throttle.record_failure(EMAIL)
        keys = await factory.keys()
        digest = hashlib.sha256(b"alice@example.com").hexdigest()
        assert email_key(EMAIL) == digest
        assert f"{factory.prefix}login_lock:{digest}" in keys
        for key in keys:
            assert "example" not in key.lower() and "@" not in key
            assert 0 < await client.pttl(key) <= 60_000
            kind = (await client.type(key)).decode()
            values = (await client.hgetall(key)).values() if kind == "hash" else [await client.get(key)]
            assert all(b"example" not in v for v in values)
    finally:
        await factory.cleanup()


async def test_memory_throttle_forgets_stale_entries() -> None:
    clock = FakeClock()
    throttle = MemoryLoginThrottle(max_failures=2, lockout_seconds=60, clock=clock)
    for i in range(100):
        await throttle.record_failure(f"user{i}@example.com")
        await throttle.record_failure(f"locked{i}@example.com")
        await throttle.record_failure(f"locked{i}@example.com")
    clock.advance(120)
    assert not await throttle.is_locked("locked1@example.com")
    assert not throttle._failures and not throttle._locked_until


async def test_make_login_throttle_uses_redis_only_when_configured() -> None:
    settings = Settings()
    settings.auth.max_failed_logins, settings.auth.lockout_duration = 4, 30
    memory = make_login_throttle(settings, None)
    assert isinstance(memory, MemoryLoginThrottle)
    assert (memory.max_failures, memory.lockout_seconds) == (4, 30)
    client = Redis.from_url("redis://127.0.0.1:1/0")  # never connected
    try:
        assert isinstance(make_login_throttle(settings, client), RedisLoginThrottle)
    finally:
        await client.aclose()
