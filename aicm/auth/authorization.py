"""The one authorization service: may this viewer do X (to project Y), and which rows may they see.

Queries, mutations, DataLoaders and subscriptions all ask here; no other module compares roles or permissions.
A permission holds when a system role of the viewer grants it (for every project), or when the viewer's role
in the project grants it. What the viewer may not see answers NOT_FOUND, like what does not exist.
"""

from __future__ import annotations

import logging
from typing import TypeVar

from tortoise.expressions import Subquery
from tortoise.queryset import QuerySet

from aicm import models
from aicm.auth.permissions import Permission
from aicm.auth.viewer import Viewer
from aicm.errors import Forbidden, NotFound, Unauthenticated

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


def require_signed_in(viewer: Viewer) -> models.User:
    if viewer.user is None:
        raise Unauthenticated()
    return viewer.user


def require_system(viewer: Viewer, permission: str) -> None:
    require_signed_in(viewer)
    if not has_system(viewer, permission):
        raise deny(viewer, permission)


async def require(viewer: Viewer, permission: str, project: models.Project) -> None:
    require_signed_in(viewer)
    if not await can(viewer, permission, project):
        raise deny(viewer, permission, f"Project:{project.id}")


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


async def get_visible_project(viewer: Viewer, project_id: int) -> models.Project:
    require_signed_in(viewer)
    project = await models.Project.get_or_none(id=project_id)
    if project is None or not await can(viewer, Permission.PROJECT_READ, project):
        raise NotFound("Project not found")
    return project


async def can_see_user(viewer: Viewer, user_id: int) -> bool:
    """Users are readable by themselves and by holders of ``user:read``."""
    return viewer.user_id == user_id or has_system(viewer, Permission.USER_READ)


async def _role_ids_with(viewer: Viewer, permission: str) -> list[int]:
    return [
        role.id
        for role in (await viewer.roles()).values()
        if role.scope == models.RoleScope.PROJECT and permission in (role.permissions or [])
    ]


async def visible_tasks(viewer: Viewer) -> QuerySet[models.Task]:
    """The tasks whose project lets the viewer read tasks (filtered in SQL)."""
    return await _granted(viewer, Permission.TASK_READ, models.Task, "project_id")


async def get_visible_task(viewer: Viewer, task_id: int) -> models.Task:
    require_signed_in(viewer)
    task = await models.Task.get_or_none(id=task_id).prefetch_related("project")
    if task is None or not await can(viewer, Permission.TASK_READ, task.project):
        raise NotFound("Task not found")
    return task


async def require_cancel(viewer: Viewer, task: models.Task) -> None:
    """Any task with ``task:cancel_any``; one's own with ``task:cancel_own``."""
    require_signed_in(viewer)
    if await can(viewer, Permission.TASK_CANCEL_ANY, task.project):
        return
    own = task.created_by_id == viewer.user_id  # type: ignore[attr-defined]
    if own and await can(viewer, Permission.TASK_CANCEL_OWN, task.project):
        return
    raise deny(
        viewer, Permission.TASK_CANCEL_ANY if not own else Permission.TASK_CANCEL_OWN, f"Task:{task.id}"
    )
