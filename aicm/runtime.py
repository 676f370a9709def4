"""The process-wide services an app instance runs with, built once in the app's lifespan."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis.asyncio import BlockingConnectionPool, Redis

from aicm.auth.tokens import TokenService
from aicm.config import Settings
from aicm.subscriptions.broker import Broker
from aicm.subscriptions.publisher import Publisher

if TYPE_CHECKING:
    from aicm.ratelimit import RateLimits
    from aicm.resolvers.auth import AuthServices
    from aicm.runner.dispatch import TaskDispatcher
    from aicm.runner.executor import TaskExecutor


@dataclass
class Runtime:
    settings: Settings
    auth: AuthServices
    broker: Broker
    publisher: Publisher  # installed per request by http/middleware/publisher.py
    dispatcher: TaskDispatcher
    redis: Redis | None = None  # None = the embedded default (in-process broker and stores)
    executor: TaskExecutor | None = None  # None when tasks run in separate workers
    rate_limits: RateLimits | None = None  # None = nothing is rate limited (security.rate_limit)
    started_at: float = field(default_factory=time.time)

    @property
    def tokens(self) -> TokenService:
        return self.auth.tokens

    @property
    def broker_mode(self) -> str:
        return "redis" if self.redis is not None else "embedded"


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
