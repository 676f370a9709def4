"""Users, roles and the audit log end to end."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette

from aicm import models
from aicm.auth.permissions import ALL_PERMISSIONS, BUILT_IN_ROLES
from aicm.schema.relay import encode_id
from tests.factories import make_role, make_user, token_for
from tests.graphql import assert_error, assert_ok, execute

CREATE_USER = "mutation($input: CreateUserInput!) { createUser(input: $input) { email roles { name } } }"


async def test_the_migration_seeds_exactly_the_built_in_roles(app: Starlette, db: None) -> None:
    rows = {r.name: r for r in await models.Role.filter(built_in=True)}
    assert set(rows) == {r.name for r in BUILT_IN_ROLES}
    for role in BUILT_IN_ROLES:
        assert rows[role.name].scope == role.scope
        assert sorted(rows[role.name].permissions) == sorted(role.permissions)
    assert sorted(rows["admin"].permissions) == sorted(ALL_PERMISSIONS)


async def test_roles_and_permissions_are_readable_by_any_signed_in_user(
    app: Starlette, client: httpx.AsyncClient
):
    user = await make_user()
    data = assert_ok(
        await execute(
            client, "{ roles(scope: PROJECT) { name builtIn } permissions }", token=await token_for(app, user)
        )
    )
    assert [r["name"] for r in data["roles"]] == ["owner", "maintainer", "developer", "viewer"]
    assert set(data["permissions"]) == set(ALL_PERMISSIONS)


async def test_create_user_lowercases_email_and_refuses_duplicates(app: Starlette, client: httpx.AsyncClient):
    admin = await make_user(roles=("admin",))
    token = await token_for(app, admin)
    variables = {"input": {"email": "Mixed@Example.COM", "name": "M", "password": "a-long-password-1"}}
    data = assert_ok(await execute(client, CREATE_USER, variables, token=token))
    assert data["createUser"] == {"email": "mixed@example.com", "roles": [{"name": "member"}]}
    variables["input"]["email"] = "MIXED@example.com"
    assert_error(await execute(client, CREATE_USER, variables, token=token), "CONFLICT", field="email")


async def test_built_in_roles_cannot_be_changed_or_deleted(app: Starlette, client: httpx.AsyncClient) -> None:
    admin = await make_user(roles=("admin",))
    token = await token_for(app, admin)
    viewer_id = encode_id("Role", (await models.Role.get(name="viewer")).id)
    update = await execute(
        client,
        "mutation($id: ID!) { updateRole(id: $id, input: {permissions: []}) { id } }",
        {"id": viewer_id},
        token=token,
    )
    assert_error(update, "FORBIDDEN")
    assert_error(
        await execute(client, "mutation($id: ID!) { deleteRole(id: $id) }", {"id": viewer_id}, token=token),
        "FORBIDDEN",
    )


async def test_custom_roles_are_created_updated_and_deleted(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    admin = await make_user(roles=("admin",))
    token = await token_for(app, admin)
    created = assert_ok(
        await execute(
            client,
            'mutation { createRole(input: {name: "release", scope: PROJECT, permissions: ["task:read", "project:read", '
            '"task:read"]}) { id permissions builtIn scope } }',
            token=token,
        )
    )["createRole"]
    assert created["permissions"] == ["project:read", "task:read"]
    assert (created["builtIn"], created["scope"]) == (False, "PROJECT")
    duplicate = await execute(
        client,
        'mutation { createRole(input: {name: "release", scope: SYSTEM, permissions: []}) { id } }',
        token=token,
    )
    assert_error(duplicate, "CONFLICT", field="name")
    updated = assert_ok(
        await execute(
            client,
            'mutation($id: ID!) { updateRole(id: $id, input: {name: "rel", '
            'permissions: ["project:read"]}) { name permissions } }',
            {"id": created["id"]},
            token=token,
        )
    )
    assert updated["updateRole"] == {"name": "rel", "permissions": ["project:read"]}
    assert assert_ok(
        await execute(
            client, "mutation($id: ID!) { deleteRole(id: $id) }", {"id": created["id"]}, token=token
        )
    ) == {"deleteRole": True}


async def test_a_role_held_by_members_cannot_be_deleted(app: Starlette, client: httpx.AsyncClient) -> None:
    from tests.factories import make_project

    admin, owner, member = await make_user(roles=("admin",)), await make_user(), await make_user()
    role = await make_role("helper", "PROJECT", ["project:read"])
    project = await make_project(owner)
    await models.ProjectMember.create(project=project, user=member, role=role)
    result = await execute(
        client,
        "mutation($id: ID!) { deleteRole(id: $id) }",
        {"id": encode_id("Role", role.id)},
        token=await token_for(app, admin),
    )
    assert_error(result, "CONFLICT")


async def test_users_page_with_cursors_and_search(app: Starlette, client: httpx.AsyncClient) -> None:
    admin = await make_user("admin@example.com", roles=("admin",))
    for n in range(4):
        await make_user(f"person{n}@example.com", name=f"Person {n}")
    token = await token_for(app, admin)
    query = (
        'query($after: String) { users(first: 2, after: $after, search: "PERSON") { totalCount '
        "pageInfo { hasNextPage endCursor } edges { node { email } } } }"
    )
    first = assert_ok(await execute(client, query, {"after": None}, token=token))["users"]
    second = assert_ok(await execute(client, query, {"after": first["pageInfo"]["endCursor"]}, token=token))[
        "users"
    ]
    assert first["totalCount"] == second["totalCount"] == 4
    assert [e["node"]["email"] for e in first["edges"] + second["edges"]] == [
        f"person{n}@example.com" for n in range(4)
    ]
    assert (first["pageInfo"]["hasNextPage"], second["pageInfo"]["hasNextPage"]) == (True, False)


async def test_audit_log_lists_changes_newest_first_with_their_actor(
    app: Starlette, client: httpx.AsyncClient
):
    admin = await make_user("root@example.com", roles=("admin",))
    auditor = await make_user(roles=("auditor",))
    token = await token_for(app, admin)
    await execute(client, 'mutation { createProject(input: {name: "One"}) { id } }', token=token)
    await execute(client, 'mutation { updateMe(input: {name: "Root"}) { id } }', token=token)
    data = assert_ok(
        await execute(
            client,
            "{ auditLog(first: 5) { totalCount edges { node { action targetType actor { email } } } } }",
            token=await token_for(app, auditor),
        )
    )["auditLog"]
    assert [e["node"]["action"] for e in data["edges"]] == ["user.update", "project.create"]
    assert {e["node"]["actor"]["email"] for e in data["edges"]} == {"root@example.com"}


async def test_a_failed_mutation_writes_no_audit_row(app: Starlette, client: httpx.AsyncClient) -> None:
    owner = await make_user()
    before = await models.AuditLog.all().count()
    await execute(
        client,
        'mutation { createProject(input: {name: "x", repositoryUrl: "ftp://x"}) { id } }',
        token=await token_for(app, owner),
    )
    assert await models.AuditLog.all().count() == before


async def test_a_deactivated_users_token_stops_working(app: Starlette, client: httpx.AsyncClient) -> None:
    user = await make_user(active=False)
    response = await client.post(
        "/graphql",
        json={"query": "{ me { id } }"},
        headers={"Authorization": f"Bearer {await token_for(app, user)}"},
    )
    assert response.status_code == 401
    assert_error(response.json(), "UNAUTHENTICATED")
