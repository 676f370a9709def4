"""Tool approvals (CONTRACT §10): reading them, deciding them, following them live."""

from __future__ import annotations

from aicm import models
from aicm.auth import authorization
from aicm.auth.permissions import Permission
from aicm.auth.viewer import Viewer
from aicm.errors import Conflict
from aicm.resolvers import validation
from aicm.resolvers.loaders import Loaders
from aicm.resolvers.pagination import Page, paginate
from aicm.resolvers.unit_of_work import unit_of_work
from aicm.runner import approvals as runner_approvals

MAX_REASON = 2000


async def get_approval(viewer: Viewer, approval_id: int) -> models.ApprovalRequest:
    return await authorization.get_visible_approval(viewer, approval_id)


async def list_approvals(
    viewer: Viewer,
    *,
    project_id: int,
    status: models.ApprovalStatus | None,
    first: int | None,
    after: str | None,
) -> Page:
    """A project's approval requests, newest first (readers of its tasks see them)."""
    project = await authorization.get_visible_project(viewer, project_id)
    await authorization.require(viewer, Permission.TASK_READ, project)
    queryset = (await authorization.visible_approvals(viewer)).filter(task__project_id=project_id)
    if status is not None:
        queryset = queryset.filter(status=status)
    return await paginate(queryset, first, after, newest_first=True)


async def task_approvals(loaders: Loaders, task_id: int) -> list[models.ApprovalRequest]:
    return await loaders.approvals_by_task.load(task_id)


async def decide_approval(
    viewer: Viewer, approval_id: int, *, allow: bool, reason: str | None, remember: bool
) -> models.ApprovalRequest:
    """The first decision wins (one conditional UPDATE); a later one answers CONFLICT."""
    request = await get_approval(viewer, approval_id)
    project = await models.Project.get(id=request.task.project_id)  # type: ignore[attr-defined]
    await authorization.require_decide_approval(viewer, project)
    if reason is not None:
        reason = validation.text(reason, "reason", max_len=MAX_REASON) or None
    user = viewer.require_user()
    status = models.ApprovalStatus.ALLOWED if allow else models.ApprovalStatus.DENIED
    if not allow and reason is None:
        reason = f"Denied by {user.name or user.email}"
    async with unit_of_work(viewer) as uow:
        decided = await runner_approvals.decide(
            request.id, status, uow.connection, user_id=user.id, reason=reason, remember=remember
        )
        if not decided:
            raise Conflict("This approval request was already decided (or expired)", field="id")
        await uow.audit(
            "approval.decide",
            request,
            task_id=request.task.id,
            project_id=project.id,
            tool_name=request.tool_name,
            status=str(status),
            remember=remember and allow,
        )
    await runner_approvals.publish_decided(request.id, user.id)
    return await models.ApprovalRequest.get(id=request.id)
