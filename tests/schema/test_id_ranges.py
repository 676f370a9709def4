"""Well-formed IDs and cursors with any number in them answer a coded error, never INTERNAL_SERVER_ERROR.

Generic fuzzers never build a valid ``Type:N`` ID, so the generator here does: unpadded URL-safe base64 of
``Type:N`` (and ``cursor:N``) with N huge, negative, zero, and on both sides of the id columns' range
(PostgreSQL ``integer``: 2^31-1; SQLite: 2^63-1). Every field that takes an ID or a cursor has a row below,
and a test checks that the rows cover every such field of the schema, so a new field must add one.

- An ID outside 1..2^31-1 names nothing: ``NOT_FOUND``; inside it, anything but INTERNAL_SERVER_ERROR.
- A cursor outside that range is ``BAD_USER_INPUT`` on ``after``; inside it, a page.
- ``afterSeq`` / ``first`` of log lines: any GraphQL Int gives lines or a coded error.
"""

from __future__ import annotations

import base64
import os
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from graphql import GraphQLList, GraphQLNonNull, GraphQLObjectType
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from aicm import models
from tests.factories import make_project, make_user, token_for
from tests.graphql import error_codes
from tests.ws import GraphQLWS

EXAMPLES = int(os.environ.get("AICM_ID_RANGE_EXAMPLES", "25"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
INT4_MAX, INT8_MAX = 2**31 - 1, 2**63 - 1
BOUNDARIES = [0, -1, 1, INT4_MAX, INT4_MAX + 1, 2**32, INT8_MAX, INT8_MAX + 1, 2**64, -(2**31), -(2**63) - 1]
keys = st.one_of(
    st.sampled_from(BOUNDARIES),
    st.integers(-(2**80), 2**80),
    st.integers(INT4_MAX - 2, INT4_MAX + 2),
    st.integers(INT8_MAX - 2, INT8_MAX + 2),
)
graphql_ints = st.one_of(st.sampled_from([0, -1, 1, INT4_MAX, -(2**31)]), st.integers(-(2**31), INT4_MAX))


def opaque(kind: str, key: int | str) -> str:
    """Written out here rather than borrowed from the server: the test pins the wire format."""
    return base64.urlsafe_b64encode(f"{kind}:{key}".encode()).decode().rstrip("=")


def in_range(key: int) -> bool:
    return 1 <= key <= INT4_MAX


@dataclass(frozen=True)
class Row:
    """One ID-taking field: its document, and which variables carry IDs of which type."""

    field: str
    document: str
    ids: dict[str, str]  # variable -> type name ("[Role]" for a list of Role IDs)
    fixed: dict[str, Any] | None = None


ROWS = [
    Row("Query.user", "query($id: ID!) { user(id: $id) { id } }", {"id": "User"}),
    Row("Query.project", "query($id: ID!) { project(id: $id) { id } }", {"id": "Project"}),
    Row("Query.task", "query($id: ID!) { task(id: $id) { id } }", {"id": "Task"}),
    Row("Query.tasks", "query($p: ID) { tasks(projectId: $p) { totalCount } }", {"p": "Project"}),
    Row(
        "Mutation.updateUser",
        "mutation($id: ID!) { updateUser(id: $id, input: {name: 'n'}) { id } }".replace("'", '"'),
        {"id": "User"},
    ),
    Row("Mutation.deactivateUser", "mutation($id: ID!) { deactivateUser(id: $id) { id } }", {"id": "User"}),
    Row(
        "Mutation.assignRole",
        "mutation($u: ID!, $r: ID!) { assignRole(userId: $u, roleId: $r) { id } }",
        {"u": "User", "r": "Role"},
    ),
    Row(
        "Mutation.revokeRole",
        "mutation($u: ID!, $r: ID!) { revokeRole(userId: $u, roleId: $r) }",
        {"u": "User", "r": "Role"},
    ),
    Row(
        "Mutation.createUser",
        "mutation($r: [ID!]!, $e: String!) { createUser(input: {email: $e, name: 'N', password: $pw,"
        " roleIds: $r}) { id } }".replace("'", '"').replace("$pw", '"correct-horse-battery-staple"'),
        {"r": "[Role]"},
        {"e": None},  # a fresh address per example
    ),
    Row(
        "Mutation.updateProject",
        'mutation($id: ID!) { updateProject(id: $id, input: {name: "n"}) { id } }',
        {"id": "Project"},
    ),
    Row(
        "Mutation.archiveProject", "mutation($id: ID!) { archiveProject(id: $id) { id } }", {"id": "Project"}
    ),
    Row("Mutation.deleteProject", "mutation($id: ID!) { deleteProject(id: $id) }", {"id": "Project"}),
    Row(
        "Mutation.addProjectMember",
        "mutation($p: ID!, $u: ID!, $r: ID!) { addProjectMember(projectId: $p, userId: $u, roleId: $r)"
        " { role { id } } }",
        {"p": "Project", "u": "User", "r": "Role"},
    ),
    Row(
        "Mutation.updateProjectMember",
        "mutation($p: ID!, $u: ID!, $r: ID!) { updateProjectMember(projectId: $p, userId: $u, roleId: $r)"
        " { role { id } } }",
        {"p": "Project", "u": "User", "r": "Role"},
    ),
    Row(
        "Mutation.removeProjectMember",
        "mutation($p: ID!, $u: ID!) { removeProjectMember(projectId: $p, userId: $u) }",
        {"p": "Project", "u": "User"},
    ),
    Row(
        "Mutation.createTask",
        'mutation($p: ID!) { createTask(input: {projectId: $p, prompt: "x"}) { id } }',
        {"p": "Project"},
    ),
    Row("Mutation.cancelTask", "mutation($id: ID!) { cancelTask(id: $id) { id } }", {"id": "Task"}),
    Row(
        "Mutation.decideApproval",
        "mutation($id: ID!) { decideApproval(id: $id, input: {allow: true}) { id } }",
        {"id": "ApprovalRequest"},
    ),
    Row(
        "Query.approvalRequests",
        "query($p: ID!) { approvalRequests(projectId: $p) { totalCount } }",
        {"p": "Project"},
    ),
    Row(
        "Mutation.addProjectWebhook",
        'mutation($p: ID!) { addProjectWebhook(projectId: $p, input: {url: "http://127.0.0.1:9/h",'
        ' events: [TASK_FINISHED], secret: "long-enough-secret"}) { id } }',
        {"p": "Project"},
    ),
    Row(
        "Mutation.setProjectAgentCredential",
        'mutation($p: ID!) { setProjectAgentCredential(projectId: $p, input: {provider: "anthropic"}) { id } }',
        {"p": "Project"},
    ),
    Row(
        "Mutation.removeProjectWebhook",
        "mutation($id: ID!) { removeProjectWebhook(id: $id) }",
        {"id": "Webhook"},
    ),
    Row("Mutation.pushTask", "mutation($id: ID!) { pushTask(id: $id) { id } }", {"id": "Task"}),
    Row(
        "Mutation.mergeTask",
        "mutation($id: ID!) { mergeTask(id: $id, input: {strategy: MERGE}) { id } }",
        {"id": "Task"},
    ),
    Row(
        "Mutation.setProjectCredential",
        "mutation($p: ID!) { setProjectCredential(projectId: $p, input: {}) { id } }",
        {"p": "Project"},
    ),
    Row(
        "Mutation.followUpTask",
        'mutation($id: ID!) { followUpTask(id: $id, prompt: "x") { id } }',
        {"id": "Task"},
    ),
    Row(
        "Mutation.updateRole",
        'mutation($id: ID!) { updateRole(id: $id, input: {description: "d"}) { id } }',
        {"id": "Role"},
    ),
    Row("Mutation.deleteRole", "mutation($id: ID!) { deleteRole(id: $id) }", {"id": "Role"}),
    # Its key is the session's opaque string, not a number: any text names nothing.
    Row("Mutation.revokeSession", "mutation($id: ID!) { revokeSession(id: $id) }", {"id": "Session"}),
]
CURSOR_FIELDS = {
    "Query.users": "query($a: String) { users(after: $a) { totalCount } }",
    "Query.projects": "query($a: String) { projects(after: $a) { totalCount } }",
    "Query.tasks": "query($a: String) { tasks(after: $a) { totalCount } }",
    "Query.auditLog": "query($a: String) { auditLog(after: $a) { totalCount } }",
    "Project.tasks": "query($a: String, $p: ID!) { project(id: $p) { tasks(after: $a) { totalCount } } }",
}
SUBSCRIPTIONS = {
    "Subscription.projectEvents": (
        "subscription($id: ID!) { projectEvents(projectId: $id) { type } }",
        "Project",
    ),
    "Subscription.approvalRequests": (
        "subscription($id: ID!) { approvalRequests(projectId: $id) { id } }",
        "Project",
    ),
    "Subscription.taskUpdates": ("subscription($id: ID!) { taskUpdates(taskId: $id) { id } }", "Task"),
    "Subscription.taskLogs": (
        "subscription($id: ID!) { taskLogs(taskId: $id, afterSeq: 0) { seq } }",
        "Task",
    ),
    "Subscription.taskLogBatches": (
        "subscription($id: ID!) { taskLogBatches(taskId: $id, afterSeq: 0) { lastSeq } }",
        "Task",
    ),
}


def _variables(row: Row, key: int) -> dict[str, Any]:
    variables: dict[str, Any] = {}
    for name, kind in row.ids.items():
        variables[name] = [opaque(kind[1:-1], key)] if kind.startswith("[") else opaque(kind, key)
    for name in row.fixed or {}:
        variables[name] = f"id-range-{uuid.uuid4().hex[:12]}@example.com"
    return variables


@pytest.fixture
async def admin(app: Starlette, client: httpx.AsyncClient) -> str:
    return await token_for(app, await make_user(roles=("admin",)))


async def _post(client: httpx.AsyncClient, token: str, query: str, variables: dict[str, Any]) -> dict:
    response = await client.post(
        "/graphql",
        json={"query": query, "variables": variables},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text
    return response.json()


def _id_taking_fields(app: Starlette) -> set[str]:
    graphql_app = next(r.endpoint for r in app.routes if getattr(r, "path", None) == "/graphql")
    found = set()
    for type_name, type_ in graphql_app.schema._schema.type_map.items():
        if type_name.startswith("__") or not isinstance(type_, GraphQLObjectType):
            continue
        for field_name, field in type_.fields.items():
            for arg_name, arg in field.args.items():
                inner = arg.type.of_type if isinstance(arg.type, GraphQLNonNull) else arg.type
                if str(inner) == "ID" or arg_name == "after" or isinstance(inner, GraphQLList):
                    found.add(f"{type_name}.{field_name}")
    return found


async def test_every_id_and_cursor_taking_field_has_a_row(app: Starlette) -> None:
    covered = {row.field for row in ROWS} | set(CURSOR_FIELDS) | set(SUBSCRIPTIONS)
    covered |= {"Mutation.createUser", "Mutation.createTask"}  # IDs inside their input objects (rows above)
    missing = _id_taking_fields(app) - covered
    assert not missing, f"add a row for each of {sorted(missing)}"


@PROPERTY
@given(row=st.sampled_from(ROWS), key=keys)
@example(row=ROWS[1], key=INT4_MAX + 1)
@example(row=ROWS[2], key=INT8_MAX + 1)
async def test_ids_with_any_number(client: httpx.AsyncClient, admin: str, row: Row, key: int) -> None:
    answer = await _post(client, admin, row.document, _variables(row, key))
    codes = error_codes(answer)
    assert "INTERNAL_SERVER_ERROR" not in codes, answer
    if row.ids != {"id": "Session"} and not in_range(key):
        assert codes == ["NOT_FOUND"], answer  # outside the column's range an ID names nothing


@PROPERTY
@given(field=st.sampled_from(sorted(CURSOR_FIELDS)), key=keys)
@example(field="Query.projects", key=INT8_MAX + 1)
@example(field="Query.users", key=INT4_MAX + 1)
async def test_cursors_with_any_number(
    app: Starlette, client: httpx.AsyncClient, admin: str, field: str, key: int
) -> None:
    variables: dict[str, Any] = {"a": opaque("cursor", key)}
    if "$p" in CURSOR_FIELDS[field]:
        owner = await models.User.first()
        assert owner is not None
        variables["p"] = opaque("Project", (await make_project(owner)).id)
    answer = await _post(client, admin, CURSOR_FIELDS[field], variables)
    if in_range(key):
        assert not answer.get("errors"), answer
    else:
        assert [e["extensions"] for e in answer["errors"]] == [{"code": "BAD_USER_INPUT", "field": "after"}]


@PROPERTY
@given(after_seq=graphql_ints, first=graphql_ints)
@example(after_seq=-(2**31), first=-(2**31))
@example(after_seq=INT4_MAX, first=INT4_MAX)
@example(after_seq=INT4_MAX - 1, first=100)  # the range after < seq <= after + first passes int4
async def test_log_lines_with_any_after_seq_and_first(
    client: httpx.AsyncClient, admin: str, after_seq: int, first: int
) -> None:
    owner = await models.User.first()
    assert owner is not None
    project = await make_project(owner)
    task = await models.Task.create(project=project, created_by=owner, prompt="x")
    query = "query($id: ID!, $s: Int!, $f: Int!) { task(id: $id) { logs(afterSeq: $s, first: $f) { seq } } }"
    answer = await _post(client, admin, query, {"id": opaque("Task", task.id), "s": after_seq, "f": first})
    assert "INTERNAL_SERVER_ERROR" not in error_codes(answer), answer


@pytest.mark.parametrize("field", sorted(SUBSCRIPTIONS))
@pytest.mark.parametrize("key", [0, -1, INT4_MAX + 1, INT8_MAX + 1, 2**80])
async def test_subscriptions_with_ids_out_of_range(
    client: httpx.AsyncClient, admin: str, server_url: str, field: str, key: int
) -> None:
    document, kind = SUBSCRIPTIONS[field]
    ws = await (await GraphQLWS.open(server_url, admin)).acked()
    try:
        await ws.subscribe("1", document, {"id": opaque(kind, key)})
        message = await ws.receive()
        while message.get("type") in {"ping", "pong"}:
            message = await ws.receive()
        assert message["type"] == "error", message
        assert [e["extensions"]["code"] for e in message["payload"]] == ["NOT_FOUND"], message
    finally:
        await ws.close()


@pytest.mark.parametrize("after_seq", [-(2**31), -1, 0, INT4_MAX, INT4_MAX + 1, 2**63])
async def test_task_logs_subscription_with_any_after_seq(
    client: httpx.AsyncClient, admin: str, server_url: str, after_seq: int
) -> None:
    owner = await models.User.first()
    assert owner is not None
    task = await models.Task.create(
        project=await make_project(owner), created_by=owner, prompt="x", status=models.TaskStatus.SUCCEEDED
    )
    document = "subscription($id: ID!, $s: Int!) { taskLogs(taskId: $id, afterSeq: $s) { seq } }"
    ws = await (await GraphQLWS.open(server_url, admin)).acked()
    try:
        await ws.subscribe("1", document, {"id": opaque("Task", task.id), "s": after_seq})
        message = await ws.receive()
        while message.get("type") in {"ping", "pong"}:
            message = await ws.receive()
        if 0 <= after_seq <= INT4_MAX:  # a finished task with no lines: the stream just completes
            assert message["type"] == "complete", message
        else:  # negative, or not a GraphQL Int
            assert message["type"] == "error", message
            assert [e["extensions"]["code"] for e in message["payload"]] == ["BAD_USER_INPUT"], message
    finally:
        await ws.close()
