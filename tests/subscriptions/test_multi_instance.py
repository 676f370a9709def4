"""Several app instances sharing PostgreSQL and Redis: events, revocations and a Redis restart."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette

from aicm.auth.permissions import VIEWER
from aicm.schema.relay import encode_id
from tests.conftest import Backend, require_services
from tests.factories import PASSWORD, add_member, make_project, make_user, token_for
from tests.graphql import assert_ok, execute
from tests.servers import TEST_JWT_SECRET, clean_env, free_port, serve
from tests.ws import GraphQLWS

EVENTS = "subscription($id: ID!) { projectEvents(projectId: $id) { type project { name } } }"
RENAME = "mutation($id: ID!, $name: String!) { updateProject(id: $id, input: {name: $name}) { id } }"


def server_env(redis_url: str | None = None) -> dict[str, str]:
    database_url, shared_redis = require_services()
    return clean_env(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url or shared_redis,
        JWT_SECRET=TEST_JWT_SECRET,
        APP_ENV="test",
    )


@pytest.fixture
def second_instance(backend: Backend, tmp_path: Path) -> Iterator[str]:
    """Another ``aicli-api serve`` on the same PostgreSQL and Redis as the in-process app."""
    if not backend.uses_services:
        pytest.skip("two instances share PostgreSQL and Redis")
    env = server_env()
    with serve(tmp_path, env) as base:
        yield base


async def test_an_event_crosses_instances(
    app: Starlette, client: httpx.AsyncClient, second_instance: str
) -> None:
    # given a subscriber on the second instance
    owner, watcher = await make_user(), await make_user()
    project = await make_project(owner, "Shared")
    await add_member(project, watcher, VIEWER)
    ws = await (
        await GraphQLWS.open(second_instance.removeprefix("http://"), await token_for(app, watcher))
    ).acked()
    await ws.subscribe("1", EVENTS, {"id": encode_id("Project", project.id)})
    await asyncio.sleep(0.5)
    # when the project changes through this instance
    assert_ok(
        await execute(
            client,
            RENAME,
            {"id": encode_id("Project", project.id), "name": "Across"},
            token=await token_for(app, owner),
        )
    )
    # then
    message = await ws.receive(5)
    assert message["type"] == "next", message
    assert message["payload"]["data"]["projectEvents"] == {
        "type": "PROJECT_UPDATED",
        "project": {"name": "Across"},
    }
    await ws.close()


async def test_logout_on_one_instance_is_refused_on_the_other_within_a_second(
    app: Starlette, client: httpx.AsyncClient, second_instance: str
) -> None:
    user = await make_user("twice@example.com")
    pair = assert_ok(
        await execute(
            client,
            'mutation { login(input: {email: "twice@example.com", password: '
            f'"{PASSWORD}"}}) {{ accessToken }} }}',
        )
    )["login"]
    headers = {"Authorization": f"Bearer {pair['accessToken']}"}
    async with httpx.AsyncClient(base_url=second_instance) as other:
        assert (
            await other.post("/graphql", json={"query": "{ me { id } }"}, headers=headers)
        ).status_code == 200
        assert_ok(await execute(client, "mutation { logout }", token=pair["accessToken"]))
        started = time.monotonic()
        while (
            await other.post("/graphql", json={"query": "{ me { id } }"}, headers=headers)
        ).status_code != 401:
            assert time.monotonic() - started < 1.0, "the other instance still accepts the token"
            await asyncio.sleep(0.05)
    assert user.id


class PersistentRedis:
    """A redis-server of the test's own that keeps its data on disk across a restart (like production)."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            for _ in range(100):
                try:
                    await client.ping()
                    return
                except Exception:
                    await asyncio.sleep(0.05)
            raise RuntimeError("redis-server did not come up")
        finally:
            await client.aclose()

    async def restart(self) -> None:
        client = Redis.from_url(self.url)
        await client.save()  # sessions survive the restart, as with RDB/AOF in production
        await client.aclose()
        await self.stop()
        await asyncio.sleep(0.5)
        await self.start()

    async def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=5)
            self.process = None


@pytest.fixture
async def persistent_redis(backend: Backend, tmp_path: Path) -> AsyncIterator[PersistentRedis]:
    if not backend.uses_services:
        pytest.skip("needs PostgreSQL and a redis-server")
    server = PersistentRedis(tmp_path)
    await server.start()
    yield server
    await server.stop()


async def test_events_still_arrive_after_redis_restarts(
    app: Starlette, client: httpx.AsyncClient, persistent_redis: PersistentRedis, tmp_path: Path
) -> None:
    # given an instance on a Redis server the test owns, and a subscriber on it
    owner = await make_user("restart@example.com")
    project = await make_project(owner, "Sturdy")
    with serve(tmp_path, server_env(persistent_redis.url)) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            login = f'mutation {{ login(input: {{email: "restart@example.com", password: "{PASSWORD}"}}) {{ accessToken }} }}'
            token = (await http.post("/graphql", json={"query": login})).json()["data"]["login"][
                "accessToken"
            ]
            ws = await (await GraphQLWS.open(base.removeprefix("http://"), token)).acked()
            await ws.subscribe("1", EVENTS, {"id": encode_id("Project", project.id)})
            await asyncio.sleep(0.5)
            # when Redis restarts mid-subscription
            await persistent_redis.restart()
            # then a later change still reaches the subscriber (retrying while the listener reconnects)
            headers = {"Authorization": f"Bearer {token}"}
            deadline = time.monotonic() + 15
            while True:
                name = f"After {time.monotonic():.3f}"
                answer = await http.post(
                    "/graphql",
                    json={
                        "query": RENAME,
                        "variables": {"id": encode_id("Project", project.id), "name": name},
                    },
                    headers=headers,
                )
                if answer.status_code == 503:  # Redis is still coming back: a clear, retryable answer
                    assert answer.json()["errors"][0]["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
                    assert time.monotonic() < deadline, "Redis did not come back"
                    await asyncio.sleep(0.2)
                    continue
                assert answer.status_code == 200, answer.text
                try:
                    message = await ws.receive(1.0)
                except TimeoutError:
                    assert time.monotonic() < deadline, "no event after the restart"
                    continue
                assert message["type"] == "next", message
                assert message["payload"]["data"]["projectEvents"]["type"] == "PROJECT_UPDATED"
                break
            await ws.close()
