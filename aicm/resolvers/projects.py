"""Projects and their members: creation, changes, archiving, deletion, and the owner invariant."""

from __future__ import annotations

import re
import unicodedata
from typing import TYPE_CHECKING, Any

from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q

from aicm import models
from aicm.auth import authorization
from aicm.auth.permissions import MAINTAINER, OWNER, Permission
from aicm.auth.viewer import Viewer
from aicm.errors import BadUserInput, Conflict, NotFound
from aicm.resolvers import budgets, validation
from aicm.resolvers.loaders import Loaders
from aicm.resolvers.pagination import Page, paginate
from aicm.resolvers.unit_of_work import UnitOfWork, unit_of_work
from aicm.subscriptions import channels, events
from aicm.subscriptions.events import ProjectEventType
from aicm.workspaces.credentials import Credential

if TYPE_CHECKING:
    from aicm.runner.workspace import Workspaces

SLUG_ATTEMPTS = 5


class _Unchanged:
    """The value of an update argument the client left out (null means "clear" where a field may be null)."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Any = _Unchanged()


def slugify(name: str) -> str:
    """Lower-case ASCII ``[a-z0-9-]`` from a name; ``project`` when nothing is left."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:90].strip("-")
    return slug or "project"


async def _free_slug(base: str) -> str:
    taken = set(await models.Project.filter(slug__startswith=base).values_list("slug", flat=True))
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


async def list_projects(
    viewer: Viewer, *, first: int | None, after: str | None, search: str | None, include_archived: bool
) -> Page:
    viewer.require_user()
    queryset = await authorization.visible_projects(viewer)
    if not include_archived:
        queryset = queryset.filter(status=models.ProjectStatus.ACTIVE)
    if term := validation.search(search):
        queryset = queryset.filter(Q(name__icontains=term) | Q(description__icontains=term))
    return await paginate(queryset, first, after)


async def get_project(viewer: Viewer, project_id: int) -> models.Project:
    return await authorization.get_visible_project(viewer, project_id)


async def _ensure_name_free(owner_id: int, name: str, except_id: int = 0) -> None:
    clash = models.Project.filter(owner_id=owner_id, name=name, status=models.ProjectStatus.ACTIVE)
    if await clash.exclude(id=except_id).exists():
        raise Conflict("You already have an active project with this name", field="name")


async def create_project(
    viewer: Viewer,
    workspaces: Workspaces,
    *,
    name: str,
    description: str,
    repository_url: str,
    slug: str | None = None,
) -> models.Project:
    user = viewer.require_user()
    authorization.require_system(viewer, Permission.PROJECT_CREATE)
    name = validation.text(name, "name", min_len=1, max_len=100)
    description = validation.text(description, "description", max_len=2000)
    repository_url = workspaces.validate_url(validation.text(repository_url, "repositoryUrl", max_len=500))
    wanted = validation.slug(slug) if slug is not None else None
    await _ensure_name_free(user.id, name)
    if wanted and await models.Project.filter(slug=wanted).exists():
        raise Conflict("This slug is taken", field="slug")
    owner_role = await models.Role.get(name=OWNER, built_in=True)
    for attempt in range(SLUG_ATTEMPTS):
        try:
            async with unit_of_work(viewer) as uow:
                project = await models.Project.create(
                    name=name,
                    slug=wanted or await _free_slug(slugify(name)),
                    description=description,
                    repository_url=repository_url,
                    owner=user,
                    using_db=uow.connection,
                )
                await models.ProjectMember.create(
                    project=project, user=user, role=owner_role, using_db=uow.connection
                )
                await uow.audit("project.create", project, name=name, slug=project.slug)
            return project
        except IntegrityError:
            # Another request took the slug between our read and insert; the next attempt sees it.
            if wanted or attempt == SLUG_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


async def update_project(
    viewer: Viewer,
    workspaces: Workspaces,
    project_id: int,
    *,
    name: str | None,
    description: str | None,
    repository_url: str | None,
    default_branch: str | None = None,
    agent_permission_mode: models.AgentPermissionMode | None = None,
    approver_role_id: int | None = None,
    monthly_budget_usd: float | None = UNCHANGED,
) -> models.Project:
    """Change what is given; ``monthly_budget_usd=None`` removes the budget, ``UNCHANGED`` keeps it."""
    project = await get_project(viewer, project_id)
    await authorization.require(viewer, Permission.PROJECT_UPDATE, project)
    changes: dict[str, Any] = {}
    if agent_permission_mode is not None:
        await authorization.require_permission_mode(viewer, project, agent_permission_mode)
        changes["agent_permission_mode"] = models.AgentPermissionMode(agent_permission_mode)
    if approver_role_id is not None:
        role = await models.Role.get_or_none(id=approver_role_id, scope=models.RoleScope.PROJECT)
        if role is None:
            raise BadUserInput("'approverRoleId' must name a project-scope role", field="approverRoleId")
        changes["approver_role_id"] = role.id
    if name is not None:
        changes["name"] = validation.text(name, "name", min_len=1, max_len=100)
        if project.status == models.ProjectStatus.ACTIVE:
            await _ensure_name_free(project.owner_id, changes["name"], project.id)
    if description is not None:
        changes["description"] = validation.text(description, "description", max_len=2000)
    if repository_url is not None:
        url = validation.text(repository_url, "repositoryUrl", max_len=500)
        changes["repository_url"] = workspaces.validate_url(url)
    if default_branch is not None:
        branch = validation.text(default_branch, "defaultBranch", min_len=1, max_len=255)
        await workspaces.check_branch(project, branch)
        changes["default_branch"] = branch
    if monthly_budget_usd is not UNCHANGED:
        changes["monthly_budget_usd"] = (
            None if monthly_budget_usd is None else budgets.amount(monthly_budget_usd, "monthlyBudgetUsd")
        )
    if changes:
        async with unit_of_work(viewer) as uow:
            await project.update_from_dict(changes).save(using_db=uow.connection)
            await uow.audit("project.update", project, fields=sorted(changes))
            uow.emit(
                channels.project(project.id),
                events.project_event(ProjectEventType.PROJECT_UPDATED, project, viewer),
            )
    return project


async def approver_role(loaders: Loaders, role_id: int | None) -> models.Role:
    """``Project.approverRole``: its role when set (and still a project role), else built-in maintainer."""
    role = await loaders.role_by_id.load(role_id) if role_id is not None else None
    if role is not None and role.scope == models.RoleScope.PROJECT:
        return role
    roles = await loaders.viewer.roles()
    return next(r for r in roles.values() if r.built_in and r.name == MAINTAINER)


async def archive_project(viewer: Viewer, project_id: int) -> models.Project:
    project = await get_project(viewer, project_id)
    await authorization.require(viewer, Permission.PROJECT_ARCHIVE, project)
    if project.status != models.ProjectStatus.ARCHIVED:
        async with unit_of_work(viewer) as uow:
            project.status = models.ProjectStatus.ARCHIVED
            await project.save(using_db=uow.connection, update_fields=["status", "updated_at"])
            await uow.audit("project.archive", project)
            uow.emit(
                channels.project(project.id),
                events.project_event(ProjectEventType.PROJECT_ARCHIVED, project, viewer),
            )
    return project


async def set_project_credential(
    viewer: Viewer,
    workspaces: Workspaces,
    project_id: int,
    *,
    token: str | None,
    ssh_private_key: str | None,
) -> models.Project:
    """Store (encrypted) or, with neither value, clear the project's repository credential (write-only)."""
    project = await get_project(viewer, project_id)
    await authorization.require_credential_manage(viewer, project)
    kind: str | None = None
    sealed: str | None = None
    if token is not None or ssh_private_key is not None:
        kind, sealed = workspaces.seal(project.id, Credential(token=token, ssh_private_key=ssh_private_key))
    async with unit_of_work(viewer) as uow:
        project.credential_kind, project.credential_secret = kind, sealed
        await project.save(
            using_db=uow.connection, update_fields=["credential_kind", "credential_secret", "updated_at"]
        )
        await uow.audit("project.set_credential" if kind else "project.clear_credential", project, kind=kind)
    return project


async def delete_project(viewer: Viewer, workspaces: Workspaces, project_id: int) -> bool:
    project = await get_project(viewer, project_id)
    await authorization.require(viewer, Permission.PROJECT_DELETE, project)
    async with unit_of_work(viewer) as uow:
        await uow.audit("project.delete", project, name=project.name, slug=project.slug)
        await models.ProjectMember.filter(project_id=project.id).using_db(uow.connection).delete()
        await project.delete(using_db=uow.connection)
        uow.emit(
            channels.project(project_id),
            events.project_event(ProjectEventType.PROJECT_DELETED, project, viewer),
        )
    await workspaces.remove(project_id)  # its repository and worktrees; the id is never reused
    return True


# --- members ---------------------------------------------------------------------------------------------


async def _project_role(role_id: int) -> models.Role:
    role = await models.Role.get_or_none(id=role_id)
    if role is None:
        raise NotFound("Role not found")
    if role.scope != models.RoleScope.PROJECT:
        raise BadUserInput("Members need a role of PROJECT scope", field="roleId")
    return role


async def _member(project: models.Project, user_id: int) -> models.ProjectMember:
    member = await models.ProjectMember.get_or_none(project_id=project.id, user_id=user_id).prefetch_related(
        "role"
    )
    if member is None:
        raise NotFound("Member not found")
    return member


async def _other_owners(project: models.Project, user_id: int) -> int:
    members = (
        await models.ProjectMember.filter(project_id=project.id)
        .exclude(user_id=user_id)
        .prefetch_related("role")
    )
    return sum(1 for m in members if authorization.is_owner_level(m.role))


async def _keep_owner_pointer(uow: UnitOfWork, project: models.Project, leaving_user_id: int) -> None:
    """``Project.owner`` always names a current owner; move it when that owner steps down."""
    if project.owner_id != leaving_user_id:
        return
    members = (
        await models.ProjectMember.filter(project_id=project.id)
        .exclude(user_id=leaving_user_id)
        .order_by("added_at")
        .prefetch_related("role")
    )
    successor = next(m for m in members if authorization.is_owner_level(m.role))
    project.owner_id = successor.user_id
    await project.save(using_db=uow.connection, update_fields=["owner_id", "updated_at"])


async def add_project_member(
    viewer: Viewer, project_id: int, user_id: int, role_id: int
) -> models.ProjectMember:
    project = await get_project(viewer, project_id)
    role = await _project_role(role_id)
    await authorization.require_member_manage(viewer, project, role)
    user = await models.User.get_or_none(id=user_id, is_active=True)
    if user is None:
        raise NotFound("User not found")
    if await models.ProjectMember.filter(project_id=project.id, user_id=user.id).exists():
        raise Conflict("The user is already a member", field="userId")
    async with unit_of_work(viewer) as uow:
        member = await models.ProjectMember.create(
            project=project, user=user, role=role, using_db=uow.connection
        )
        await uow.audit("project.add_member", project, user_id=user.id, role=role.name)
        uow.emit(
            channels.project(project.id),
            events.member_event(ProjectEventType.MEMBER_ADDED, project, member, viewer),
        )
    viewer.forget()
    return member


async def update_project_member(
    viewer: Viewer, project_id: int, user_id: int, role_id: int
) -> models.ProjectMember:
    project = await get_project(viewer, project_id)
    member = await _member(project, user_id)
    role = await _project_role(role_id)
    await authorization.require_member_manage(viewer, project, member.role, role)
    if member.role_id == role.id:
        return member
    if (
        authorization.is_owner_level(member.role)
        and not authorization.is_owner_level(role)
        and not await _other_owners(project, user_id)
    ):
        raise Conflict("A project always keeps an owner: make someone else owner first", field="roleId")
    async with unit_of_work(viewer) as uow:
        previous = member.role.name
        member.role = role
        await member.save(using_db=uow.connection, update_fields=["role_id"])
        if not authorization.is_owner_level(role):
            await _keep_owner_pointer(uow, project, user_id)
        await uow.audit("project.update_member", project, user_id=user_id, role=role.name, previous=previous)
        uow.emit(
            channels.project(project.id),
            events.member_event(ProjectEventType.MEMBER_UPDATED, project, member, viewer),
        )
    viewer.forget()  # the viewer's own role may be the one that changed
    return member


async def remove_project_member(viewer: Viewer, project_id: int, user_id: int) -> bool:
    project = await get_project(viewer, project_id)
    member = await _member(project, user_id)
    if viewer.user_id != user_id:  # leaving a project needs no permission; removing someone else does
        await authorization.require_member_manage(viewer, project, member.role)
    if authorization.is_owner_level(member.role) and not await _other_owners(project, user_id):
        raise Conflict("A project always keeps an owner: make someone else owner first", field="userId")
    async with unit_of_work(viewer) as uow:
        await member.delete(using_db=uow.connection)
        await _keep_owner_pointer(uow, project, user_id)
        await uow.audit("project.remove_member", project, user_id=user_id, role=member.role.name)
        uow.emit(
            channels.project(project.id),
            events.member_event(ProjectEventType.MEMBER_REMOVED, project, member, viewer),
        )
    viewer.forget()
    return True
