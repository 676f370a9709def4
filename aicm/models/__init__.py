"""Tortoise models. Import as a module (``from aicm import models``) so schema types keep plain names."""

from aicm.models.audit import AuditLog
from aicm.models.projects import Project, ProjectMember, ProjectStatus
from aicm.models.roles import Role, RoleScope
from aicm.models.users import User, UserRole

__all__ = ["AuditLog", "Project", "ProjectMember", "ProjectStatus", "Role", "RoleScope", "User", "UserRole"]
