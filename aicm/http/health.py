"""``GET /health`` and ``/health/detailed`` (CONTRACT §2): real checks, each bounded by a short timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from tortoise import connections

from aicm import __version__
from aicm.runtime import Runtime

CHECK_TIMEOUT = 2.0
HEALTHY, DEGRADED, UNHEALTHY, EMBEDDED = "healthy", "degraded", "unhealthy", "embedded"


async def _timed(check: Callable[[], Awaitable[Any]]) -> tuple[bool, float]:
    start = time.perf_counter()
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT)
        ok = True
    except Exception:
        ok = False
    return ok, round((time.perf_counter() - start) * 1000, 2)


async def _database() -> None:
    await connections.get("default").execute_query("SELECT 1")


def database_pool() -> dict[str, int]:
    """Sizes of the database connection pool (SQLite has one connection)."""
    client = connections.get("default")
    pool = getattr(client, "_pool", None)
    if pool is None or not hasattr(pool, "get_size"):
        return {"size": 1, "idle": 0, "max": 1}
    return {"size": pool.get_size(), "idle": pool.get_idle_size(), "max": pool.get_max_size()}


async def check(runtime: Runtime) -> dict[str, Any]:
    db_ok, db_ms = await _timed(_database)
    services: dict[str, str] = {"database": HEALTHY if db_ok else UNHEALTHY}
    latency: dict[str, float | None] = {"database": db_ms}
    if runtime.redis is None:
        services["redis"], latency["redis"] = EMBEDDED, None
        redis_ok = True
    else:
        redis_ok, latency["redis"] = await _timed(runtime.redis.ping)
        services["redis"] = HEALTHY if redis_ok else UNHEALTHY
    # auth = signing keys loaded and the session store (Redis when configured) reachable.
    services["auth"] = HEALTHY if runtime.tokens.keys.signing_key and redis_ok else UNHEALTHY
    if not db_ok:
        status = UNHEALTHY
    elif not redis_ok:
        status = DEGRADED
    else:
        status = HEALTHY
    return {"status": status, "services": services, "latency_ms": latency}


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def _timestamp() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


async def health(request: Request) -> JSONResponse:
    result = await check(_runtime(request))
    body = {"status": result["status"], "timestamp": _timestamp(), "services": result["services"]}
    return JSONResponse(body, status_code=503 if result["status"] == UNHEALTHY else 200)


async def health_detailed(request: Request) -> JSONResponse:
    runtime = _runtime(request)
    result = await check(runtime)
    body = {
        "status": result["status"],
        "timestamp": _timestamp(),
        "services": result["services"],
        "latency_ms": result["latency_ms"],
        "version": __version__,
        "uptime_seconds": round(time.time() - runtime.started_at, 1),
        "environment": runtime.settings.app.env,
        "broker": runtime.broker_mode,
        "database": {"pool": database_pool() if result["services"]["database"] == HEALTHY else None},
    }
    return JSONResponse(body, status_code=503 if result["status"] == UNHEALTHY else 200)
