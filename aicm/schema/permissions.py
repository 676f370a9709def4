"""The one Strawberry permission class: the field needs a signed-in viewer.

Everything else (system permissions, per-object checks) is decided once, in the resolver, which asks
``aicm.auth.authorization``; declaring it here as well would be a second place to keep in step.
"""

from __future__ import annotations

from typing import Any

from strawberry.permission import BasePermission

from aicm.schema.context import Info


class IsAuthenticated(BasePermission):
    message = "Authentication required"

    def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        info.context.viewer.require_user()  # raises UNAUTHENTICATED
        return True
