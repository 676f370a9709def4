"""The audit trail of every change to users, roles, projects and members."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model


class AuditLog(Model):
    id = fields.IntField(primary_key=True)
    actor = fields.ForeignKeyField("models.User", related_name=False, null=True, on_delete=fields.SET_NULL)
    action = fields.CharField(max_length=64, db_index=True)
    target_type = fields.CharField(max_length=32)
    target_id = fields.CharField(max_length=64)
    details: dict = fields.JSONField(default=dict)  # type: ignore[assignment]
    ip = fields.CharField(max_length=64, null=True)
    at = fields.DatetimeField(auto_now_add=True, db_index=True)

    class Meta:
        table = "audit_log"
        indexes = (("target_type", "target_id"),)
