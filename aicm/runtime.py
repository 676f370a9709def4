"""The process-wide services an app instance runs with, built once in the app's lifespan."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from aicm.auth.tokens import TokenService
from aicm.config import Settings
from aicm.subscriptions.broker import Broker
from aicm.subscriptions.publisher import Publisher

if TYPE_CHECKING:
    from aicm.ratelimit import RateLimits
    from aicm.resolvers.auth import AuthServices
    from aicm.runner.dispatch import TaskDispatcher
    from aicm.runner.executor import TaskExecutor
    from aicm.runner.workspace import Workspaces


@dataclass
class Runtime:
    settings: Settings
    auth: AuthServices
    broker: Broker
    publisher: Publisher  # installed per request by http/middleware/publisher.py
    dispatcher: TaskDispatcher
    workspaces: Workspaces  # the process's project repositories and task worktrees
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
