"""The process's Redis client (``redis.dsn``), shared by the broker, the stores and the rate limits."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

from aicm.config import Settings


def make_redis(settings: Settings) -> Redis | None:
    dsn = settings.redis.dsn
    if not dsn:
        return None
    # A blocking pool: with more concurrent requests than pool_size, a request waits (up to 5 s) for a free
    # connection; redis-py's default pool raises MaxConnectionsError at once (503s under load; make bench).
    pool = BlockingConnectionPool.from_url(
        dsn,
        max_connections=settings.redis.pool_size,
        timeout=5,
        socket_connect_timeout=2,
        health_check_interval=30,
        decode_responses=False,
    )
    return Redis.from_pool(pool)
