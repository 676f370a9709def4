"""Identities at OAuth2/OpenID Connect providers, linked to users."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model


class OAuthAccount(Model):
    id = fields.IntField(primary_key=True)
    provider = fields.CharField(max_length=64)
    subject = fields.CharField(max_length=255)  # the provider's stable user id
    user = fields.ForeignKeyField(
        "models.User", related_name="oauth_accounts", on_delete=fields.CASCADE, db_index=True
    )
    email = fields.CharField(max_length=254, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "oauth_accounts"
        unique_together = (("provider", "subject"),)
