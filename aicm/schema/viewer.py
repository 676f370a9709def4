"""The signed-in caller (``Query.viewer``) and what only they may set: their own agent credential."""

from __future__ import annotations

from typing import TYPE_CHECKING

import strawberry

from aicm.resolvers import agent_credentials as agent_credentials_resolvers
from aicm.schema.context import Info
from aicm.schema.permissions import IsAuthenticated
from aicm.schema.users import User

if TYPE_CHECKING:
    from aicm import models


@strawberry.type(description="The signed-in user and what only they may see of their account.")
class Viewer:
    user: User
    has_agent_credential: bool = strawberry.field(
        description="Whether your own agent API key is set (write-only); your tasks run with it."
    )

    @classmethod
    def from_model(cls, user: models.User) -> Viewer:
        return cls(user=User.from_model(user), has_agent_credential=bool(user.agent_credential_secret))


@strawberry.input(
    description="An API key for the agent's model provider; a null or absent apiKey removes the credential."
)
class AgentCredentialInput:
    provider: str = strawberry.field(default="anthropic", description='Only "anthropic" for now.')
    api_key: str | None = None


@strawberry.type
class ViewerQueries:
    @strawberry.field(description="The signed-in caller, or null when anonymous.")
    def viewer(self, info: Info) -> Viewer | None:
        user = info.context.viewer.user
        return Viewer.from_model(user) if user else None


@strawberry.type
class ViewerMutations:
    @strawberry.mutation(
        permission_classes=[IsAuthenticated],
        description="Set (or, without apiKey, remove) your own agent credential: your tasks' API key.",
    )
    async def set_agent_credential(self, info: Info, input: AgentCredentialInput) -> Viewer:
        user = await agent_credentials_resolvers.set_agent_credential(
            info.context.viewer,
            info.context.runtime.workspaces,
            provider=input.provider,
            api_key=input.api_key,
        )
        return Viewer.from_model(user)
