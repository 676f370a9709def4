"""Which broker a process runs with: Redis when configured, else in process."""

from __future__ import annotations

from redis.asyncio import Redis

from aicm.config import Settings
from aicm.subscriptions.broker import Broker
from aicm.subscriptions.in_process import InProcessBroker
from aicm.subscriptions.redis_broker import RedisBroker

__all__ = ["make_broker"]


def make_broker(settings: Settings, *, client: Redis | None = None) -> Broker:
    """Redis when ``redis`` is configured, else in process. Not started yet: ``await broker.start()``."""
    if settings.redis.enabled:
        assert settings.redis.dsn is not None
        return RedisBroker(
            settings.redis.dsn,
            client=client,
            max_connections=settings.redis.pool_size,
            max_bytes=settings.graphql.subscription_backlog_bytes,
        )
    return InProcessBroker(max_bytes=settings.graphql.subscription_backlog_bytes)
