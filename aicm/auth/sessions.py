"""Sessions and refresh-token rotation: the interface, in Redis when configured, else in-process.

The stores are ``sessions_memory.py`` and ``sessions_redis.py``; ``session_stores.make_session_store``
picks one.

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
from dataclasses import dataclass
from typing import NamedTuple

from aicm.errors import Unauthenticated

__all__ = [
    "REASON_REUSED",
    "RefreshTokenInvalid",
    "RefreshTokenReused",
    "Rotation",
    "SessionRecord",
    "SessionStore",
    "digest",
    "new_refresh_token",
    "new_session_id",
    "seal",
    "unseal",
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


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_session_id() -> str:
    return secrets.token_urlsafe(24)  # 192 bits


def new_refresh_token() -> str:
    return secrets.token_urlsafe(32)


def _pad(old_token: str, size: int) -> bytes:
    return hashlib.shake_256(b"aicm-refresh-grace\0" + old_token.encode()).digest(size)


def seal(old_token: str, refresh_token: str, access_token: str | None) -> str:
    """The grace-window reply, encrypted with a one-time pad only the holder of ``old_token`` can derive."""
    plain = json.dumps([refresh_token, access_token]).encode()
    mixed = int.from_bytes(plain, "big") ^ int.from_bytes(_pad(old_token, len(plain)), "big")
    return base64.urlsafe_b64encode(mixed.to_bytes(len(plain), "big")).decode()


def unseal(old_token: str, sealed: str) -> tuple[str, str | None]:
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
