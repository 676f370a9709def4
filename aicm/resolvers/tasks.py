"""Tasks: starting AI coding runs, following them up, cancelling them, reading their logs and changes,
pushing and merging their branches."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tortoise.expressions import Q

from aicm import models
from aicm.auth import authorization
from aicm.auth.permissions import Permission
from aicm.auth.viewer import Viewer
from aicm.errors import BadUserInput, Conflict
from aicm.resolvers import budgets, validation
from aicm.resolvers.loaders import Loaders
from aicm.resolvers.pagination import Page, page_size, paginate
from aicm.resolvers.unit_of_work import unit_of_work
from aicm.runner.workspace import Workspaces, identity_of
from aicm.subscriptions import channels, events
from aicm.subscriptions.events import ProjectEventType
from aicm.workspaces.changes import Commit, TaskChanges
from aicm.workspaces.merging import MergeStrategy

if TYPE_CHECKING:
    from aicm.runner.dispatch import TaskDispatcher

MAX_PROMPT = 100_000


async def get_task(viewer: Viewer, task_id: int) -> models.Task:
    return await authorization.get_visible_task(viewer, task_id)


async def list_tasks(
    viewer: Viewer,
    *,
    project_id: int | None,
    status: models.TaskStatus | None,
    first: int | None,
    after: str | None,
) -> Page:
    viewer.require_user()
    if project_id is not None:
        project = await authorization.get_visible_project(viewer, project_id)
        await authorization.require(viewer, Permission.TASK_READ, project)
    queryset = await authorization.visible_tasks(viewer)
    if project_id is not None:
        queryset = queryset.filter(project_id=project_id)
    if status is not None:
        queryset = queryset.filter(status=status)
    return await paginate(queryset, first, after, newest_first=True)


async def _start(
    viewer: Viewer,
    dispatcher: TaskDispatcher,
    project: models.Project,
    prompt: str,
    parent: models.Task | None,
    *,
    workspaces: Workspaces | None = None,
    base_ref: str | None = None,
    max_budget_usd: float | None = None,
) -> models.Task:
    user = viewer.require_user()
    await authorization.require(viewer, Permission.TASK_CREATE, project)
    prompt = validation.text(prompt, "prompt", min_len=1, max_len=MAX_PROMPT, strip=False)
    if not prompt.strip():
        raise BadUserInput("'prompt' must not be empty", field="prompt")
    if project.status != models.ProjectStatus.ACTIVE:
        raise Conflict("The project is archived", field="projectId")
    if base_ref is not None and workspaces is not None:
        base_ref = validation.text(base_ref, "baseRef", min_len=1, max_len=255)
        await workspaces.check_base_ref(project, base_ref)  # else checked when it runs
    if max_budget_usd is not None:
        max_budget_usd = budgets.amount(max_budget_usd, "maxBudgetUsd")
    elif parent is not None:
        max_budget_usd = parent.max_budget_usd  # a follow-up keeps its task's cap
    await budgets.require_within_budget(viewer, project)
    async with unit_of_work(viewer) as uow:
        task = await models.Task.create(
            project=project,
            created_by=user,
            prompt=prompt,
            parent_id=parent.id if parent else None,
            base_ref=base_ref,
            max_budget_usd=max_budget_usd,
            using_db=uow.connection,
        )
        await uow.audit(
            "task.create", task, project_id=project.id, follow_up_of=parent.id if parent else None
        )
        uow.emit(
            channels.project(project.id), events.task_event(ProjectEventType.TASK_CREATED, task, user.id)
        )
    await dispatcher.submit(task.id)
    return task


async def create_task(
    viewer: Viewer,
    dispatcher: TaskDispatcher,
    workspaces: Workspaces,
    *,
    project_id: int,
    prompt: str,
    base_ref: str | None = None,
    max_budget_usd: float | None = None,
) -> models.Task:
    """A new task on a new branch from ``base_ref`` (default: the project's default branch); the CLI may
    spend at most ``max_budget_usd`` on it."""
    project = await authorization.get_visible_project(viewer, project_id)
    return await _start(
        viewer,
        dispatcher,
        project,
        prompt,
        None,
        workspaces=workspaces,
        base_ref=base_ref,
        max_budget_usd=max_budget_usd,
    )


async def follow_up_task(
    viewer: Viewer, dispatcher: TaskDispatcher, task_id: int, *, prompt: str
) -> models.Task:
    """A new task in the same project that resumes the CLI conversation of ``task_id`` (and keeps its
    ``max_budget_usd``)."""
    parent = await get_task(viewer, task_id)
    return await _start(viewer, dispatcher, parent.project, prompt, parent)


async def cancel_task(viewer: Viewer, dispatcher: TaskDispatcher, task_id: int) -> models.Task:
    task = await get_task(viewer, task_id)
    await authorization.require_cancel(viewer, task)
    if task.status in models.FINISHED:
        return task
    async with unit_of_work(viewer) as uow:
        updated = (
            await models.Task.filter(
                Q(id=task.id) & Q(status__in=[models.TaskStatus.PENDING, *models.ACTIVE])
            )
            .using_db(uow.connection)
            .update(cancel_requested=True)
        )
        if updated:
            await uow.audit("task.cancel", task)
    if updated:
        await dispatcher.cancel(task.id)
    return await models.Task.get(id=task.id).prefetch_related("project")


async def task_logs(
    loaders: Loaders, task_id: int, *, after_seq: int, first: int | None
) -> list[models.TaskLog]:
    """Stored lines with ``seq > after_seq``, oldest first; none for a task the viewer may not read."""
    if after_seq < 0:
        raise BadUserInput("'afterSeq' must be 0 or more", field="afterSeq")
    return await loaders.logs_by_task.load((task_id, after_seq, page_size(first)))


async def push_task(viewer: Viewer, workspaces: Workspaces, task_id: int) -> models.Task:
    """Push the task's branch to the project's remote."""
    task = await get_task(viewer, task_id)
    await authorization.require_push(viewer, task)
    await workspaces.push(task)
    async with unit_of_work(viewer) as uow:
        await uow.audit("task.push", task, branch=task.branch)
    return await models.Task.get(id=task.id).prefetch_related("project")


async def merge_task(
    viewer: Viewer, workspaces: Workspaces, task_id: int, *, strategy: MergeStrategy
) -> models.Task:
    """Merge the task's branch into its base branch; ``CONFLICT`` (nothing changed) when it does not apply."""
    task = await get_task(viewer, task_id)
    await authorization.require_merge(viewer, task)
    if task.status not in models.FINISHED:
        raise Conflict("The task is still running; merge it once it has ended", field="id")
    user = viewer.require_user()
    await workspaces.merge(task, strategy, identity_of(user))
    async with unit_of_work(viewer) as uow:
        await uow.audit("task.merge", task, branch=task.branch, into=task.base_ref, strategy=str(strategy))
    return await models.Task.get(id=task.id).prefetch_related("project")


def stored_changes(task: models.Task) -> TaskChanges | None:
    """What the task's branch changed, as stored when its last run ended (no git runs here)."""
    return TaskChanges.from_json(task.changes) if task.changes else None


def stored_commits(task: models.Task) -> list[Commit]:
    return [Commit.from_dict(item) for item in task.commits or []]


async def overlapping_tasks(loaders: Loaders, task_id: int) -> list[models.Task]:
    return await loaders.overlaps_by_task.load(task_id)
