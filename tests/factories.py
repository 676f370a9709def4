"""Test data builders. Passwords use one precomputed hash so building users costs no argon2 time."""

from __future__ import annotations

import itertools

from starlette.applications import Starlette

from aicm import models
from aicm.auth.passwords import hash_password
from aicm.auth.permissions import MEMBER, OWNER

PASSWORD = "correct-horse-battery-staple"
_PASSWORD_HASH = hash_password(PASSWORD)
_counter = itertools.count(1)


async def make_user(
    email: str | None = None,
    *,
    name: str | None = None,
    roles: tuple[str, ...] = (MEMBER,),
    active: bool = True,
) -> models.User:
    n = next(_counter)
    user = await models.User.create(
        email=(email or f"user{n}@example.com").lower(),
        name=name or f"User {n}",
        password_hash=_PASSWORD_HASH,
        is_active=active,
    )
    for role_name in roles:
        await models.UserRole.create(user=user, role=await models.Role.get(name=role_name))
    return user


async def make_project(owner: models.User, name: str | None = None, **fields: str) -> models.Project:
    n = next(_counter)
    project = await models.Project.create(
        name=name or f"Project {n}", slug=fields.pop("slug", f"project-{n}"), owner=owner, **fields
    )
    await add_member(project, owner, OWNER)
    return project


async def add_member(project: models.Project, user: models.User, role_name: str) -> models.ProjectMember:
    role = await models.Role.get(name=role_name)
    return await models.ProjectMember.create(project=project, user=user, role=role)


async def make_role(name: str, scope: str, permissions: list[str]) -> models.Role:
    return await models.Role.create(name=name, scope=scope, permissions=permissions, description="custom")


async def token_for(app: Starlette, user: models.User) -> str:
    """A real access token of a real session, signed with the app's keys."""
    runtime = app.state.runtime
    session, _ = await runtime.auth.sessions.create(user.id, "127.0.0.1", "tests")
    return runtime.tokens.issue_access(user.id, session.id)
