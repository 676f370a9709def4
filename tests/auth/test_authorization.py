"""The role x operation matrix of CONTRACT §4: each built-in role against each query and mutation.

Every case builds the same small world: project P owned by ``owner`` with a maintainer, a developer, a viewer
and a ``target`` viewer-member; an ``outsider`` (plain member, not in P); an ``admin`` and an ``auditor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from aicm import models
from aicm.auth.permissions import ADMIN, AUDITOR, DEVELOPER, MAINTAINER, MEMBER, VIEWER
from aicm.schema.relay import encode_id
from tests.factories import add_member, make_project, make_role, make_user, token_for
from tests.graphql import error_codes, execute

OK, UNAUTH, FORBID, HIDDEN = "ok", "UNAUTHENTICATED", "FORBIDDEN", "NOT_FOUND"
ACTORS = ("anonymous", "admin", "auditor", "outsider", "owner", "maintainer", "developer", "viewer")


@dataclass
class World:
    users: dict[str, models.User]
    project: models.Project
    custom_role: models.Role

    def id(self, kind: str, name: str) -> str:
        if kind == "User":
            return encode_id("User", self.users[name].id)
        if kind == "Project":
            return encode_id("Project", self.project.id)
        if kind == "Role":
            return encode_id("Role", self.custom_role.id)
        raise AssertionError(kind)


async def build_world() -> World:
    users = {
        "admin": await make_user(roles=(MEMBER, ADMIN)),
        "auditor": await make_user(roles=(AUDITOR,)),
        "outsider": await make_user(),
        "owner": await make_user(),
        "maintainer": await make_user(),
        "developer": await make_user(),
        "viewer": await make_user(),
        "target": await make_user(),
        "newcomer": await make_user(),
    }
    project = await make_project(users["owner"], "Matrix")
    for name, role in (
        ("maintainer", MAINTAINER),
        ("developer", DEVELOPER),
        ("viewer", VIEWER),
        ("target", VIEWER),
    ):
        await add_member(project, users[name], role)
    custom = await make_role("custom-reader", "PROJECT", ["project:read"])
    return World(users, project, custom)


async def role_id(name: str) -> str:
    return encode_id("Role", (await models.Role.get(name=name)).id)


# (operation, document, variables builder, expected per actor)
def everyone(outcome: str, *, anonymous: str = UNAUTH) -> dict[str, str]:
    return {actor: outcome for actor in ACTORS} | {"anonymous": anonymous}


def admin_only() -> dict[str, str]:
    return everyone(FORBID) | {"admin": OK}


def readers() -> dict[str, str]:  # who may read users / the audit log
    return everyone(FORBID) | {"admin": OK, "auditor": OK}


def project_members_and(**extra: str) -> dict[str, str]:
    base = {"anonymous": UNAUTH, "admin": OK, "auditor": FORBID, "outsider": HIDDEN}
    return base | {"owner": FORBID, "maintainer": FORBID, "developer": FORBID, "viewer": FORBID} | extra


MAINTAINERS = {"owner": OK, "maintainer": OK}

CASES: list[tuple[str, str, Any, dict[str, str]]] = [
    ("me", "{ me { email } }", lambda w: {}, everyone(OK, anonymous=OK)),
    (
        "user",
        "query($id: ID!) { user(id: $id) { email } }",
        lambda w: {"id": w.id("User", "target")},
        everyone(OK) | {"outsider": HIDDEN},  # co-members of P see the target, a member of P
    ),
    ("users", "{ users { totalCount } }", lambda w: {}, readers()),
    (
        "project",
        "query($id: ID!) { project(id: $id) { name viewerRole { name } } }",
        lambda w: {"id": w.id("Project", "")},
        everyone(OK) | {"outsider": HIDDEN},
    ),
    ("roles", "{ roles { name } }", lambda w: {}, everyone(OK)),
    ("permissions", "{ permissions }", lambda w: {}, everyone(OK)),
    ("auditLog", "{ auditLog { totalCount } }", lambda w: {}, readers()),
    (
        "createUser",
        'mutation { createUser(input: {email: "new@example.com", name: "N", '
        'password: "a-long-password-9"}) { id } }',
        lambda w: {},
        admin_only(),
    ),
    ("updateMe", 'mutation { updateMe(input: {name: "Renamed"}) { name } }', lambda w: {}, everyone(OK)),
    (
        "updateUser",
        'mutation($id: ID!) { updateUser(id: $id, input: {name: "X"}) { name } }',
        lambda w: {"id": w.id("User", "target")},
        admin_only(),
    ),
    (
        "deactivateUser",
        "mutation($id: ID!) { deactivateUser(id: $id) { isActive } }",
        lambda w: {"id": w.id("User", "target")},
        admin_only(),
    ),
    (
        "assignRole",
        "mutation($u: ID!, $r: ID!) { assignRole(userId: $u, roleId: $r) { id } }",
        lambda w: {"u": w.id("User", "target"), "r": "auditor"},
        admin_only(),
    ),
    (
        "revokeRole",
        "mutation($u: ID!, $r: ID!) { revokeRole(userId: $u, roleId: $r) }",
        lambda w: {"u": w.id("User", "target"), "r": "member"},
        admin_only(),
    ),
    (
        "createRole",
        'mutation { createRole(input: {name: "ops", scope: SYSTEM, permissions: ["user:read"]}) { id } }',
        lambda w: {},
        admin_only(),
    ),
    (
        "updateRole",
        'mutation($id: ID!) { updateRole(id: $id, input: {description: "d"}) { id } }',
        lambda w: {"id": w.id("Role", "")},
        admin_only(),
    ),
    (
        "deleteRole",
        "mutation($id: ID!) { deleteRole(id: $id) }",
        lambda w: {"id": w.id("Role", "")},
        admin_only(),
    ),
    (
        "updateBuiltInRole",
        'mutation($id: ID!) { updateRole(id: $id, input: {description: "d"}) { id } }',
        lambda w: {"id": "viewer"},
        everyone(FORBID),
    ),
    (
        "createProject",
        'mutation { createProject(input: {name: "Fresh"}) { slug } }',
        lambda w: {},
        everyone(OK) | {"auditor": FORBID},
    ),
    (
        "updateProject",
        'mutation($id: ID!) { updateProject(id: $id, input: {description: "d"}) { id } }',
        lambda w: {"id": w.id("Project", "")},
        project_members_and(**MAINTAINERS),
    ),
    (
        "archiveProject",
        "mutation($id: ID!) { archiveProject(id: $id) { status } }",
        lambda w: {"id": w.id("Project", "")},
        project_members_and(owner=OK),
    ),
    (
        "deleteProject",
        "mutation($id: ID!) { deleteProject(id: $id) }",
        lambda w: {"id": w.id("Project", "")},
        project_members_and(owner=OK),
    ),
    (
        "addProjectMember",
        "mutation($p: ID!, $u: ID!, $r: ID!) { addProjectMember(projectId: $p, userId: $u, "
        "roleId: $r) { addedAt } }",
        lambda w: {"p": w.id("Project", ""), "u": w.id("User", "newcomer"), "r": "viewer"},
        project_members_and(**MAINTAINERS),
    ),
    (
        "updateProjectMember",
        "mutation($p: ID!, $u: ID!, $r: ID!) { updateProjectMember(projectId: $p, userId: $u, "
        "roleId: $r) { role { name } } }",
        lambda w: {"p": w.id("Project", ""), "u": w.id("User", "target"), "r": "developer"},
        project_members_and(**MAINTAINERS),
    ),
    (
        "makeOwner",
        "mutation($p: ID!, $u: ID!, $r: ID!) { updateProjectMember(projectId: $p, userId: $u, "
        "roleId: $r) { role { name } } }",
        lambda w: {"p": w.id("Project", ""), "u": w.id("User", "target"), "r": "owner"},
        project_members_and(owner=OK),
    ),
    (
        "removeProjectMember",
        "mutation($p: ID!, $u: ID!) { removeProjectMember(projectId: $p, userId: $u) }",
        lambda w: {"p": w.id("Project", ""), "u": w.id("User", "target")},
        project_members_and(**MAINTAINERS),
    ),
]

MATRIX = [
    pytest.param(name, doc, variables, actor, expected[actor], id=f"{name}-{actor}")
    for name, doc, variables, expected in CASES
    for actor in ACTORS
]


@pytest.mark.parametrize(("operation", "document", "variables", "actor", "expected"), MATRIX)
async def test_role_matrix(
    app: Starlette,
    client: httpx.AsyncClient,
    operation: str,
    document: str,
    variables: Any,
    actor: str,
    expected: str,
) -> None:
    # given
    world = await build_world()
    values = variables(world)
    for key, value in values.items():  # role names stand for built-in role ids
        if value in {"auditor", "member", "viewer", "developer", "owner"}:
            values[key] = await role_id(value)
    token = None if actor == "anonymous" else await token_for(app, world.users[actor])
    # when
    result = await execute(client, document, values, token=token)
    # then
    if expected == OK:
        assert not result.get("errors"), result
    else:
        assert error_codes(result)[:1] == [expected], result


async def test_project_list_shows_only_visible_projects(app: Starlette, client: httpx.AsyncClient) -> None:
    # given
    world = await build_world()
    await make_project(world.users["outsider"], "Elsewhere")
    query = "{ projects { totalCount edges { node { name } } } }"
    # then: members see P, the outsider sees only their own, admin and auditor see both
    for actor, names in (
        ("viewer", ["Matrix"]),
        ("outsider", ["Elsewhere"]),
        ("admin", ["Matrix", "Elsewhere"]),
        ("auditor", ["Matrix", "Elsewhere"]),
    ):
        data = (await execute(client, query, token=await token_for(app, world.users[actor])))["data"][
            "projects"
        ]
        assert [e["node"]["name"] for e in data["edges"]] == names, actor
        assert data["totalCount"] == len(names)


async def test_custom_project_role_grants_exactly_its_permissions(app: Starlette, client: httpx.AsyncClient):
    # given a member holding the custom role that only has project:read
    world = await build_world()
    reader = await make_user()
    await models.ProjectMember.create(project=world.project, user=reader, role=world.custom_role)
    token = await token_for(app, reader)
    pid = world.id("Project", "")
    # then
    seen = await execute(
        client, "query($id: ID!) { project(id: $id) { viewerRole { name } } }", {"id": pid}, token=token
    )
    assert seen["data"]["project"]["viewerRole"]["name"] == "custom-reader"
    update = await execute(
        client,
        'mutation($id: ID!) { updateProject(id: $id, input: {name: "n"}) { id } }',
        {"id": pid},
        token=token,
    )
    assert error_codes(update) == [FORBID]


async def test_maintainer_cannot_grant_a_role_above_their_own(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    # given a custom project role carrying project:delete, which maintainers lack
    world = await build_world()
    mighty = await make_role("deleter", "PROJECT", ["project:read", "project:delete"])
    doc = (
        "mutation($p: ID!, $u: ID!, $r: ID!) { addProjectMember(projectId: $p, userId: $u, roleId: $r) "
        "{ addedAt } }"
    )
    variables = {
        "p": world.id("Project", ""),
        "u": world.id("User", "newcomer"),
        "r": encode_id("Role", mighty.id),
    }
    # when
    result = await execute(client, doc, variables, token=await token_for(app, world.users["maintainer"]))
    # then
    assert error_codes(result) == [FORBID]
