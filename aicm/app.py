"""The application factory: routes, middleware and one lifespan that owns every resource."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route, WebSocketRoute
from tortoise.contrib.starlette import RegisterTortoise

from aicm.auth.keys import load_keys
from aicm.auth.lockout import make_login_throttle
from aicm.auth.sessions import make_session_store
from aicm.auth.tokens import TokenService
from aicm.config import Settings, load_settings
from aicm.db import tortoise_config
from aicm.http import health, metrics, oauth
from aicm.http.graphql import GraphQLApp
from aicm.http.middleware.access_log import AccessLogMiddleware
from aicm.http.middleware.request_id import RequestIdMiddleware
from aicm.logs import configure_logging
from aicm.resolvers.auth import AuthServices
from aicm.resolvers.unit_of_work import set_publisher
from aicm.runner.dispatch import LocalDispatcher, TaskDispatcher
from aicm.runner.executor import TaskExecutor
from aicm.runner.worker import QueueDispatcher, make_queue
from aicm.runtime import Runtime, make_redis
from aicm.subscriptions.broker import Broker, make_broker


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
            set_publisher(broker.publish)
            stack.callback(set_publisher, None)
            await stack.enter_async_context(metrics.sampling())
            executor, dispatcher = await _task_runner(settings, broker, redis is None, stack)
            auth = AuthServices(
                tokens=TokenService(load_keys(settings), settings.jwt),
                sessions=make_session_store(settings, redis),
                throttle=make_login_throttle(settings, redis),
                allow_registration=settings.auth.allow_registration,
            )
            app.state.runtime = Runtime(
                settings=settings,
                auth=auth,
                broker=broker,
                dispatcher=dispatcher,
                redis=redis,
                executor=executor,
            )
            yield

    routes = []
    if settings.monitoring.health.enabled:
        path = settings.monitoring.health.path.rstrip("/")
        routes += [Route(path, health.health), Route(f"{path}/detailed", health.health_detailed)]
    graphql = GraphQLApp(settings)
    routes += [Route("/graphql", graphql, methods=["GET", "POST"]), WebSocketRoute("/graphql", graphql)]
    routes += oauth.routes(settings)
    if settings.monitoring.metrics.enabled:
        routes.append(metrics.metrics_route(settings.monitoring.metrics))
    middleware = [
        # Outermost first: every later layer (and its log lines) sees the request id.
        Middleware(RequestIdMiddleware),
        Middleware(AccessLogMiddleware),
        *([Middleware(metrics.HTTPMetricsMiddleware)] if settings.monitoring.metrics.enabled else []),
    ]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


async def _task_runner(
    settings: Settings, broker: Broker, single_process: bool, stack: contextlib.AsyncExitStack
) -> tuple[TaskExecutor | None, TaskDispatcher]:
    """``runner.embedded``: this process runs tasks; otherwise they go to ``aicli-api worker`` processes."""
    if not settings.runner.embedded:
        queue = make_queue(settings)
        stack.push_async_callback(queue.disconnect)
        return None, QueueDispatcher(queue, broker)
    executor = TaskExecutor(settings, broker)
    await executor.start(single_process=single_process)
    stack.push_async_callback(executor.close)
    return executor, LocalDispatcher(executor)


def create_app() -> Starlette:
    """Entry point for uvicorn workers (``--workers N``): settings from the config file and environment."""
    settings = load_settings()
    configure_logging(settings.logging)
    return build_app(settings)
