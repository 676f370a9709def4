"""``GET /health`` and ``/health/detailed`` (CONTRACT §2): real checks, each bounded by a short timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse
from tortoise import connections

from aicm import __version__
from aicm.runner.isolation import current_status, details
from aicm.runner.liveness import LIVE_WINDOW, SeenWorker, live_workers, queue_depth
from aicm.runtime import Runtime

CHECK_TIMEOUT = 2.0
T = TypeVar("T")
HEALTHY, DEGRADED, UNHEALTHY, EMBEDDED = "healthy", "degraded", "unhealthy", "embedded"


_abandoned: set[asyncio.Future[Any]] = set()


async def within(seconds: float, awaitable: Awaitable[T]) -> T:
    """``awaitable``'s result, or TimeoutError after ``seconds``. Unlike ``asyncio.wait_for`` it does not wait
    for the cancelled work to unwind: against a hung server the unwinding (returning a connection to its pool,
    say) hangs too, and a health check must answer anyway."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except BaseException:
        _abandon(task)
        raise
    if not done:
        _abandon(task)
        raise TimeoutError(f"no answer within {seconds:g}s")
    return task.result()


def _abandon(task: asyncio.Future[Any]) -> None:
    task.cancel()
    _abandoned.add(task)  # keep a reference until it is really done
    task.add_done_callback(_forget)


def _forget(task: asyncio.Future[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" noise


async def _timed(check: Callable[[], Awaitable[Any]]) -> tuple[bool, float]:
    start = time.perf_counter()
    try:
        await within(CHECK_TIMEOUT, check())
        ok = True
    except Exception:
        ok = False
    return ok, round((time.perf_counter() - start) * 1000, 2)


async def ping_database() -> None:
    """``SELECT 1`` on the default connection (no timeout of its own)."""
    await connections.get("default").execute_query("SELECT 1")


def database_pool() -> dict[str, int]:
    """This process's database connections: ``size`` open, ``idle``, ``in_use`` and the pool's ``max``.

    SQLite has one connection guarded by a lock: open while connected, in use while the lock is held.
    """
    try:
        client = connections.get("default")
    except Exception:  # Tortoise not initialised (yet, or any more)
        return {"size": 0, "idle": 0, "in_use": 0, "max": 0}
    if hasattr(client, "pool_maxsize"):  # PostgreSQL: the pool exists once the first query needed it
        pool = getattr(client, "_pool", None)
        if pool is None:
            return {"size": 0, "idle": 0, "in_use": 0, "max": client.pool_maxsize}
        size, idle = pool.get_size(), pool.get_idle_size()
        return {"size": size, "idle": idle, "in_use": size - idle, "max": pool.get_max_size()}
    opened = int(getattr(client, "_connection", None) is not None)
    lock = getattr(client, "_lock", None)
    busy = int(bool(opened and lock is not None and lock.locked()))
    return {"size": opened, "idle": opened - busy, "in_use": busy, "max": 1}


async def _ok() -> None:
    return None


async def _runner(runtime: Runtime) -> tuple[str, bool, list[SeenWorker] | None]:
    """``runner.embedded: false``: the workers seen in the last minute; (service state, tasks wait with no
    worker to take them, the workers). Embedded: this process runs the tasks."""
    if runtime.settings.runner.embedded or runtime.redis is None:
        return EMBEDDED, False, None
    try:
        workers, pending = await within(
            CHECK_TIMEOUT, asyncio.gather(live_workers(runtime.redis), queue_depth())
        )
    except Exception:
        return UNHEALTHY, False, None  # Redis or the database is down: their own entries say so
    return (HEALTHY if workers else UNHEALTHY), bool(pending and not workers), workers


async def check(runtime: Runtime) -> dict[str, Any]:
    """The dependencies at once, each within ``CHECK_TIMEOUT``: a hung one cannot hold the answer longer."""
    redis = runtime.redis
    (db_ok, db_ms), (redis_ok, redis_ms), (runner, stranded, workers), sandbox = await asyncio.gather(
        _timed(ping_database),
        _timed(redis.ping if redis is not None else _ok),
        _runner(runtime),
        current_status(runtime.settings),
    )
    services: dict[str, str] = {"database": HEALTHY if db_ok else UNHEALTHY}
    latency: dict[str, float | None] = {"database": db_ms}
    if redis is None:
        services["redis"], latency["redis"] = EMBEDDED, None
    else:
        services["redis"], latency["redis"] = (HEALTHY if redis_ok else UNHEALTHY), redis_ms
    # auth = signing keys loaded and the session store (Redis when configured) reachable.
    services["auth"] = HEALTHY if runtime.tokens.keys.signing_key and redis_ok else UNHEALTHY
    # runner: embedded, or whether a worker was seen in the last minute; tasks waiting with none is degraded
    services["runner"] = runner
    # sandbox: the isolation agent runs get here (CONTRACT §9), "bubblewrap" or "none"; informative only
    services["sandbox"] = sandbox.mode
    if not db_ok:
        status = UNHEALTHY
    elif not redis_ok or services["auth"] != HEALTHY or stranded:
        status = DEGRADED
    else:
        status = HEALTHY
    return {
        "status": status,
        "services": services,
        "latency_ms": latency,
        "workers": workers,
        "sandbox": details(runtime.settings, sandbox),
    }


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
        "broker_connected": runtime.broker.connected,
        "subscribers": runtime.broker.stats.subscribers,
        "database": {"pool": database_pool() if result["services"]["database"] == HEALTHY else None},
        "sandbox": result["sandbox"],
    }
    if result["workers"] is not None:  # runner.embedded: false
        body["workers"] = {
            "window_seconds": LIVE_WINDOW,
            "live": [{"id": w.id, "last_seen": _iso(w.last_seen)} for w in result["workers"]],
        }
    return JSONResponse(body, status_code=503 if result["status"] == UNHEALTHY else 200)


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
