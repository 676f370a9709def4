"""Schema assembly: each domain contributes its root fields; extensions are listed once, here."""

from __future__ import annotations

from strawberry.extensions import ParserCache, ValidationCache
from strawberry.tools import merge_types

from aicm.config import Settings
from aicm.schema.audit import AuditQueries
from aicm.schema.auth import AuthMutations, AuthQueries
from aicm.schema.errors import Schema
from aicm.schema.extensions.metrics import GraphQLMetrics
from aicm.schema.oauth import OAuthMutations, OAuthQueries
from aicm.schema.projects import ProjectMutations, ProjectQueries
from aicm.schema.roles import RoleMutations, RoleQueries
from aicm.schema.subscriptions import Subscription
from aicm.schema.tasks import TaskMutations, TaskQueries
from aicm.schema.users import UserMutations, UserQueries

Query = merge_types(
    "Query", (UserQueries, AuthQueries, ProjectQueries, TaskQueries, RoleQueries, AuditQueries, OAuthQueries)
)
Mutation = merge_types(
    "Mutation", (AuthMutations, UserMutations, ProjectMutations, TaskMutations, RoleMutations, OAuthMutations)
)


def build_schema(settings: Settings) -> Schema:
    extensions = [
        GraphQLMetrics,  # first, so it sees every operation whole, rejections by later extensions included
        # Factories, not instances: Strawberry builds them per execution; the caches live at module level.
        lambda: ParserCache(maxsize=1024),
        lambda: ValidationCache(maxsize=1024),
    ]
    return Schema(query=Query, mutation=Mutation, subscription=Subscription, extensions=extensions)
