"""Tortoise models. Import as a module (``from aicm import models``) so schema types keep plain names."""

from aicm.models.agent_sessions import TaskSession
from aicm.models.approvals import (
    ApprovalRequest,
    ApprovalStatus,
    Webhook,
    WebhookDelivery,
    WebhookEvent,
    WebhookJob,
)
from aicm.models.audit import AuditLog
from aicm.models.oauth import OAuthAccount
from aicm.models.projects import AgentPermissionMode, Project, ProjectMember, ProjectStatus
from aicm.models.roles import Role, RoleScope
from aicm.models.tasks import ACTIVE, FINISHED, Task, TaskLog, TaskStatus
from aicm.models.users import User, UserRole

__all__ = [
    "ACTIVE",
    "FINISHED",
    "AgentPermissionMode",
    "ApprovalRequest",
    "ApprovalStatus",
    "AuditLog",
    "OAuthAccount",
    "Project",
    "ProjectMember",
    "ProjectStatus",
    "Role",
    "RoleScope",
    "Task",
    "TaskLog",
    "TaskSession",
    "TaskStatus",
    "User",
    "UserRole",
    "Webhook",
    "WebhookDelivery",
    "WebhookEvent",
    "WebhookJob",
]
