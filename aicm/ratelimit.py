"""Token buckets: in-process, or in Redis with one atomic Lua script so every instance shares them.

A bucket holds at most ``burst`` tokens and refills at ``rate`` tokens per second; a hit takes ``cost`` tokens
or, when the bucket lacks them, is refused with the seconds until it would succeed. :class:`RateLimits` is the
policy on top: which bucket a caller draws from (``security.rate_limit``), how many WebSocket connections a
user may hold open (:mod:`aicm.connection_slots`), and the one place that logs ``rate_limit_exceeded`` and
counts ``rate_limit_exceeded_total``.

Example::

    limits = make_rate_limits(settings, redis)
    decision = await limits.hit_client(client_key(user_id=None, ip="203.0.113.9"))
    if not decision.allowed:
        limits.record_exceeded("http", decision)  # then answer 429 with Retry-After
"""

from __future__ import annotations

import abc
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from aicm.connection_slots import ConnectionSlots, MemoryConnectionSlots, RedisConnectionSlots
from aicm.logs.setup import security_event
from aicm.metrics import RATE_LIMIT_EXCEEDED

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from aicm.config import RateLimitConfig, Settings

__all__ = [
    "ConnectionSlot",
    "Decision",
    "Limit",
    "Limiter",
    "MemoryLimiter",
    "RateLimits",
    "RedisLimiter",
    "client_key",
    "make_rate_limits",
]

log = logging.getLogger("aicm.ratelimit")
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Limit:
    rate: float  # tokens per second
    burst: float  # bucket size
    idle_ttl: float = 60.0  # seconds an idle bucket is remembered (at least its refill time is kept)

    @property
    def ttl(self) -> float:
        return max(self.idle_ttl, self.burst / self.rate)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    remaining: float
    retry_after: float = 0.0  # seconds until the hit would succeed; 0 when allowed
    bucket: str = ""  # which policy bucket answered ("client", "auth:ip", ...)

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, at least 1: the ``Retry-After`` value."""
        return str(max(1, math.ceil(self.retry_after)))


ALLOWED = Decision(allowed=True, remaining=math.inf)


@dataclass(frozen=True, slots=True)
class ConnectionSlot:
    """One open WebSocket connection of a user, counted towards ``max_ws_connections_per_user``."""

    user_id: int
    id: str | None  # None: not counted (limits off when it opened)


class Limiter(abc.ABC):
    @abc.abstractmethod
    async def hit(self, key: str, limit: Limit, cost: float = 1.0) -> Decision: ...


def _take(tokens: float, elapsed: float, limit: Limit, cost: float) -> tuple[float, Decision]:
    """The token-bucket step shared (in Lua, too) by every limiter: refill, then take ``cost`` if there."""
    tokens = min(limit.burst, tokens + max(0.0, elapsed) * limit.rate)
    if tokens >= cost:
        return tokens - cost, Decision(True, tokens - cost)
    return tokens, Decision(False, tokens, (cost - tokens) / limit.rate)


class MemoryLimiter(Limiter):
    """One process's buckets; the least recently used go first beyond ``max_keys``."""

    def __init__(self, *, max_keys: int = 100_000, clock: Clock = time.monotonic) -> None:
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    async def hit(self, key: str, limit: Limit, cost: float = 1.0) -> Decision:
        now = self._clock()
        tokens, at = self._buckets.pop(key, (limit.burst, now))
        tokens, decision = _take(tokens, now - at, limit, cost)
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return decision

    def __len__(self) -> int:
        return len(self._buckets)


# KEYS[1] bucket; ARGV rate, burst, cost, ttl_ms. Redis's own clock, so instances never disagree on time.
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
local retry = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  retry = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {allowed, tostring(tokens), tostring(retry)}
"""


class RedisLimiter(Limiter):
    """Buckets shared by every instance: ``{prefix}rl:{key}`` hashes updated by one Lua script (atomic).

    When Redis cannot be reached the hit is allowed (and a warning logged): a rate limiter must not turn a
    Redis outage into a full outage.
    """

    def __init__(self, redis: Redis, *, prefix: str = "aicm:") -> None:
        self._redis = redis
        self._prefix = prefix
        self._script: Any = redis.register_script(_TOKEN_BUCKET)

    async def hit(self, key: str, limit: Limit, cost: float = 1.0) -> Decision:
        ttl_ms = max(1, math.ceil(limit.ttl * 1000))
        try:
            allowed, tokens, retry = await self._script(
                keys=[f"{self._prefix}rl:{key}"],
                args=[repr(limit.rate), repr(limit.burst), repr(cost), ttl_ms],
            )
        except (RedisError, OSError):
            log.warning("rate limiter store unreachable; allowing", extra={"event": "dependency_unavailable"})
            return ALLOWED
        return Decision(bool(int(allowed)), float(tokens), float(retry))


def client_key(*, user_id: int | str | None, ip: str | None) -> str:
    """The bucket of a caller: the user when signed in, else the IP."""
    return f"user:{user_id}" if user_id is not None else f"ip:{ip or 'unknown'}"


def _digest(value: str) -> str:
    return hashlib.sha256(value.strip().lower().encode("utf-8", "surrogatepass")).hexdigest()


class RateLimits:
    """``security.rate_limit`` as buckets: one per client, and a stricter pair for signing in.

    ``limiter`` is either store; ``config`` is read on every hit, so a changed config applies at once.
    """

    def __init__(
        self, config: RateLimitConfig, limiter: Limiter, connections: ConnectionSlots | None = None
    ) -> None:
        self.config = config
        self.limiter = limiter
        self.connections = connections or MemoryConnectionSlots()

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    @property
    def client_limit(self) -> Limit:
        c = self.config
        return Limit(c.requests_per_second, c.burst_size, c.window_size)

    @property
    def auth_limit(self) -> Limit:
        c = self.config
        return Limit(c.auth_requests_per_minute / 60.0, c.auth_burst_size, c.window_size)

    async def hit_client(self, key: str, cost: float = 1.0) -> Decision:
        """A request, WebSocket connect or subscribe message of client ``key`` (see :func:`client_key`)."""
        if not self.enabled:
            return ALLOWED
        decision = await self.limiter.hit(f"client:{key}", self.client_limit, cost)
        return _named(decision, "client")

    async def hit_auth(self, *, ip: str | None, email: str | None = None, cost: float = 1.0) -> Decision:
        """A sign-in attempt (login, register, refreshToken, OAuth): one bucket per IP, one per email.

        Both buckets are drawn from, so a refusal by one still counts against the other.
        """
        if not self.enabled:
            return ALLOWED
        limit = self.auth_limit
        decision = _named(await self.limiter.hit(f"auth:ip:{ip or 'unknown'}", limit, cost), "auth:ip")
        if email:
            by_email = _named(
                await self.limiter.hit(f"auth:email:{_digest(email)}", limit, cost), "auth:email"
            )
            if not by_email.allowed and (decision.allowed or by_email.retry_after > decision.retry_after):
                decision = by_email
        return decision

    async def open_connection(self, user_id: int) -> ConnectionSlot | None:
        """A slot for one more WebSocket connection of ``user_id``; None (logged) when the user already holds
        ``max_ws_connections_per_user`` open, on every instance when Redis is configured."""
        if not self.enabled:
            return ConnectionSlot(user_id, None)
        maximum = self.config.max_ws_connections_per_user
        slot = await self.connections.acquire(user_id, maximum)
        if slot is None:
            refused = Decision(False, 0.0, bucket="websocket:connections")
            self.record_exceeded("websocket", refused, maximum=maximum)
            return None
        return ConnectionSlot(user_id, slot)

    async def close_connection(self, slot: ConnectionSlot) -> None:
        if slot.id is not None:
            await self.connections.release(slot.user_id, slot.id)

    def record_exceeded(self, scope: str, decision: Decision, **fields: Any) -> None:
        """Log ``rate_limit_exceeded`` (ip, request id and user come from the request) and count it."""
        RATE_LIMIT_EXCEEDED.labels(scope=scope).inc()
        security_event(
            log,
            "rate_limit_exceeded",
            message=f"rate limit exceeded ({decision.bucket})",
            scope=scope,
            bucket=decision.bucket,
            retry_after=decision.retry_after_header,
            **fields,
        )


def _named(decision: Decision, bucket: str) -> Decision:
    return Decision(decision.allowed, decision.remaining, decision.retry_after, bucket)


def make_rate_limits(settings: Settings, redis: Redis | None, *, prefix: str = "aicm:") -> RateLimits:
    if redis is None:
        return RateLimits(settings.security.rate_limit, MemoryLimiter(), MemoryConnectionSlots())
    limiter = RedisLimiter(redis, prefix=prefix)
    return RateLimits(settings.security.rate_limit, limiter, RedisConnectionSlots(redis, prefix=prefix))
