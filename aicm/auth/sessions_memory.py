"""Sessions in this process only: the embedded default (see ``aicm.auth.sessions`` for the rules)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from aicm.auth.sessions import (
    REASON_REUSED,
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

__all__ = ["MemorySessionStore"]


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
        record = SessionRecord(new_session_id(), user_id, now, now, ip, user_agent)
        token = new_refresh_token()
        entry = _Entry(record, digest(token), now + self.refresh_lifetime)
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
        old = digest(refresh_token)
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
            new_token = new_refresh_token()
            access = issue_access(record) if issue_access is not None else None
            entry.record, entry.prev_refresh, entry.refresh = record, old, digest(new_token)
            entry.rotated_at, entry.reply = now, seal(refresh_token, new_token, access)
            entry.expires_at = now + self.refresh_lifetime
            self._lookup[entry.refresh] = (record.id, entry.expires_at)
            self._remember_touch(record.id, now)
            return Rotation(record, new_token, False, access)
        if entry.prev_refresh == old and entry.reply and now - entry.rotated_at <= self.grace_seconds:
            new_token, access = unseal(refresh_token, entry.reply)
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
