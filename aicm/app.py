"""The application factory: routes, middleware and one lifespan that owns every resource."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from tortoise.contrib.starlette import RegisterTortoise

from aicm.auth.keys import load_keys
from aicm.auth.tokens import TokenService
from aicm.config import Settings, load_settings
from aicm.db import tortoise_config
from aicm.http import health
from aicm.http.graphql import GraphQLApp
from aicm.runtime import Runtime, make_redis


def build_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = make_redis(settings)
        app.state.runtime = Runtime(
            settings=settings, tokens=TokenService(load_keys(settings), settings.jwt), redis=redis
        )
        try:
            async with RegisterTortoise(app, config=tortoise_config(settings)):
                yield
        finally:
            if redis is not None:
                await redis.aclose()

    routes = []
    if settings.monitoring.health.enabled:
        path = settings.monitoring.health.path.rstrip("/")
        routes += [Route(path, health.health), Route(f"{path}/detailed", health.health_detailed)]
    graphql = GraphQLApp(settings)
    routes += [Route("/graphql", graphql, methods=["GET", "POST"]), WebSocketRoute("/graphql", graphql)]
    return Starlette(routes=routes, lifespan=lifespan)


def create_app() -> Starlette:
    """Entry point for uvicorn workers (``--workers N``): settings from the config file and environment."""
    return build_app(load_settings())
