"""GraphQL types and root fields for roles."""

from __future__ import annotations

from enum import Enum

import strawberry

from aicm import models
from aicm.schema.relay import encode_id


@strawberry.enum
class RoleScope(Enum):
    SYSTEM = "SYSTEM"
    PROJECT = "PROJECT"


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
        return cls(
            id=encode_id("Role", role.id),
            name=role.name,
            description=role.description,
            scope=RoleScope(role.scope),
            permissions=sorted(role.permissions or []),
            built_in=role.built_in,
        )
