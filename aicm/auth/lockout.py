"""Account lockout: ``max_failures`` consecutive failed logins for an email lock it for ``lockout_seconds``.

Counted per email whether or not an account exists (so the lock reveals nothing), in Redis when configured so
every instance shares the count. Keys use the SHA-256 of the lower-cased email, never the email itself:
``{prefix}login_failures:{sha256}`` (hash ``n``, ``last``) and ``{prefix}login_lock:{sha256}`` (locked-until).
A failure counter is forgotten after ``lockout_seconds`` without failures; reaching the limit replaces it with
the lock, so counting starts afresh once the lock ends. IP-based limits are the rate limiter's job.

The caller's flow: ``is_locked`` first (refuse with ``ACCOUNT_LOCKED`` even before checking the password),
then ``record_failure`` on a wrong password (log ``account_locked`` when it returns True) or ``reset`` on
success.
"""

from __future__ import annotations

import abc
import hashlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from aicm.config import Settings

__all__ = ["LoginThrottle", "MemoryLoginThrottle", "RedisLoginThrottle", "email_key", "make_login_throttle"]

Clock = Callable[[], float]
_SWEEP_EVERY = 60.0


def email_key(email: str) -> str:
    """The SHA-256 (hex) of the trimmed, lower-cased email: what the throttle stores instead of the email."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


class LoginThrottle(abc.ABC):
    def __init__(self, *, max_failures: int, lockout_seconds: float, clock: Clock = time.time) -> None:
        self.max_failures = max(1, int(max_failures))
        self.lockout_seconds = float(lockout_seconds)
        self._clock = clock

    @abc.abstractmethod
    async def is_locked(self, email: str) -> bool: ...

    @abc.abstractmethod
    async def record_failure(self, email: str) -> bool:
        """Count a failed attempt; True when this one locks the email. Not counted while already locked."""

    @abc.abstractmethod
    async def reset(self, email: str) -> None:
        """Forget the failures (after a successful login)."""


class MemoryLoginThrottle(LoginThrottle):
    """The in-process throttle (embedded default); bounded by sweeping stale entries."""

    def __init__(self, *, max_failures: int, lockout_seconds: float, clock: Clock = time.time) -> None:
        super().__init__(max_failures=max_failures, lockout_seconds=lockout_seconds, clock=clock)
        self._failures: dict[str, tuple[int, float]] = {}  # key -> (count, last failure at)
        self._locked_until: dict[str, float] = {}
        self._next_sweep = 0.0

    async def is_locked(self, email: str) -> bool:
        return self._locked(email_key(email), self._now())

    async def record_failure(self, email: str) -> bool:
        key, now = email_key(email), self._now()
        if self._locked(key, now):
            return False
        count, last = self._failures.get(key, (0, now))
        count = count + 1 if now - last < self.lockout_seconds else 1
        if count >= self.max_failures:
            self._failures.pop(key, None)
            self._locked_until[key] = now + self.lockout_seconds
            return True
        self._failures[key] = (count, now)
        return False

    async def reset(self, email: str) -> None:
        key = email_key(email)
        self._failures.pop(key, None)
        self._locked_until.pop(key, None)

    def _locked(self, key: str, now: float) -> bool:
        until = self._locked_until.get(key)
        if until is None:
            return False
        if until <= now:
            del self._locked_until[key]
            return False
        return True

    def _now(self) -> float:
        now = self._clock()
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_EVERY
            self._locked_until = {k: u for k, u in self._locked_until.items() if u > now}
            self._failures = {k: v for k, v in self._failures.items() if now - v[1] < self.lockout_seconds}
        return now


# KEYS: failures, lock; ARGV: now, max failures, lockout seconds, lockout ms, locked until
_RECORD_FAILURE = """
local locked = redis.call('GET', KEYS[2])
if locked and tonumber(locked) > tonumber(ARGV[1]) then return 0 end
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local last = tonumber(redis.call('HGET', KEYS[1], 'last') or '0')
if n > 0 and tonumber(ARGV[1]) - last >= tonumber(ARGV[3]) then n = 0 end
n = n + 1
if n >= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[4])
  return 1
end
redis.call('HSET', KEYS[1], 'n', n, 'last', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 0
"""


class RedisLoginThrottle(LoginThrottle):
    """The shared throttle. Times come from ``clock`` (Redis TTLs only clean up), so tests can move time."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "aicm:",
        max_failures: int,
        lockout_seconds: float,
        clock: Clock = time.time,
    ) -> None:
        super().__init__(max_failures=max_failures, lockout_seconds=lockout_seconds, clock=clock)
        self._redis = redis
        self._prefix = prefix
        self._ttl_ms = max(1, int(self.lockout_seconds * 1000))
        self._record = redis.register_script(_RECORD_FAILURE)

    def _keys(self, email: str) -> list[str]:
        digest = email_key(email)
        return [f"{self._prefix}login_failures:{digest}", f"{self._prefix}login_lock:{digest}"]

    async def is_locked(self, email: str) -> bool:
        until = await self._redis.get(self._keys(email)[1])
        return until is not None and float(until) > self._clock()

    async def record_failure(self, email: str) -> bool:
        now = self._clock()
        args = [repr(now), self.max_failures, repr(self.lockout_seconds), self._ttl_ms]
        args.append(repr(now + self.lockout_seconds))
        return bool(await self._record(keys=self._keys(email), args=args))

    async def reset(self, email: str) -> None:
        await self._redis.delete(*self._keys(email))


def make_login_throttle(settings: Settings, redis: Redis | None, *, prefix: str = "aicm:") -> LoginThrottle:
    """The Redis throttle when Redis is configured, else the in-process one."""
    max_failures, lockout = settings.auth.max_failed_logins, settings.auth.lockout_duration
    if redis is None:
        return MemoryLoginThrottle(max_failures=max_failures, lockout_seconds=lockout)
    return RedisLoginThrottle(redis, prefix=prefix, max_failures=max_failures, lockout_seconds=lockout)
