"""Render once: subscribers of one operation share an execution per event, each with its own id, while
authorization stays per subscriber."""

from __future__ import annotations

import asyncio
import sys

import httpx
from starlette.applications import Starlette

from aicm import models
from aicm.auth.permissions import VIEWER
from aicm.schema import rendering
from aicm.schema.relay import encode_id
from tests.factories import add_member, make_user, token_for
from tests.graphql import assert_ok, execute
from tests.schema.test_tasks import developer_world, start
from tests.subscriptions.test_graphql_subscriptions import PROJECT_EVENTS, UPDATE, next_of, world
from tests.ws import GraphQLWS

LOGS = "subscription($id: ID!) { taskLogs(taskId: $id, afterSeq: 0) { seq text } }"
REMOVE = "mutation($p: ID!, $u: ID!) { removeProjectMember(projectId: $p, userId: $u) }"
# A second for the readers to subscribe, 300 lines, a pause long enough to remove a member, 300 more.
PAUSED = (
    "import sys, time\n"
    "time.sleep(1)\n"
    "for n in range(1, 301): print(f'line {n}')\n"
    "sys.stdout.flush(); time.sleep(2)\n"
    "for n in range(301, 601): print(f'line {n}')\n"
)


async def test_subscribers_of_one_operation_share_its_rendering_each_with_its_own_id(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    # given one viewer subscribed three times to the same operation (two sockets, two ids on one)
    owner, watcher, project = await world(app)
    token = await token_for(app, watcher)
    variables = {"id": encode_id("Project", project.id)}
    first = await (await GraphQLWS.open(server_url, token)).acked()
    second = await (await GraphQLWS.open(server_url, token)).acked()
    await first.subscribe("a", PROJECT_EVENTS, variables)
    await first.subscribe("b", PROJECT_EVENTS, variables)
    await second.subscribe("c", PROJECT_EVENTS, variables)
    await asyncio.sleep(0.3)
    hits = rendering.cache.hits
    # when the project changes once
    update = {"id": encode_id("Project", project.id), "name": "Renamed"}
    assert_ok(await execute(client, UPDATE, update, token=await token_for(app, owner)))
    # then each subscription gets the event under its own id, with the same payload
    messages = {}
    for ws, count in ((first, 2), (second, 1)):
        for _ in range(count):
            message = await ws.receive(5)
            messages[message["id"]] = message
    assert set(messages) == {"a", "b", "c"}
    assert all(message["type"] == "next" for message in messages.values())
    payloads = [message["payload"] for message in messages.values()]
    assert payloads[0] == payloads[1] == payloads[2]
    assert payloads[0]["data"]["projectEvents"]["project"] == {"name": "Renamed"}
    assert rendering.cache.hits - hits >= 2  # executed once, shared twice
    await first.close()
    await second.close()


async def test_a_viewer_losing_access_is_ended_while_others_sharing_the_rendering_go_on(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    # given two users reading one task's log with the same operation, so its lines render once for both
    owner, _, project, token = await developer_world(app)
    watcher = await make_user()
    await add_member(project, watcher, VIEWER)
    runner = app.state.runtime.settings.runner
    command, runner.command = runner.command, [sys.executable, "-c", PAUSED, "{prompt}"]
    hits, direct = rendering.cache.hits, app.state.runtime.broker.stats.direct
    try:
        task_id = await start(client, token, project, "paused")
        staying = await (await GraphQLWS.open(server_url, token)).acked()
        leaving = await (await GraphQLWS.open(server_url, await token_for(app, watcher))).acked()
        variables = {"id": encode_id("Task", task_id)}
        await staying.subscribe("1", LOGS, variables)
        await leaving.subscribe("1", LOGS, variables)
        head = [(await next_of(staying))["payload"]["data"]["taskLogs"]["seq"] for _ in range(300)]
        assert [(await next_of(leaving))["payload"]["data"]["taskLogs"]["seq"] for _ in range(300)] == head
    finally:
        runner.command = command
    # the live lines rendered once for both readers: through the shared cache, or directly in the fan-out
    # (once per operation and line, aicm.subscriptions.direct; counted per event and reader)
    assert rendering.cache.hits - hits >= 200 or app.state.runtime.broker.stats.direct - direct >= 2
    # when the watcher is removed from the project during the pause
    remove = {"p": encode_id("Project", project.id), "u": encode_id("User", watcher.id)}
    assert_ok(await execute(client, REMOVE, remove, token=await token_for(app, owner)))
    # then the watcher's stream ends with FORBIDDEN
    message = await next_of(leaving)
    while message["type"] == "next":  # lines printed before the removal was seen may still come
        message = await next_of(leaving)
    assert message["type"] == "error"
    assert message["payload"][0]["extensions"]["code"] == "FORBIDDEN"
    # and the developer still gets every line once, in order, then the end
    seqs = list(head)
    while True:
        message = await next_of(staying, wait=20)
        if message["type"] == "complete":
            break
        seqs.append(message["payload"]["data"]["taskLogs"]["seq"])
    task = await models.Task.get(id=task_id)
    assert seqs == list(range(1, task.last_seq + 1)) and task.last_seq >= 600
    await staying.close()
    await leaving.close()
