"""Direct resolvers for the fields that need none of Strawberry's per-call machinery.

Strawberry resolves every field that has a resolver through the same wrapper: an ``Info`` object, argument
conversion (``get_arguments``), the chain of field extensions (``reduce``/``partial``), and for an ``async``
resolver one more coroutine around the resolver's own. That is ~10 µs a field on a shared core, paid again for
every row of a list: ``projects(first: 20) { owner members { user role } }`` calls 160 of them.

A field without arguments, field extensions (permission classes are one) or exception handlers needs only its
resolver called with ``self`` (the source) and, when it asks for it, ``info``: that is what
:func:`lean_resolvers` installs, producing the same values and errors. A field without a resolver becomes a
plain attribute read (Strawberry goes through ``StrawberryField.get_result`` for it). Schema extensions'
``resolve`` hooks still wrap every field (graphql-core applies them around whatever ``resolve`` is), and
subscription fields are left alone.

Such an attribute of a scalar or enum type is most of a page's fields (``id``, ``name``, ``email``...), and
graphql-core still builds a ``GraphQLResolveInfo`` (16 fields) for each and walks ``complete_value``.
:class:`LeanExecutionContext` reads and coerces those directly; anything unusual (null where the type says
non-null, a value the scalar refuses, a ``resolve`` hook installed) takes graphql-core's own path, which
reports it exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from graphql import (
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLResolveInfo,
    Undefined,
    is_leaf_type,
)
from graphql.execution.collect_fields import FieldDetailsList
from graphql.pyutils import Path
from graphql.pyutils.gather_with_cancel import gather_with_cancel
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.field import StrawberryField

from aicm.schema.errors import Schema
from aicm.schema.rendering import SharedRenderingContext

__all__ = ["LeanExecutionContext", "lean_resolvers"]

Resolve = Callable[..., Any]


class _Leaf(NamedTuple):
    """A scalar or enum field read from an attribute of its source."""

    attribute: str
    coerce: Callable[[Any], Any]
    non_null: bool


def lean_resolvers(schema: Schema) -> int:
    """Install the direct resolvers on every eligible field of ``schema``; returns how many were replaced."""
    converter = schema.schema_converter
    if converter.exception_handlers or converter.config.default_resolver is not getattr:
        return 0  # handlers (and a custom default resolver) need Strawberry's wrapper
    subscription = schema._schema.subscription_type
    replaced = 0
    for graphql_type in schema._schema.type_map.values():
        if not isinstance(graphql_type, GraphQLObjectType) or graphql_type is subscription:
            continue
        if graphql_type.name.startswith("__"):
            continue
        for graphql_field in graphql_type.fields.values():
            field = (graphql_field.extensions or {}).get(GraphQLCoreConverter.DEFINITION_BACKREF)
            if not isinstance(field, StrawberryField):
                continue
            resolve = _direct(field, converter.config.info_class, graphql_field.type)
            if resolve is not None:
                graphql_field.resolve = resolve
                replaced += 1
    return replaced


def _direct(field: StrawberryField, info_class: type, output: GraphQLOutputType) -> Resolve | None:
    if field.extensions or field.arguments:
        return None
    resolver = field.base_resolver
    if resolver is None:
        return _attribute(field.python_name, output)
    if resolver.parent_parameter or resolver.root_parameter:
        return None
    func = resolver.wrapped_func
    if not callable(func):
        return None
    info_parameter = resolver.info_parameter
    if resolver.self_parameter and info_parameter is not None and info_parameter.name == "info":

        def resolve_with_info(source: Any, info: GraphQLResolveInfo) -> Any:
            return func(source, info=info_class(_raw_info=info, _field=field))

        return resolve_with_info
    if resolver.self_parameter and info_parameter is None:

        def resolve_source(source: Any, info: GraphQLResolveInfo) -> Any:
            return func(source)

        return resolve_source
    return None  # other shapes (static resolvers, another name for info) keep Strawberry's wrapper


def _attribute(name: str, output: GraphQLOutputType) -> Resolve:
    def resolve_attribute(source: Any, info: GraphQLResolveInfo) -> Any:
        return getattr(source, name)

    resolve_attribute._is_default = True  # type: ignore[attr-defined]  # what Strawberry marks its own with
    inner = output.of_type if isinstance(output, GraphQLNonNull) else output
    if is_leaf_type(inner):
        resolve_attribute.leaf = _Leaf(name, inner.coerce_output_value, inner is not output)  # type: ignore[attr-defined]
    return resolve_attribute


_SLOW: Any = object()  # a leaf the direct read cannot complete: graphql-core's path reports it


def _leaf_of(parent_type: GraphQLObjectType, field_details_list: FieldDetailsList) -> _Leaf | None:
    """The field's plain leaf (set by ``_attribute``), if it is one."""
    field_def = parent_type.fields.get(field_details_list[0].node.name.value)
    return getattr(field_def.resolve, "leaf", None) if field_def is not None else None


def _leaf_value(leaf: _Leaf, source: Any) -> Any:
    value = getattr(source, leaf.attribute)
    if value is None:
        return _SLOW if leaf.non_null else None
    if isinstance(value, Exception):
        return _SLOW
    try:
        coerced = leaf.coerce(value)
    except Exception:
        return _SLOW
    return _SLOW if coerced is None or coerced is Undefined else coerced


class LeanExecutionContext(SharedRenderingContext):
    """The shared-rendering execution context, completing plain scalar and enum attributes directly."""

    def _direct_leaves(self) -> bool:
        middleware = self.middleware_manager
        return middleware is None or not middleware.middlewares  # a resolve hook must see every field

    def execute_fields(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path | None,
        grouped_field_set: Any,
        position_context: Any,
    ) -> Any:
        """graphql-core's ``execute_fields`` with the plain leaves completed in the loop: no ``Path``, no
        ``execute_field`` call, no awaitable check for them (most of a page's fields)."""
        if not self._direct_leaves():
            return super().execute_fields(
                parent_type, source_value, path, grouped_field_set, position_context
            )
        results: dict[str, Any] = {}
        is_awaitable = self.is_awaitable
        awaitable_fields: list[str] = []
        try:
            for response_name, field_details_list in grouped_field_set.items():
                leaf = _leaf_of(parent_type, field_details_list)
                if leaf is not None:
                    value = _leaf_value(leaf, source_value)
                    if value is not _SLOW:
                        results[response_name] = value
                        continue
                field_path = Path(path, response_name, parent_type.name)
                result = super().execute_field(
                    parent_type, source_value, field_details_list, field_path, position_context
                )
                if result is not Undefined:
                    results[response_name] = result
                    if is_awaitable(result):
                        awaitable_fields.append(response_name)
        except Exception:
            if awaitable_fields:  # settle what other fields started: they may fail too (as graphql-core)
                self.settle_in_background([results[field] for field in awaitable_fields])
            raise
        if not awaitable_fields:
            return results
        return self._await_fields(results, awaitable_fields)

    async def _await_fields(self, results: dict[str, Any], awaitable_fields: list[str]) -> dict[str, Any]:
        if len(awaitable_fields) == 1:
            field = awaitable_fields[0]
            results[field] = await results[field]
        else:
            awaited = await gather_with_cancel(*(results[field] for field in awaitable_fields))
            results.update(zip(awaitable_fields, awaited, strict=True))
        return results

    def execute_field(
        self,
        parent_type: GraphQLObjectType,
        source: Any,
        field_details_list: FieldDetailsList,
        path: Path,
        position_context: Any,
    ) -> Any:
        leaf = _leaf_of(parent_type, field_details_list)
        if leaf is not None and self._direct_leaves():
            value = _leaf_value(leaf, source)
            if value is not _SLOW:
                return value
        return super().execute_field(parent_type, source, field_details_list, path, position_context)
