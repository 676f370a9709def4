"""Nested paths and subscription payloads: every field that returns a project, task, log line, user email or
member list shows only what its root field would (CONTRACT §3, §4), for built-in and custom roles.

One world per case: project P owned by ``owner`` with a maintainer, a developer, a viewer, a
``project_reader`` (custom role: only ``project:read``) and a ``task_reader`` (custom role: only
``task:read``); an ``outsider`` (plain member, not in P); an ``admin`` and an ``auditor``. P holds one
finished task T, created by the developer, with two stored log lines, and the audit log one entry by the
developer. A new field that returns one of these objects gets a row in ``QUERIES`` or ``SUBSCRIPTIONS``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from aicm import models
from aicm.auth.permissions import ADMIN, AUDITOR, DEVELOPER, MAINTAINER, MEMBER, VIEWER
from aicm.auth.viewer import Viewer
from aicm.schema.relay import encode_id
from aicm.subscriptions import channels, events
from aicm.subscriptions.events import ProjectEventType
from tests.factories import add_member, make_project, make_role, make_user, token_for
from tests.graphql import error_codes, execute
from tests.ws import GraphQLWS

SEEN, NULL, EMPTY, HIDDEN, FORBID = "seen", "null", "empty", "NOT_FOUND", "FORBIDDEN"
ACTORS = (
    "admin",
    "auditor",
    "outsider",
    "owner",
    "maintainer",
    "developer",
    "viewer",
    "project_reader",
    "task_reader",
)
MEMBERS_READING_ALL = frozenset({"owner", "maintainer", "developer", "viewer"})
PROJECT_READERS = MEMBERS_READING_ALL | {"admin", "auditor", "project_reader"}
TASK_READERS = MEMBERS_READING_ALL | {"admin", "auditor", "task_reader"}
BOTH = PROJECT_READERS & TASK_READERS
WEBHOOK_MANAGERS = frozenset({"admin", "owner", "maintainer"})


def outcome(seen: frozenset[str], rest: str, **special: str) -> dict[str, str]:
    """``SEEN`` for the ``seen`` actors, ``rest`` for the others, ``special`` overriding both."""
    return {actor: SEEN if actor in seen else rest for actor in ACTORS} | special


@dataclass(frozen=True)
class Row:
    name: str
    document: str
    path: str  # where the guarded values are, dotted from ``data``; lists on the way are walked
    expected: dict[str, str]
    event: str | None = None  # for projectEvents: the event published once the subscription listens


# Variables every document may use: $project (P), $task (T), $user (the developer, T's creator).
QUERIES = [
    Row("project", "query($project: ID!) { project(id: $project) { name } }", "project.name",
        outcome(PROJECT_READERS, HIDDEN)),
    Row("project.owner", "query($project: ID!) { project(id: $project) { owner { email } } }",
        "project.owner.email", outcome(PROJECT_READERS, HIDDEN)),
    Row("project.members.user",
        "query($project: ID!) { project(id: $project) { members { user { email } } } }",
        "project.members.user.email", outcome(PROJECT_READERS, HIDDEN)),
    Row("project.tasks",
        "query($project: ID!) { project(id: $project) { tasks { edges { node { prompt } } } } }",
        "project.tasks.edges.node.prompt", outcome(BOTH, HIDDEN, project_reader=FORBID)),
    Row("project.tasks.logs",
        "query($project: ID!) { project(id: $project) { tasks { edges { node { logs { text } } } } } }",
        "project.tasks.edges.node.logs.text", outcome(BOTH, HIDDEN, project_reader=FORBID)),
    Row("project.tasks.createdBy",
        "query($project: ID!) { project(id: $project) { tasks { edges { node { createdBy { email } } } } } }",
        "project.tasks.edges.node.createdBy.email", outcome(BOTH, HIDDEN, project_reader=FORBID)),
    Row("task", "query($task: ID!) { task(id: $task) { prompt } }", "task.prompt",
        outcome(TASK_READERS, HIDDEN)),
    Row("task.logs", "query($task: ID!) { task(id: $task) { logs { text } } }", "task.logs.text",
        outcome(TASK_READERS, HIDDEN)),
    Row("task.project", "query($task: ID!) { task(id: $task) { project { name description } } }",
        "task.project.name", outcome(BOTH, HIDDEN, task_reader=NULL)),
    Row("task.project.members.user",
        "query($task: ID!) { task(id: $task) { project { members { user { email } } } } }",
        "task.project.members.user.email", outcome(BOTH, HIDDEN, task_reader=NULL)),
    Row("task.project.owner", "query($task: ID!) { task(id: $task) { project { owner { email } } } }",
        "task.project.owner.email", outcome(BOTH, HIDDEN, task_reader=NULL)),
    Row("task.overlapsWith", "query($task: ID!) { task(id: $task) { overlapsWith { prompt } } }",
        "task.overlapsWith.prompt", outcome(TASK_READERS, HIDDEN)),
    Row("tasks.overlapsWith", "{ tasks { edges { node { overlapsWith { prompt } } } } }",
        "tasks.edges.node.overlapsWith.prompt", outcome(TASK_READERS, EMPTY)),
    Row("task.createdBy", "query($task: ID!) { task(id: $task) { createdBy { email } } }",
        "task.createdBy.email", outcome(BOTH, HIDDEN, task_reader=NULL)),
    Row("tasks", "{ tasks { edges { node { prompt } } } }", "tasks.edges.node.prompt",
        outcome(TASK_READERS, EMPTY)),
    Row("tasks.project", "{ tasks { edges { node { project { name } } } } }", "tasks.edges.node.project.name",
        outcome(BOTH, EMPTY, task_reader=NULL)),
    Row("tasks.logs", "{ tasks { edges { node { logs(first: 5) { text } } } } }",
        "tasks.edges.node.logs.text", outcome(TASK_READERS, EMPTY)),
    Row("tasks.createdBy", "{ tasks { edges { node { createdBy { email } } } } }",
        "tasks.edges.node.createdBy.email", outcome(BOTH, EMPTY, task_reader=NULL)),
    Row("projects", "{ projects { edges { node { name } } } }", "projects.edges.node.name",
        outcome(PROJECT_READERS, EMPTY)),
    Row("projects.owner", "{ projects { edges { node { owner { email } } } } }",
        "projects.edges.node.owner.email", outcome(PROJECT_READERS, EMPTY)),
    Row("projects.members.user", "{ projects { edges { node { members { user { email } } } } } }",
        "projects.edges.node.members.user.email", outcome(PROJECT_READERS, EMPTY)),
    Row("user", "query($user: ID!) { user(id: $user) { email } }", "user.email",
        outcome(PROJECT_READERS, HIDDEN)),
    Row("me", "{ me { email } }", "me.email", outcome(frozenset(ACTORS), HIDDEN)),
    Row("task.approvals", "query($task: ID!) { task(id: $task) { approvals { toolName } } }",
        "task.approvals.toolName", outcome(TASK_READERS, HIDDEN)),
    Row("task.approvals.task", "query($task: ID!) { task(id: $task) { approvals { task { prompt } } } }",
        "task.approvals.task.prompt", outcome(TASK_READERS, HIDDEN)),
    Row("task.approvals.decidedBy",
        "query($task: ID!) { task(id: $task) { approvals { decidedBy { email } } } }",
        "task.approvals.decidedBy.email", outcome(BOTH, HIDDEN, task_reader=NULL)),
    Row("approvalRequests",
        "query($project: ID!) { approvalRequests(projectId: $project) { edges { node { toolName } } } }",
        "approvalRequests.edges.node.toolName", outcome(BOTH, HIDDEN, project_reader=FORBID)),
    Row("approvalRequests.task.createdBy",
        "query($project: ID!) { approvalRequests(projectId: $project) { edges { node { task { createdBy { email } } } } } }",
        "approvalRequests.edges.node.task.createdBy.email", outcome(BOTH, HIDDEN, project_reader=FORBID)),
    Row("project.webhooks", "query($project: ID!) { project(id: $project) { webhooks { url } } }",
        "project.webhooks.url", outcome(WEBHOOK_MANAGERS, EMPTY, outsider=HIDDEN, task_reader=HIDDEN)),
    Row("project.webhooks.deliveries",
        "query($project: ID!) { project(id: $project) { webhooks { deliveries { status } } } }",
        "project.webhooks.deliveries.status",
        outcome(WEBHOOK_MANAGERS, EMPTY, outsider=HIDDEN, task_reader=HIDDEN)),
    Row("projects.webhooks", "{ projects { edges { node { webhooks { url } } } } }",
        "projects.edges.node.webhooks.url", outcome(WEBHOOK_MANAGERS, EMPTY)),
    Row("viewer.user", "{ viewer { user { email } } }", "viewer.user.email", outcome(frozenset(ACTORS), HIDDEN)),
    Row("auditLog.actor", "{ auditLog { edges { node { actor { email } } } } }",
        "auditLog.edges.node.actor.email", outcome(frozenset({"admin", "auditor"}), FORBID)),
]  # fmt: skip

SUBSCRIPTIONS = [
    Row("projectEvents.project",
        "subscription($project: ID!) { projectEvents(projectId: $project) { project { name } } }",
        "projectEvents.project.name", outcome(PROJECT_READERS, HIDDEN), ProjectEventType.PROJECT_UPDATED),
    Row("projectEvents.actor",
        "subscription($project: ID!) { projectEvents(projectId: $project) { actor { email } } }",
        "projectEvents.actor.email", outcome(PROJECT_READERS, HIDDEN), ProjectEventType.PROJECT_UPDATED),
    Row("projectEvents.task",
        "subscription($project: ID!) { projectEvents(projectId: $project) { task { prompt } } }",
        "projectEvents.task.prompt", outcome(BOTH, HIDDEN, project_reader=NULL), ProjectEventType.TASK_UPDATED),
    Row("projectEvents.task.createdBy",
        "subscription($project: ID!) { projectEvents(projectId: $project) { task { createdBy { email } } } }",
        "projectEvents.task.createdBy.email", outcome(BOTH, HIDDEN, project_reader=NULL), ProjectEventType.TASK_UPDATED),
    Row("projectEvents.task.logs",
        "subscription($project: ID!) { projectEvents(projectId: $project) { task { logs { text } } } }",
        "projectEvents.task.logs.text", outcome(BOTH, HIDDEN, project_reader=NULL), ProjectEventType.TASK_UPDATED),
    Row("projectEvents.member.user",
        "subscription($project: ID!) { projectEvents(projectId: $project) { member { user { email } } } }",
        "projectEvents.member.user.email", outcome(PROJECT_READERS, HIDDEN), ProjectEventType.MEMBER_ADDED),
    Row("projectEvents.project.members.user",
        "subscription($project: ID!) { projectEvents(projectId: $project) { project { members { user { email } } } } }",
        "projectEvents.project.members.user.email", outcome(PROJECT_READERS, HIDDEN), ProjectEventType.PROJECT_UPDATED),
    Row("projectEvents.approval",
        "subscription($project: ID!) { projectEvents(projectId: $project) { approval { toolName } } }",
        "projectEvents.approval.toolName", outcome(BOTH, HIDDEN, project_reader=NULL),
        ProjectEventType.APPROVAL_REQUESTED),
    Row("approvalRequests",
        "subscription($project: ID!) { approvalRequests(projectId: $project) { toolName } }",
        "approvalRequests.toolName", outcome(BOTH, HIDDEN, project_reader=FORBID),
        ProjectEventType.APPROVAL_REQUESTED),
    Row("approvalRequests.task.createdBy",
        "subscription($project: ID!) { approvalRequests(projectId: $project) { task { createdBy { email } } } }",
        "approvalRequests.task.createdBy.email", outcome(BOTH, HIDDEN, project_reader=FORBID),
        ProjectEventType.APPROVAL_REQUESTED),
    Row("taskUpdates", "subscription($task: ID!) { taskUpdates(taskId: $task) { prompt } }",
        "taskUpdates.prompt", outcome(TASK_READERS, HIDDEN)),
    Row("taskUpdates.project", "subscription($task: ID!) { taskUpdates(taskId: $task) { project { name } } }",
        "taskUpdates.project.name", outcome(BOTH, HIDDEN, task_reader=NULL)),
    Row("taskUpdates.createdBy",
        "subscription($task: ID!) { taskUpdates(taskId: $task) { createdBy { email } } }",
        "taskUpdates.createdBy.email", outcome(BOTH, HIDDEN, task_reader=NULL)),
    Row("taskUpdates.logs", "subscription($task: ID!) { taskUpdates(taskId: $task) { logs { text } } }",
        "taskUpdates.logs.text", outcome(TASK_READERS, HIDDEN)),
    Row("taskLogs", "subscription($task: ID!) { taskLogs(taskId: $task) { text } }", "taskLogs.text",
        outcome(TASK_READERS, HIDDEN)),
    Row("taskLogBatches",
        "subscription($task: ID!) { taskLogBatches(taskId: $task) { lines { text } } }",
        "taskLogBatches.lines.text", outcome(TASK_READERS, HIDDEN)),
]  # fmt: skip


@dataclass
class World:
    users: dict[str, models.User]
    project: models.Project
    task: models.Task

    def variables(self) -> dict[str, str]:
        return {
            "project": encode_id("Project", self.project.id),
            "task": encode_id("Task", self.task.id),
            "user": encode_id("User", self.users["developer"].id),
        }


async def build_world() -> World:
    users = {
        "admin": await make_user(roles=(MEMBER, ADMIN)),
        "auditor": await make_user(roles=(AUDITOR,)),
        **{name: await make_user() for name in ACTORS if name not in {"admin", "auditor"}},
    }
    project = await make_project(users["owner"], "Nested")
    for name, role in (("maintainer", MAINTAINER), ("developer", DEVELOPER), ("viewer", VIEWER)):
        await add_member(project, users[name], role)
    for name, permission in (("project_reader", "project:read"), ("task_reader", "task:read")):
        role = await make_role(f"only-{permission.replace(':', '-')}", "PROJECT", [permission])
        await models.ProjectMember.create(project=project, user=users[name], role=role)
    task = await models.Task.create(
        project=project,
        created_by=users["developer"],
        prompt="the secret prompt",
        status=models.TaskStatus.SUCCEEDED,
        last_seq=2,
        branch="aicm/task-a",
        changed_paths=["README.md"],
    )
    await models.Task.create(  # touches the same file: each lists the other in overlapsWith
        project=project,
        created_by=users["owner"],
        prompt="another secret prompt",
        status=models.TaskStatus.SUCCEEDED,
        branch="aicm/task-b",
        changed_paths=["README.md", "other.txt"],
    )
    for seq, text in ((1, "first line"), (2, "second line")):
        await models.TaskLog.create(
            task=task, seq=seq, at=datetime.now(UTC), stream="stdout", kind="text", text=text
        )
    await models.AuditLog.create(
        actor=users["developer"], action="task.create", target_type="Task", target_id=str(task.id)
    )
    await models.ApprovalRequest.create(
        task=task,
        tool_name="Bash",
        input={"command": "make test"},
        input_key="k",
        status=models.ApprovalStatus.ALLOWED,
        expires_at=datetime.now(UTC),
        decided_by=users["maintainer"],
        decided_at=datetime.now(UTC),
    )
    hook = await models.Webhook.create(
        project=project, url="http://127.0.0.1:9/h", events=["TASK_FINISHED"], secret="x"
    )
    await models.WebhookDelivery.create(webhook=hook, event="TASK_FINISHED", status=200)
    return World(users, project, task)


def leaves(value: Any, path: list[str]) -> list[Any]:
    """The values at ``path``, walking every list on the way; a null on the way is a null leaf."""
    if isinstance(value, list):
        return [leaf for item in value for leaf in leaves(item, path)]
    if not path or value is None:
        return [value]
    return leaves(value[path[0]], path[1:])


def observed(data: dict[str, Any] | None, codes: list[str], path: str) -> str:
    if codes:
        return codes[0]
    found = leaves(data, path.split("."))
    if not found:
        return EMPTY
    if all(leaf is None for leaf in found):
        return NULL
    return SEEN if all(leaf is not None for leaf in found) else f"partly null: {found}"


def cases(rows: list[Row]) -> list[Any]:
    return [
        pytest.param(row, actor, row.expected[actor], id=f"{row.name}-{actor}")
        for row in rows
        for actor in ACTORS
    ]


@pytest.mark.parametrize(("row", "actor", "expected"), cases(QUERIES))
async def test_a_nested_path_shows_only_what_the_viewer_may_see(
    app: Starlette, client: httpx.AsyncClient, row: Row, actor: str, expected: str
) -> None:
    # given
    world = await build_world()
    token = await token_for(app, world.users[actor])
    # when
    result = await execute(client, row.document, world.variables(), token=token)
    # then
    assert observed(result.get("data"), error_codes(result), row.path) == expected, result


async def _publish(app: Starlette, world: World, kind: str) -> None:
    owner, project = world.users["owner"], world.project
    if kind == ProjectEventType.TASK_UPDATED:
        payload = events.task_event(kind, world.task, owner.id)
    elif kind == ProjectEventType.APPROVAL_REQUESTED:
        request = await models.ApprovalRequest.get(task_id=world.task.id)
        payload = events.approval_event(kind, request, project.id, None)
    elif kind == ProjectEventType.MEMBER_ADDED:
        member = await models.ProjectMember.get(project=project, user=world.users["viewer"])
        payload = events.member_event(kind, project, member, Viewer(user=owner))
    else:
        payload = events.project_event(kind, project, Viewer(user=owner))
    await app.state.runtime.broker.publish(channels.project(project.id), payload)


async def first_answer(app: Starlette, ws: GraphQLWS, world: World, event: str | None) -> dict[str, Any]:
    """The subscription's first ``next`` or ``error``; the event is published again until one comes (the
    subscription may not be listening yet), for at most 10 s."""
    deadline = time.monotonic() + 10
    while True:
        if event is not None:
            await _publish(app, world, event)
        try:
            message = await ws.receive(0.25)
        except TimeoutError:
            assert time.monotonic() < deadline, "no answer from the subscription"
            continue
        if message.get("type") in {"next", "error"}:
            return message


@pytest.mark.parametrize(("row", "actor", "expected"), cases(SUBSCRIPTIONS))
async def test_a_subscription_payload_shows_only_what_the_viewer_may_see(
    app: Starlette, client: httpx.AsyncClient, server_url: str, row: Row, actor: str, expected: str
) -> None:
    # given
    world = await build_world()
    ws = await (await GraphQLWS.open(server_url, await token_for(app, world.users[actor]))).acked()
    try:
        # when
        await ws.subscribe("1", row.document, world.variables())
        message = await asyncio.wait_for(first_answer(app, ws, world, row.event), 15)
    finally:
        await ws.close()
    # then
    if message["type"] == "error":
        codes = [error["extensions"]["code"] for error in message["payload"]]
        assert observed(None, codes, row.path) == expected, message
    else:
        payload = message["payload"]
        codes = [error["extensions"]["code"] for error in payload.get("errors") or []]
        assert observed(payload.get("data"), codes, row.path) == expected, message
