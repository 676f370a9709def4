"""Slots for open WebSocket connections, counted per user: in-process, or in Redis across every instance.

A connection takes a slot once its user is known (``connection_init``) and gives it back when it closes;
:class:`~aicm.ratelimit.RateLimits` refuses a slot beyond ``security.rate_limit.max_ws_connections_per_user``.

With Redis, ``{prefix}ws_slots:{user_id}`` is a sorted set of slot ids scored by their expiry (in ms, by
Redis's clock). Each instance renews the slots it holds every ``ttl / 3`` seconds, in one pipeline, so the
slots of an instance that died without closing its connections lapse within ``ttl``; taking a slot first drops
the lapsed ones. Without Redis each instance counts only its own connections.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import secrets
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["ConnectionSlots", "MemoryConnectionSlots", "RedisConnectionSlots"]

log = logging.getLogger("aicm.ratelimit")

SLOT_TTL = 60.0  # seconds a Redis slot lives without renewal


class ConnectionSlots(abc.ABC):
    @abc.abstractmethod
    async def acquire(self, user_id: int, maximum: int) -> str | None:
        """A new slot id for ``user_id``, or None when the user already holds ``maximum`` slots."""

    @abc.abstractmethod
    async def release(self, user_id: int, slot: str) -> None:
        """Give a slot back (idempotent)."""

    @abc.abstractmethod
    async def held(self, user_id: int) -> int:
        """How many slots ``user_id`` holds (on every instance, with Redis)."""


class MemoryConnectionSlots(ConnectionSlots):
    """This process's connections only."""

    def __init__(self) -> None:
        self._held: dict[int, set[str]] = {}

    async def acquire(self, user_id: int, maximum: int) -> str | None:
        slots = self._held.get(user_id, set())
        if len(slots) >= maximum:
            return None
        slot = secrets.token_hex(8)
        self._held[user_id] = slots | {slot}
        return slot

    async def release(self, user_id: int, slot: str) -> None:
        slots = self._held.get(user_id)
        if slots is None:
            return
        slots.discard(slot)
        if not slots:
            del self._held[user_id]

    async def held(self, user_id: int) -> int:
        return len(self._held.get(user_id, ()))


_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1] the user's set; ARGV maximum, slot id, ttl ms. 1 when taken, 0 when the user holds the maximum.
_ACQUIRE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)

# KEYS[1] the user's set; ARGV slot id, ttl ms. A slot that lapsed meanwhile is taken again: it is still open.
_RENEW = (
    _NOW_MS
    + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
)

# KEYS[1] the user's set.
_COUNT = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""
)


class RedisConnectionSlots(ConnectionSlots):
    """Slots shared by every instance. When Redis cannot be reached a connection is let in (and a warning
    logged): the cap must not turn a Redis outage into a full outage."""

    def __init__(self, redis: Redis, *, prefix: str = "aicm:", ttl: float = SLOT_TTL) -> None:
        self._redis = redis
        self._prefix = prefix
        self.ttl = ttl
        self._ttl_ms = max(1, int(ttl * 1000))
        self._acquire: Any = redis.register_script(_ACQUIRE)
        self._renew: Any = redis.register_script(_RENEW)
        self._count: Any = redis.register_script(_COUNT)
        self._local: dict[str, int] = {}  # the slots this instance holds: slot id -> user id
        self._renewer: asyncio.Task[None] | None = None

    def _key(self, user_id: int) -> str:
        return f"{self._prefix}ws_slots:{user_id}"

    async def acquire(self, user_id: int, maximum: int) -> str | None:
        slot = secrets.token_hex(8)
        try:
            taken = await self._acquire(keys=[self._key(user_id)], args=[maximum, slot, self._ttl_ms])
        except (RedisError, OSError):
            log.warning("connection slots unreachable; allowing", extra={"event": "dependency_unavailable"})
            return slot
        if not int(taken):
            return None
        self._local[slot] = user_id
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_held(), name="aicm-ws-slot-renewer")
        return slot

    async def release(self, user_id: int, slot: str) -> None:
        self._local.pop(slot, None)
        try:
            await self._redis.zrem(self._key(user_id), slot)
        except (RedisError, OSError):
            log.warning("connection slot not released; it lapses", extra={"event": "dependency_unavailable"})

    async def held(self, user_id: int) -> int:
        return int(await self._count(keys=[self._key(user_id)]))

    async def _renew_held(self) -> None:
        """Renew this instance's slots every ttl/3 while it holds any; the next acquire starts it again."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            if not self._local:
                self._renewer = None  # no await between the check and this: acquire sees it at once
                return
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for slot, user_id in list(self._local.items()):
                        await self._renew(keys=[self._key(user_id)], args=[slot, self._ttl_ms], client=pipe)
                    await pipe.execute()
            except (RedisError, OSError):
                log.warning("connection slots not renewed", extra={"event": "dependency_unavailable"})
