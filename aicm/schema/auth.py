"""GraphQL types and root fields for signing in, sessions and passwords."""

from __future__ import annotations

from datetime import UTC, datetime

import strawberry

from aicm.auth.sessions import SessionRecord
from aicm.resolvers import auth as auth_resolvers
from aicm.resolvers.auth import AuthResult, AuthServices
from aicm.schema.context import Info
from aicm.schema.permissions import IsAuthenticated
from aicm.schema.relay import decode_opaque, encode_id
from aicm.schema.users import User


@strawberry.type
class AuthPayload:
    access_token: str
    refresh_token: str
    expires_in: int = strawberry.field(description="Seconds until the access token expires.")
    user: User

    @classmethod
    def from_result(cls, result: AuthResult) -> AuthPayload:
        return cls(
            access_token=result.access_token,
            refresh_token=result.refresh_token,
            expires_in=result.expires_in,
            user=User.from_model(result.user),
        )


@strawberry.type
class Session:
    id: strawberry.ID
    created_at: datetime
    last_seen_at: datetime
    ip: str | None
    user_agent: str | None
    current: bool

    @classmethod
    def from_record(cls, record: SessionRecord, current_id: str | None) -> Session:
        return cls(
            id=encode_id("Session", record.id),
            created_at=datetime.fromtimestamp(record.created_at, UTC),
            last_seen_at=datetime.fromtimestamp(record.last_seen_at, UTC),
            ip=record.ip,
            user_agent=record.user_agent,
            current=record.id == current_id,
        )


@strawberry.input
class RegisterInput:
    email: str
    password: str
    name: str = ""


@strawberry.input
class LoginInput:
    email: str
    password: str


@strawberry.input
class ChangePasswordInput:
    current_password: str
    new_password: str


def _services(info: Info) -> AuthServices:
    return info.context.runtime.auth


def _session_id(value: strawberry.ID) -> str:
    return decode_opaque(value, "Session")


@strawberry.type
class AuthQueries:
    @strawberry.field(
        permission_classes=[IsAuthenticated], description="Your sign-in sessions, newest first."
    )
    async def my_sessions(self, info: Info) -> list[Session]:
        viewer = info.context.viewer
        records = await auth_resolvers.list_sessions(_services(info), viewer)
        return [Session.from_record(r, viewer.session_id) for r in records]


@strawberry.type
class AuthMutations:
    @strawberry.mutation
    async def register(self, info: Info, input: RegisterInput) -> AuthPayload:
        result = await auth_resolvers.register(
            _services(info), info.context.viewer, email=input.email, password=input.password, name=input.name
        )
        return AuthPayload.from_result(result)

    @strawberry.mutation
    async def login(self, info: Info, input: LoginInput) -> AuthPayload:
        result = await auth_resolvers.login(
            _services(info), info.context.viewer, email=input.email, password=input.password
        )
        return AuthPayload.from_result(result)

    @strawberry.mutation
    async def refresh_token(self, info: Info, refresh_token: str) -> AuthPayload:
        return AuthPayload.from_result(
            await auth_resolvers.refresh(_services(info), info.context.viewer, refresh_token)
        )

    @strawberry.mutation(permission_classes=[IsAuthenticated], description="Ends the caller's session.")
    async def logout(self, info: Info) -> bool:
        return await auth_resolvers.logout(_services(info), info.context.viewer)

    @strawberry.mutation(permission_classes=[IsAuthenticated], description="Ends your other sessions too.")
    async def change_password(self, info: Info, input: ChangePasswordInput) -> bool:
        return await auth_resolvers.change_password(
            _services(info), info.context.viewer, current=input.current_password, new=input.new_password
        )

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def revoke_session(self, info: Info, id: strawberry.ID) -> bool:
        return await auth_resolvers.revoke_session(_services(info), info.context.viewer, _session_id(id))

    @strawberry.mutation(
        permission_classes=[IsAuthenticated], description="Ends your other sessions; returns how many."
    )
    async def revoke_all_sessions(self, info: Info) -> int:
        return await auth_resolvers.revoke_all_sessions(_services(info), info.context.viewer)
