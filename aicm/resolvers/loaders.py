"""DataLoaders of one viewer: every relation a list touches is loaded in one query per level, and only rows
the viewer may see come back (``auth/authorization.py`` decides which, inside the same SQL).

A hidden row loads as ``None``, exactly like a missing one, so a nested field cannot show what its root field
would answer NOT_FOUND for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, TypeVar

from strawberry.dataloader import DataLoader
from tortoise.expressions import Subquery

from aicm import models
from aicm.auth import authorization
from aicm.auth.viewer import Viewer
from aicm.ids import MAX_KEY
from aicm.resolvers import budgets

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

LogsKey = tuple[int, int, int]  # (task id, after seq, how many)


def _by_key(keys: list[K], rows: Iterable[V], key: Callable[[V], K]) -> list[V | None]:
    index = {key(row): row for row in rows}
    return [index.get(k) for k in keys]


def _grouped(keys: list[K], rows: Iterable[V], key: Callable[[V], K]) -> list[list[V]]:
    groups: dict[K, list[V]] = {k: [] for k in keys}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return [groups[k] for k in keys]


def _loader(fn: Callable[[list[Any]], Awaitable[list[Any]]]) -> DataLoader[Any, Any]:
    return DataLoader(load_fn=fn)


class Loaders:
    """Built for one viewer and one request (or one subscription event), so nothing stale or foreign leaks."""

    def __init__(self, viewer: Viewer) -> None:
        self.viewer = viewer
        self.project_by_id: DataLoader[int, models.Project | None] = _loader(self._projects)
        self.task_by_id: DataLoader[int, models.Task | None] = _loader(self._tasks)
        self.user_by_id: DataLoader[int, models.User | None] = _loader(self._users)
        self.members_by_project_id: DataLoader[int, list[models.ProjectMember]] = _loader(self._members)
        self.member_user: DataLoader[tuple[int, int], models.User | None] = _loader(self._member_users)
        self.logs_by_task: DataLoader[LogsKey, list[models.TaskLog]] = _loader(self._logs)
        self.viewer_role_by_project_id: DataLoader[int, models.Role | None] = _loader(self._viewer_roles)
        self.role_by_id: DataLoader[int, models.Role | None] = _loader(self._roles)
        self.system_roles_by_user_id: DataLoader[int, list[models.Role]] = _loader(self._system_roles)
        self.overlaps_by_task: DataLoader[int, list[models.Task]] = _loader(self._overlaps)
        self.approval_by_id: DataLoader[int, models.ApprovalRequest | None] = _loader(self._approvals)
        self.approvals_by_task: DataLoader[int, list[models.ApprovalRequest]] = _loader(self._task_approvals)
        self.webhooks_by_project: DataLoader[int, list[models.Webhook]] = _loader(self._webhooks)
        self.deliveries_by_webhook: DataLoader[tuple[int, int], list[models.WebhookDelivery]] = _loader(
            self._deliveries
        )
        self.month_cost_by_project_id: DataLoader[int, float] = _loader(self._month_costs)
        # The schema's objects built from this request's rows, by row identity (aicm.schema.loading.once).
        self.built: dict[int, tuple[object, object]] = {}

    def prime_projects(self, projects: Iterable[models.Project]) -> None:
        """Projects just read under this viewer's visibility (a root field's answer): their nested fields need
        not read them again (``member_user`` checks each membership's project through ``project_by_id``)."""
        self.project_by_id.prime_many({project.id: project for project in projects})

    def forget_roles_of(self, user_id: int) -> None:
        """After a role change in this request, the next read must see it."""
        with contextlib.suppress(KeyError):
            self.system_roles_by_user_id.clear(user_id)

    async def _projects(self, ids: list[int]) -> list[models.Project | None]:
        visible = await authorization.visible_projects(self.viewer)
        return _by_key(ids, await visible.filter(id__in=ids), lambda p: p.id)

    async def _tasks(self, ids: list[int]) -> list[models.Task | None]:
        visible = await authorization.visible_tasks(self.viewer)
        return _by_key(ids, await visible.filter(id__in=ids), lambda t: t.id)

    async def _users(self, ids: list[int]) -> list[models.User | None]:
        visible = await authorization.visible_users(self.viewer)
        return _by_key(ids, await visible.filter(id__in=ids), lambda u: u.id)

    async def _members(self, project_ids: list[int]) -> list[list[models.ProjectMember]]:
        visible = await authorization.visible_members(self.viewer)
        rows = await visible.filter(project_id__in=project_ids).order_by("added_at", "id")
        return _grouped(project_ids, rows, lambda m: m.project_id)

    async def _member_users(self, keys: list[tuple[int, int]]) -> list[models.User | None]:
        """The user of a membership (project id, user id): shown wherever the project's members are readable.

        That also covers the membership a MEMBER_REMOVED event carries: the project's readers saw that member.
        Elsewhere (the viewer's own removal from a project) the general user rule decides.
        """
        projects = await self.project_by_id.load_many([project_id for project_id, _ in keys])
        readable = {user_id for (_, user_id), project in zip(keys, projects, strict=True) if project}
        users = {u.id: u for u in await models.User.filter(id__in=readable)} if readable else {}
        others = await self.user_by_id.load_many([user_id for _, user_id in keys if user_id not in users])
        users |= {u.id: u for u in others if u is not None}
        return [users.get(user_id) for _, user_id in keys]

    async def _logs(self, keys: list[LogsKey]) -> list[list[models.TaskLog]]:
        """Stored lines of visible tasks: one query per distinct (after seq, size), whatever the task count.

        A task's seq runs 1, 2, 3... with no holes (one writer numbers them), so "the next ``n`` lines after
        ``after``" is the range ``after < seq <= after + n`` and needs no per-task LIMIT.
        """
        visible = await authorization.visible_tasks(self.viewer)
        pages: dict[tuple[int, int], list[int]] = defaultdict(list)
        for task_id, after, size in keys:
            pages[(after, size)].append(task_id)
        lines: dict[LogsKey, list[models.TaskLog]] = {key: [] for key in keys}
        for (after, size), task_ids in pages.items():
            tasks = visible.filter(id__in=task_ids).values("id")
            last = min(after + size, MAX_KEY)  # seq is an int4 column: a bound past it fails on PostgreSQL
            rows = models.TaskLog.filter(task_id__in=Subquery(tasks), seq__gt=after, seq__lte=last)
            for row in await rows.order_by("task_id", "seq"):
                lines[(row.task_id, after, size)].append(row)  # type: ignore[attr-defined]
        return [lines[key] for key in keys]

    async def _overlaps(self, ids: list[int]) -> list[list[models.Task]]:
        """Per unmerged task, the visible unmerged tasks of its project on other branches whose stored
        changed paths meet its own (newest first): two queries whatever the number of tasks, and no git."""
        visible = await authorization.visible_tasks(self.viewer)
        mine = visible.filter(id__in=ids, changed_paths__isnull=False, merged_at__isnull=True)
        tasks = {t.id: t for t in await mine}  # a merged task's work is in: it warns no more
        if not tasks:
            return [[] for _ in ids]
        project_ids = {t.project_id for t in tasks.values()}  # type: ignore[attr-defined]
        candidates = await visible.filter(
            project_id__in=project_ids, merged_at__isnull=True, changed_paths__isnull=False
        ).order_by("-id")
        found: list[list[models.Task]] = []
        for task_id in ids:
            task = tasks.get(task_id)
            paths = set(task.changed_paths or []) if task else set()
            found.append(
                [
                    other
                    for other in candidates
                    if task is not None
                    and other.project_id == task.project_id  # type: ignore[attr-defined]
                    and other.branch != task.branch
                    and paths.intersection(other.changed_paths or [])
                ]
            )
        return found

    async def _approvals(self, ids: list[int]) -> list[models.ApprovalRequest | None]:
        visible = await authorization.visible_approvals(self.viewer)
        return _by_key(ids, await visible.filter(id__in=ids), lambda a: a.id)

    async def _task_approvals(self, task_ids: list[int]) -> list[list[models.ApprovalRequest]]:
        """A task's approval requests, oldest first."""
        visible = await authorization.visible_approvals(self.viewer)
        rows = await visible.filter(task_id__in=task_ids).order_by("id")
        return _grouped(task_ids, rows, lambda a: a.task_id)  # type: ignore[attr-defined]

    async def _webhooks(self, project_ids: list[int]) -> list[list[models.Webhook]]:
        visible = await authorization.manageable_webhooks(self.viewer)
        rows = await visible.filter(project_id__in=project_ids).order_by("id")
        return _grouped(project_ids, rows, lambda h: h.project_id)  # type: ignore[attr-defined]

    async def _deliveries(self, keys: list[tuple[int, int]]) -> list[list[models.WebhookDelivery]]:
        """(webhook id, how many) → its newest delivery attempts, newest first."""
        visible = await authorization.manageable_webhooks(self.viewer)
        found: dict[tuple[int, int], list[models.WebhookDelivery]] = {}
        for webhook_id, size in dict.fromkeys(keys):  # a few webhooks per request: one query each
            rows = models.WebhookDelivery.filter(
                webhook_id=webhook_id, webhook_id__in=Subquery(visible.values("id"))
            )
            found[(webhook_id, size)] = await rows.order_by("-id").limit(size)
        return [found[key] for key in keys]

    async def _month_costs(self, project_ids: list[int]) -> list[float]:
        """This month's summed task costs per project, over the tasks the viewer may read."""
        costs = await budgets.month_costs(project_ids, await authorization.visible_tasks(self.viewer))
        return [costs[project_id] for project_id in project_ids]

    async def _viewer_roles(self, project_ids: list[int]) -> list[models.Role | None]:
        roles = (authorization.project_role(self.viewer, project_id) for project_id in project_ids)
        return list(await asyncio.gather(*roles))  # the viewer's memberships load in one batch

    async def _roles(self, ids: list[int]) -> list[models.Role | None]:
        """The role catalogue is readable by every signed-in user (CONTRACT §7) and read once per viewer."""
        roles = await self.viewer.roles()
        return [roles.get(role_id) for role_id in ids]

    @staticmethod
    async def _system_roles(user_ids: list[int]) -> list[list[models.Role]]:
        links = (
            await models.UserRole.filter(user_id__in=user_ids).prefetch_related("role").order_by("role_id")
        )
        grouped = _grouped(user_ids, links, lambda link: link.user_id)
        return [[link.role for link in group] for group in grouped]
