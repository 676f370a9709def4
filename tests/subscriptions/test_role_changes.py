"""Role changes reach live subscriptions: losing a permission through ``updateRole`` or ``deleteRole`` ends
the streams it granted (FORBIDDEN) within a second, on every instance; other roles' changes end nothing."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from aicm import models
from aicm.auth.permissions import ADMIN, MEMBER
from aicm.schema.relay import encode_id
from aicm.subscriptions import channels
from aicm.subscriptions.events import line_payload
from tests.conftest import Backend
from tests.factories import make_project, make_role, make_user, token_for
from tests.graphql import assert_ok, execute
from tests.servers import serve
from tests.subscriptions.test_multi_instance import server_env
from tests.ws import GraphQLWS

LOGS = "subscription($id: ID!) { taskLogs(taskId: $id) { seq text } }"
UPDATE_ROLE = "mutation($id: ID!, $p: [String!]!) { updateRole(id: $id, input: {permissions: $p}) { id } }"
DELETE_ROLE = "mutation($id: ID!) { deleteRole(id: $id) }"


async def running_task(holder: models.User, role: models.Role) -> models.Task:
    """A running task of a project in which ``holder`` holds ``role`` (a PROJECT role), or of a project
    ``holder`` is no member of (a SYSTEM role, which ``holder`` is given)."""
    project = await make_project(await make_user())
    if role.scope == models.RoleScope.PROJECT:
        await models.ProjectMember.create(project=project, user=holder, role=role)
    else:
        await models.UserRole.create(user=holder, role=role)
    return await models.Task.create(project=project, prompt="p", status=models.TaskStatus.RUNNING)


async def streaming(app: Starlette, ws: GraphQLWS, task: models.Task, seq: int) -> None:
    """Publish line ``seq`` until the subscription delivers it: the stream is live (at most 10 s)."""
    line = models.TaskLog(seq=seq, at=datetime.now(UTC), stream="stdout", kind="text", text=f"line {seq}")
    deadline = time.monotonic() + 10
    while True:
        await app.state.runtime.broker.publish(channels.task_logs(task.id), {"lines": [line_payload(line)]})
        try:
            message = await ws.receive(0.25)
        except TimeoutError:
            assert time.monotonic() < deadline, "the subscription never delivered a live line"
            continue
        assert message["type"] == "next", message
        assert message["payload"]["data"]["taskLogs"] == {"seq": seq, "text": f"line {seq}"}
        return


async def forbidden_within_a_second(ws: GraphQLWS, started: float) -> None:
    while True:
        message = await ws.receive(2.0)
        if message.get("type") in {"ping", "pong"}:
            continue
        assert message["type"] == "error", message
        assert message["payload"][0]["extensions"]["code"] == "FORBIDDEN", message
        assert time.monotonic() - started < 1.0
        return


@pytest.fixture
def second_instance_env(backend: Backend) -> dict[str, str]:
    """The environment of another ``aicli-api serve`` on the services backend's PostgreSQL and Redis."""
    if not backend.uses_services:
        pytest.skip("two instances share PostgreSQL and Redis")
    return server_env()


async def admin_token(app: Starlette) -> str:
    return await token_for(app, await make_user(roles=(MEMBER, ADMIN)))


async def test_a_project_role_losing_task_read_ends_a_live_task_log_stream_within_a_second(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    # given a member whose custom role reads tasks, following a running task's log
    member = await make_user()
    role = await make_role("log-reader", "PROJECT", ["project:read", "task:read"])
    task = await running_task(member, role)
    ws = await (await GraphQLWS.open(server_url, await token_for(app, member))).acked()
    await ws.subscribe("1", LOGS, {"id": encode_id("Task", task.id)})
    await streaming(app, ws, task, 1)
    # when an admin takes task:read out of the role
    started = time.monotonic()
    variables = {"id": encode_id("Role", role.id), "p": ["project:read"]}
    assert_ok(await execute(client, UPDATE_ROLE, variables, token=await admin_token(app)))
    # then
    await forbidden_within_a_second(ws, started)
    await ws.close()


async def test_deleting_a_system_role_ends_the_streams_it_granted_within_a_second(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    # given a user reading a task through a custom system role only
    reader = await make_user()
    role = await make_role("all-logs", "SYSTEM", ["task:read"])
    task = await running_task(reader, role)
    ws = await (await GraphQLWS.open(server_url, await token_for(app, reader))).acked()
    await ws.subscribe("1", LOGS, {"id": encode_id("Task", task.id)})
    await streaming(app, ws, task, 1)
    # when the role is deleted
    started = time.monotonic()
    assert_ok(
        await execute(client, DELETE_ROLE, {"id": encode_id("Role", role.id)}, token=await admin_token(app))
    )
    # then
    await forbidden_within_a_second(ws, started)
    await ws.close()


async def test_a_change_to_a_role_the_viewer_does_not_hold_leaves_the_stream_open(
    app: Starlette, client: httpx.AsyncClient, server_url: str
) -> None:
    # given a live log stream, and a custom role its viewer does not hold
    member = await make_user()
    task = await running_task(member, await make_role("mine", "PROJECT", ["task:read"]))
    other = await make_role("theirs", "PROJECT", ["project:read", "task:read"])
    ws = await (await GraphQLWS.open(server_url, await token_for(app, member))).acked()
    await ws.subscribe("1", LOGS, {"id": encode_id("Task", task.id)})
    await streaming(app, ws, task, 1)
    # when the other role loses task:read
    variables = {"id": encode_id("Role", other.id), "p": ["project:read"]}
    assert_ok(await execute(client, UPDATE_ROLE, variables, token=await admin_token(app)))
    # then the stream goes on
    await streaming(app, ws, task, 2)
    await ws.close()


async def test_a_role_change_on_one_instance_ends_a_stream_on_another_within_a_second(
    app: Starlette, client: httpx.AsyncClient, tmp_path: Path, second_instance_env: dict[str, str]
) -> None:
    # given a member following a task's log on a second instance (same PostgreSQL and Redis)
    member = await make_user()
    role = await make_role("far-reader", "PROJECT", ["project:read", "task:read"])
    task = await running_task(member, role)
    with serve(tmp_path, second_instance_env) as base:
        ws = await (await GraphQLWS.open(base.removeprefix("http://"), await token_for(app, member))).acked()
        await ws.subscribe("1", LOGS, {"id": encode_id("Task", task.id)})
        await streaming(app, ws, task, 1)
        # when the role loses task:read through this instance
        started = time.monotonic()
        variables = {"id": encode_id("Role", role.id), "p": ["project:read"]}
        assert_ok(await execute(client, UPDATE_ROLE, variables, token=await admin_token(app)))
        # then
        await asyncio.wait_for(forbidden_within_a_second(ws, started), 5)
        await ws.close()
