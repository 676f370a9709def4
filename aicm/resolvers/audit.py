"""The audit trail, newest first, for holders of ``audit:read``."""

from __future__ import annotations

from aicm import models
from aicm.auth import authorization
from aicm.auth.permissions import Permission
from aicm.auth.viewer import Viewer
from aicm.resolvers.pagination import Page, paginate


async def list_audit_log(viewer: Viewer, *, first: int | None, after: str | None) -> Page:
    authorization.require_system(viewer, Permission.AUDIT_READ)
    return await paginate(models.AuditLog.all(), first, after, newest_first=True)
