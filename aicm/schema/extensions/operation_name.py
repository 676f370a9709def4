"""A document with several operations must say which one to run (``operationName``), on every transport.

The GraphQL spec ("GetOperation") requires an error when the name is missing and the document holds more
than one operation; Strawberry runs the first. Refused like a validation error: ``BAD_USER_INPUT``, over
HTTP (200 with ``errors``) and WebSocket (an ``error`` message) alike.
"""

from __future__ import annotations

from collections.abc import Iterator

from graphql import OperationDefinitionNode
from strawberry.extensions import SchemaExtension

from aicm.errors import BadUserInput
from aicm.schema.extensions._reject import reject, rejected

__all__ = ["RequireOperationName"]

MESSAGE = "Must provide operationName if the document contains several operations"


class RequireOperationName(SchemaExtension):
    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        # Strawberry keeps the name the request gave apart from the one it falls back to (the first's).
        if not rejected(context) and document is not None and context._provided_operation_name is None:
            operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
            if len(operations) > 1:
                reject(context, BadUserInput(MESSAGE, field="operationName"), operations)
        yield
