"""Schema assembly: each domain contributes its root fields; extensions are listed once, here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from strawberry.extensions import DisableIntrospection
from strawberry.tools import merge_types

from aicm.config import Settings
from aicm.schema.audit import AuditQueries
from aicm.schema.auth import AuthMutations, AuthQueries
from aicm.schema.errors import Schema
from aicm.schema.extensions.auth_rate_limit import AuthRateLimit
from aicm.schema.extensions.limits import Limits, QueryLimits
from aicm.schema.extensions.metrics import GraphQLMetrics
from aicm.schema.extensions.nul import RejectNul
from aicm.schema.extensions.operation_name import RequireOperationName
from aicm.schema.extensions.persisted_queries import Safelist, load_manifest
from aicm.schema.extensions.validation import CachedValidation, QuietExecutionContext
from aicm.schema.lean import LeanExecutionContext, lean_resolvers
from aicm.schema.oauth import OAuthMutations, OAuthQueries
from aicm.schema.projects import ProjectMutations, ProjectQueries
from aicm.schema.roles import RoleMutations, RoleQueries
from aicm.schema.subscriptions import Subscription
from aicm.schema.tasks import TaskMutations, TaskQueries
from aicm.schema.users import UserMutations, UserQueries
from aicm.schema.viewer import ViewerMutations, ViewerQueries

Query = merge_types(
    "Query",
    (
        UserQueries,
        ViewerQueries,
        AuthQueries,
        ProjectQueries,
        TaskQueries,
        RoleQueries,
        AuditQueries,
        OAuthQueries,
    ),
)
Mutation = merge_types(
    "Mutation",
    (
        AuthMutations,
        UserMutations,
        ViewerMutations,
        ProjectMutations,
        TaskMutations,
        RoleMutations,
        OAuthMutations,
    ),
)


def build_schema(settings: Settings, transport_extensions: Sequence[Callable[[], Any]] = ()) -> Schema:
    """``transport_extensions`` (the HTTP layer's, e.g. the refresh cookie) run after every other one."""
    graphql = settings.graphql
    limits = Limits.from_config(graphql)
    hide_suggestions = not settings.suggestions_enabled
    # Factories, not instances: Strawberry builds them per execution; the caches live at module level.
    # Order matters: every check refusing a document runs before validation, and validation before execution.
    extensions: list[Any] = [
        GraphQLMetrics,  # first, so it sees every operation whole, rejections by later extensions included
    ]
    if not settings.introspection_enabled:
        extensions.append(DisableIntrospection)
    if graphql.persisted_queries == "safelist":
        manifest = load_manifest(graphql.persisted_queries_manifest)
        extensions.append(lambda: Safelist(manifest))
    extensions += [
        # Parses (cached) within max_tokens; then depth, aliases and cost with fragments expanded.
        lambda: QueryLimits(limits, cache_size=1024),
        RejectNul,
        RequireOperationName,
        lambda: CachedValidation(hide_suggestions=hide_suggestions),
        AuthRateLimit,  # the sign-in buckets, after validation, before any resolver
    ]
    extensions += transport_extensions
    schema = Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=extensions,
        execution_context_class=QuietExecutionContext if hide_suggestions else LeanExecutionContext,
    )
    lean_resolvers(schema)  # plain resolvers for the fields that need none of Strawberry's wrapping
    return schema
