"""Shared fixtures.

``backend`` runs every app-level test twice: on the embedded default (SQLite + in-process broker) and on real
PostgreSQL + Redis (``AICM_TEST_DATABASE_URL`` / ``AICM_TEST_REDIS_URL``). Without those variables the
services half skips, unless ``AICM_REQUIRE_SERVICES=1`` turns the skip into a failure.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from tortoise import connections
from tortoise.backends.base.executor import EXECUTOR_CACHE

from aicm.app import build_app
from aicm.config import Settings, load_settings
from aicm.db import apply_migrations
from tests.servers import TEST_JWT_SECRET

EMBEDDED, SERVICES = "embedded", "services"
REQUIRE_SERVICES = os.environ.get("AICM_REQUIRE_SERVICES") == "1"
TEST_DATABASE_URL = os.environ.get("AICM_TEST_DATABASE_URL", "")
TEST_REDIS_URL = os.environ.get("AICM_TEST_REDIS_URL", "")

AGENT_SCRIPTS = Path(__file__).resolve().parent / "runner" / "fixtures"

# The bundled demo agent stands in for the Claude CLI (the same interpreter, so it runs wherever tests run).
DEMO_AGENT = [
    sys.executable,
    "-m",
    "aicm.runner.demo_agent",
    "-p",
    "{prompt}",
    "--output-format",
    "stream-json",
    "--verbose",
]

# Child tables first: cleaning between tests must respect foreign keys.
TABLES = [
    "webhook_deliveries",
    "webhook_jobs",
    "webhooks",
    "approval_requests",
    "task_logs",
    "task_sessions",
    "tasks",
    "oauth_accounts",
    "audit_log",
    "project_members",
    "projects",
    "user_roles",
    "users",
]


def require_services() -> tuple[str, str]:
    """The PostgreSQL and Redis URLs, or a skip (a failure under AICM_REQUIRE_SERVICES=1)."""
    if TEST_DATABASE_URL and TEST_REDIS_URL:
        return TEST_DATABASE_URL, TEST_REDIS_URL
    message = "AICM_TEST_DATABASE_URL and AICM_TEST_REDIS_URL are not set"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (AICM_REQUIRE_SERVICES=1)")
    pytest.skip(message)


def make_settings(tmp: Path, backend: str, **env: str) -> Settings:
    environ = {"APP_ENV": "test", **env}
    if backend == SERVICES:
        database_url, redis_url = require_services()
        environ |= {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "JWT_SECRET": TEST_JWT_SECRET}
    else:
        environ["DATABASE_URL"] = f"sqlite://{tmp / 'aicm.db'}"
    settings = load_settings(None, environ=environ, cwd=tmp)
    settings.app.data_dir = str(tmp / "data")
    settings.runner.workspace_root = str(tmp / "workspaces")
    settings.runner.command = DEMO_AGENT
    # CLAUDE_CONFIG_DIR: where an unsandboxed demo agent keeps its session files (the sandbox sets its own)
    settings.runner.env = {"AICM_DEMO_DELAY": "0", "CLAUDE_CONFIG_DIR": str(tmp / "claude")}
    # No Claude Code flags (and so no tool approvals to wait for) unless a test asks for them:
    # tests/runner/test_approvals.py sets runner.agent_cli to claude.
    settings.runner.agent_cli = "generic"
    # Agents run in the sandbox when bubblewrap works: the test agents' scripts must be visible inside it.
    settings.runner.sandbox_paths.read_only = [str(AGENT_SCRIPTS)]
    # The suite signs in many times from 127.0.0.1 and opens 1000 subscriptions at once, 50 connections of one
    # user: the limiter runs on every request but its buckets (and connection cap) are deep enough never to trip
    # here (a client sending 2000 requests in a row still is limited). tests/http/test_rate_limit.py and
    # tests/subscriptions/test_ws_limits.py test the limits with tight settings of their own.
    rate = settings.security.rate_limit
    rate.burst_size = 1500
    rate.auth_requests_per_minute, rate.auth_burst_size = 60_000_000, 1_000_000
    rate.max_ws_connections_per_user = 100
    return settings


@dataclass
class Backend:
    name: str
    settings: Settings

    @property
    def uses_services(self) -> bool:
        return self.name == SERVICES


@pytest.fixture(scope="session", params=[EMBEDDED, SERVICES])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    tmp = tmp_path_factory.mktemp(request.param)
    yield Backend(request.param, make_settings(tmp, request.param))


@pytest.fixture(scope="session")
async def app(backend: Backend) -> AsyncIterator[Starlette]:
    # Tortoise caches compiled SQL per connection name, and both backends use "default" in this process.
    EXECUTOR_CACHE.clear()
    if backend.uses_services:
        await _reset_services(backend.settings)
    await apply_migrations(backend.settings)
    application = build_app(backend.settings)
    async with application.router.lifespan_context(application):
        yield application


async def _reset_services(settings: Settings) -> None:
    """Drop everything in the test database and Redis db so each run starts from nothing."""
    import asyncpg
    from redis.asyncio import Redis

    conn = await asyncpg.connect(settings.database.dsn)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await conn.close()
    redis = Redis.from_url(settings.redis.dsn)
    await redis.flushdb()
    await redis.aclose()


@pytest.fixture
async def db(app: Starlette, backend: Backend) -> AsyncIterator[None]:
    """A clean database (built-in roles kept) and a clean Redis db for one test."""
    yield
    if app.state.runtime.executor is not None:  # a test's agents must not outlive its rows
        await app.state.runtime.executor.cancel_everything()
    conn = connections.get("default")
    for table in TABLES:
        await conn.execute_query(f'DELETE FROM "{table}"')
    await conn.execute_query(
        'DELETE FROM "roles" WHERE built_in = ' + ("FALSE" if backend.uses_services else "0")
    )
    runtime = app.state.runtime
    if runtime.redis is not None:
        await runtime.redis.flushdb()


@pytest.fixture(scope="session")
async def server_url(app: Starlette) -> AsyncIterator[str]:
    """The session's app served by uvicorn on a loopback port (for WebSocket clients); lifespan already runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_config=None, ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.025)
    assert server.started, "uvicorn did not start"
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(serving, 10)


@pytest.fixture
async def client(app: Starlette, db: None) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http
