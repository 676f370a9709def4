"""GraphQL types and root fields for roles."""

from __future__ import annotations

import strawberry

from aicm import models
from aicm.resolvers import roles as roles_resolvers
from aicm.schema.context import Info
from aicm.schema.mapping import from_row
from aicm.schema.permissions import IsAuthenticated
from aicm.schema.relay import decode_id, encode_id

RoleScope = strawberry.enum(models.RoleScope)


@strawberry.type
class Role:
    id: strawberry.ID
    name: str
    description: str
    scope: RoleScope
    permissions: list[str]
    built_in: bool

    @classmethod
    def from_model(cls, role: models.Role) -> Role:
        return from_row(
            cls,
            role,
            id=encode_id("Role", role.id),
            scope=models.RoleScope(role.scope),
            permissions=sorted(role.permissions or []),
        )


@strawberry.input
class CreateRoleInput:
    name: str
    scope: RoleScope
    permissions: list[str]
    description: str = ""


@strawberry.input
class UpdateRoleInput:
    name: str | None = None
    description: str | None = None
    permissions: list[str] | None = None


@strawberry.type
class RoleQueries:
    @strawberry.field(permission_classes=[IsAuthenticated])
    async def roles(self, info: Info, scope: RoleScope | None = None) -> list[Role]:
        rows = await roles_resolvers.list_roles(info.context.viewer, scope=scope)
        return [Role.from_model(r) for r in rows]

    @strawberry.field(permission_classes=[IsAuthenticated], description="Every permission string.")
    def permissions(self, info: Info) -> list[str]:
        return roles_resolvers.list_permissions(info.context.viewer)


@strawberry.type
class RoleMutations:
    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def create_role(self, info: Info, input: CreateRoleInput) -> Role:
        role = await roles_resolvers.create_role(
            info.context.viewer,
            name=input.name,
            description=input.description,
            scope=input.scope,
            permissions=input.permissions,
        )
        return Role.from_model(role)

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def update_role(self, info: Info, id: strawberry.ID, input: UpdateRoleInput) -> Role:
        role = await roles_resolvers.update_role(
            info.context.viewer,
            decode_id(id, "Role"),
            name=input.name,
            description=input.description,
            permissions=input.permissions,
        )
        return Role.from_model(role)

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def delete_role(self, info: Info, id: strawberry.ID) -> bool:
        return await roles_resolvers.delete_role(info.context.viewer, decode_id(id, "Role"))
