"""Direct delivery (aicm.subscriptions.direct): an operation selecting only the event's own fields gets its
frames written during the fan-out, each under its own id, in order with whatever goes the per-subscriber way,
with authorization still per subscriber and a slow socket's backlog still bounded in bytes."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import websockets
from starlette.applications import Starlette

from aicm import models
from aicm.schema.relay import encode_id
from aicm.subscriptions import channels
from tests.factories import make_user, token_for
from tests.graphql import assert_ok, execute
from tests.subscriptions.test_graphql_subscriptions import PROJECT_EVENTS, next_of, world
from tests.ws import TRANSPORT_WS, GraphQLWS

PLAIN = "subscription($id: ID!) { projectEvents(projectId: $id) { type projectId at } }"
PLAIN_FRAGMENT = """subscription($id: ID!) { projectEvents(projectId: $id) { ...E } }
fragment E on ProjectEvent { kind: type at __typename }"""
REMOVE = "mutation($p: ID!, $u: ID!) { removeProjectMember(projectId: $p, userId: $u) }"
LONG_ID = "x" * 2048
START = datetime(2026, 1, 1, tzinfo=UTC)


def at(n: int) -> str:
    return (START + timedelta(seconds=n)).isoformat()


def seconds(event: dict) -> int:
    return int((datetime.fromisoformat(event["at"]) - START).total_seconds())


async def publish(
    app: Starlette, project: models.Project, n: int, kind: str = "PROJECT_UPDATED", **extra
) -> None:
    payload = {"type": kind, "project_id": project.id, "at": at(n), **extra}
    await app.state.runtime.broker.publish(channels.project(project.id), payload)


async def settled(app: Starlette, subscribers: int) -> None:
    """Until the broker holds ``subscribers`` open subscriptions."""
    broker = app.state.runtime.broker
    for _ in range(100):
        if broker.stats.subscribers == subscribers:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{broker.stats.subscribers} subscribers, expected {subscribers}")


async def test_each_subscriber_of_a_plain_selection_gets_the_frame_directly_under_its_own_id(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    # given two viewers, three operations with a selection of the event's own fields (one of them through a
    # fragment), and one asking for a field resolved as its viewer sees it
    owner, watcher, project = await world(app)
    variables = {"id": encode_id("Project", project.id)}
    broker = app.state.runtime.broker
    base = broker.stats.subscribers
    first = await (await GraphQLWS.open(server_url, await token_for(app, watcher))).acked()
    second = await (await GraphQLWS.open(server_url, await token_for(app, owner))).acked()
    await first.subscribe("a", PLAIN, variables)
    await first.subscribe("rich", PROJECT_EVENTS, variables)
    await second.subscribe("b", PLAIN, variables)
    await second.subscribe("c", PLAIN_FRAGMENT, variables)
    await settled(app, base + 4)
    direct = broker.stats.direct
    # when the owner renames the project
    update = {"id": variables["id"], "name": "Renamed"}
    assert_ok(
        await execute(
            client,
            "mutation($id: ID!, $name: String!) { updateProject(id: $id, input: {name: $name}) { id } }",
            update,
            token=await token_for(app, owner),
        )
    )
    # then every operation gets it under its own id
    messages = {}
    for ws in (first, first, second, second):
        message = await ws.receive(5)
        messages[message["id"]] = message
    assert set(messages) == {"a", "b", "c", "rich"}
    events = {key: message["payload"]["data"]["projectEvents"] for key, message in messages.items()}
    assert (
        events["a"]
        == events["b"]
        == {"type": "PROJECT_UPDATED", "projectId": variables["id"], "at": events["a"]["at"]}
    )
    assert events["c"] == {"kind": "PROJECT_UPDATED", "at": events["a"]["at"], "__typename": "ProjectEvent"}
    # the viewer-dependent selection was resolved for its own viewer, the usual way
    assert events["rich"]["actor"] == {"email": "owner@example.com"}
    assert events["rich"]["project"] == {"name": "Renamed"}
    assert broker.stats.direct - direct == 3
    await first.close()
    await second.close()


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize("id_length", [1, 200, 70_000])  # frames under 126 bytes, under 64 KiB, over
async def test_frames_of_every_length_are_framed_right(
    app: Starlette, db: None, server_url: str, compression: str | None, id_length: int
) -> None:
    # given a plain operation whose id makes its frames short, long or very long, with or without compression
    _, watcher, project = await world(app)
    base = app.state.runtime.broker.stats.subscribers
    connection = await websockets.connect(
        f"ws://{server_url}/graphql", subprotocols=[TRANSPORT_WS], compression=compression, open_timeout=5
    )
    ws = GraphQLWS(connection)
    await ws.send(
        {"type": "connection_init", "payload": {"authorization": f"Bearer {await token_for(app, watcher)}"}}
    )
    await ws.acked()
    op_id = "i" * id_length
    await ws.subscribe(op_id, PLAIN, {"id": encode_id("Project", project.id)})
    await settled(app, base + 1)
    direct = app.state.runtime.broker.stats.direct
    # when two events come
    await publish(app, project, 1)
    await publish(app, project, 2)
    # then the client reads both, whole
    assert [seconds((await next_of(ws, op_id))["payload"]["data"]["projectEvents"]) for _ in range(2)] == [
        1,
        2,
    ]
    assert app.state.runtime.broker.stats.direct - direct == 2
    await ws.close()


async def test_frames_keep_their_order_across_direct_and_queued_delivery(
    app: Starlette, db: None, server_url: str
) -> None:
    # given a viewer on a plain selection
    _, watcher, project = await world(app)
    base = app.state.runtime.broker.stats.subscribers
    ws = await (await GraphQLWS.open(server_url, await token_for(app, watcher))).acked()
    await ws.subscribe("1", PLAIN, {"id": encode_id("Project", project.id)})
    await settled(app, base + 1)
    direct = app.state.runtime.broker.stats.direct
    # when events come in a burst: plain ones, one that makes the stream re-check access (so the ones behind
    # it queue up while it does), plain ones again; then more once it is idle
    await publish(app, project, 1)
    await publish(
        app, project, 2, "MEMBER_UPDATED", member={"user_id": watcher.id, "role_id": 1, "added_at": at(0)}
    )
    for n in range(3, 30):
        await publish(app, project, n)
    received = [seconds((await next_of(ws))["payload"]["data"]["projectEvents"]) for _ in range(29)]
    # (and a change to a role nobody here holds: nothing to send, nothing to re-check)
    await app.state.runtime.broker.publish(channels.roles(), {"type": "ROLE_UPDATED", "role_id": 10**9})
    for n in range(30, 40):
        await publish(app, project, n)
    received += [seconds((await next_of(ws))["payload"]["data"]["projectEvents"]) for _ in range(10)]
    # then each arrives once, in order, some of them directly
    assert received == list(range(1, 40))
    assert app.state.runtime.broker.stats.direct - direct >= 11
    await ws.close()


async def test_a_socket_closed_during_a_burst_costs_the_others_nothing(
    app: Starlette, db: None, server_url: str
) -> None:
    # given two viewers on a plain selection
    owner, watcher, project = await world(app)
    variables = {"id": encode_id("Project", project.id)}
    base = app.state.runtime.broker.stats.subscribers
    gone = await (await GraphQLWS.open(server_url, await token_for(app, watcher))).acked()
    staying = await (await GraphQLWS.open(server_url, await token_for(app, owner))).acked()
    await gone.subscribe("1", PLAIN, variables)
    await staying.subscribe("1", PLAIN, variables)
    await settled(app, base + 2)
    # when one of them drops its connection while events keep coming
    for n in range(1, 101):
        if n == 20:
            gone.connection.transport.abort()
        await publish(app, project, n)
        if n % 10 == 0:
            await asyncio.sleep(0.01)
    # then the other gets every event, in order, and the dropped one's subscription ends
    assert [
        seconds((await next_of(staying))["payload"]["data"]["projectEvents"]) for _ in range(100)
    ] == list(range(1, 101))
    await settled(app, base + 1)
    await staying.close()


async def test_a_viewer_losing_access_is_ended_while_the_others_go_on_directly(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    # given the owner and a member on the same plain selection
    owner, watcher, project = await world(app)
    variables = {"id": encode_id("Project", project.id)}
    base = app.state.runtime.broker.stats.subscribers
    staying = await (await GraphQLWS.open(server_url, await token_for(app, owner))).acked()
    leaving = await (await GraphQLWS.open(server_url, await token_for(app, watcher))).acked()
    await staying.subscribe("1", PLAIN, variables)
    await leaving.subscribe("1", PLAIN, variables)
    await settled(app, base + 2)
    await publish(app, project, 1)
    assert seconds((await next_of(staying))["payload"]["data"]["projectEvents"]) == 1
    assert seconds((await next_of(leaving))["payload"]["data"]["projectEvents"]) == 1
    # when the member is removed
    remove = {"p": variables["id"], "u": encode_id("User", watcher.id)}
    assert_ok(await execute(client, REMOVE, remove, token=await token_for(app, owner)))
    # then the member hears of the removal, then FORBIDDEN
    removed = await next_of(leaving)
    assert removed["payload"]["data"]["projectEvents"]["type"] == "MEMBER_REMOVED"
    ended = await next_of(leaving)
    assert ended["type"] == "error" and ended["payload"][0]["extensions"]["code"] == "FORBIDDEN"
    assert (await next_of(staying))["payload"]["data"]["projectEvents"]["type"] == "MEMBER_REMOVED"
    # and the owner goes on, directly again once its own re-check is done
    await settled(app, base + 1)
    await asyncio.sleep(0.3)
    direct = app.state.runtime.broker.stats.direct
    await publish(app, project, 2)
    assert seconds((await next_of(staying))["payload"]["data"]["projectEvents"]) == 2
    assert app.state.runtime.broker.stats.direct - direct == 1
    await staying.close()
    await leaving.close()


async def test_an_operation_completed_by_the_client_gets_no_more_frames(
    app: Starlette, db: None, server_url: str
) -> None:
    # given two plain operations on one socket
    _, watcher, project = await world(app)
    variables = {"id": encode_id("Project", project.id)}
    base = app.state.runtime.broker.stats.subscribers
    ws = await (await GraphQLWS.open(server_url, await token_for(app, watcher))).acked()
    await ws.subscribe("a", PLAIN, variables)
    await ws.subscribe("b", PLAIN, variables)
    await settled(app, base + 2)
    # when the client completes one of them, and an event comes
    await ws.send({"id": "a", "type": "complete"})
    await settled(app, base + 1)
    await publish(app, project, 1)
    # then only the other one gets it
    assert (await ws.receive())["id"] == "b"
    await publish(app, project, 2)
    message = await ws.receive()
    assert message["id"] == "b" and seconds(message["payload"]["data"]["projectEvents"]) == 2
    await ws.close()


async def test_a_socket_that_is_not_read_keeps_a_bounded_buffer_and_falls_behind(
    app: Starlette, db: None, server_url: str
) -> None:
    # given a viewer on a plain selection who stops reading, with small socket buffers on both ends (and no
    # compression: its frames would shrink to a few bytes)
    _, watcher, project = await world(app)
    broker = app.state.runtime.broker
    base = broker.stats.subscribers
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = server_url.split(":")
    sock.connect((host, int(port)))
    connection = await websockets.connect(
        f"ws://{server_url}/graphql", subprotocols=[TRANSPORT_WS], sock=sock, compression=None, open_timeout=5
    )
    ws = GraphQLWS(connection)
    await ws.send(
        {"type": "connection_init", "payload": {"authorization": f"Bearer {await token_for(app, watcher)}"}}
    )
    await ws.acked()
    bound, broker.max_bytes = broker.max_bytes, 256 * 1024
    try:
        await ws.subscribe(LONG_ID, PLAIN, {"id": encode_id("Project", project.id)})  # 2 KiB frames
        await settled(app, base + 1)
    finally:
        broker.max_bytes = bound
    (subscription,) = [sub for sub in broker._open_subs if sub.direct is not None]
    transport = subscription.direct._protocol.transport
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    connection.transport.pause_reading()
    dropped = broker.stats.dropped
    # when thousands of events come, each weighing 4 KiB in the backlog
    largest = 0
    for n in range(1, 3001):
        await publish(app, project, n, pad="x" * 4096)
        largest = max(largest, transport.get_write_buffer_size())
        if n % 100 == 0:
            await asyncio.sleep(0)  # let the Redis listener (if any) keep up
    await settled(app, base)
    # then the server buffered at most about uvicorn's high-water mark, the subscription ended
    assert largest <= 64 * 1024 + 4096  # one frame past it
    assert broker.stats.dropped > dropped
    connection.transport.resume_reading()
    # and the reader, reading at last, gets a gapless prefix of the events, then the error
    received = []
    while True:
        message = await next_of(ws, LONG_ID, wait=10)
        if message["type"] != "next":
            break
        received.append(seconds(message["payload"]["data"]["projectEvents"]))
    assert received == list(range(1, len(received) + 1)) and 0 < len(received) < 3000
    assert message["type"] == "error"
    assert message["payload"][0]["extensions"]["reason"] == "FELL_BEHIND"
    await ws.close()


async def test_a_selection_with_a_resolved_field_is_not_delivered_directly(
    app: Starlette, db: None, server_url: str
) -> None:
    # given a viewer asking for the actor (resolved as the viewer may see it)
    owner, watcher, project = await world(app)
    base = app.state.runtime.broker.stats.subscribers
    ws = await (await GraphQLWS.open(server_url, await token_for(app, watcher))).acked()
    await ws.subscribe(
        "1",
        "subscription($id: ID!) { projectEvents(projectId: $id) { type actor { email } } }",
        {"id": encode_id("Project", project.id)},
    )
    await settled(app, base + 1)
    direct = app.state.runtime.broker.stats.direct
    # when an event comes
    await publish(app, project, 1, actor_id=owner.id)
    # then it is resolved for this viewer, not written directly
    event = (await next_of(ws))["payload"]["data"]["projectEvents"]
    assert event == {"type": "PROJECT_UPDATED", "actor": {"email": "owner@example.com"}}
    assert app.state.runtime.broker.stats.direct == direct
    stranger = await make_user()
    await publish(app, project, 2, actor_id=stranger.id)
    assert (await next_of(ws))["payload"]["data"]["projectEvents"]["actor"] is None
    await ws.close()
