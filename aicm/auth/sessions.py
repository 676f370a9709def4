"""Sessions and refresh-token rotation, behind one interface: in Redis when configured, else in-process.

A login creates a session and an opaque refresh token (``secrets.token_urlsafe(32)``, stored only as its
SHA-256). Every refresh rotates the token. Presenting the token just rotated away again is either

* a retry of a lost response when it comes within ``grace_seconds`` of the rotation: the caller gets the
  *identical* pair back (new refresh token and the access token issued with it). The pair is kept sealed
  with a key derived from the old token, so only its holder can open it and nothing usable sits in storage;
* otherwise token reuse: the whole session is ended (kept as a tombstone so its newest refresh token also
  answers ``RefreshTokenReused``) and ``RefreshTokenReused`` is raised.

Redis layout (``prefix`` defaults to ``aicm:``; every key but the index expires with the refresh lifetime,
renewed on rotation):

* ``{prefix}session:{id}`` hash: ``user_id created_at last_seen_at ip ua refresh prev_refresh rotated_at
  reply revoked``
* ``{prefix}user_sessions:{user_id}`` set of session ids
* ``{prefix}refresh:{sha256}`` → session id, one per token issued (so reuse of an old token is recognised)
* ``{prefix}session_expiry`` sorted set id → expiry time: ``count_active`` without a SCAN

Rotation, revocation and touch are Lua scripts, so two concurrent rotations of one token have exactly one
winner; the other gets the grace replay.
"""

from __future__ import annotations

import abc
import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

from aicm.errors import Unauthenticated

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from aicm.config import Settings

__all__ = [
    "REASON_REUSED",
    "MemorySessionStore",
    "RedisSessionStore",
    "RefreshTokenInvalid",
    "RefreshTokenReused",
    "Rotation",
    "SessionRecord",
    "SessionStore",
    "make_session_store",
]

Clock = Callable[[], float]
IssueAccess = Callable[["SessionRecord"], str]

REASON_REUSED = "reused"  # the only revocation reason kept after a session ends (see revocation_reason)
TOUCH_INTERVAL = 30.0  # at most one last_seen_at write per session per this many seconds (per instance)
_TOUCH_CACHE_LIMIT = 10_000


class RefreshTokenInvalid(Unauthenticated):
    """An unknown, expired or revoked refresh token."""

    default_message = "Invalid refresh token"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, reason="TOKEN_INVALID")


class RefreshTokenReused(Unauthenticated):
    """A rotated-away refresh token came back after the grace window; its session has been ended."""

    default_message = "Refresh token reuse detected; the session has been ended"

    def __init__(self, session_id: str, user_id: int) -> None:
        super().__init__(None, reason="TOKEN_REUSED")
        self.session_id = session_id  # for the caller's token_reuse_detected log line, not for clients
        self.user_id = user_id


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str
    user_id: int
    created_at: float
    last_seen_at: float
    ip: str | None
    user_agent: str | None


class Rotation(NamedTuple):
    session: SessionRecord
    refresh_token: str
    replayed: bool  # True: a retry inside the grace window, answered with the pair issued the first time
    access_token: str | None  # what ``issue_access`` returned at the real rotation (None without it)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_session_id() -> str:
    return secrets.token_urlsafe(24)  # 192 bits


def _new_refresh_token() -> str:
    return secrets.token_urlsafe(32)


def _pad(old_token: str, size: int) -> bytes:
    return hashlib.shake_256(b"aicm-refresh-grace\0" + old_token.encode()).digest(size)


def _seal(old_token: str, refresh_token: str, access_token: str | None) -> str:
    """The grace-window reply, encrypted with a one-time pad only the holder of ``old_token`` can derive."""
    plain = json.dumps([refresh_token, access_token]).encode()
    mixed = int.from_bytes(plain, "big") ^ int.from_bytes(_pad(old_token, len(plain)), "big")
    return base64.urlsafe_b64encode(mixed.to_bytes(len(plain), "big")).decode()


def _unseal(old_token: str, sealed: str) -> tuple[str, str | None]:
    raw = base64.urlsafe_b64decode(sealed)
    mixed = int.from_bytes(raw, "big") ^ int.from_bytes(_pad(old_token, len(raw)), "big")
    refresh_token, access_token = json.loads(mixed.to_bytes(len(raw), "big"))
    return refresh_token, access_token


class SessionStore(abc.ABC):
    """Where sessions live. All methods are coroutines; see the module docstring for the semantics."""

    def __init__(
        self,
        *,
        refresh_lifetime: float,
        max_sessions_per_user: int,
        grace_seconds: float = 10.0,
        clock: Clock = time.time,
    ) -> None:
        self.refresh_lifetime = float(refresh_lifetime)
        self.max_sessions_per_user = max(1, int(max_sessions_per_user))
        self.grace_seconds = float(grace_seconds)
        self._clock = clock
        self._touched: dict[str, float] = {}

    @abc.abstractmethod
    async def create(
        self, user_id: int, ip: str | None = None, user_agent: str | None = None
    ) -> tuple[SessionRecord, str]:
        """A new session and its first refresh token; ends the user's least recently used sessions beyond
        ``max_sessions_per_user``."""

    @abc.abstractmethod
    async def rotate(
        self,
        refresh_token: str,
        *,
        ip: str | None = None,
        user_agent: str | None = None,
        issue_access: IssueAccess | None = None,
    ) -> Rotation:
        """Exchange ``refresh_token`` for a new one. ``issue_access(session)`` makes the access token that
        goes with it, so that a grace-window retry gets the identical pair (``replayed=True``).

        Raises ``RefreshTokenInvalid`` (unknown, expired, revoked) or ``RefreshTokenReused`` (after ending the
        session)."""

    @abc.abstractmethod
    async def get(self, session_id: str) -> SessionRecord | None: ...

    @abc.abstractmethod
    async def is_active(self, session_id: str) -> bool:
        """The per-request check; sees revocations made by any instance immediately."""

    @abc.abstractmethod
    async def revocation_reason(self, session_id: str) -> str | None:
        """``REASON_REUSED`` for a session ended by token reuse (while its tokens could still be live)."""

    @abc.abstractmethod
    async def list_for_user(self, user_id: int) -> list[SessionRecord]:
        """The user's live sessions, newest first."""

    @abc.abstractmethod
    async def revoke(self, session_id: str) -> bool:
        """End one session; False when it was not active."""

    @abc.abstractmethod
    async def count_active(self) -> int: ...

    @abc.abstractmethod
    async def _write_touch(
        self, session_id: str, now: float, ip: str | None, user_agent: str | None
    ) -> None: ...

    async def touch(self, session_id: str, ip: str | None = None, user_agent: str | None = None) -> None:
        """Record activity (last_seen_at, ip, user agent); writes at most once per ``TOUCH_INTERVAL``."""
        now = self._clock()
        last = self._touched.get(session_id)
        if last is not None and now - last < TOUCH_INTERVAL:
            return
        self._remember_touch(session_id, now)
        await self._write_touch(session_id, now, ip, user_agent)

    async def revoke_all(self, user_id: int, *, except_session_id: str | None = None) -> int:
        """End every session of the user but ``except_session_id``; how many ended."""
        ended = 0
        for record in await self.list_for_user(user_id):
            if record.id != except_session_id and await self.revoke(record.id):
                ended += 1
        return ended

    async def _evict_beyond_limit(self, user_id: int, keep: str) -> None:
        others = [r for r in await self.list_for_user(user_id) if r.id != keep]
        others.sort(key=lambda r: (r.last_seen_at, r.created_at))
        for record in others[: max(0, len(others) + 1 - self.max_sessions_per_user)]:
            await self.revoke(record.id)

    def _remember_touch(self, session_id: str, now: float) -> None:
        if len(self._touched) >= _TOUCH_CACHE_LIMIT:
            self._touched = {k: t for k, t in self._touched.items() if now - t < TOUCH_INTERVAL}
            if len(self._touched) >= _TOUCH_CACHE_LIMIT:
                self._touched.clear()
        self._touched[session_id] = now


# --- in-process ------------------------------------------------------------------------------------------


@dataclass
class _Entry:
    record: SessionRecord
    refresh: str
    expires_at: float
    prev_refresh: str | None = None
    rotated_at: float = 0.0
    reply: str | None = None
    revoked: str | None = None


class MemorySessionStore(SessionStore):
    """Sessions in this process only (the embedded default). Expired entries are purged as time passes."""

    def __init__(
        self,
        *,
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
        self._sessions: dict[str, _Entry] = {}
        self._lookup: dict[str, tuple[str, float]] = {}  # token hash -> (session id, expires_at)
        self._by_user: dict[int, set[str]] = {}
        self._next_sweep = 0.0

    async def create(
        self, user_id: int, ip: str | None = None, user_agent: str | None = None
    ) -> tuple[SessionRecord, str]:
        now = self._now()
        record = SessionRecord(_new_session_id(), user_id, now, now, ip, user_agent)
        token = _new_refresh_token()
        entry = _Entry(record, _digest(token), now + self.refresh_lifetime)
        self._sessions[record.id] = entry
        self._lookup[entry.refresh] = (record.id, entry.expires_at)
        self._by_user.setdefault(user_id, set()).add(record.id)
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
        now = self._now()
        old = _digest(refresh_token)
        found = self._lookup.get(old)
        entry = self._sessions.get(found[0]) if found and found[1] > now else None
        if entry is None or entry.expires_at <= now:
            raise RefreshTokenInvalid()
        record = entry.record
        if entry.revoked:
            raise RefreshTokenReused(record.id, record.user_id)
        if entry.refresh == old:
            record = replace(
                record, last_seen_at=now, ip=ip or record.ip, user_agent=user_agent or record.user_agent
            )
            new_token = _new_refresh_token()
            access = issue_access(record) if issue_access is not None else None
            entry.record, entry.prev_refresh, entry.refresh = record, old, _digest(new_token)
            entry.rotated_at, entry.reply = now, _seal(refresh_token, new_token, access)
            entry.expires_at = now + self.refresh_lifetime
            self._lookup[entry.refresh] = (record.id, entry.expires_at)
            self._remember_touch(record.id, now)
            return Rotation(record, new_token, False, access)
        if entry.prev_refresh == old and entry.reply and now - entry.rotated_at <= self.grace_seconds:
            new_token, access = _unseal(refresh_token, entry.reply)
            return Rotation(record, new_token, True, access)
        entry.revoked = REASON_REUSED
        self._by_user.get(record.user_id, set()).discard(record.id)
        raise RefreshTokenReused(record.id, record.user_id)

    async def get(self, session_id: str) -> SessionRecord | None:
        entry = self._live(session_id)
        return entry.record if entry else None

    async def is_active(self, session_id: str) -> bool:
        return self._live(session_id) is not None

    async def revocation_reason(self, session_id: str) -> str | None:
        entry = self._sessions.get(session_id)
        return entry.revoked if entry is not None and entry.expires_at > self._now() else None

    async def list_for_user(self, user_id: int) -> list[SessionRecord]:
        ids = self._by_user.get(user_id, set())
        records = []
        for session_id in list(ids):
            entry = self._live(session_id)
            if entry is None:
                ids.discard(session_id)
            else:
                records.append(entry.record)
        if not ids:
            self._by_user.pop(user_id, None)
        return sorted(records, key=lambda r: r.created_at, reverse=True)

    async def revoke(self, session_id: str) -> bool:
        entry = self._live(session_id)
        if entry is None:
            return False
        self._drop(session_id)
        return True

    async def count_active(self) -> int:
        now = self._now()
        return sum(1 for e in self._sessions.values() if not e.revoked and e.expires_at > now)

    async def _write_touch(self, session_id: str, now: float, ip: str | None, user_agent: str | None) -> None:
        entry = self._live(session_id)
        if entry is not None:
            r = entry.record
            entry.record = replace(r, last_seen_at=now, ip=ip or r.ip, user_agent=user_agent or r.user_agent)

    def _now(self) -> float:
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
            self._next_sweep = now + min(60.0, max(self.refresh_lifetime, 1.0))
        return now

    def _live(self, session_id: str) -> _Entry | None:
        entry = self._sessions.get(session_id)
        if entry is None or entry.revoked:
            return None
        if entry.expires_at <= self._clock():
            self._drop(session_id)
            return None
        return entry

    def _drop(self, session_id: str) -> None:
        entry = self._sessions.pop(session_id, None)
        if entry is not None:
            self._lookup.pop(entry.refresh, None)
            self._by_user.get(entry.record.user_id, set()).discard(session_id)

    def _sweep(self, now: float) -> None:
        for session_id in [k for k, e in self._sessions.items() if e.expires_at <= now]:
            self._drop(session_id)
        self._lookup = {h: v for h, v in self._lookup.items() if v[1] > now}
        self._by_user = {u: ids for u, ids in self._by_user.items() if ids}


# --- Redis -----------------------------------------------------------------------------------------------

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
        record = SessionRecord(_new_session_id(), user_id, now, now, ip, user_agent)
        token = _new_refresh_token()
        mapping = {"user_id": str(user_id), "created_at": repr(now), "last_seen_at": repr(now)}
        mapping["refresh"] = _digest(token)
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
        old = _digest(refresh_token)
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
        new_token, access = _new_refresh_token(), None
        if fields.get("refresh") == old:
            record = replace(
                record, last_seen_at=now, ip=ip or record.ip, user_agent=user_agent or record.user_agent
            )
            access = issue_access(record) if issue_access is not None else None
        keys = [
            self._session_key(session_id),
            self._refresh_key(_digest(new_token)),
            self._user_key(record.user_id),
            self._index,
        ]
        args = [old, _digest(new_token), repr(now), repr(self.grace_seconds), self._ttl_ms]
        args += [_seal(refresh_token, new_token, access), ip or "", user_agent or "", session_id]
        args += [repr(now + self.refresh_lifetime)]
        outcome, *rest = await self._rotate(keys=keys, args=args)
        outcome = _text(outcome)
        if outcome == "rotated":
            self._remember_touch(session_id, now)
            return Rotation(record, new_token, False, access)
        if outcome == "replay":
            new_token, access = _unseal(refresh_token, _text(rest[0]) or "")
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


def make_session_store(settings: Settings, redis: Redis | None, *, prefix: str = "aicm:") -> SessionStore:
    """The Redis store when Redis is configured, else the in-process one."""
    options = {
        "refresh_lifetime": settings.jwt.refresh_token_duration,
        "max_sessions_per_user": settings.auth.max_sessions_per_user,
    }
    if redis is None:
        return MemorySessionStore(**options)
    return RedisSessionStore(redis, prefix=prefix, **options)
