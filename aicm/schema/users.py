"""GraphQL types and root fields for users."""

from __future__ import annotations

from datetime import datetime

import strawberry

from aicm import models
from aicm.schema.context import Info
from aicm.schema.relay import encode_id
from aicm.schema.roles import Role


@strawberry.type
class User:
    id: strawberry.ID
    email: str
    name: str
    is_active: bool
    created_at: datetime
    last_login_at: datetime | None
    pk: strawberry.Private[int]

    @classmethod
    def from_model(cls, user: models.User) -> User:
        return cls(
            id=encode_id("User", user.id),
            email=user.email,
            name=user.name,
            is_active=user.is_active,
            created_at=user.created_at,
            last_login_at=user.last_login_at,
            pk=user.id,
        )

    @strawberry.field(description="System roles held by the user.")
    async def roles(self, info: Info) -> list[Role]:
        return [Role.from_model(r) for r in await info.context.loaders.system_roles_by_user_id.load(self.pk)]


@strawberry.type
class UserQueries:
    @strawberry.field(description="The signed-in user, or null when anonymous.")
    def me(self, info: Info) -> User | None:
        user = info.context.viewer.user
        return User.from_model(user) if user else None
