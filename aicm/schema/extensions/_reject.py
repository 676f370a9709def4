"""Refusing an operation before any resolver runs, with the error's code (see ``aicm.schema.errors``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from graphql import GraphQLError

if TYPE_CHECKING:
    from graphql.language import Node
    from strawberry.types import ExecutionContext

    from aicm.errors import AppError


def as_graphql_error(error: AppError, nodes: Sequence[Node] | Node | None = None) -> GraphQLError:
    return GraphQLError(error.message, nodes, original_error=error)


def reject(
    execution_context: ExecutionContext, error: AppError, nodes: Sequence[Node] | Node | None = None
) -> None:
    """Fail the validation step: Strawberry answers with this error and never executes the operation."""
    execution_context.pre_execution_errors = [as_graphql_error(error, nodes)]


def rejected(execution_context: ExecutionContext) -> bool:
    """True when an earlier step (or extension) already refused the operation."""
    return bool(execution_context.pre_execution_errors)
