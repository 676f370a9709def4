"""The permission vocabulary and the built-in roles (CONTRACT §4).

Permission strings are ``resource:action``. System-scope roles hold permissions over the whole system (a
system role with ``project:read`` reads every project); project-scope roles are granted by membership.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Permission(StrEnum):
    # system
    USER_READ = "user:read"
    USER_MANAGE = "user:manage"
    ROLE_MANAGE = "role:manage"
    AUDIT_READ = "audit:read"
    PROJECT_CREATE = "project:create"
    # project (also valid in system roles, where they apply to every project)
    PROJECT_READ = "project:read"
    PROJECT_UPDATE = "project:update"
    PROJECT_ARCHIVE = "project:archive"
    PROJECT_DELETE = "project:delete"
    MEMBER_MANAGE = "member:manage"
    MEMBER_MANAGE_OWNERS = "member:manage_owners"
    TASK_READ = "task:read"
    TASK_CREATE = "task:create"
    TASK_CANCEL_OWN = "task:cancel_own"
    TASK_CANCEL_ANY = "task:cancel_any"


ALL_PERMISSIONS: tuple[str, ...] = tuple(p.value for p in Permission)

SYSTEM_ONLY: frozenset[str] = frozenset(
    {
        Permission.USER_READ,
        Permission.USER_MANAGE,
        Permission.ROLE_MANAGE,
        Permission.AUDIT_READ,
        Permission.PROJECT_CREATE,
    }
)
PROJECT_PERMISSIONS: tuple[str, ...] = tuple(p for p in ALL_PERMISSIONS if p not in SYSTEM_ONLY)

_VIEWER = (Permission.PROJECT_READ, Permission.TASK_READ)
_DEVELOPER = (*_VIEWER, Permission.TASK_CREATE, Permission.TASK_CANCEL_OWN)
_MAINTAINER = (*_DEVELOPER, Permission.PROJECT_UPDATE, Permission.MEMBER_MANAGE, Permission.TASK_CANCEL_ANY)
_OWNER = (
    *_MAINTAINER,
    Permission.PROJECT_ARCHIVE,
    Permission.PROJECT_DELETE,
    Permission.MEMBER_MANAGE_OWNERS,
)


@dataclass(frozen=True)
class BuiltInRole:
    name: str
    scope: str  # "SYSTEM" | "PROJECT"
    description: str
    permissions: tuple[str, ...]


ADMIN, MEMBER, AUDITOR = "admin", "member", "auditor"
OWNER, MAINTAINER, DEVELOPER, VIEWER = "owner", "maintainer", "developer", "viewer"

BUILT_IN_ROLES: tuple[BuiltInRole, ...] = (
    BuiltInRole(ADMIN, "SYSTEM", "Every permission", ALL_PERMISSIONS),
    BuiltInRole(MEMBER, "SYSTEM", "Default for new users: may create projects", (Permission.PROJECT_CREATE,)),
    BuiltInRole(
        AUDITOR,
        "SYSTEM",
        "Reads users, the audit log and every project",
        (Permission.USER_READ, Permission.AUDIT_READ, Permission.PROJECT_READ, Permission.TASK_READ),
    ),
    BuiltInRole(OWNER, "PROJECT", "Everything on the project, including archive, delete and owners", _OWNER),
    BuiltInRole(
        MAINTAINER, "PROJECT", "Update the project, manage members below owner, cancel any task", _MAINTAINER
    ),
    BuiltInRole(DEVELOPER, "PROJECT", "Create tasks and cancel their own", _DEVELOPER),
    BuiltInRole(VIEWER, "PROJECT", "Read the project, its members, tasks and logs", _VIEWER),
)
