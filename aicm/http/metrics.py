"""``GET /metrics`` (CONTRACT §2): Prometheus text through starlette-exporter, right with ``--workers N`` too.

- :class:`HTTPMetricsMiddleware` records ``http_requests_total{method,path,status}`` and
  ``http_request_duration_seconds``; ``path`` is the route template, so label values stay bounded.
- :func:`metrics_route` serves the registry. Before answering it reads the gauges that describe shared state
  (sessions in the store, the database pool), so they are never stale. ``monitoring.metrics.bearer_token``
  and ``allowed_ips`` guard it; when both are set a scraper needs both.
- ``aicli-api serve --workers N`` gives prometheus_client's multiprocess mode a fresh directory
  (``PROMETHEUS_MULTIPROC_DIR``); ``/metrics`` then adds up every worker's files, whichever worker answers.
  prometheus_client itself reads that variable, so this module reads it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import math
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Gauge,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette_exporter import PrometheusMiddleware

from aicm.http.health import database_pool, ping_database, within
from aicm.logs.context import client_ip
from aicm.metrics import (
    ACTIVE_SESSIONS,
    DATABASE_CONNECTIONS,
    DATABASE_CONNECTIONS_IN_USE,
    DATABASE_CONNECTIONS_MAX,
    DATABASE_PING,
    HTTP_DURATION,
    HTTP_REQUESTS,
    TASK_QUEUE_DEPTH,
    WORKERS_LIVE,
    WORKSPACE_DISK_FREE,
    WORKSPACE_DISK_TOTAL,
)
from aicm.runner.liveness import live_workers, queue_depth

if TYPE_CHECKING:
    from prometheus_client.metrics import MetricWrapperBase
    from starlette.types import ASGIApp, Receive, Scope, Send

    from aicm.config import MetricsConfig
    from aicm.runtime import Runtime

__all__ = [
    "MULTIPROC_ENV",
    "HTTPMetricsMiddleware",
    "metrics_route",
    "refresh",
    "sampling",
]

log = logging.getLogger("aicm.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SCRAPE_READ_TIMEOUT = 1.0  # seconds a scrape waits for the session store
SAMPLE_INTERVAL = 5.0  # seconds between pool samples in each worker (multiprocess mode)


# --- HTTP request metrics -------------------------------------------------------------------------


class _WithoutAppName:
    """Exporter labels are (method, path, status_code, app_name); the guide wants method, path, status."""

    def __init__(self, metric: MetricWrapperBase) -> None:
        self.metric = metric

    def labels(self, method: str, path: str, status: Any, _app_name: str, *_extra: str) -> Any:
        return self.metric.labels(method, path, str(status))


class _RouteOf:
    """Runs inside the exporter: a request answered before the router saw it (a 429 from the rate limiter, a
    413) is given the endpoint of the route it was for, so it is counted under that route's template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http" and scope.get("endpoint") is None:
                _match_route(scope)


def _match_route(scope: Scope) -> None:
    router = getattr(scope.get("app"), "router", None)
    for route in getattr(router, "routes", ()):
        match, child = route.matches(scope)
        if match == Match.FULL:
            scope["endpoint"], scope["router"] = child.get("endpoint", route), router
            return


class HTTPMetricsMiddleware(PrometheusMiddleware):
    """starlette-exporter's middleware with the operations guide's names.

    ``path`` is the matched route template (``/graphql`` is one path whatever the query); requests that match
    no route are counted as ``__unknown__`` rather than under the path a client made up.

    >>> Middleware(HTTPMetricsMiddleware)  # doctest: +SKIP
    """

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        options = {
            "app_name": "aicm",
            "prefix": "http",
            "group_paths": True,
            "filter_unhandled_paths": False,
            "group_unhandled_paths": True,
            **options,
        }
        super().__init__(_RouteOf(app), **options)
        self._count = _WithoutAppName(HTTP_REQUESTS)
        self._time = _WithoutAppName(HTTP_DURATION)

    @property
    def request_count(self) -> Any:
        return self._count

    @property
    def request_time(self) -> Any:
        return self._time


# --- gauges read at scrape time -------------------------------------------------------------------


def sample_pool() -> None:
    """Copy this process's database pool sizes into the ``database_connections_*`` gauges."""
    pool = database_pool()
    DATABASE_CONNECTIONS.set(pool["size"])
    DATABASE_CONNECTIONS_IN_USE.set(pool["in_use"])
    DATABASE_CONNECTIONS_MAX.set(pool["max"])


async def refresh(runtime: Runtime | None) -> None:
    """Update the gauges that describe shared state; a slow or absent dependency leaves its gauge as it was
    (``database_ping_duration_seconds`` becomes NaN: no measurement)."""
    sample_pool()
    if os.environ.get(MULTIPROC_ENV):
        _mirror_process()
    if runtime is None:
        return
    _sample_disk(Path(runtime.settings.runner.workspace_root))
    await asyncio.gather(_sample_sessions(runtime), _sample_database(), _sample_runner(runtime))


async def _sample_sessions(runtime: Runtime) -> None:
    try:
        ACTIVE_SESSIONS.set(await within(SCRAPE_READ_TIMEOUT, runtime.auth.sessions.count_active()))
    except Exception as exc:
        log.warning(
            "could not count active sessions: %s", exc, extra={"event": "metrics_sessions_unavailable"}
        )


async def _sample_runner(runtime: Runtime) -> None:
    with contextlib.suppress(Exception):
        TASK_QUEUE_DEPTH.set(await within(SCRAPE_READ_TIMEOUT, queue_depth()))
    if runtime.redis is not None:
        with contextlib.suppress(Exception):
            WORKERS_LIVE.set(len(await within(SCRAPE_READ_TIMEOUT, live_workers(runtime.redis))))


async def _sample_database() -> None:
    started = time.perf_counter()
    try:
        await within(SCRAPE_READ_TIMEOUT, ping_database())
    except Exception:
        DATABASE_PING.set(math.nan)
    else:
        DATABASE_PING.set(time.perf_counter() - started)


def _sample_disk(path: Path) -> None:
    for candidate in (path, *path.absolute().parents):  # the workspace root may not exist yet
        try:
            usage = shutil.disk_usage(candidate)
        except OSError:
            continue
        WORKSPACE_DISK_FREE.set(usage.free)
        WORKSPACE_DISK_TOTAL.set(usage.total)
        return


# Multiprocess mode has no process collector (it would describe whichever worker answers): each worker
# writes its own figures under the usual names instead, and /metrics adds up the live ones.
_PROCESS_HELP = {
    "process_cpu_seconds_total": "CPU seconds used by the live workers",
    "process_resident_memory_bytes": "Resident memory of the live workers",
    "process_open_fds": "Open file descriptors of the live workers",
}
_process_gauges: dict[str, Gauge] = {}


def _mirror_process() -> None:
    if not _process_gauges:
        for name, text in _PROCESS_HELP.items():
            _process_gauges[name] = Gauge(name, text, registry=None, multiprocess_mode="livesum")
    for family in ProcessCollector(registry=None).collect():
        for sample in family.samples:
            gauge = _process_gauges.get(sample.name)
            if gauge is not None:
                gauge.set(sample.value)


@contextlib.asynccontextmanager
async def sampling(interval: float = SAMPLE_INTERVAL) -> AsyncIterator[None]:
    """In multiprocess mode, keep sampling the pool and the process so every worker's share is current, not
    just the scraped worker's. A no-op in a single process (the scrape itself samples)."""
    if not os.environ.get(MULTIPROC_ENV):
        yield
        return

    async def loop() -> None:
        while True:
            sample_pool()
            _mirror_process()
            await asyncio.sleep(interval)

    task = asyncio.create_task(loop(), name="aicm-metrics-sampler")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# --- the endpoint ---------------------------------------------------------------------------------


class _Guard:
    def __init__(self, config: MetricsConfig) -> None:
        self.token = config.bearer_token.encode()
        self.networks = [ipaddress.ip_network(net, strict=False) for net in config.allowed_ips]

    def refusal(self, request: Request) -> Response | None:
        if self.networks and not self._allowed_ip(client_ip(request.scope)):
            return JSONResponse({"error": "forbidden"}, status_code=403)
        if self.token:
            scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
            given = credentials.strip().encode()
            if scheme.lower() != "bearer" or not hmac.compare_digest(given, self.token):
                return JSONResponse(
                    {"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
                )
        return None

    def _allowed_ip(self, ip: str | None) -> bool:
        try:
            address = ipaddress.ip_address(ip or "")
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


def _exposition() -> bytes:
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return generate_latest(REGISTRY)
    _forget_dead_workers(Path(directory))
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return generate_latest(registry)


def _forget_dead_workers(directory: Path) -> None:
    """Drop the live-gauge files of workers that are gone (a restarted worker must not count twice)."""
    for path in directory.glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), str(directory))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def metrics_route(config: MetricsConfig) -> Route:
    """``GET <monitoring.metrics.path>``: the Prometheus text exposition format."""
    guard = _Guard(config)

    async def metrics(request: Request) -> Response:
        refused = guard.refusal(request)
        if refused is not None:
            return refused
        await refresh(getattr(request.app.state, "runtime", None))
        body = await run_in_threadpool(_exposition)  # multiprocess mode reads a file per worker and metric
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return Route(config.path, metrics, methods=["GET"], name="metrics")
