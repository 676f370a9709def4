"""Every input validation rule answers BAD_USER_INPUT and names its field."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette

from aicm import models
from aicm.schema.relay import encode_id
from tests.factories import make_project, make_user, token_for
from tests.graphql import assert_error, execute

CREATE_PROJECT = "mutation($input: CreateProjectInput!) { createProject(input: $input) { id } }"
CREATE_USER = "mutation($input: CreateUserInput!) { createUser(input: $input) { id } }"
CREATE_ROLE = "mutation($input: CreateRoleInput!) { createRole(input: $input) { id } }"


def project_input(**overrides: str) -> dict[str, dict[str, str]]:
    return {"input": {"name": "Valid", "description": "", "repositoryUrl": ""} | overrides}


def user_input(**overrides: str) -> dict[str, dict[str, str]]:
    return {"input": {"email": "new@example.com", "name": "New", "password": "a-long-password-1"} | overrides}


def role_input(**overrides: object) -> dict[str, dict[str, object]]:
    return {"input": {"name": "ops", "scope": "PROJECT", "permissions": ["project:read"]} | overrides}


CASES = [
    # (document, variables, field)
    (CREATE_PROJECT, project_input(name=""), "name"),
    (CREATE_PROJECT, project_input(name="   "), "name"),
    (CREATE_PROJECT, project_input(name="x" * 101), "name"),
    (CREATE_PROJECT, project_input(name="nul\x00byte"), "name"),
    (CREATE_PROJECT, project_input(description="d" * 2001), "description"),
    (CREATE_PROJECT, project_input(repositoryUrl="http://example.com/repo.git"), "repositoryUrl"),
    (CREATE_PROJECT, project_input(repositoryUrl="file:///etc/passwd"), "repositoryUrl"),
    (CREATE_PROJECT, project_input(repositoryUrl="ext::sh -c touch% /tmp/pwned"), "repositoryUrl"),
    (CREATE_PROJECT, project_input(repositoryUrl="--upload-pack=touch /tmp/pwned"), "repositoryUrl"),
    (CREATE_PROJECT, project_input(repositoryUrl="https://"), "repositoryUrl"),
    (CREATE_PROJECT, project_input(slug="Not A Slug"), "slug"),
    (CREATE_PROJECT, project_input(slug="-leading"), "slug"),
    (CREATE_PROJECT, project_input(slug="ünïcode"), "slug"),
    (CREATE_PROJECT, project_input(slug="abc\n"), "slug"),  # `$` alone would let a final newline through
    (CREATE_USER, user_input(email="not-an-email"), "email"),
    (CREATE_USER, user_input(email="a@b"), "email"),
    (CREATE_USER, user_input(email="x" * 250 + "@example.com"), "email"),
    (CREATE_USER, user_input(password="short"), "password"),
    (CREATE_USER, user_input(password="new@example.com"), "password"),
    (CREATE_USER, user_input(name="n" * 201), "name"),
    (CREATE_USER, {"input": user_input()["input"] | {"roleIds": ["garbage!"]}}, "roleIds"),
    (CREATE_ROLE, role_input(name="Bad Name"), "name"),
    (CREATE_ROLE, role_input(name=""), "name"),
    (CREATE_ROLE, role_input(permissions=["project:fly"]), "permissions"),
    (CREATE_ROLE, role_input(permissions=["user:manage"]), "permissions"),
    (CREATE_ROLE, role_input(description="d" * 501), "description"),
    ("{ users(first: 0) { totalCount } }", {}, "first"),
    ("{ users(first: 101) { totalCount } }", {}, "first"),
    ("{ projects(first: -1) { totalCount } }", {}, "first"),
    ('{ projects(after: "%%%") { totalCount } }', {}, "after"),
    ("query($s: String) { users(search: $s) { totalCount } }", {"s": "s" * 201}, "search"),
    ('{ project(id: "@@@") { id } }', {}, "id"),
    ('mutation { updateMe(input: {name: ""}) { id } }', {}, "name"),
]


@pytest.mark.parametrize(("document", "variables", "field"), CASES)
async def test_invalid_input_names_its_field(
    app: Starlette, client: httpx.AsyncClient, document: str, variables: dict, field: str
) -> None:
    # given an administrator, who passes every permission check
    admin = await make_user(roles=("member", "admin"))
    # when
    result = await execute(client, document, variables, token=await token_for(app, admin))
    # then
    assert_error(result, "BAD_USER_INPUT", field=field)


async def test_member_needs_a_project_scoped_role(app: Starlette, client: httpx.AsyncClient) -> None:
    owner, newcomer = await make_user(), await make_user()
    project = await make_project(owner)
    system_role = await models.Role.get(name="auditor")
    result = await execute(
        client,
        "mutation($p: ID!, $u: ID!, $r: ID!) { addProjectMember(projectId: $p, userId: $u, roleId: $r) { addedAt } }",
        {
            "p": encode_id("Project", project.id),
            "u": encode_id("User", newcomer.id),
            "r": encode_id("Role", system_role.id),
        },
        token=await token_for(app, owner),
    )
    assert_error(result, "BAD_USER_INPUT", field="roleId")


async def test_system_roles_only_are_assigned_to_users(app: Starlette, client: httpx.AsyncClient) -> None:
    admin, someone = await make_user(roles=("admin",)), await make_user()
    project_role = await models.Role.get(name="viewer")
    result = await execute(
        client,
        "mutation($u: ID!, $r: ID!) { assignRole(userId: $u, roleId: $r) { id } }",
        {"u": encode_id("User", someone.id), "r": encode_id("Role", project_role.id)},
        token=await token_for(app, admin),
    )
    assert_error(result, "BAD_USER_INPUT", field="roleId")


async def test_an_id_of_another_type_is_not_found(app: Starlette, client: httpx.AsyncClient) -> None:
    admin = await make_user(roles=("admin",))
    result = await execute(
        client,
        "query($id: ID!) { project(id: $id) { id } }",
        {"id": encode_id("User", admin.id)},
        token=await token_for(app, admin),
    )
    assert_error(result, "NOT_FOUND")
