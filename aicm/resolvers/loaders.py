"""DataLoaders, one set per request: every relation a list touches is loaded in one query per level."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, TypeVar

from strawberry.dataloader import DataLoader

from aicm import models

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


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
    """Built fresh for every request (never shared across requests, so nothing stale leaks)."""

    def __init__(self) -> None:
        self.user_by_id = _loader(self._users)
        self.system_roles_by_user_id = _loader(self._system_roles)
        self.members_by_project_id = _loader(self._members)
        self.project_by_id = _loader(self._projects)

    def forget_roles_of(self, user_id: int) -> None:
        """After a role change in this request, the next read must see it."""
        with contextlib.suppress(KeyError):
            self.system_roles_by_user_id.clear(user_id)

    @staticmethod
    async def _users(ids: list[int]) -> list[models.User | None]:
        return _by_key(ids, await models.User.filter(id__in=ids), lambda u: u.id)

    @staticmethod
    async def _system_roles(user_ids: list[int]) -> list[list[models.Role]]:
        links = (
            await models.UserRole.filter(user_id__in=user_ids).prefetch_related("role").order_by("role_id")
        )
        grouped = _grouped(user_ids, links, lambda link: link.user_id)
        return [[link.role for link in group] for group in grouped]

    @staticmethod
    async def _members(project_ids: list[int]) -> list[list[models.ProjectMember]]:
        rows = await models.ProjectMember.filter(project_id__in=project_ids).order_by("added_at", "id")
        return _grouped(project_ids, rows, lambda m: m.project_id)

    @staticmethod
    async def _projects(ids: list[int]) -> list[models.Project | None]:
        return _by_key(ids, await models.Project.filter(id__in=ids), lambda p: p.id)
