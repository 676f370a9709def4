"""GraphQL subscriptions over graphql-transport-ws: events, authorization, access loss and protocol checks."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from starlette.applications import Starlette

from aicm import models
from aicm.auth.permissions import VIEWER
from aicm.schema.relay import encode_id
from tests.factories import add_member, make_project, make_user, token_for
from tests.graphql import assert_ok, execute
from tests.ws import LEGACY_WS, GraphQLWS

PROJECT_EVENTS = """subscription($id: ID!) { projectEvents(projectId: $id) {
  type projectId actor { email } project { name } member { user { email } role { name } } } }"""
UPDATE = "mutation($id: ID!, $name: String!) { updateProject(id: $id, input: {name: $name}) { id } }"


async def world(app: Starlette):
    owner, watcher = await make_user("owner@example.com"), await make_user("watcher@example.com")
    project = await make_project(owner, "Live")
    await add_member(project, watcher, VIEWER)
    return owner, watcher, project


async def next_of(ws: GraphQLWS, op_id: str = "1", wait: float = 5.0) -> dict:
    """The next message for an operation (skipping pings)."""
    while True:
        message = await ws.receive(wait)
        if message.get("type") in {"ping", "pong"}:
            continue
        assert message.get("id") == op_id, message
        return message


async def test_an_event_arrives(app: Starlette, client: httpx.AsyncClient, server_url: str) -> None:
    # given a viewer subscribed to the project's events
    owner, watcher, project = await world(app)
    ws = await (await GraphQLWS.open(server_url, await token_for(app, watcher))).acked()
    await ws.subscribe("1", PROJECT_EVENTS, {"id": encode_id("Project", project.id)})
    await asyncio.sleep(0.2)
    # when the owner renames it
    assert_ok(
        await execute(
            client,
            UPDATE,
            {"id": encode_id("Project", project.id), "name": "Renamed"},
            token=await token_for(app, owner),
        )
    )
    # then
    message = await next_of(ws)
    assert message["type"] == "next"
    event = message["payload"]["data"]["projectEvents"]
    assert event["type"] == "PROJECT_UPDATED"
    assert event["project"] == {"name": "Renamed"}
    assert event["actor"] == {"email": "owner@example.com"}
    await ws.close()


async def test_an_outsider_is_refused(app: Starlette, client: httpx.AsyncClient, server_url: str) -> None:
    _, _, project = await world(app)
    outsider = await make_user()
    ws = await (await GraphQLWS.open(server_url, await token_for(app, outsider))).acked()
    await ws.subscribe("1", PROJECT_EVENTS, {"id": encode_id("Project", project.id)})
    message = await next_of(ws)
    assert message["type"] == "error"
    assert message["payload"][0]["extensions"]["code"] == "NOT_FOUND"
    await ws.close()


@pytest.mark.parametrize("token", [None, "garbage", "expired"])
async def test_connection_init_without_a_valid_token_is_closed_with_4403(
    app: Starlette, client: httpx.AsyncClient, server_url: str, token: str | None
) -> None:
    if token == "expired":
        user = await make_user()
        tokens = app.state.runtime.tokens
        lifetime, tokens.config.access_token_duration = tokens.config.access_token_duration, -10
        try:
            token = await token_for(app, user)
        finally:
            tokens.config.access_token_duration = lifetime
    ws = await GraphQLWS.open(server_url, token)
    assert await ws.closed_with() == 4403


async def test_the_upgrade_requests_header_also_authenticates(
    app: Starlette, client: httpx.AsyncClient, server_url: str
):
    _, watcher, _ = await world(app)
    ws = await GraphQLWS.open(server_url, None, header_token=await token_for(app, watcher))
    await ws.acked()
    await ws.close()


async def expect_forbidden_soon(ws: GraphQLWS, started: float) -> list[dict]:
    """Messages until the operation's FORBIDDEN error, which must come within 1 s of ``started``."""
    seen = []
    while True:
        message = await next_of(ws, wait=2.0)
        seen.append(message)
        if message["type"] == "error":
            assert message["payload"][0]["extensions"]["code"] == "FORBIDDEN", message
            assert time.monotonic() - started < 1.0
            return seen


async def test_removal_from_the_project_ends_the_subscription(
    app: Starlette, client: httpx.AsyncClient, server_url: str
):
    owner, watcher, project = await world(app)
    ws = await (await GraphQLWS.open(server_url, await token_for(app, watcher))).acked()
    await ws.subscribe("1", PROJECT_EVENTS, {"id": encode_id("Project", project.id)})
    await asyncio.sleep(0.2)
    started = time.monotonic()
    assert_ok(
        await execute(
            client,
            "mutation($p: ID!, $u: ID!) { removeProjectMember(projectId: $p, userId: $u) }",
            {"p": encode_id("Project", project.id), "u": encode_id("User", watcher.id)},
            token=await token_for(app, owner),
        )
    )
    seen = await expect_forbidden_soon(ws, started)
    removed = seen[0]["payload"]["data"]["projectEvents"]
    assert removed["type"] == "MEMBER_REMOVED"
    assert removed["member"] == {"user": {"email": "watcher@example.com"}, "role": {"name": VIEWER}}
    await ws.close()


async def test_deleting_the_project_ends_the_subscription(
    app: Starlette, client: httpx.AsyncClient, server_url: str
):
    owner, watcher, project = await world(app)
    ws = await (await GraphQLWS.open(server_url, await token_for(app, watcher))).acked()
    await ws.subscribe("1", PROJECT_EVENTS, {"id": encode_id("Project", project.id)})
    await asyncio.sleep(0.2)
    started = time.monotonic()
    assert_ok(
        await execute(
            client,
            "mutation($id: ID!) { deleteProject(id: $id) }",
            {"id": encode_id("Project", project.id)},
            token=await token_for(app, owner),
        )
    )
    seen = await expect_forbidden_soon(ws, started)
    assert seen[0]["payload"]["data"]["projectEvents"]["type"] == "PROJECT_DELETED"
    await ws.close()


async def test_deactivation_ends_the_subscription(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    _, watcher, project = await world(app)
    admin = await make_user(roles=("admin",))
    ws = await (await GraphQLWS.open(server_url, await token_for(app, watcher))).acked()
    await ws.subscribe("1", PROJECT_EVENTS, {"id": encode_id("Project", project.id)})
    await asyncio.sleep(0.2)
    started = time.monotonic()
    assert_ok(
        await execute(
            client,
            "mutation($id: ID!) { deactivateUser(id: $id) { isActive } }",
            {"id": encode_id("User", watcher.id)},
            token=await token_for(app, admin),
        )
    )
    await expect_forbidden_soon(ws, started)
    await ws.close()


async def test_revoking_the_session_ends_the_subscription(
    app: Starlette, client: httpx.AsyncClient, server_url: str
):
    _, watcher, project = await world(app)
    token = await token_for(app, watcher)
    ws = await (await GraphQLWS.open(server_url, token)).acked()
    await ws.subscribe("1", PROJECT_EVENTS, {"id": encode_id("Project", project.id)})
    await asyncio.sleep(0.2)
    started = time.monotonic()
    assert_ok(await execute(client, "mutation { logout }", token=token))
    await expect_forbidden_soon(ws, started)
    await ws.close()


async def test_the_socket_closes_when_the_access_token_expires(
    app: Starlette, client: httpx.AsyncClient, server_url: str
):
    _, watcher, _ = await world(app)
    tokens = app.state.runtime.tokens
    lifetime, tokens.config.access_token_duration = tokens.config.access_token_duration, 1
    try:
        token = await token_for(app, watcher)
    finally:
        tokens.config.access_token_duration = lifetime
    ws = await (await GraphQLWS.open(server_url, token)).acked()
    assert await ws.closed_with(wait=4) == 4403


async def test_at_most_twenty_subscriptions_per_connection(
    app: Starlette, client: httpx.AsyncClient, server_url: str
):
    _, watcher, project = await world(app)
    ws = await (await GraphQLWS.open(server_url, await token_for(app, watcher))).acked()
    for n in range(21):
        await ws.subscribe(str(n), PROJECT_EVENTS, {"id": encode_id("Project", project.id)})
    message = await next_of(ws, "20")
    assert message["type"] == "error"
    await ws.close()


async def test_connection_init_must_arrive_within_5_seconds(
    app: Starlette, client: httpx.AsyncClient, server_url: str
):
    ws = await GraphQLWS.open(server_url, init=False)
    assert await ws.closed_with(wait=8) == 4408


async def test_the_legacy_protocol_is_off_by_default(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    ws = await GraphQLWS.open(server_url, None, protocol=LEGACY_WS, init=False)
    assert await ws.closed_with() == 4406  # subprotocol not acceptable


async def test_browsers_from_unknown_origins_are_refused(
    app: Starlette, client: httpx.AsyncClient, server_url: str
):
    import websockets

    with pytest.raises(websockets.InvalidStatus):
        await GraphQLWS.open(server_url, None, origin="https://evil.example", init=False)


async def test_a_thousand_subscriptions_on_one_process(
    app: Starlette, client: httpx.AsyncClient, server_url: str
):
    # given 50 connections x 20 subscriptions
    owner, watcher, project = await world(app)
    token = await token_for(app, watcher)
    sockets = [await (await GraphQLWS.open(server_url, token)).acked() for _ in range(50)]
    stats = app.state.runtime.broker.stats
    before = stats.subscribers
    for ws in sockets:
        for n in range(20):
            await ws.subscribe(str(n), PROJECT_EVENTS, {"id": encode_id("Project", project.id)})
    deadline = time.monotonic() + 30
    while stats.subscribers < before + 1000:  # every subscription is authorized and listening
        assert time.monotonic() < deadline, f"only {stats.subscribers - before} subscriptions listening"
        await asyncio.sleep(0.05)
    # when one event is published
    assert_ok(
        await execute(
            client,
            UPDATE,
            {"id": encode_id("Project", project.id), "name": "Crowded"},
            token=await token_for(app, owner),
        )
    )

    # then every subscription receives it
    async def drain(ws: GraphQLWS) -> int:
        got = 0
        while got < 20:
            message = await ws.receive(10)
            if message.get("type") == "next":
                got += 1
        return got

    counts = await asyncio.gather(*(drain(ws) for ws in sockets))
    assert sum(counts) == 1000
    for ws in sockets:
        await ws.close()
    assert await models.Project.filter(id=project.id, name="Crowded").exists()


async def test_a_negative_after_seq_is_refused_with_bad_user_input(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    # given
    _, watcher, project = await world(app)
    task = await models.Task.create(project=project, prompt="p")
    ws = await (await GraphQLWS.open(server_url, await token_for(app, watcher))).acked()
    # when
    await ws.subscribe(
        "1",
        "subscription($id: ID!) { taskLogs(taskId: $id, afterSeq: -1) { seq } }",
        {"id": encode_id("Task", task.id)},
    )
    # then
    message = await next_of(ws)
    assert message["type"] == "error"
    assert message["payload"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "afterSeq"}
    await ws.close()
