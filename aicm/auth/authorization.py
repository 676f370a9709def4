"""The one authorization service: may this viewer do X (to project Y), and which rows may they see.

Queries, mutations, DataLoaders and subscriptions all ask here; no other module compares roles or permissions.
A permission holds when a system role of the viewer grants it (for every project), or when the viewer's role
in the project grants it. What the viewer may not see answers NOT_FOUND, like what does not exist.

Who sees what (CONTRACT §4):
- a project: holders of ``project:read`` in it (by membership or a system role); its members come with it;
- a task and its log lines: holders of ``task:read`` in the task's project;
- a user (every field, email included): the user themself, holders of ``user:read``, and whoever may read a
  project the user is a member of.
"""

from __future__ import annotations

import logging
from typing import TypeVar

from tortoise.expressions import Q, Subquery
from tortoise.queryset import QuerySet

from aicm import models
from aicm.auth.permissions import ADMIN, ALL_PERMISSIONS, MAINTAINER, Permission
from aicm.auth.viewer import Viewer
from aicm.errors import Forbidden, NotFound

log = logging.getLogger("aicm.security")

M = TypeVar("M", models.Project, models.Task)


def has_system(viewer: Viewer, permission: str) -> bool:
    return viewer.is_authenticated and permission in viewer.permissions


async def project_role(viewer: Viewer, project_id: int) -> models.Role | None:
    membership = await viewer.membership(project_id)
    if membership is None:
        return None
    return (await viewer.roles()).get(membership.role_id)


async def can(viewer: Viewer, permission: str, project: models.Project | None = None) -> bool:
    if not viewer.is_authenticated:
        return False
    if permission in viewer.permissions:
        return True
    if project is None:
        return False
    role = await project_role(viewer, project.id)
    return role is not None and permission in (role.permissions or [])


def deny(viewer: Viewer, permission: str, target: str | None = None) -> Forbidden:
    log.warning(
        "permission denied",
        extra={
            "event": "permission_denied",
            "user_id": viewer.user_id,
            "permission": permission,
            "target": target,
            "ip": viewer.ip,
        },
    )
    return Forbidden(f"Missing permission {permission}")


def require_system(viewer: Viewer, permission: str) -> None:
    viewer.require_user()
    if not has_system(viewer, permission):
        raise deny(viewer, permission)


async def require(viewer: Viewer, permission: str, project: models.Project) -> None:
    viewer.require_user()
    if not await can(viewer, permission, project):
        raise deny(viewer, permission, f"Project:{project.id}")


# --- which rows the viewer sees ----------------------------------------------------------------------------


async def _role_ids_with(viewer: Viewer, permission: str) -> list[int]:
    return [
        role.id
        for role in (await viewer.roles()).values()
        if role.scope == models.RoleScope.PROJECT and permission in (role.permissions or [])
    ]


async def _granted(viewer: Viewer, permission: str, model: type[M], project_field: str) -> QuerySet[M]:
    """Rows of ``model`` whose project grants the viewer ``permission`` (by a system role or membership)."""
    if not viewer.is_authenticated:
        return model.filter(id__in=[])
    if has_system(viewer, permission):
        return model.all()
    memberships = models.ProjectMember.filter(
        user_id=viewer.user_id, role_id__in=await _role_ids_with(viewer, permission)
    )
    return model.filter(**{f"{project_field}__in": Subquery(memberships.values("project_id"))})


async def visible_projects(viewer: Viewer) -> QuerySet[models.Project]:
    """The projects the viewer may read, as a query (filtered in SQL, never after fetching)."""
    return await _granted(viewer, Permission.PROJECT_READ, models.Project, "id")


async def visible_tasks(viewer: Viewer) -> QuerySet[models.Task]:
    """The tasks whose project lets the viewer read tasks (filtered in SQL)."""
    return await _granted(viewer, Permission.TASK_READ, models.Task, "project_id")


async def visible_members(viewer: Viewer) -> QuerySet[models.ProjectMember]:
    """Memberships of the projects the viewer may read: a project's readers read its members."""
    projects = await visible_projects(viewer)
    return models.ProjectMember.filter(project_id__in=Subquery(projects.values("id")))


async def visible_users(viewer: Viewer) -> QuerySet[models.User]:
    """The users the viewer may see: themself; everyone with ``user:read``; else the members of the projects
    they may read. This is the one rule for users, their email included."""
    if not viewer.is_authenticated:
        return models.User.filter(id__in=[])
    if has_system(viewer, Permission.USER_READ):
        return models.User.all()
    co_members = (await visible_members(viewer)).values("user_id")
    return models.User.filter(Q(id=viewer.user_id) | Q(id__in=Subquery(co_members)))


async def get_visible_project(viewer: Viewer, project_id: int) -> models.Project:
    viewer.require_user()
    project = await models.Project.get_or_none(id=project_id)
    if project is None or not await can(viewer, Permission.PROJECT_READ, project):
        raise NotFound("Project not found")
    return project


async def get_visible_task(viewer: Viewer, task_id: int) -> models.Task:
    viewer.require_user()
    task = await models.Task.get_or_none(id=task_id).prefetch_related("project")
    if task is None or not await can(viewer, Permission.TASK_READ, task.project):
        raise NotFound("Task not found")
    return task


async def get_visible_user(viewer: Viewer, user_id: int) -> models.User:
    viewer.require_user()
    user = await (await visible_users(viewer)).get_or_none(id=user_id)
    if user is None:
        raise NotFound("User not found")
    return user


async def access_roles(viewer: Viewer, project_id: int) -> frozenset[int]:
    """The roles whose permissions decide the viewer's access to a project: their system roles and their role
    in the project. A change to any other role cannot change that access."""
    membership = await viewer.membership(project_id)
    return viewer.system_role_ids | ({membership.role_id} if membership else set())  # type: ignore[attr-defined]


# --- tasks -------------------------------------------------------------------------------------------------


async def _require_any_or_own(viewer: Viewer, task: models.Task, any_task: str, own_task: str) -> None:
    """``any_task`` on the task's project, or ``own_task`` there for the task's creator."""
    viewer.require_user()
    if await can(viewer, any_task, task.project):
        return
    own = task.created_by_id == viewer.user_id  # type: ignore[attr-defined]
    if own and await can(viewer, own_task, task.project):
        return
    raise deny(viewer, own_task if own else any_task, f"Task:{task.id}")


async def require_cancel(viewer: Viewer, task: models.Task) -> None:
    """Any task with ``task:cancel_any``; one's own with ``task:cancel_own``."""
    await _require_any_or_own(viewer, task, Permission.TASK_CANCEL_ANY, Permission.TASK_CANCEL_OWN)


async def require_push(viewer: Viewer, task: models.Task) -> None:
    """CONTRACT §8: the task's creator (with ``task:create``), or maintainer+ (``project:update``)."""
    await _require_any_or_own(viewer, task, Permission.PROJECT_UPDATE, Permission.TASK_CREATE)


async def require_merge(viewer: Viewer, task: models.Task) -> None:
    """Merging into the base branch (and pushing it) is the maintainers' call: ``project:update``."""
    await require(viewer, Permission.PROJECT_UPDATE, task.project)


async def require_credential_manage(viewer: Viewer, project: models.Project) -> None:
    """Repository and agent credentials of a project are set by maintainer+ (``project:update``)."""
    await require(viewer, Permission.PROJECT_UPDATE, project)


# --- tool approvals and webhooks (CONTRACT §10) ------------------------------------------------------------


async def visible_approvals(viewer: Viewer) -> QuerySet[models.ApprovalRequest]:
    """Approval requests of the tasks the viewer may read (filtered in SQL)."""
    tasks = await visible_tasks(viewer)
    return models.ApprovalRequest.filter(task_id__in=Subquery(tasks.values("id")))


async def get_visible_approval(viewer: Viewer, approval_id: int) -> models.ApprovalRequest:
    viewer.require_user()
    request = await (await visible_approvals(viewer)).get_or_none(id=approval_id).prefetch_related("task")
    if request is None:
        raise NotFound("Approval request not found")
    return request


async def approver_role(project: models.Project) -> models.Role:
    """``Project.approverRole``: the role set on the project, else (unset, or since deleted) the built-in
    maintainer."""
    role = None
    if project.approver_role_id is not None:
        role = await models.Role.get_or_none(id=project.approver_role_id, scope=models.RoleScope.PROJECT)
    return role or await models.Role.get(name=MAINTAINER, built_in=True)


async def may_decide_approvals(viewer: Viewer, project: models.Project) -> bool:
    """Whether the viewer's role is at least the project's approver role: everything that role may do, the
    viewer may do in the project (their project role's permissions with their system roles'). The task's
    creator is no exception either way."""
    if not viewer.is_authenticated:
        return False
    needed = set((await approver_role(project)).permissions or [])
    held = set(viewer.permissions)
    role = await project_role(viewer, project.id)
    if role is not None:
        held |= set(role.permissions or [])
    return needed <= held


async def require_decide_approval(viewer: Viewer, project: models.Project) -> None:
    viewer.require_user()
    if not await may_decide_approvals(viewer, project):
        role = await approver_role(project)
        raise deny(viewer, f"approval:decide (role {role.name} or higher)", f"Project:{project.id}")


def is_admin(viewer: Viewer) -> bool:
    """Holds every permission through a system role (the built-in admin, or a role as strong)."""
    return viewer.is_authenticated and set(ALL_PERMISSIONS) <= set(viewer.permissions)


async def require_permission_mode(viewer: Viewer, project: models.Project, mode: str) -> None:
    """``agentPermissionMode`` is set by maintainer+ (``project:update``); ``BYPASS`` by admins only."""
    await require(viewer, Permission.PROJECT_UPDATE, project)
    if mode == models.AgentPermissionMode.BYPASS and not is_admin(viewer):
        raise deny(viewer, "admin (agentPermissionMode BYPASS)", f"Project:{project.id}")


async def require_webhook_manage(viewer: Viewer, project: models.Project) -> None:
    """Webhooks are managed (and their deliveries read) by maintainer+ (``project:update``)."""
    await require(viewer, Permission.PROJECT_UPDATE, project)


async def manageable_webhooks(viewer: Viewer) -> QuerySet[models.Webhook]:
    """The webhooks of the projects where the viewer may manage them (filtered in SQL); others see none."""
    projects = await _granted(viewer, Permission.PROJECT_UPDATE, models.Project, "id")
    return models.Webhook.filter(project_id__in=Subquery(projects.values("id")))


# --- members and owners ------------------------------------------------------------------------------------


def is_owner_level(role: models.Role) -> bool:
    """Owner-level roles may make owners; a project always keeps a member holding one."""
    return Permission.MEMBER_MANAGE_OWNERS in (role.permissions or [])


async def owner_role_ids() -> list[int]:
    roles = await models.Role.filter(scope=models.RoleScope.PROJECT)
    return [role.id for role in roles if is_owner_level(role)]


async def require_member_manage(viewer: Viewer, project: models.Project, *roles: models.Role) -> None:
    """Managing members needs ``member:manage``; touching owner-level roles needs ``member:manage_owners``.

    Without ``member:manage_owners`` nobody grants a role carrying permissions they do not hold themselves.
    """
    await require(viewer, Permission.MEMBER_MANAGE, project)
    if await can(viewer, Permission.MEMBER_MANAGE_OWNERS, project):
        return
    for role in roles:
        if is_owner_level(role):
            raise deny(viewer, Permission.MEMBER_MANAGE_OWNERS, f"Project:{project.id}")
        for permission in role.permissions or []:
            if not await can(viewer, permission, project):
                raise deny(viewer, permission, f"Project:{project.id}")


# --- administrators ----------------------------------------------------------------------------------------


def is_admin_role(role: models.Role) -> bool:
    return role.built_in and role.name == ADMIN


def active_admins() -> QuerySet[models.UserRole]:
    """Grants of the built-in admin role to active users (the system always keeps one)."""
    return models.UserRole.filter(role__name=ADMIN, role__built_in=True, user__is_active=True)
