"""GraphQL types and root fields for the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import strawberry
from strawberry.scalars import JSON

from aicm.resolvers import audit as audit_resolvers
from aicm.schema.context import Info
from aicm.schema.mapping import from_row
from aicm.schema.permissions import IsAuthenticated
from aicm.schema.relay import Connection, connection, encode_id
from aicm.schema.users import User, user_or_none

if TYPE_CHECKING:
    from aicm import models


@strawberry.type
class AuditLogEntry:
    id: strawberry.ID
    action: str
    target_type: str
    target_id: str
    details: JSON
    ip: str | None
    at: datetime
    actor_pk: strawberry.Private[int | None]

    @classmethod
    def from_model(cls, row: models.AuditLog) -> AuditLogEntry:
        return from_row(
            cls,
            row,
            id=encode_id("AuditLogEntry", row.id),
            target_id=encode_id(row.target_type, row.target_id),
            actor_pk=row.actor_id,  # type: ignore[attr-defined]
        )

    @strawberry.field(
        description="Who did it; null for operator commands, deleted users and users you may not see."
    )
    async def actor(self, info: Info) -> User | None:
        return await user_or_none(info, self.actor_pk)


@strawberry.type
class AuditQueries:
    @strawberry.field(permission_classes=[IsAuthenticated])
    async def audit_log(
        self, info: Info, first: int | None = 20, after: str | None = None
    ) -> Connection[AuditLogEntry]:
        page = await audit_resolvers.list_audit_log(info.context.viewer, first=first, after=after)
        return connection(page, AuditLogEntry.from_model)
