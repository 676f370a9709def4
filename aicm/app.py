"""The application factory: routes, middleware and one lifespan that owns every resource."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route, WebSocketRoute
from tortoise.contrib.starlette import RegisterTortoise

from aicm.auth.keys import load_keys
from aicm.auth.lockout import make_login_throttle
from aicm.auth.session_stores import make_session_store
from aicm.auth.tokens import TokenService
from aicm.config import Settings, load_settings
from aicm.db import tortoise_config
from aicm.http import console, health, metrics, oauth
from aicm.http.graphql import GraphQLApp
from aicm.http.middleware.access_log import AccessLogMiddleware
from aicm.http.middleware.client_ip import ClientIPMiddleware
from aicm.http.middleware.csrf import CSRFMiddleware
from aicm.http.middleware.publisher import PublisherMiddleware
from aicm.http.middleware.rate_limit import RateLimitMiddleware
from aicm.http.middleware.request_id import RequestIdMiddleware
from aicm.http.middleware.security_headers import SecurityHeadersMiddleware, cors_options, hsts_value
from aicm.http.middleware.websocket_shortcut import WebSocketShortcut
from aicm.http.websocket import RawSend
from aicm.logs.setup import configure_logging
from aicm.ratelimit import make_rate_limits
from aicm.redis_pool import make_redis
from aicm.resolvers.auth import AuthServices
from aicm.resolvers.open_checks import OpenChecks
from aicm.runner.dispatch import LocalDispatcher, TaskDispatcher
from aicm.runner.executor import TaskExecutor
from aicm.runner.worker import QueueDispatcher, make_queue
from aicm.runner.workspace import Workspaces
from aicm.runtime import Runtime
from aicm.subscriptions.broker import Broker
from aicm.subscriptions.factory import make_broker
from aicm.subscriptions.publisher import Publisher, installed


def build_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            redis = make_redis(settings)
            if redis is not None:
                stack.push_async_callback(redis.aclose)
            await stack.enter_async_context(RegisterTortoise(app, config=tortoise_config(settings)))
            broker = make_broker(settings, client=redis)
            await broker.start()
            stack.push_async_callback(broker.close)
            publisher = Publisher(broker)
            stack.enter_context(installed(publisher))  # for the tasks the lifespan starts (embedded runner)
            await stack.enter_async_context(metrics.sampling())
            workspaces = Workspaces(settings)
            executor, dispatcher = await _task_runner(settings, broker, workspaces, redis is None, stack)
            opens = OpenChecks(broker)
            stack.callback(opens.clear)
            auth = AuthServices(
                tokens=TokenService(load_keys(settings), settings.jwt),
                sessions=make_session_store(settings, redis),
                throttle=make_login_throttle(settings, redis),
                allow_registration=settings.auth.allow_registration,
                opens=opens,
            )
            app.state.runtime = Runtime(
                settings=settings,
                auth=auth,
                broker=broker,
                publisher=publisher,
                dispatcher=dispatcher,
                redis=redis,
                executor=executor,
                workspaces=workspaces,
                rate_limits=make_rate_limits(settings, redis),
            )
            _freeze_startup_objects()
            yield

    routes = []
    if settings.monitoring.health.enabled:
        path = settings.monitoring.health.path.rstrip("/")
        routes += [Route(path, health.health), Route(f"{path}/detailed", health.health_detailed)]
    graphql = GraphQLApp(settings)
    routes += [Route("/graphql", graphql, methods=["GET", "POST"]), WebSocketRoute("/graphql", graphql)]
    routes += oauth.routes(settings)
    routes += console.routes(settings)
    if settings.monitoring.metrics.enabled:
        routes.append(metrics.metrics_route(settings.monitoring.metrics))
    middleware = [
        # Outermost first: the server's own send of each WebSocket, for its frames (aicm/http/websocket.py).
        Middleware(RawSend),
        # Every later layer (and its log lines) sees the request id.
        Middleware(RequestIdMiddleware),
        Middleware(PublisherMiddleware),
        Middleware(ClientIPMiddleware, trusted_proxies=settings.server.trusted_proxies),
        # WebSocket connections go on through the rate limit only (the rest is HTTP's; less held per socket).
        Middleware(WebSocketShortcut, websocket_middleware=[_rate_limit(settings)]),
        Middleware(AccessLogMiddleware),
        *([Middleware(metrics.HTTPMetricsMiddleware)] if settings.monitoring.metrics.enabled else []),
        *_security_middleware(settings),
    ]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


def _rate_limit(settings: Settings) -> Middleware:
    exempt = {settings.monitoring.metrics.path}
    if settings.monitoring.health.enabled:
        health_path = settings.monitoring.health.path.rstrip("/")
        exempt |= {health_path, f"{health_path}/detailed"}
    return Middleware(RateLimitMiddleware, exempt_paths=exempt, auth_paths=("/auth/oauth/",))


def _security_middleware(settings: Settings) -> list[Middleware]:
    """Headers on every response (429s and CORS answers included), CORS, then the per-client rate limit,
    then the GraphQL endpoint's CSRF rules."""
    cors = cors_options(settings)
    return [
        Middleware(SecurityHeadersMiddleware, hsts=hsts_value(settings.security.hsts)),
        *([Middleware(CORSMiddleware, **cors)] if cors else []),
        _rate_limit(settings),
        Middleware(CSRFMiddleware, path="/graphql", double_submit=settings.security.refresh_cookie.enabled),
    ]


async def _task_runner(
    settings: Settings,
    broker: Broker,
    workspaces: Workspaces,
    single_process: bool,
    stack: contextlib.AsyncExitStack,
) -> tuple[TaskExecutor | None, TaskDispatcher]:
    """``runner.embedded``: this process runs tasks; otherwise they go to ``aicli-api worker`` processes."""
    if not settings.runner.embedded:
        queue = make_queue(settings)
        stack.push_async_callback(queue.disconnect)
        return None, QueueDispatcher(queue, broker)
    executor = TaskExecutor(settings, broker, workspaces=workspaces)
    await executor.start(single_process=single_process)
    stack.push_async_callback(executor.close)
    return executor, LocalDispatcher(executor)


def _freeze_startup_objects() -> None:
    """Move what start-up left alive (modules, the schema, the ORM's metadata: ~135k objects) out of the
    cyclic collector's sight, so that its full collections scan only what requests create. make bench
    measured ~25 % less server CPU per `projects(first: 20)` request with owner and members
    (docs/performance.md)."""
    gc.collect()
    gc.freeze()


def create_app() -> Starlette:
    """Entry point for uvicorn workers (``--workers N``): settings from the config file and environment."""
    settings = load_settings()
    configure_logging(settings.logging)
    return build_app(settings)
