"""The one NUL rule (CONTRACT §7): no string argument, input field or variable may hold a NUL character,
nor an unpaired surrogate (``"\\ud800"`` in JSON: not text, and no database or hash can encode it).

Checked before validation over the document's string literals (arguments, input fields, variable defaults)
and over every variable value and key; the error is ``BAD_USER_INPUT`` naming the innermost argument, input
field or variable that holds it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from graphql import (
    ArgumentNode,
    DocumentNode,
    ListValueNode,
    ObjectValueNode,
    StringValueNode,
    ValueNode,
    VariableDefinitionNode,
    Visitor,
    visit,
)
from strawberry.extensions import SchemaExtension

from aicm.errors import BadUserInput
from aicm.schema.extensions._reject import reject, rejected

__all__ = ["RejectNul", "nul_in_document", "nul_in_variables"]

NUL = "\x00"
_BAD = re.compile("[\x00\ud800-\udfff]")


def _bad(text: str) -> bool:
    return _BAD.search(text) is not None


def _nul_in_value(value: ValueNode | None, name: str) -> str | None:
    stack: list[tuple[ValueNode | None, str]] = [(value, name)]
    while stack:
        node, field = stack.pop()
        if isinstance(node, StringValueNode):
            if _bad(node.value):
                return field
        elif isinstance(node, ListValueNode):
            stack.extend((item, field) for item in node.values)
        elif isinstance(node, ObjectValueNode):
            stack.extend((item.value, item.name.value) for item in node.fields)
    return None


class _Finder(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.field: str | None = None

    def enter_argument(self, node: ArgumentNode, *_: Any) -> Any:
        self.field = _nul_in_value(node.value, node.name.value)
        return self.BREAK if self.field else self.SKIP

    def enter_variable_definition(self, node: VariableDefinitionNode, *_: Any) -> Any:
        self.field = _nul_in_value(node.default_value, node.variable.name.value)
        return self.BREAK if self.field else self.SKIP


def nul_in_document(document: DocumentNode) -> str | None:
    """The argument or input field whose literal holds a NUL, else None."""
    finder = _Finder()
    visit(document, finder)
    return finder.field


def nul_in_variables(variables: dict[str, Any] | None) -> str | None:
    """The innermost key (or the variable) whose value holds a NUL, else None. Iterative: any depth."""
    stack: list[tuple[Any, str]] = [(value, name) for name, value in (variables or {}).items()]
    while stack:
        value, field = stack.pop()
        if isinstance(value, str):
            if _bad(value):
                return field
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and _bad(key):
                    return field
                stack.append((item, key if isinstance(key, str) else field))
        elif isinstance(value, list):
            stack.extend((item, field) for item in value)
    return None


class RejectNul(SchemaExtension):
    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if not rejected(context) and context.graphql_document is not None:
            # Only an escape (\u0000) puts a NUL in a literal: the lexer refuses a raw one.
            in_document = "\\" in (context.query or "") or context.query is None
            field = (nul_in_document(context.graphql_document) if in_document else None) or nul_in_variables(
                context.variables
            )
            if field is not None:
                message = f"'{field}' must not contain NUL characters or unpaired surrogates"
                reject(context, BadUserInput(message, field=field))
        yield
