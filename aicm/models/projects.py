"""Projects and their members."""

from __future__ import annotations

from enum import StrEnum

from tortoise import fields
from tortoise.models import Model


class ProjectStatus(StrEnum):
    ACTIVE = "ACTIVE"
    ARCHIVED = "ARCHIVED"


class AgentPermissionMode(StrEnum):
    """``Project.agentPermissionMode``, passed to the CLI as ``--permission-mode`` (CONTRACT §10)."""

    DEFAULT = "DEFAULT"
    ACCEPT_EDITS = "ACCEPT_EDITS"
    PLAN = "PLAN"
    BYPASS = "BYPASS"


class Project(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=100)
    slug = fields.CharField(max_length=100, unique=True)
    description = fields.TextField(default="")
    repository_url = fields.CharField(max_length=500, default="")
    default_branch = fields.CharField(max_length=255, null=True)  # from the remote's HEAD; settable
    # The repository credential, encrypted (aicm/crypto.py); kind is "token" or "ssh_key", null when none.
    credential_kind = fields.CharField(max_length=16, null=True)
    credential_secret = fields.TextField(null=True)
    # The project's agent API key (provider "anthropic"), encrypted like the repository credential.
    agent_credential_secret = fields.TextField(null=True)
    # New tasks are refused once this calendar month's (UTC) task costs reach it; null = no budget.
    monthly_budget_usd = fields.FloatField(null=True)
    status = fields.CharEnumField(ProjectStatus, max_length=16, default=ProjectStatus.ACTIVE, db_index=True)
    # One of the members holding an owner role; kept pointing at a current owner.
    owner = fields.ForeignKeyField(
        "models.User", related_name="owned_projects", on_delete=fields.RESTRICT, db_index=True
    )
    agent_permission_mode = fields.CharEnumField(
        AgentPermissionMode, max_length=16, default=AgentPermissionMode.DEFAULT
    )
    # The project role whose permissions a member needs to decide tool approvals; null (or a role since
    # deleted) = the built-in maintainer. A plain id: aerich cannot add a foreign key to a SQLite table.
    approver_role_id = fields.IntField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True, db_index=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "projects"

    def __str__(self) -> str:
        return self.slug


class ProjectMember(Model):
    id = fields.IntField(primary_key=True)
    project = fields.ForeignKeyField("models.Project", related_name="members", on_delete=fields.CASCADE)
    user = fields.ForeignKeyField(
        "models.User", related_name="memberships", on_delete=fields.CASCADE, db_index=True
    )
    role = fields.ForeignKeyField("models.Role", related_name="memberships", on_delete=fields.RESTRICT)
    added_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "project_members"
        unique_together = (("project", "user"),)
