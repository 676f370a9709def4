"""Signing in with an OAuth2/OpenID Connect identity, and linking identities to users.

A sign-in finds the user by the linked identity (provider, subject), else by the provider-verified email
(and links the identity), else creates the user when registration is open. Linking is explicit: a signed-in
user asks for a one-time link request (``start_link``), and the callback that comes back with it links
instead of signing in. A user always keeps one way to sign in: a password or a linked identity.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime
from typing import Any

from aicm import models
from aicm.auth.oauth import FlowStore, Identity
from aicm.auth.permissions import MEMBER
from aicm.auth.viewer import Viewer
from aicm.errors import AppError, BadUserInput, Conflict, Forbidden, NotFound, Unauthenticated
from aicm.metrics import AUTH_ATTEMPTS
from aicm.resolvers.auth import AuthResult, AuthServices, _start_session, email_hash
from aicm.resolvers.unit_of_work import unit_of_work

security = logging.getLogger("aicm.security")

LINK = "link"  # FlowStore kind of link requests


def _method(provider: str) -> str:
    return f"oauth:{provider}"


def record_failure(viewer: Viewer, provider: str, reason: str, *, email: str | None = None) -> None:
    """Count and log a failed OAuth sign-in (``auth_failed``); never logs codes or tokens."""
    AUTH_ATTEMPTS.labels(_method(provider), "failure").inc()
    fields: dict[str, Any] = {"ip": viewer.ip, "method": _method(provider), "reason": reason}
    if email:
        fields["email_hash"] = email_hash(email)
    security.warning("OAuth sign-in failed", extra={"event": "auth_failed", **fields})


def _refuse(viewer: Viewer, identity: Identity, error: AppError) -> AppError:
    record_failure(
        viewer, identity.provider, str(error.extensions.get("reason") or error.code), email=identity.email
    )
    return error


def _profile_name(identity: Identity) -> str:
    name = identity.name.replace("\x00", "").strip()[:200]
    return name or (identity.email or "").split("@")[0]


async def sign_in(services: AuthServices, viewer: Viewer, identity: Identity) -> AuthResult:
    """The same token pair as a password login, for the user behind ``identity``."""
    account = await models.OAuthAccount.get_or_none(
        provider=identity.provider, subject=identity.subject
    ).select_related("user")
    user = account.user if account else await _user_for_new_identity(services, viewer, identity)
    if not user.is_active:
        raise _refuse(viewer, identity, Unauthenticated("Account is not active", reason="ACCOUNT_INACTIVE"))
    if account is not None and identity.email and account.email != identity.email:
        account.email = identity.email  # keep the address shown in linkedAccounts current
        await account.save(update_fields=["email"])
    user.last_login_at = datetime.now(UTC)
    await user.save(update_fields=["last_login_at"])
    AUTH_ATTEMPTS.labels(_method(identity.provider), "success").inc()
    security.info(
        "signed in",
        extra={
            "event": "auth_succeeded",
            "user_id": user.id,
            "ip": viewer.ip,
            "method": _method(identity.provider),
        },
    )
    return await _start_session(services, viewer, user)


async def _user_for_new_identity(services: AuthServices, viewer: Viewer, identity: Identity) -> models.User:
    """A first-seen identity: link it to the user with its verified email, or create that user."""
    if identity.email is None:
        raise _refuse(
            viewer,
            identity,
            Unauthenticated("The provider did not confirm an email address", reason="EMAIL_NOT_VERIFIED"),
        )
    user = await models.User.get_or_none(email=identity.email)
    if user is not None:
        if not user.is_active:
            raise _refuse(
                viewer, identity, Unauthenticated("Account is not active", reason="ACCOUNT_INACTIVE")
            )
        await _link(
            viewer,
            viewer,
            user,
            identity,
            by="email",
            taken=f"This account is linked to another {identity.provider} identity",
        )
        return user
    if not services.allow_registration:
        raise _refuse(viewer, identity, Forbidden("Registration is closed", reason="REGISTRATION_CLOSED"))
    member = await models.Role.get(name=MEMBER, built_in=True)
    async with unit_of_work(viewer) as uow:
        user = await models.User.create(
            email=identity.email, name=_profile_name(identity), password_hash=None, using_db=uow.connection
        )
        await models.UserRole.create(user=user, role=member, using_db=uow.connection)
        await models.OAuthAccount.create(
            provider=identity.provider,
            subject=identity.subject,
            user=user,
            email=identity.email,
            using_db=uow.connection,
        )
        await uow.audit(
            "user.create", user, email=identity.email, roles=[MEMBER], via=_method(identity.provider)
        )
    return user


async def start_link(
    viewer: Viewer, *, provider: str, configured: set[str] | frozenset[str], store: FlowStore
) -> str:
    """A one-time ticket that makes the next sign-in with ``provider`` link to the viewer instead."""
    user = viewer.require_user()
    if provider not in configured:
        raise BadUserInput(f"Unknown OAuth provider {provider!r}", field="provider")
    ticket = secrets.token_urlsafe(32)
    await store.put(LINK, ticket, {"provider": provider, "user_id": user.id, "session_id": viewer.session_id})
    return ticket


async def take_link(store: FlowStore, ticket: str, provider: str) -> dict[str, Any]:
    """The link request behind ``ticket``, used up; BAD_USER_INPUT when unknown, expired or mismatched."""
    data = await store.take(LINK, ticket)
    if data is None or data.get("provider") != provider:
        raise BadUserInput("The link request is invalid or has expired", field="link", reason="INVALID_LINK")
    return data


async def link_account(
    services: AuthServices, viewer: Viewer, identity: Identity, *, user_id: int, session_id: str | None
) -> tuple[models.User, models.OAuthAccount]:
    """Link ``identity`` to the user who asked for it; CONFLICT when it belongs to someone else."""
    user = await models.User.get_or_none(id=user_id)
    if user is None or not user.is_active:
        raise _refuse(viewer, identity, Unauthenticated("Account is not active", reason="ACCOUNT_INACTIVE"))
    if session_id is not None and not await services.sessions.is_active(session_id):
        raise _refuse(viewer, identity, Unauthenticated("The session has ended", reason="SESSION_REVOKED"))
    actor = Viewer(user=user, session_id=session_id, ip=viewer.ip, user_agent=viewer.user_agent)
    existing = await models.OAuthAccount.get_or_none(provider=identity.provider, subject=identity.subject)
    if existing is not None:
        if existing.user_id != user.id:
            raise _refuse(
                viewer, identity, Conflict(f"This {identity.provider} account is linked to another user")
            )
        return user, existing
    account = await _link(
        viewer,
        actor,
        user,
        identity,
        by="request",
        taken=f"Another {identity.provider} account is linked already; unlink it first",
    )
    security.info(
        "OAuth identity linked",
        extra={
            "event": "oauth_linked",
            "user_id": user.id,
            "ip": viewer.ip,
            "method": _method(identity.provider),
        },
    )
    return user, account


async def list_linked_accounts(viewer: Viewer) -> list[models.OAuthAccount]:
    user = viewer.require_user()
    return await models.OAuthAccount.filter(user_id=user.id).order_by("provider", "id")


async def unlink_account(viewer: Viewer, *, provider: str) -> bool:
    """Remove the viewer's ``provider`` identity, unless it is their last way to sign in (CONFLICT)."""
    user = viewer.require_user()
    async with unit_of_work(viewer) as uow:
        # Lock the user row so two unlinks at once cannot both see the other identity still there.
        locked = await models.User.select_for_update().using_db(uow.connection).get(id=user.id)
        accounts = await models.OAuthAccount.filter(user_id=user.id).using_db(uow.connection)
        account = next((a for a in accounts if a.provider == provider), None)
        if account is None:
            raise NotFound(f"No linked {provider} account")
        if not locked.password_hash and len(accounts) == 1:
            raise Conflict("This is your last way to sign in; link another provider first", field="provider")
        await account.delete(using_db=uow.connection)
        await uow.audit("oauth.unlink", account, provider=provider, user_id=user.id)
    return True


async def _link(
    viewer: Viewer, actor: Viewer, user: models.User, identity: Identity, *, by: str, taken: str
) -> models.OAuthAccount:
    """Link the identity to the user (one identity per provider per user), with its audit row."""
    if await models.OAuthAccount.filter(user_id=user.id, provider=identity.provider).exists():
        raise _refuse(viewer, identity, Conflict(taken))
    async with unit_of_work(actor) as uow:
        account = await models.OAuthAccount.create(
            provider=identity.provider,
            subject=identity.subject,
            user=user,
            email=identity.email,
            using_db=uow.connection,
        )
        await uow.audit("oauth.link", account, provider=identity.provider, user_id=user.id, by=by)
    return account
