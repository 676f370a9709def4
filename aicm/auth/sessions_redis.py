"""Sessions shared by every instance through Redis (layout and rules in ``aicm.auth.sessions``)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from aicm.auth.sessions import (
    Clock,
    IssueAccess,
    RefreshTokenInvalid,
    RefreshTokenReused,
    Rotation,
    SessionRecord,
    SessionStore,
    digest,
    new_refresh_token,
    new_session_id,
    seal,
    unseal,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisSessionStore"]

# KEYS: session, new refresh lookup, user set, expiry index
# ARGV: old hash, new hash, now, grace, ttl ms, sealed reply, ip, ua, session id, expires_at
_ROTATE = """
local s = redis.call('HMGET', KEYS[1], 'user_id', 'refresh', 'prev_refresh', 'rotated_at', 'reply', 'revoked')
if not s[1] then return {'invalid'} end
if s[6] then return {'reused', s[1]} end
if s[2] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'refresh', ARGV[2], 'prev_refresh', ARGV[1], 'rotated_at', ARGV[3],
             'reply', ARGV[6], 'last_seen_at', ARGV[3])
  if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'ip', ARGV[7]) end
  if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'ua', ARGV[8]) end
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('SET', KEYS[2], ARGV[9], 'PX', ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
  redis.call('ZADD', KEYS[4], ARGV[10], ARGV[9])
  return {'rotated'}
end
if s[3] == ARGV[1] and s[5] and tonumber(ARGV[3]) - tonumber(s[4]) <= tonumber(ARGV[4]) then
  return {'replay', s[5]}
end
redis.call('HSET', KEYS[1], 'revoked', 'reused')
redis.call('SREM', KEYS[3], ARGV[9])
redis.call('ZREM', KEYS[4], ARGV[9])
return {'reused', s[1]}
"""

# KEYS: session, user set, expiry index; ARGV: session id. A reuse tombstone is left alone.
_REVOKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'revoked') == 1 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""

# KEYS: session; ARGV: now, ip, ua. Never recreates an ended session.
_TOUCH = """
if redis.call('HEXISTS', KEYS[1], 'user_id') == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'revoked') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'last_seen_at', ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'ip', ARGV[2]) end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'ua', ARGV[3]) end
return 1
"""


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k) or "": _text(v) or "" for k, v in raw.items()}


def _record(session_id: str, f: dict[str, str]) -> SessionRecord:
    return SessionRecord(
        session_id,
        int(f["user_id"]),
        float(f["created_at"]),
        float(f.get("last_seen_at") or f["created_at"]),
        f.get("ip") or None,
        f.get("ua") or None,
    )


class RedisSessionStore(SessionStore):
    """Sessions shared by every instance through Redis (works with ``decode_responses`` on or off)."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "aicm:",
        refresh_lifetime: float,
        max_sessions_per_user: int,
        grace_seconds: float = 10.0,
        clock: Clock = time.time,
    ) -> None:
        super().__init__(
            refresh_lifetime=refresh_lifetime,
            max_sessions_per_user=max_sessions_per_user,
            grace_seconds=grace_seconds,
            clock=clock,
        )
        self._redis = redis
        self._prefix = prefix
        self._index = f"{prefix}session_expiry"
        self._ttl_ms = max(1, int(self.refresh_lifetime * 1000))
        self._rotate = redis.register_script(_ROTATE)
        self._revoke = redis.register_script(_REVOKE)
        self._touch = redis.register_script(_TOUCH)

    def _session_key(self, session_id: str) -> str:
        return f"{self._prefix}session:{session_id}"

    def _user_key(self, user_id: int | str) -> str:
        return f"{self._prefix}user_sessions:{user_id}"

    def _refresh_key(self, token_hash: str) -> str:
        return f"{self._prefix}refresh:{token_hash}"

    async def create(
        self, user_id: int, ip: str | None = None, user_agent: str | None = None
    ) -> tuple[SessionRecord, str]:
        now = self._clock()
        record = SessionRecord(new_session_id(), user_id, now, now, ip, user_agent)
        token = new_refresh_token()
        mapping = {"user_id": str(user_id), "created_at": repr(now), "last_seen_at": repr(now)}
        mapping["refresh"] = digest(token)
        if ip:
            mapping["ip"] = ip
        if user_agent:
            mapping["ua"] = user_agent
        key, user_key = self._session_key(record.id), self._user_key(user_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.pexpire(key, self._ttl_ms)
            pipe.set(self._refresh_key(mapping["refresh"]), record.id, px=self._ttl_ms)
            pipe.sadd(user_key, record.id)
            pipe.pexpire(user_key, self._ttl_ms)
            pipe.zadd(self._index, {record.id: now + self.refresh_lifetime})
            pipe.zremrangebyscore(self._index, "-inf", f"({now}")
            await pipe.execute()
        self._remember_touch(record.id, now)
        await self._evict_beyond_limit(user_id, keep=record.id)
        return record, token

    async def rotate(
        self,
        refresh_token: str,
        *,
        ip: str | None = None,
        user_agent: str | None = None,
        issue_access: IssueAccess | None = None,
    ) -> Rotation:
        old = digest(refresh_token)
        session_id = _text(await self._redis.get(self._refresh_key(old)))
        if session_id is None:
            raise RefreshTokenInvalid()
        fields = _fields(await self._redis.hgetall(self._session_key(session_id)))
        if not fields.get("user_id"):
            raise RefreshTokenInvalid()
        record = _record(session_id, fields)
        if fields.get("revoked"):
            raise RefreshTokenReused(session_id, record.user_id)
        now = self._clock()
        new_token, access = new_refresh_token(), None
        if fields.get("refresh") == old:
            record = replace(
                record, last_seen_at=now, ip=ip or record.ip, user_agent=user_agent or record.user_agent
            )
            access = issue_access(record) if issue_access is not None else None
        keys = [
            self._session_key(session_id),
            self._refresh_key(digest(new_token)),
            self._user_key(record.user_id),
            self._index,
        ]
        args = [old, digest(new_token), repr(now), repr(self.grace_seconds), self._ttl_ms]
        args += [seal(refresh_token, new_token, access), ip or "", user_agent or "", session_id]
        args += [repr(now + self.refresh_lifetime)]
        outcome, *rest = await self._rotate(keys=keys, args=args)
        outcome = _text(outcome)
        if outcome == "rotated":
            self._remember_touch(session_id, now)
            return Rotation(record, new_token, False, access)
        if outcome == "replay":
            new_token, access = unseal(refresh_token, _text(rest[0]) or "")
            return Rotation(_record(session_id, fields), new_token, True, access)
        if outcome == "reused":
            raise RefreshTokenReused(session_id, record.user_id)
        raise RefreshTokenInvalid()

    async def get(self, session_id: str) -> SessionRecord | None:
        fields = _fields(await self._redis.hgetall(self._session_key(session_id)))
        if not fields.get("user_id") or fields.get("revoked"):
            return None
        return _record(session_id, fields)

    async def is_active(self, session_id: str) -> bool:
        user_id, revoked = await self._redis.hmget(self._session_key(session_id), ["user_id", "revoked"])
        return user_id is not None and revoked is None

    async def revocation_reason(self, session_id: str) -> str | None:
        return _text(await self._redis.hget(self._session_key(session_id), "revoked"))

    async def list_for_user(self, user_id: int) -> list[SessionRecord]:
        user_key = self._user_key(user_id)
        ids = sorted(_text(m) or "" for m in await self._redis.smembers(user_key))
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for session_id in ids:
                pipe.hgetall(self._session_key(session_id))
            rows = await pipe.execute()
        records, dead = [], []
        for session_id, raw in zip(ids, rows, strict=True):
            fields = _fields(raw)
            if fields.get("user_id") and not fields.get("revoked"):
                records.append(_record(session_id, fields))
            else:
                dead.append(session_id)
        if dead:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.srem(user_key, *dead)
                pipe.zrem(self._index, *dead)
                await pipe.execute()
        return sorted(records, key=lambda r: r.created_at, reverse=True)

    async def revoke(self, session_id: str) -> bool:
        user_id = _text(await self._redis.hget(self._session_key(session_id), "user_id"))
        if user_id is None:
            return False
        keys = [self._session_key(session_id), self._user_key(user_id), self._index]
        return bool(await self._revoke(keys=keys, args=[session_id]))

    async def count_active(self) -> int:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(self._index, "-inf", f"({self._clock()}")
            pipe.zcard(self._index)
            _, count = await pipe.execute()
        return int(count)

    async def _write_touch(self, session_id: str, now: float, ip: str | None, user_agent: str | None) -> None:
        await self._touch(keys=[self._session_key(session_id)], args=[repr(now), ip or "", user_agent or ""])
