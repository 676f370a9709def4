"""GraphQL types and root fields for the audit log."""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.scalars import JSON

from aicm import models
from aicm.auth.permissions import Permission
from aicm.resolvers import audit as audit_resolvers
from aicm.schema.context import Info
from aicm.schema.permissions import has_permission
from aicm.schema.relay import Connection, connection, encode_id
from aicm.schema.users import User


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
        return cls(
            id=encode_id("AuditLogEntry", row.id),
            action=row.action,
            target_type=row.target_type,
            target_id=encode_id(row.target_type, row.target_id),
            details=row.details,
            ip=row.ip,
            at=row.at,
            actor_pk=row.actor_id,  # type: ignore[attr-defined]
        )

    @strawberry.field(description="Who did it; null for operator commands and deleted users.")
    async def actor(self, info: Info) -> User | None:
        if self.actor_pk is None:
            return None
        user = await info.context.loaders.user_by_id.load(self.actor_pk)
        return User.from_model(user) if user else None


@strawberry.type
class AuditQueries:
    @strawberry.field(permission_classes=[has_permission(Permission.AUDIT_READ)])
    async def audit_log(
        self, info: Info, first: int | None = 20, after: str | None = None
    ) -> Connection[AuditLogEntry]:
        page = await audit_resolvers.list_audit_log(info.context.viewer, first=first, after=after)
        return connection(page, AuditLogEntry.from_model)
