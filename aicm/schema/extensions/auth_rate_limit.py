"""The stricter sign-in buckets (``security.rate_limit.auth_*``) for ``login``, ``register``, ``refreshToken``
and ``startOAuthLink``: one per client IP and, where the input names one, one per email.

Every such root field of the operation draws a token (aliases cannot multiply attempts for free), after
validation and before any resolver runs. Over the limit the operation answers one ``RATE_LIMITED`` error
(``extensions.retryAfter``); over HTTP also status 429 with ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationType,
    SelectionSetNode,
    get_operation_ast,
    value_from_ast_untyped,
)
from graphql import ExecutionResult as GraphQLExecutionResult
from starlette.responses import Response
from strawberry.extensions import SchemaExtension

from aicm.errors import RateLimited
from aicm.schema.context import client_ip
from aicm.schema.extensions._reject import as_graphql_error, rejected

if TYPE_CHECKING:
    from aicm.ratelimit import RateLimits

__all__ = ["AUTH_FIELDS", "AuthRateLimit", "auth_fields"]

AUTH_FIELDS = frozenset({"login", "register", "refreshToken", "startOAuthLink"})


def _root_fields(
    selection_set: SelectionSetNode, fragments: dict[str, FragmentDefinitionNode], seen: set[str]
) -> Iterator[FieldNode]:
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            yield selection
        elif isinstance(selection, InlineFragmentNode):
            yield from _root_fields(selection.selection_set, fragments, seen)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            if name in fragments and name not in seen:
                seen.add(name)
                yield from _root_fields(fragments[name].selection_set, fragments, seen)


def auth_fields(
    document: DocumentNode, operation_name: str | None, variables: dict[str, Any] | None
) -> list[tuple[str, str | None]]:
    """``(field, email or None)`` for each sign-in root field of the mutation that runs."""
    operation = get_operation_ast(document, operation_name)
    if operation is None or operation.operation is not OperationType.MUTATION:
        return []
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    found = []
    for field in _root_fields(operation.selection_set, fragments, set()):
        if field.name.value in AUTH_FIELDS:
            found.append((field.name.value, _email(field, variables)))
    return found


def _email(field: FieldNode, variables: dict[str, Any] | None) -> str | None:
    for argument in field.arguments or ():
        if argument.name.value == "input":
            value = value_from_ast_untyped(argument.value, variables)
            email = value.get("email") if isinstance(value, dict) else None
            return email if isinstance(email, str) else None
    return None


class AuthRateLimit(SchemaExtension):
    async def on_execute(self) -> AsyncIterator[None]:
        context = self.execution_context
        limits: RateLimits | None = getattr(getattr(context.context, "runtime", None), "rate_limits", None)
        if limits is not None and limits.enabled and not rejected(context) and context.graphql_document:
            hits = auth_fields(context.graphql_document, context.operation_name, context.variables)
            if hits:
                await self._draw(limits, hits)
        yield

    async def _draw(self, limits: RateLimits, hits: list[tuple[str, str | None]]) -> None:
        context = self.execution_context
        request = context.context.request
        ip = client_ip(request)
        for field, email in hits:
            decision = await limits.hit_auth(ip=ip, email=email)
            if decision.allowed:
                continue
            limits.record_exceeded("auth", decision, operation=field)
            retry_after = decision.retry_after_header
            error = RateLimited("Too many sign-in attempts; retry later", retryAfter=int(retry_after))
            context.result = GraphQLExecutionResult(data=None, errors=[as_graphql_error(error)])
            response = context.context.response
            if isinstance(response, Response):
                response.status_code = 429
                response.headers["Retry-After"] = retry_after
            return
