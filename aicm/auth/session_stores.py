"""Which session store a process runs with: Redis when configured, else in process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aicm.auth.sessions import SessionStore
from aicm.auth.sessions_memory import MemorySessionStore
from aicm.auth.sessions_redis import RedisSessionStore

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from aicm.config import Settings

__all__ = ["make_session_store"]


def make_session_store(settings: Settings, redis: Redis | None, *, prefix: str = "aicm:") -> SessionStore:
    """The Redis store when Redis is configured, else the in-process one."""
    options = {
        "refresh_lifetime": settings.jwt.refresh_token_duration,
        "max_sessions_per_user": settings.auth.max_sessions_per_user,
    }
    if redis is None:
        return MemorySessionStore(**options)
    return RedisSessionStore(redis, prefix=prefix, **options)
