"""Fixtures of the HTTP tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette

from aicm.config import RateLimitConfig
from aicm.ratelimit import MemoryLimiter, RateLimits, RedisLimiter
from tests.conftest import Backend

TIGHT = RateLimitConfig(
    requests_per_second=0.01, burst_size=3, window_size=60, auth_requests_per_minute=0.6, auth_burst_size=2
)


@pytest.fixture
async def tight(app: Starlette, backend: Backend, db: None) -> AsyncIterator[RateLimits]:
    """The session app's runtime with tiny limits (in Redis on the services backend); restored after."""
    runtime = app.state.runtime
    saved = runtime.rate_limits
    limiter = (
        RedisLimiter(runtime.redis, prefix=f"aicm-test-{uuid.uuid4().hex}:")
        if runtime.redis
        else MemoryLimiter()
    )
    runtime.rate_limits = RateLimits(TIGHT, limiter)
    try:
        yield runtime.rate_limits
    finally:
        runtime.rate_limits = saved
