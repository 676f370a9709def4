"""Who is calling: the signed-in user (or nobody), their system permissions, and per-request lookups.

A Viewer lives for one request (or is refreshed by a subscription when it re-checks access), so it may cache
the viewer's project memberships and the role catalogue for that request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from strawberry.dataloader import DataLoader

from aicm import models
from aicm.errors import Unauthenticated


@dataclass
class Viewer:
    user: models.User | None = None
    session_id: str | None = None
    permissions: frozenset[str] = field(default_factory=frozenset)  # from system roles
    system_role_ids: frozenset[int] = field(default_factory=frozenset)
    ip: str | None = None
    user_agent: str | None = None
    _memberships: DataLoader[int, models.ProjectMember | None] | None = field(default=None, repr=False)
    _roles: asyncio.Task[dict[int, models.Role]] | None = field(default=None, repr=False)

    @property
    def is_authenticated(self) -> bool:
        return self.user is not None

    @property
    def user_id(self) -> int | None:
        return self.user.id if self.user else None

    def require_user(self) -> models.User:
        """The signed-in user, else UNAUTHENTICATED: the one "must be signed in" check."""
        if self.user is None:
            raise Unauthenticated()
        return self.user

    async def membership(self, project_id: int) -> models.ProjectMember | None:
        """The viewer's membership of a project; lookups in one tick are batched into one query."""
        if self.user is None:
            return None
        if self._memberships is None:
            user_id = self.user.id

            async def load(project_ids: list[int]) -> list[models.ProjectMember | None]:
                rows = await models.ProjectMember.filter(user_id=user_id, project_id__in=project_ids)
                by_project = {row.project_id: row for row in rows}
                return [by_project.get(pid) for pid in project_ids]

            self._memberships = DataLoader(load_fn=load)
        return await self._memberships.load(project_id)

    async def roles(self) -> dict[int, models.Role]:
        """Every role by id (a small table), read once per request even when asked concurrently."""
        if self._roles is None:
            self._roles = asyncio.ensure_future(_all_roles())
        return await asyncio.shield(self._roles)

    def forget(self) -> None:
        """Drop cached lookups, e.g. after a mutation changed memberships or roles, or before a re-check."""
        self._memberships = None
        self._roles = None

    def refresh(self, fresh: Viewer) -> None:
        """Take over a freshly loaded viewer's account and system roles, in place.

        A WebSocket connection shares one viewer between its subscriptions and the loaders that resolve their
        events; updating it in place makes every one of them see the re-checked permissions.
        """
        self.user, self.permissions = fresh.user, fresh.permissions
        self.system_role_ids = fresh.system_role_ids
        self.forget()


async def _all_roles() -> dict[int, models.Role]:
    return {role.id: role for role in await models.Role.all()}


async def system_roles(user_id: int) -> tuple[frozenset[int], frozenset[str]]:
    """The ids of the user's system roles and the permissions they grant."""
    roles = await models.Role.filter(user_roles__user_id=user_id).values_list("id", "permissions")
    return frozenset(r for r, _ in roles), frozenset(p for _, perms in roles for p in (perms or []))


async def load_viewer(user_id: int, session_id: str | None, ip: str | None, user_agent: str | None) -> Viewer:
    """The viewer for a verified token; an unknown or deactivated user is refused."""
    user = await models.User.get_or_none(id=user_id)
    if user is None or not user.is_active:
        raise Unauthenticated("Account is not active", reason="ACCOUNT_INACTIVE")
    role_ids, permissions = await system_roles(user.id)
    return Viewer(user, session_id, permissions, role_ids, ip, user_agent)
