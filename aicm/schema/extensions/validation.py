"""GraphQL validation with an LRU cache, skipped when an earlier extension refused the document, and
optionally without graphql-core's "Did you mean ...?" hints (``graphql.suggestions``, off in production).

It replaces Strawberry's ``ValidationCache``, which validates (and overwrites the errors) even after another
extension has refused the operation. :class:`QuietExecutionContext` hides the same hints in execution errors
(variable values that do not fit their type).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from graphql import ASTValidationRule, DocumentNode, GraphQLError, GraphQLSchema, validate
from strawberry.extensions import SchemaExtension
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule

from aicm.schema.extensions._reject import rejected
from aicm.schema.lean import LeanExecutionContext

__all__ = ["CachedValidation", "QuietExecutionContext"]


@lru_cache(maxsize=1024)
def _validate(
    schema: GraphQLSchema,
    document: DocumentNode,
    rules: tuple[type[ASTValidationRule], ...],
    hide_suggestions: bool,
) -> list[GraphQLError]:
    # The same extra rules as Strawberry's own validation.
    rules = (*rules, MaybeNullValidationRule, OneOfInputValidationRule)
    return validate(schema, document, rules, hide_suggestions=hide_suggestions)


class CachedValidation(SchemaExtension):
    """Pass it as a factory, after the extensions that may refuse a document:
    ``lambda: CachedValidation(hide_suggestions=settings.is_production)``."""

    def __init__(self, *, hide_suggestions: bool = False) -> None:
        super().__init__()
        self.hide_suggestions = hide_suggestions

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if not rejected(context) and context.graphql_document is not None:
            rules = tuple(context.validation_rules)
            document = context.graphql_document
            context.pre_execution_errors = list(
                _validate(context.schema._schema, document, rules, self.hide_suggestions)
            )
        yield


class QuietExecutionContext(LeanExecutionContext):
    """The (lean, shared-rendering) execution context, building every execution with ``hide_suggestions``."""

    @classmethod
    def build(cls, *args: Any, **kwargs: Any) -> Any:
        kwargs["hide_suggestions"] = True
        return super().build(*args, **kwargs)
