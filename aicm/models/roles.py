"""Roles: named sets of ``resource:action`` permissions, in system or project scope."""

from __future__ import annotations

from enum import StrEnum

from tortoise import fields
from tortoise.models import Model


class RoleScope(StrEnum):
    SYSTEM = "SYSTEM"
    PROJECT = "PROJECT"


class Role(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=64, unique=True)
    description = fields.CharField(max_length=500, default="")
    scope = fields.CharEnumField(RoleScope, max_length=16, db_index=True)
    permissions: list[str] = fields.JSONField(default=list)  # type: ignore[assignment]
    built_in = fields.BooleanField(default=False)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "roles"

    def __str__(self) -> str:
        return self.name
