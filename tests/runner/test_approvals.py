"""Tool approvals end to end (CONTRACT §10): an agent speaking MCP asks, project members decide."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from aicm import models
from aicm.auth.permissions import ADMIN, DEVELOPER, MAINTAINER, VIEWER
from aicm.runner import approvals
from aicm.runner.worker import QueueDispatcher, make_queue
from aicm.schema.relay import encode_id
from tests import servers
from tests.conftest import AGENT_SCRIPTS, DEMO_AGENT, Backend, require_services
from tests.factories import add_member, make_project, make_user, token_for
from tests.graphql import assert_error, assert_ok, error_codes, execute
from tests.schema.test_tasks import finished, start, status_becomes

MCP_AGENT = [sys.executable, str(AGENT_SCRIPTS / "mcp_agent.py"), "{prompt}"]
DECIDE = """mutation($id: ID!, $allow: Boolean!, $reason: String, $remember: Boolean) {
  decideApproval(id: $id, input: {allow: $allow, reason: $reason, remember: $remember}) {
    id status reason remember decidedAt decidedBy { email } task { id }
  }
}"""
TASK = """query($id: ID!) { task(id: $id) { status approvals { id toolName input status reason } } }"""
APPROVALS = """query($p: ID!, $s: ApprovalStatus) {
  approvalRequests(projectId: $p, status: $s) { totalCount edges { node { id toolName status task { id } } } }
}"""


@pytest.fixture
def claude_runner(app: Starlette) -> Iterator[Any]:
    """The runner passes Claude Code's flags, and runs the MCP-speaking test agent."""
    runner = app.state.runtime.settings.runner
    saved = runner.agent_cli, runner.command, runner.approval_timeout
    runner.agent_cli, runner.command = "claude", MCP_AGENT
    yield runner
    runner.agent_cli, runner.command, runner.approval_timeout = saved


async def world(app: Starlette) -> dict[str, Any]:
    owner, maintainer, developer, viewer = [await make_user() for _ in range(4)]
    project = await make_project(owner, "Approvals")
    for user, role in ((maintainer, MAINTAINER), (developer, DEVELOPER), (viewer, VIEWER)):
        await add_member(project, user, role)
    tokens = {
        name: await token_for(app, user)
        for name, user in (
            ("owner", owner),
            ("maintainer", maintainer),
            ("developer", developer),
            ("viewer", viewer),
        )
    }
    return {"project": project, "tokens": tokens, "maintainer": maintainer, "developer": developer}


async def pending_request(task_id: int, wait: float = 20.0) -> models.ApprovalRequest:
    deadline = time.monotonic() + wait
    while True:
        found = await models.ApprovalRequest.filter(
            task_id=task_id, status=models.ApprovalStatus.PENDING
        ).first()
        if found is not None:
            return found
        task = await models.Task.get(id=task_id)
        assert task.status not in models.FINISHED, (task.status, task.error)
        assert time.monotonic() < deadline, "no approval request came"
        await asyncio.sleep(0.05)


async def answers(task_id: int, kind: str = "approval") -> list[dict[str, Any]]:
    rows = await models.TaskLog.filter(task_id=task_id, kind=kind).order_by("seq")
    return [row.data for row in rows]


async def decide(client: httpx.AsyncClient, token: str, request_id: int, allow: bool, **extra: Any) -> dict:
    variables = {"id": encode_id("ApprovalRequest", request_id), "allow": allow, **extra}
    return await execute(client, DECIDE, variables, token=token)


async def test_an_allowed_call_proceeds_and_the_branch_has_the_change(
    app: Starlette, client: httpx.AsyncClient, claude_runner: Any
) -> None:
    w = await world(app)
    task_id = await start(client, w["tokens"]["developer"], w["project"], "write file:ALLOWED.md")
    request = await pending_request(task_id)
    await status_becomes(task_id, models.TaskStatus.WAITING_FOR_APPROVAL)
    seen = assert_ok(
        await execute(client, TASK, {"id": encode_id("Task", task_id)}, token=w["tokens"]["viewer"])
    )
    assert seen["task"]["status"] == "WAITING_FOR_APPROVAL"
    assert [(a["toolName"], a["status"]) for a in seen["task"]["approvals"]] == [("Write", "PENDING")]
    assert seen["task"]["approvals"][0]["input"]["file_path"] == "ALLOWED.md"
    listed = assert_ok(
        await execute(
            client,
            APPROVALS,
            {"p": encode_id("Project", w["project"].id), "s": "PENDING"},
            token=w["tokens"]["viewer"],
        )
    )["approvalRequests"]
    assert listed["totalCount"] == 1 and listed["edges"][0]["node"]["task"]["id"] == encode_id(
        "Task", task_id
    )

    decided = assert_ok(await decide(client, w["tokens"]["maintainer"], request.id, True))["decideApproval"]
    assert decided["status"] == "ALLOWED" and decided["decidedBy"]["email"] == w["maintainer"].email
    task = await finished(task_id)
    assert task.status == models.TaskStatus.SUCCEEDED, task.error
    assert task.changed_paths == ["ALLOWED.md"]  # committed on the task's branch
    (answer,) = await answers(task_id)
    assert answer["result"] == {
        "behavior": "allow",
        "updatedInput": {"file_path": "ALLOWED.md", "content": "approved change\n"},
    }
    tools = await answers(task_id, "tools")
    assert tools == [{"type": "tools", "tools": ["approval_prompt"]}]
    init = (await answers(task_id, "system"))[0]
    assert init["permissionMode"] == "default"
    audit = await models.AuditLog.filter(action="approval.decide", target_id=str(request.id)).first()
    assert audit is not None and audit.details["status"] == "ALLOWED"
    assert (await models.Task.get(id=task_id)).approval_token_hash is None  # the credential ended with it


async def test_a_denied_call_gets_the_message(
    app: Starlette, client: httpx.AsyncClient, claude_runner: Any
) -> None:
    w = await world(app)
    task_id = await start(client, w["tokens"]["developer"], w["project"], "write")
    request = await pending_request(task_id)
    reason = "Not on a Friday"
    decided = assert_ok(await decide(client, w["tokens"]["owner"], request.id, False, reason=reason))
    assert decided["decideApproval"]["status"] == "DENIED"
    task = await finished(task_id)
    assert task.status == models.TaskStatus.SUCCEEDED
    assert [a["result"] for a in await answers(task_id)] == [{"behavior": "deny", "message": reason}]
    assert not task.changed_paths


async def test_an_undecided_call_expires_and_is_denied(
    app: Starlette, client: httpx.AsyncClient, claude_runner: Any
) -> None:
    w = await world(app)
    claude_runner.approval_timeout = 0.5
    task_id = await start(client, w["tokens"]["developer"], w["project"], "write")
    task = await finished(task_id)
    (answer,) = await answers(task_id)
    assert answer["result"]["behavior"] == "deny" and "approval_timeout" in answer["result"]["message"]
    (request,) = await models.ApprovalRequest.filter(task_id=task_id)
    assert request.status == models.ApprovalStatus.EXPIRED and request.decided_by_id is None
    audit = await models.AuditLog.get(action="approval.expire", target_id=str(request.id))
    assert audit.actor_id is None and "approval_timeout" in audit.details["reason"]
    late = await decide(client, w["tokens"]["maintainer"], request.id, True)
    assert_error(late, "CONFLICT")
    assert task.status == models.TaskStatus.SUCCEEDED


async def test_remember_allows_the_same_call_again_without_asking(
    app: Starlette, client: httpx.AsyncClient, claude_runner: Any
) -> None:
    w = await world(app)
    task_id = await start(client, w["tokens"]["developer"], w["project"], "write twice")
    request = await pending_request(task_id)
    decided = assert_ok(await decide(client, w["tokens"]["maintainer"], request.id, True, remember=True))
    assert decided["decideApproval"]["remember"] is True
    task = await finished(task_id)
    assert task.status == models.TaskStatus.SUCCEEDED
    assert [a["result"]["behavior"] for a in await answers(task_id)] == ["allow", "allow"]
    assert await models.ApprovalRequest.filter(task_id=task_id).count() == 1


async def test_only_members_at_or_above_the_approver_role_decide(
    app: Starlette, client: httpx.AsyncClient, claude_runner: Any
) -> None:
    w = await world(app)
    task_id = await start(client, w["tokens"]["developer"], w["project"], "write")
    request = await pending_request(task_id)
    for who in ("viewer", "developer"):  # the developer is the task's creator: no exception
        assert_error(await decide(client, w["tokens"][who], request.id, True), "FORBIDDEN")
    outsider = await token_for(app, await make_user())
    assert_error(await decide(client, outsider, request.id, True), "NOT_FOUND")
    assert (await models.ApprovalRequest.get(id=request.id)).status == models.ApprovalStatus.PENDING

    # With approverRole developer, the creator's own role is high enough.
    developer_role = await models.Role.get(name=DEVELOPER)
    update = "mutation($id: ID!, $r: ID!) { updateProject(id: $id, input: {approverRoleId: $r}) { approverRole { name } } }"
    changed = await execute(
        client,
        update,
        {"id": encode_id("Project", w["project"].id), "r": encode_id("Role", developer_role.id)},
        token=w["tokens"]["maintainer"],
    )
    assert assert_ok(changed)["updateProject"]["approverRole"]["name"] == DEVELOPER
    assert_error(await decide(client, w["tokens"]["viewer"], request.id, True), "FORBIDDEN")
    assert_ok(await decide(client, w["tokens"]["developer"], request.id, True))
    assert (await finished(task_id)).status == models.TaskStatus.SUCCEEDED


async def test_two_concurrent_decisions_one_wins_one_conflicts(
    app: Starlette, client: httpx.AsyncClient, claude_runner: Any
) -> None:
    w = await world(app)
    task_id = await start(client, w["tokens"]["developer"], w["project"], "write")
    request = await pending_request(task_id)
    results = await asyncio.gather(
        decide(client, w["tokens"]["maintainer"], request.id, True),
        decide(client, w["tokens"]["owner"], request.id, False),
    )
    codes = sorted(str(error_codes(r)) for r in results)
    assert codes == ["['CONFLICT']", "[]"], results
    winner = next(r for r in results if not r.get("errors"))["data"]["decideApproval"]["status"]
    await finished(task_id)
    assert (await models.ApprovalRequest.get(id=request.id)).status == winner
    assert await models.AuditLog.filter(action="approval.decide", target_id=str(request.id)).count() == 1


async def _ask(socket_path: str, message: dict[str, Any]) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(socket_path)
    try:
        writer.write(json.dumps(message).encode() + b"\n")
        await writer.drain()
        return json.loads(await asyncio.wait_for(reader.readline(), 10))
    finally:
        writer.close()


async def test_the_run_credential_works_only_for_its_task_while_it_runs(
    app: Starlette, client: httpx.AsyncClient, claude_runner: Any
) -> None:
    w = await world(app)
    first = await start(client, w["tokens"]["developer"], w["project"], "write leak")
    other = await start(client, w["tokens"]["developer"], w["project"], "write leak file:OTHER.md")
    mine = await pending_request(first)
    theirs = await pending_request(other)
    deadline = time.monotonic() + 10
    while not (leaked := await answers(first, "credential")) or not await answers(other, "credential"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    env = leaked[0]["env"]
    other_env = (await answers(other, "credential"))[0]["env"]
    call = {"tool_name": "Bash", "input": {"command": "id"}, "tool_use_id": "x"}
    # Another task's id with this credential, on either task's socket: refused.
    for socket_path in (env["AICM_APPROVAL_SOCKET"], other_env["AICM_APPROVAL_SOCKET"]):
        answer = await _ask(socket_path, {**call, "task_id": other, "token": env["AICM_APPROVAL_TOKEN"]})
        assert "error" in answer, answer
    assert not await approvals.authenticate(other, env["AICM_APPROVAL_TOKEN"])
    assert "error" in await _ask(env["AICM_APPROVAL_SOCKET"], {**call, "task_id": first, "token": "guess"})
    assert await approvals.authenticate(first, env["AICM_APPROVAL_TOKEN"])
    assert await models.ApprovalRequest.filter(task_id__in=[first, other]).count() == 2

    for request in (mine, theirs):
        assert_ok(await decide(client, w["tokens"]["maintainer"], request.id, False))
    await finished(first)
    await finished(other)
    assert not await approvals.authenticate(first, env["AICM_APPROVAL_TOKEN"])  # the run is over
    with pytest.raises(OSError):  # and its socket is gone
        await _ask(
            env["AICM_APPROVAL_SOCKET"], {**call, "task_id": first, "token": env["AICM_APPROVAL_TOKEN"]}
        )


async def test_cancel_while_waiting_ends_the_run_cleanly(
    app: Starlette, client: httpx.AsyncClient, claude_runner: Any
) -> None:
    w = await world(app)
    task_id = await start(client, w["tokens"]["developer"], w["project"], "write")
    request = await pending_request(task_id)
    began = time.monotonic()
    cancelled = await execute(
        client,
        "mutation($id: ID!) { cancelTask(id: $id) { status } }",
        {"id": encode_id("Task", task_id)},
        token=w["tokens"]["developer"],
    )
    assert_ok(cancelled)
    task = await finished(task_id, wait=20)
    assert task.status == models.TaskStatus.CANCELLED and time.monotonic() - began < 15
    request = await models.ApprovalRequest.get(id=request.id)
    assert request.status == models.ApprovalStatus.EXPIRED and "ended" in (request.reason or "")
    assert_error(await decide(client, w["tokens"]["maintainer"], request.id, True), "CONFLICT")


async def test_permission_modes_reach_the_cli_and_bypass_is_for_admins(
    app: Starlette, client: httpx.AsyncClient, claude_runner: Any
) -> None:
    w = await world(app)
    update = "mutation($id: ID!, $m: AgentPermissionMode!) { updateProject(id: $id, input: {agentPermissionMode: $m}) { agentPermissionMode } }"
    project_id = encode_id("Project", w["project"].id)
    assert_error(
        await execute(client, update, {"id": project_id, "m": "BYPASS"}, token=w["tokens"]["owner"]),
        "FORBIDDEN",
    )
    assert_error(
        await execute(client, update, {"id": project_id, "m": "PLAN"}, token=w["tokens"]["developer"]),
        "FORBIDDEN",
    )
    admin = await token_for(app, await make_user(roles=(ADMIN,)))
    data = assert_ok(await execute(client, update, {"id": project_id, "m": "BYPASS"}, token=admin))
    assert data["updateProject"]["agentPermissionMode"] == "BYPASS"
    task = await finished(await start(client, w["tokens"]["developer"], w["project"], "write"))
    assert task.status == models.TaskStatus.SUCCEEDED and task.changed_paths == ["APPROVED.md"]
    assert (await answers(task.id, "system"))[0]["permissionMode"] == "bypassPermissions"
    assert not await models.ApprovalRequest.filter(task_id=task.id).exists()  # no MCP config: nothing asked


async def test_approval_events_reach_project_and_task_subscribers(
    app: Starlette, client: httpx.AsyncClient, claude_runner: Any
) -> None:
    from aicm.subscriptions import channels
    from aicm.subscriptions.subscription import Event

    w = await world(app)
    broker = app.state.runtime.broker
    seen: list[tuple[str, str]] = []
    async with broker.subscribe([channels.project(w["project"].id)]) as subscription:
        task_id = await start(client, w["tokens"]["developer"], w["project"], "write")
        request = await pending_request(task_id)
        assert_ok(await decide(client, w["tokens"]["maintainer"], request.id, True))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                async for item in subscription:
                    if isinstance(item, Event):
                        seen.append((item.payload["type"], item.payload.get("status", "")))
                    if ("APPROVAL_DECIDED", "ALLOWED") in seen:
                        break
    assert ("APPROVAL_REQUESTED", "PENDING") in seen and ("APPROVAL_DECIDED", "ALLOWED") in seen
    assert ("TASK_UPDATED", "WAITING_FOR_APPROVAL") in seen
    await finished(task_id)


async def test_an_agent_without_any_network_still_reaches_the_approvers(
    app: Starlette, client: httpx.AsyncClient, claude_runner: Any
) -> None:
    """runner.network: false gives the sandbox no network, loopback included: the socket file still works."""
    if not app.state.runtime.executor.isolation.status.active:
        pytest.skip("needs the bubblewrap sandbox")
    w = await world(app)
    network, claude_runner.network = claude_runner.network, False
    try:
        task_id = await start(client, w["tokens"]["developer"], w["project"], "write")
        request = await pending_request(task_id)
        assert_ok(await decide(client, w["tokens"]["maintainer"], request.id, True))
        task = await finished(task_id)
    finally:
        claude_runner.network = network
    assert task.status == models.TaskStatus.SUCCEEDED and task.changed_paths == ["APPROVED.md"]


def start_claude_worker(tmp_path: Path, timeout: str = "10m") -> subprocess.Popen[bytes]:
    """``aicli-api worker`` running the MCP-speaking agent with Claude Code's flags."""
    runner = {
        "command": MCP_AGENT,
        "agent_cli": "claude",
        "approval_timeout": timeout,
        "max_concurrent": 1,
        "workspace_root": str(tmp_path / "workspaces"),
        "sandbox_paths": {"read_only": [str(AGENT_SCRIPTS)]},
    }
    return servers.start_worker(tmp_path, "worker", require_services(), runner)


async def test_the_agent_waits_on_a_worker_and_the_decision_comes_from_another_instance(
    app: Starlette, client: httpx.AsyncClient, backend: Backend, tmp_path: Path
) -> None:
    if not backend.uses_services:
        pytest.skip("workers take tasks from the Redis job queue")
    worker = start_claude_worker(tmp_path)
    queue = make_queue(app.state.runtime.settings)
    try:
        w = await world(app)
        task = await models.Task.create(
            project=w["project"], created_by=w["developer"], prompt="write file:REMOTE.md"
        )
        await QueueDispatcher(queue, app.state.runtime.broker).submit(task.id)
        request = await pending_request(task.id, wait=40)
        running = await models.Task.get(id=task.id)
        assert running.worker_id != app.state.runtime.executor.worker_id  # the agent runs on the worker
        # This process is the other instance: its API decides, the worker hears it through Redis.
        assert_ok(await decide(client, w["tokens"]["maintainer"], request.id, True))
        done = await finished(task.id, wait=30)
        assert done.status == models.TaskStatus.SUCCEEDED, done.error
        assert done.changed_paths == ["REMOTE.md"]
        assert [a["result"]["behavior"] for a in await answers(task.id)] == ["allow"]
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
        await queue.disconnect()


async def test_the_demo_agent_asks_before_its_edit_unless_edits_are_accepted(
    app: Starlette, client: httpx.AsyncClient, claude_runner: Any
) -> None:
    claude_runner.command = DEMO_AGENT
    w = await world(app)
    task_id = await start(client, w["tokens"]["developer"], w["project"], "tidy the readme")
    request = await pending_request(task_id)
    assert request.tool_name == "Edit" and request.input["file_path"] == "AICM_DEMO.md"
    assert_ok(await decide(client, w["tokens"]["maintainer"], request.id, True))
    task = await finished(task_id)
    assert task.status == models.TaskStatus.SUCCEEDED and task.changed_paths == ["AICM_DEMO.md"]

    denied_id = await start(client, w["tokens"]["developer"], w["project"], "tidy again")
    request = await pending_request(denied_id)
    assert_ok(await decide(client, w["tokens"]["maintainer"], request.id, False, reason="not now"))
    denied = await finished(denied_id)
    assert denied.status == models.TaskStatus.SUCCEEDED and not denied.changed_paths
    texts = await models.TaskLog.filter(task_id=denied_id).values_list("text", flat=True)
    assert any("denied: not now" in (text or "") for text in texts)

    await models.Project.filter(id=w["project"].id).update(
        agent_permission_mode=models.AgentPermissionMode.ACCEPT_EDITS
    )
    accepted = await finished(await start(client, w["tokens"]["developer"], w["project"], "no asking"))
    assert accepted.status == models.TaskStatus.SUCCEEDED and accepted.changed_paths == ["AICM_DEMO.md"]
    assert not await models.ApprovalRequest.filter(task_id=accepted.id).exists()
