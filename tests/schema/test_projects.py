"""Projects and members end to end: slugs, names, the owner invariant, archive, delete and audit rows."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette

from aicm import models
from aicm.auth.permissions import DEVELOPER, OWNER, VIEWER
from aicm.resolvers.projects import slugify
from aicm.schema.relay import encode_id
from tests.factories import add_member, make_project, make_user, token_for
from tests.graphql import assert_error, assert_ok, execute

CREATE = (
    "mutation($input: CreateProjectInput!) { createProject(input: $input) { id slug name owner { email } "
    "viewerRole { name } members { user { email } role { name } } } }"
)
UPDATE_MEMBER = (
    "mutation($p: ID!, $u: ID!, $r: ID!) { updateProjectMember(projectId: $p, userId: $u, roleId: $r) "
    "{ role { name } } }"
)
REMOVE_MEMBER = "mutation($p: ID!, $u: ID!) { removeProjectMember(projectId: $p, userId: $u) }"


def pid(project: models.Project) -> str:
    return encode_id("Project", project.id)


def uid(user: models.User) -> str:
    return encode_id("User", user.id)


async def rid(name: str) -> str:
    return encode_id("Role", (await models.Role.get(name=name)).id)


def test_slugify_keeps_lowercase_ascii_letters_digits_and_dashes() -> None:
    assert slugify("Hello, World!") == "hello-world"
    assert slugify("  Café  Déjà Vu  ") == "cafe-deja-vu"
    assert slugify("日本語") == "project"
    assert slugify("--__--") == "project"
    assert len(slugify("x" * 300)) <= 90


async def test_creating_a_project_makes_the_creator_its_owner_and_audits(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    # given
    alice = await make_user("alice@example.com")
    # when
    data = assert_ok(
        await execute(client, CREATE, {"input": {"name": "Billing API"}}, token=await token_for(app, alice))
    )
    # then
    project = data["createProject"]
    assert project["slug"] == "billing-api"
    assert project["owner"]["email"] == "alice@example.com"
    assert project["viewerRole"]["name"] == OWNER
    assert project["members"] == [{"user": {"email": "alice@example.com"}, "role": {"name": OWNER}}]
    assert await models.AuditLog.filter(action="project.create", actor_id=alice.id).count() == 1


async def test_slugs_are_unique_with_numbered_suffixes(app: Starlette, client: httpx.AsyncClient) -> None:
    users = [await make_user() for _ in range(3)]
    slugs = []
    for user in users:
        data = assert_ok(
            await execute(client, CREATE, {"input": {"name": "Same Name"}}, token=await token_for(app, user))
        )
        slugs.append(data["createProject"]["slug"])
    assert slugs == ["same-name", "same-name-2", "same-name-3"]


async def test_an_explicit_slug_that_is_taken_conflicts(app: Starlette, client: httpx.AsyncClient) -> None:
    owner = await make_user()
    await make_project(owner, slug="taken")
    result = await execute(
        client, CREATE, {"input": {"name": "Other", "slug": "taken"}}, token=await token_for(app, owner)
    )
    assert_error(result, "CONFLICT", field="slug")


async def test_names_are_unique_among_a_users_active_projects(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    # given
    alice, bob = await make_user(), await make_user()
    archived = await make_project(alice, "Archived One", status="ARCHIVED")
    await make_project(alice, "Mine")
    # then: a duplicate of an active name conflicts, an archived name and another user's name do not
    assert_error(
        await execute(client, CREATE, {"input": {"name": "Mine"}}, token=await token_for(app, alice)),
        "CONFLICT",
        field="name",
    )
    assert_ok(
        await execute(client, CREATE, {"input": {"name": archived.name}}, token=await token_for(app, alice))
    )
    assert_ok(await execute(client, CREATE, {"input": {"name": "Mine"}}, token=await token_for(app, bob)))


async def test_the_last_owner_cannot_be_demoted_or_removed(app: Starlette, client: httpx.AsyncClient) -> None:
    # given
    owner = await make_user()
    project = await make_project(owner)
    token = await token_for(app, owner)
    # then
    demote = await execute(
        client, UPDATE_MEMBER, {"p": pid(project), "u": uid(owner), "r": await rid(VIEWER)}, token=token
    )
    assert_error(demote, "CONFLICT")
    assert_error(
        await execute(client, REMOVE_MEMBER, {"p": pid(project), "u": uid(owner)}, token=token), "CONFLICT"
    )
    assert await models.ProjectMember.filter(project=project, user=owner).count() == 1


async def test_ownership_moves_when_the_owner_steps_down(app: Starlette, client: httpx.AsyncClient) -> None:
    # given a second member made owner
    owner, heir = await make_user(), await make_user("heir@example.com")
    project = await make_project(owner)
    await add_member(project, heir, DEVELOPER)
    token = await token_for(app, owner)
    assert_ok(
        await execute(
            client, UPDATE_MEMBER, {"p": pid(project), "u": uid(heir), "r": await rid(OWNER)}, token=token
        )
    )
    # when the original owner leaves
    assert_ok(await execute(client, REMOVE_MEMBER, {"p": pid(project), "u": uid(owner)}, token=token))
    # then the project's owner is the heir
    data = assert_ok(
        await execute(
            client,
            "query($id: ID!) { project(id: $id) { owner { email } } }",
            {"id": pid(project)},
            token=await token_for(app, heir),
        )
    )
    assert data["project"]["owner"]["email"] == "heir@example.com"


async def test_a_member_may_leave_without_manage_permission(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    owner, viewer = await make_user(), await make_user()
    project = await make_project(owner)
    await add_member(project, viewer, VIEWER)
    assert_ok(
        await execute(
            client, REMOVE_MEMBER, {"p": pid(project), "u": uid(viewer)}, token=await token_for(app, viewer)
        )
    )
    assert not await models.ProjectMember.filter(project=project, user=viewer).exists()


async def test_deactivating_the_only_owner_of_a_project_is_refused(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    admin, owner = await make_user(roles=("admin",)), await make_user()
    await make_project(owner)
    result = await execute(
        client,
        "mutation($id: ID!) { deactivateUser(id: $id) { isActive } }",
        {"id": uid(owner)},
        token=await token_for(app, admin),
    )
    assert_error(result, "CONFLICT")
    assert (await models.User.get(id=owner.id)).is_active


async def test_the_last_administrator_keeps_the_admin_role(app: Starlette, client: httpx.AsyncClient) -> None:
    admin = await make_user(roles=("admin",))
    result = await execute(
        client,
        "mutation($u: ID!, $r: ID!) { revokeRole(userId: $u, roleId: $r) }",
        {"u": uid(admin), "r": await rid("admin")},
        token=await token_for(app, admin),
    )
    assert_error(result, "CONFLICT")


async def test_archiving_keeps_members_and_hides_from_default_lists(
    app: Starlette, client: httpx.AsyncClient
):
    owner, dev = await make_user(), await make_user()
    project = await make_project(owner, "Old")
    await add_member(project, dev, DEVELOPER)
    token = await token_for(app, owner)
    data = assert_ok(
        await execute(
            client,
            "mutation($id: ID!) { archiveProject(id: $id) { status members { role { name } } } }",
            {"id": pid(project)},
            token=token,
        )
    )
    assert data["archiveProject"]["status"] == "ARCHIVED"
    assert len(data["archiveProject"]["members"]) == 2
    listed = assert_ok(
        await execute(
            client,
            "{ a: projects { totalCount } b: projects(includeArchived: true) { totalCount } }",
            token=token,
        )
    )
    assert (listed["a"]["totalCount"], listed["b"]["totalCount"]) == (0, 1)


async def test_deleting_a_project_removes_its_members_and_audits(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    owner, dev = await make_user(), await make_user()
    project = await make_project(owner)
    await add_member(project, dev, DEVELOPER)
    result = await execute(
        client,
        "mutation($id: ID!) { deleteProject(id: $id) }",
        {"id": pid(project)},
        token=await token_for(app, owner),
    )
    assert assert_ok(result) == {"deleteProject": True}
    assert not await models.Project.filter(id=project.id).exists()
    assert not await models.ProjectMember.filter(project_id=project.id).exists()
    assert await models.AuditLog.filter(action="project.delete", target_id=str(project.id)).exists()
    gone = await execute(
        client,
        "query($id: ID!) { project(id: $id) { id } }",
        {"id": pid(project)},
        token=await token_for(app, owner),
    )
    assert_error(gone, "NOT_FOUND")


async def test_a_hidden_project_and_a_missing_one_answer_alike(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    owner, stranger = await make_user(), await make_user()
    project = await make_project(owner)
    token = await token_for(app, stranger)
    hidden = await execute(
        client, "query($id: ID!) { project(id: $id) { id } }", {"id": pid(project)}, token=token
    )
    missing = await execute(
        client,
        "query($id: ID!) { project(id: $id) { id } }",
        {"id": encode_id("Project", 999_999)},
        token=token,
    )
    assert hidden["errors"][0]["message"] == missing["errors"][0]["message"]
    assert_error(hidden, "NOT_FOUND")


async def test_adding_an_existing_member_conflicts(app: Starlette, client: httpx.AsyncClient) -> None:
    owner, dev = await make_user(), await make_user()
    project = await make_project(owner)
    await add_member(project, dev, DEVELOPER)
    result = await execute(
        client,
        "mutation($p: ID!, $u: ID!, $r: ID!) { addProjectMember(projectId: $p, userId: $u, roleId: $r) { addedAt } }",
        {"p": pid(project), "u": uid(dev), "r": await rid(VIEWER)},
        token=await token_for(app, owner),
    )
    assert_error(result, "CONFLICT", field="userId")


async def test_search_matches_name_and_description_case_insensitively(
    app: Starlette, client: httpx.AsyncClient
):
    owner = await make_user(roles=("member", "admin"))
    await make_project(owner, "Alpha Service")
    await make_project(owner, "Beta", description="talks to the ALPHA gateway")
    await make_project(owner, "Gamma")
    data = assert_ok(
        await execute(
            client,
            '{ projects(search: "alpha") { totalCount edges { node { name } } } }',
            token=await token_for(app, owner),
        )
    )
    assert sorted(e["node"]["name"] for e in data["projects"]["edges"]) == ["Alpha Service", "Beta"]
