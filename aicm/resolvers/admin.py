"""Operator actions that run outside any request (``aicli-api create-admin``)."""

from __future__ import annotations

from tortoise.transactions import in_transaction

from aicm import models
from aicm.auth.passwords import check_policy, hash_password
from aicm.auth.permissions import ADMIN
from aicm.resolvers.validation import normalize_email


async def create_admin(email: str, password: str) -> tuple[models.User, str]:
    """Create the user, or promote an existing one, with the built-in admin role. Idempotent.

    Returns the user and what happened: "created", "promoted" or "unchanged". An existing user's password is
    left as it is.
    """
    email = normalize_email(email)
    async with in_transaction():
        user = await models.User.get_or_none(email=email)
        created = user is None
        if user is None:
            check_policy(password, email=email)
            user = await models.User.create(
                email=email, name=email.split("@")[0], password_hash=hash_password(password)
            )
        role = await models.Role.get(name=ADMIN, built_in=True)
        _, granted = await models.UserRole.get_or_create(user=user, role=role)
        if not granted:
            return user, "unchanged"
        await models.AuditLog.create(
            actor=None,
            action="user.create_admin",
            target_type="User",
            target_id=str(user.id),
            details={"created": created},
        )
    return user, "created" if created else "promoted"
