"""GraphQL types and root fields for identities at OAuth2/OpenID Connect providers."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import strawberry

from aicm.auth.oauth import flow_store, login_url
from aicm.resolvers import oauth as resolvers
from aicm.schema.context import Info
from aicm.schema.permissions import IsAuthenticated

if TYPE_CHECKING:
    from aicm import models


@strawberry.type(description="An identity at an OAuth2/OpenID Connect provider that signs you in.")
class LinkedAccount:
    provider: str
    email: str | None
    created_at: datetime

    @classmethod
    def from_model(cls, account: models.OAuthAccount) -> LinkedAccount:
        return cls(provider=account.provider, email=account.email, created_at=account.created_at)


@strawberry.type
class OAuthQueries:
    @strawberry.field(permission_classes=[IsAuthenticated], description="Your linked sign-in providers.")
    async def linked_accounts(self, info: Info) -> list[LinkedAccount]:
        accounts = await resolvers.list_linked_accounts(info.context.viewer)
        return [LinkedAccount.from_model(a) for a in accounts]


@strawberry.type
class OAuthMutations:
    @strawberry.mutation(
        name="startOAuthLink",
        permission_classes=[IsAuthenticated],
        description=(
            "A URL to open in the browser (valid once, for 10 minutes): signing in there with the provider "
            "links that identity to you instead of signing in."
        ),
    )
    async def start_oauth_link(self, info: Info, provider: str) -> str:
        request, settings = info.context.request, info.context.runtime.settings
        ticket = await resolvers.start_link(
            info.context.viewer,
            provider=provider,
            configured=frozenset(settings.oauth),
            store=flow_store(request.app.state),
        )
        base = login_url(settings.oauth[provider], str(request.url_for("oauth_login", provider=provider)))
        return f"{base}?{urlencode({'link': ticket})}"

    @strawberry.mutation(
        name="unlinkOAuthAccount",
        permission_classes=[IsAuthenticated],
        description="Refused (CONFLICT) when it is your last way to sign in.",
    )
    async def unlink_oauth_account(self, info: Info, provider: str) -> bool:
        return await resolvers.unlink_account(info.context.viewer, provider=provider)
