"""People who sign in, and the system roles they hold."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model


class User(Model):
    id = fields.IntField(primary_key=True)
    # Stored lower-cased, so the unique index makes emails unique case-insensitively on every database.
    email = fields.CharField(max_length=254, unique=True)
    name = fields.CharField(max_length=200, default="")
    password_hash = fields.CharField(max_length=255, null=True)  # null for OAuth-only users
    is_active = fields.BooleanField(default=True)
    # The user's own agent API key (provider "anthropic"), encrypted (aicm/crypto.py); null when none.
    agent_credential_secret = fields.TextField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    last_login_at = fields.DatetimeField(null=True)

    class Meta:
        table = "users"

    def __str__(self) -> str:
        return self.email


class UserRole(Model):
    """A system-scope role granted to a user."""

    id = fields.IntField(primary_key=True)
    user = fields.ForeignKeyField("models.User", related_name="user_roles", on_delete=fields.CASCADE)
    role = fields.ForeignKeyField("models.Role", related_name="user_roles", on_delete=fields.CASCADE)
    assigned_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "user_roles"
        unique_together = (("user", "role"),)
