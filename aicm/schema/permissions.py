"""Strawberry permission classes: viewer-level checks that run before a field's resolver.

They only ask ``aicm.auth.authorization``; per-object decisions stay in the resolvers, which ask it too.
"""

from __future__ import annotations

import functools
from typing import Any

from strawberry.permission import BasePermission

from aicm.auth import authorization
from aicm.schema.context import Info


class IsAuthenticated(BasePermission):
    message = "Authentication required"

    def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        authorization.require_signed_in(info.context.viewer)  # raises UNAUTHENTICATED
        return True


@functools.cache
def has_permission(permission: str) -> type[BasePermission]:
    """A permission class requiring one system permission: ``permission_classes=[has_permission(...)]``."""

    def check(self: BasePermission, source: Any, info: Info, **kwargs: Any) -> bool:
        authorization.require_system(info.context.viewer, permission)  # raises UNAUTHENTICATED/FORBIDDEN
        return True

    name = "Has" + "".join(part.capitalize() for part in permission.replace(":", "_").split("_"))
    return type(name, (BasePermission,), {"message": "Forbidden", "has_permission": check})
