"""GraphQL types and root fields for users."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import strawberry

from aicm.resolvers import users as users_resolvers
from aicm.schema.context import Info
from aicm.schema.mapping import from_row
from aicm.schema.permissions import IsAuthenticated
from aicm.schema.relay import Connection, connection, decode_id, encode_id
from aicm.schema.roles import Role

if TYPE_CHECKING:
    from aicm import models


@strawberry.type(
    description="Seen by the user themself, holders of user:read, and whoever may read a project the user is "
    "a member of; elsewhere a user field is null (or the user answers NOT_FOUND)."
)
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
        return from_row(cls, user, id=encode_id("User", user.id), pk=user.id)

    @strawberry.field(description="System roles held by the user.")
    async def roles(self, info: Info) -> list[Role]:
        return [Role.from_model(r) for r in await info.context.loaders.system_roles_by_user_id.load(self.pk)]


async def user_or_none(info: Info, user_id: int | None) -> User | None:
    """The user behind a nullable reference: null when there is none or the viewer may not see them."""
    user = await info.context.loaders.user_by_id.load(user_id) if user_id is not None else None
    return User.from_model(user) if user else None


@strawberry.input
class CreateUserInput:
    email: str
    name: str
    password: str
    role_ids: list[strawberry.ID] = strawberry.field(default_factory=list)


@strawberry.input
class UpdateMeInput:
    name: str | None = None


@strawberry.input
class UpdateUserInput:
    name: str | None = None
    email: str | None = None


@strawberry.type
class UserQueries:
    @strawberry.field(description="The signed-in user, or null when anonymous.")
    def me(self, info: Info) -> User | None:
        user = info.context.viewer.user
        return User.from_model(user) if user else None

    @strawberry.field(
        permission_classes=[IsAuthenticated],
        description="A user you may see: yourself, any with user:read, or a member of a project you read.",
    )
    async def user(self, info: Info, id: strawberry.ID) -> User:
        return User.from_model(await users_resolvers.get_user(info.context.viewer, decode_id(id, "User")))

    @strawberry.field(permission_classes=[IsAuthenticated])
    async def users(
        self, info: Info, first: int | None = 20, after: str | None = None, search: str | None = None
    ) -> Connection[User]:
        page = await users_resolvers.list_users(info.context.viewer, first=first, after=after, search=search)
        return connection(page, User.from_model)


@strawberry.type
class UserMutations:
    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def create_user(self, info: Info, input: CreateUserInput) -> User:
        user = await users_resolvers.create_user(
            info.context.viewer,
            email=input.email,
            name=input.name,
            password=input.password,
            role_ids=[decode_id(r, "Role", field="roleIds") for r in input.role_ids],
        )
        return User.from_model(user)

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def update_me(self, info: Info, input: UpdateMeInput) -> User:
        return User.from_model(await users_resolvers.update_me(info.context.viewer, name=input.name))

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def update_user(self, info: Info, id: strawberry.ID, input: UpdateUserInput) -> User:
        user = await users_resolvers.update_user(
            info.context.viewer, decode_id(id, "User"), name=input.name, email=input.email
        )
        return User.from_model(user)

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def deactivate_user(self, info: Info, id: strawberry.ID) -> User:
        return User.from_model(
            await users_resolvers.deactivate_user(info.context.viewer, decode_id(id, "User"))
        )

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def assign_role(self, info: Info, user_id: strawberry.ID, role_id: strawberry.ID) -> User:
        user = await users_resolvers.assign_role(
            info.context.viewer,
            decode_id(user_id, "User", field="userId"),
            decode_id(role_id, "Role", field="roleId"),
        )
        info.context.loaders.forget_roles_of(user.id)
        return User.from_model(user)

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def revoke_role(self, info: Info, user_id: strawberry.ID, role_id: strawberry.ID) -> bool:
        return await users_resolvers.revoke_role(
            info.context.viewer,
            decode_id(user_id, "User", field="userId"),
            decode_id(role_id, "Role", field="roleId"),
        )
