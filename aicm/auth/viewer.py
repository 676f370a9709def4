"""Who is calling: the signed-in user (or nobody) with their system permissions."""

from __future__ import annotations

from dataclasses import dataclass, field

from aicm import models
from aicm.errors import Unauthenticated


@dataclass
class Viewer:
    user: models.User | None = None
    session_id: str | None = None
    permissions: frozenset[str] = field(default_factory=frozenset)  # from system roles
    ip: str | None = None
    user_agent: str | None = None

    @property
    def is_authenticated(self) -> bool:
        return self.user is not None

    @property
    def user_id(self) -> int | None:
        return self.user.id if self.user else None

    def require_user(self) -> models.User:
        if self.user is None:
            raise Unauthenticated()
        return self.user


async def system_permissions(user_id: int) -> frozenset[str]:
    roles = await models.Role.filter(user_roles__user_id=user_id).values_list("permissions", flat=True)
    return frozenset(p for perms in roles for p in (perms or []))


async def load_viewer(user_id: int, session_id: str | None, ip: str | None, user_agent: str | None) -> Viewer:
    """The viewer for a verified token; an unknown or deactivated user is refused."""
    user = await models.User.get_or_none(id=user_id)
    if user is None or not user.is_active:
        raise Unauthenticated("Account is not active", reason="ACCOUNT_INACTIVE")
    return Viewer(user, session_id, await system_permissions(user.id), ip, user_agent)
