"""What opening connections and streams checked is kept (``aicm.resolvers.open_checks``) only while nothing
that could change it was published, and never for another user or session: a revocation still refuses the
next open, and ends the streams already open, within a second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette

from aicm.resolvers.open_checks import OpenChecks
from aicm.schema.relay import encode_id
from aicm.subscriptions import channels
from aicm.subscriptions.in_process import InProcessBroker
from tests.factories import make_user, token_for
from tests.graphql import assert_ok, execute
from tests.subscriptions.test_graphql_subscriptions import (
    PROJECT_EVENTS,
    expect_forbidden_soon,
    next_of,
    world,
)
from tests.ws import GraphQLWS

REMOVE = "mutation($p: ID!, $u: ID!) { removeProjectMember(projectId: $p, userId: $u) }"


@pytest.fixture
async def broker() -> AsyncIterator[InProcessBroker]:
    async with InProcessBroker() as broker:
        yield broker


class Counting:
    """A check that counts its reads."""

    def __init__(self) -> None:
        self.reads = 0

    async def __call__(self) -> int:
        self.reads += 1
        await asyncio.sleep(0)
        return self.reads


async def test_an_answer_is_kept_until_an_event_on_a_watched_channel(broker: InProcessBroker) -> None:
    opens, load = OpenChecks(broker), Counting()
    watched = [channels.user(1), channels.roles()]
    assert await opens.remember("k", watched, load) == 1
    assert await opens.remember("k", watched, load) == 1  # kept
    await broker.publish(channels.project(9), {"type": "PROJECT_UPDATED"})  # not watched
    assert await opens.remember("k", watched, load) == 1
    await broker.publish(channels.roles(), {"type": "ROLE_UPDATED", "role_id": 3})
    assert await opens.remember("k", watched, load) == 2  # dropped at the event, read anew
    assert len(opens) == 1 and broker.channel_count == 2  # the new answer's watch; the old one is gone
    assert broker.stats.subscribers == 0  # the gauge counts streams, not watches
    opens.clear()
    assert broker.channel_count == 0


async def test_an_answer_lives_at_most_its_ttl_and_then_lets_go_of_its_watch(broker: InProcessBroker) -> None:
    opens, load = OpenChecks(broker, ttl=0.05), Counting()
    await opens.remember("k", [channels.user(1)], load)
    await asyncio.sleep(0.1)
    assert len(opens) == 0 and broker.channel_count == 0
    assert await opens.remember("k", [channels.user(1)], load) == 2
    opens.clear()


async def test_keys_do_not_share_answers_and_refusals_are_not_kept(broker: InProcessBroker) -> None:
    opens, load = OpenChecks(broker), Counting()
    assert await opens.remember(("viewer", 1, "s1"), [channels.user(1)], load) == 1
    assert await opens.remember(("viewer", 1, "s2"), [channels.user(1)], load) == 2
    assert await opens.remember(("viewer", 2, "s1"), [channels.user(2)], load) == 3

    async def refuse() -> int:
        raise PermissionError

    for _ in range(2):
        with pytest.raises(PermissionError):
            await opens.remember("refused", [channels.user(3)], refuse)
    assert len(opens) == 3
    opens.clear()


async def test_opens_arriving_together_share_one_read(broker: InProcessBroker) -> None:
    opens, load = OpenChecks(broker), Counting()
    answers = await asyncio.gather(*(opens.remember("k", [channels.user(1)], load) for _ in range(50)))
    assert answers == [1] * 50 and load.reads == 1
    opens.clear()


async def test_an_answer_read_while_an_event_came_is_not_kept(broker: InProcessBroker) -> None:
    opens = OpenChecks(broker)

    async def racing() -> str:
        await broker.publish(channels.session("s1"), {"type": "SESSION_REVOKED"})  # while it reads
        return "read before the revocation"

    assert await opens.remember("k", [channels.session("s1")], racing) == "read before the revocation"
    assert len(opens) == 0 and broker.channel_count == 0


async def subscribed(server_url: str, token: str, project_id: int) -> GraphQLWS:
    ws = await (await GraphQLWS.open(server_url, token)).acked()
    await ws.subscribe("1", PROJECT_EVENTS, {"id": encode_id("Project", project_id)})
    return ws


async def test_removal_refuses_the_next_open_at_once_though_its_answer_was_kept(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    owner, watcher, project = await world(app)
    token = await token_for(app, watcher)
    first = await subscribed(server_url, token, project.id)
    await asyncio.sleep(0.1)
    assert len(app.state.runtime.auth.opens) >= 2  # the viewer and the project access are kept
    started = time.monotonic()
    variables = {"p": encode_id("Project", project.id), "u": encode_id("User", watcher.id)}
    assert_ok(await execute(client, REMOVE, variables, token=await token_for(app, owner)))
    second = await subscribed(server_url, token, project.id)  # well within the kept answer's second
    refused = await next_of(second)
    assert refused["type"] == "error" and refused["payload"][0]["extensions"]["code"] == "NOT_FOUND"
    await expect_forbidden_soon(first, started)
    await first.close()
    await second.close()


async def test_a_kept_answer_never_serves_another_user_or_session(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    _, watcher, project = await world(app)
    member = await subscribed(server_url, await token_for(app, watcher), project.id)
    await asyncio.sleep(0.1)
    # another user on the same project: refused as ever
    outsider = await subscribed(server_url, await token_for(app, await make_user()), project.id)
    refused = await next_of(outsider)
    assert refused["payload"][0]["extensions"]["code"] == "NOT_FOUND"
    # another, ended session of the same user: its connection is refused
    ended = await token_for(app, watcher)
    assert_ok(await execute(client, "mutation { logout }", token=ended))
    ws = await GraphQLWS.open(server_url, ended)
    assert await ws.closed_with() == 4403
    await member.close()
    await outsider.close()


async def test_a_revoked_session_refuses_its_next_connection_at_once(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    _, watcher, project = await world(app)
    token = await token_for(app, watcher)
    first = await subscribed(server_url, token, project.id)
    await asyncio.sleep(0.1)
    started = time.monotonic()
    assert_ok(await execute(client, "mutation { logout }", token=token))
    ws = await GraphQLWS.open(server_url, token)
    assert await ws.closed_with() == 4403
    await expect_forbidden_soon(first, started)
    await first.close()
