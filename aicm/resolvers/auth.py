"""Signing in and out: passwords, sessions, refresh-token rotation, lockout, and the security log events."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aicm import models
from aicm.auth.lockout import LoginThrottle
from aicm.auth.passwords import check_policy, hash_password, needs_rehash, verify_password
from aicm.auth.sessions import RefreshTokenReused, SessionRecord, SessionStore
from aicm.auth.tokens import TokenService
from aicm.auth.viewer import Viewer
from aicm.errors import BadUserInput, NotFound, Unauthenticated
from aicm.metrics import AUTH_ATTEMPTS
from aicm.resolvers import users
from aicm.resolvers.unit_of_work import unit_of_work
from aicm.subscriptions import channels
from aicm.subscriptions.publisher import publish

if TYPE_CHECKING:
    from aicm.resolvers.open_checks import OpenChecks

security = logging.getLogger("aicm.security")

INVALID_CREDENTIALS = "Invalid email or password"


@dataclass
class AuthServices:
    tokens: TokenService
    sessions: SessionStore
    throttle: LoginThrottle
    allow_registration: bool
    opens: OpenChecks | None = None  # what opening connections and streams checked, kept briefly


@dataclass
class AuthResult:
    user: models.User
    access_token: str
    refresh_token: str
    expires_in: int


def email_hash(email: str) -> str:
    """What logs carry instead of an email address."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:16]


async def _start_session(services: AuthServices, viewer: Viewer, user: models.User) -> AuthResult:
    session, refresh = await services.sessions.create(user.id, viewer.ip, viewer.user_agent)
    access = services.tokens.issue_access(user.id, session.id)
    return AuthResult(user, access, refresh, services.tokens.access_lifetime)


async def register(
    services: AuthServices, viewer: Viewer, *, email: str, password: str, name: str
) -> AuthResult:
    user = await users.register(
        viewer, email=email, password=password, name=name, allowed=services.allow_registration
    )
    AUTH_ATTEMPTS.labels("register", "success").inc()
    return await _start_session(services, viewer, user)


async def login(services: AuthServices, viewer: Viewer, *, email: str, password: str) -> AuthResult:
    """Unknown email, wrong password and a deactivated account fail alike, after one argon2 verification."""
    key = email.strip().lower()
    fields = {"ip": viewer.ip, "email_hash": email_hash(key), "method": "password"}
    if await services.throttle.is_locked(key):
        AUTH_ATTEMPTS.labels("password", "locked").inc()
        security.warning("login refused: account locked", extra={"event": "account_locked", **fields})
        raise Unauthenticated("Too many failed sign-ins; try again later", reason="ACCOUNT_LOCKED")
    # An address no user can have (too long for the column, or with NUL) is simply unknown.
    user = await models.User.get_or_none(email=key) if len(key) <= 254 and "\x00" not in key else None
    verified = verify_password(user.password_hash if user else None, password)
    if user is None or not verified or not user.is_active:
        AUTH_ATTEMPTS.labels("password", "failure").inc()
        security.warning("sign-in failed", extra={"event": "auth_failed", **fields})
        if await services.throttle.record_failure(key):
            security.warning("account locked", extra={"event": "account_locked", **fields})
        raise Unauthenticated(INVALID_CREDENTIALS, reason="INVALID_CREDENTIALS")
    await services.throttle.reset(key)
    user.last_login_at = datetime.now(UTC)
    update = ["last_login_at"]
    if user.password_hash and needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
        update.append("password_hash")
    await user.save(update_fields=update)
    AUTH_ATTEMPTS.labels("password", "success").inc()
    security.info("signed in", extra={"event": "auth_succeeded", "user_id": user.id, **fields})
    return await _start_session(services, viewer, user)


async def refresh(services: AuthServices, viewer: Viewer, refresh_token: str) -> AuthResult:
    tokens = services.tokens
    try:
        rotation = await services.sessions.rotate(
            refresh_token,
            ip=viewer.ip,
            user_agent=viewer.user_agent,
            issue_access=lambda s: tokens.issue_access(s.user_id, s.id),
        )
    except RefreshTokenReused as exc:
        AUTH_ATTEMPTS.labels("refresh", "reused").inc()
        security.warning(
            "refresh token reused: session ended",
            extra={"event": "token_reuse_detected", "user_id": exc.user_id, "ip": viewer.ip},
        )
        await publish(channels.session(exc.session_id), {"type": "SESSION_REVOKED"})
        raise
    except Unauthenticated:
        AUTH_ATTEMPTS.labels("refresh", "failure").inc()
        raise
    user = await models.User.get_or_none(id=rotation.session.user_id)
    if user is None or not user.is_active:
        await services.sessions.revoke(rotation.session.id)
        raise Unauthenticated("Account is not active", reason="ACCOUNT_INACTIVE")
    AUTH_ATTEMPTS.labels("refresh", "success").inc()
    access = rotation.access_token or tokens.issue_access(user.id, rotation.session.id)
    return AuthResult(user, access, rotation.refresh_token, tokens.access_lifetime)


async def _revoked(session_id: str) -> None:
    """Tell live subscriptions of that session to end."""
    await publish(channels.session(session_id), {"type": "SESSION_REVOKED"})


async def logout(services: AuthServices, viewer: Viewer) -> bool:
    viewer.require_user()
    if viewer.session_id is None:
        raise Unauthenticated()
    ended = await services.sessions.revoke(viewer.session_id)
    await _revoked(viewer.session_id)
    return ended


async def list_sessions(services: AuthServices, viewer: Viewer) -> list[SessionRecord]:
    return await services.sessions.list_for_user(viewer.require_user().id)


async def revoke_session(services: AuthServices, viewer: Viewer, session_id: str) -> bool:
    user = viewer.require_user()
    record = await services.sessions.get(session_id)
    if record is None or record.user_id != user.id:
        raise NotFound("Session not found")
    ended = await services.sessions.revoke(session_id)
    await _revoked(session_id)
    return ended


async def end_sessions(services: AuthServices, user_id: int, *, except_session_id: str | None = None) -> int:
    ended = await services.sessions.revoke_all(user_id, except_session_id=except_session_id)
    await publish(
        channels.user(user_id),
        {"type": "SESSIONS_REVOKED", "user_id": user_id, "except_session_id": except_session_id},
    )
    return ended


async def revoke_all_sessions(services: AuthServices, viewer: Viewer) -> int:
    """Ends the caller's other sessions; returns how many (the current one is kept)."""
    user = viewer.require_user()
    return await end_sessions(services, user.id, except_session_id=viewer.session_id)


async def change_password(services: AuthServices, viewer: Viewer, *, current: str, new: str) -> bool:
    """Needs the current password; ends every other session of the user."""
    user = viewer.require_user()
    if not verify_password(user.password_hash, current):
        raise BadUserInput("The current password is not correct", field="currentPassword")
    check_policy(new, email=user.email, field="newPassword")
    async with unit_of_work(viewer) as uow:
        user.password_hash = hash_password(new)
        await user.save(using_db=uow.connection, update_fields=["password_hash"])
        await uow.audit("user.change_password", user)
    await end_sessions(services, user.id, except_session_id=viewer.session_id)
    return True


async def session_check(services: AuthServices, session_id: str, user_id: int) -> None:
    """Refuse an access token whose session has ended (revoked, logged out, or ended by token reuse), or
    whose session belongs to another user than the token names: a token's ``sub`` and ``sid`` must agree."""
    record = await services.sessions.get(session_id)
    if record is not None:
        if record.user_id == user_id:
            return
        security.warning(
            "access token names another user than its session",
            extra={"event": "token_session_mismatch", "user_id": user_id},
        )
        raise Unauthenticated("Invalid access token", reason="TOKEN_INVALID")
    if await services.sessions.revocation_reason(session_id) == "reused":
        raise Unauthenticated("The session was ended: its refresh token was reused", reason="TOKEN_REUSED")
    raise Unauthenticated("The session has ended", reason="SESSION_REVOKED")
