"""Query limits (``graphql.max_tokens``, ``max_depth``, ``max_aliases``, ``max_cost``), before validation.

The document is measured with every fragment spread expanded in place, so fragments cannot hide depth,
aliases or cost: a fragment spread three times counts three times, and its fields nest as deep as the spread
sits. Each fragment is measured once (memoized), so even a fan-out of spreads that would expand exponentially
costs linear time; a fragment that spreads itself, directly or not, is refused. Every operation of the
document is measured.

- depth: fields nested in one another (``{ me { id } }`` is 2). ``ofType`` inside introspection does not
  count, so GraphiQL's introspection query fits; every other field, introspection's included, does.
- aliases: aliased fields, counted once per expansion.
- cost: every field costs 1; a field taking ``first`` costs 1 + ``first`` x its selections (``first`` from the
  literal, the variable or the schema default, else the default page size; taken between 1 and the maximum
  page size, so an out-of-range ``first`` still gets its own ``BAD_USER_INPUT`` from the resolver).
- repeats: one response key at most ``MAX_SAME_FIELD`` times in a selection set, fragments included
  (validation compares every such pair).
- tokens: the parser stops past ``max_tokens``. That and the parser's other aborts (nesting too deep for the
  interpreter) answer ``QUERY_TOO_COMPLEX``, like the other limits.

The parsed documents are cached (LRU), like Strawberry's ``ParserCache``, which this replaces.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    VariableNode,
    get_named_type,
)
from strawberry.extensions import SchemaExtension

from aicm.config import GraphQLConfig
from aicm.errors import BadUserInput, QueryTooComplex
from aicm.resolvers.pagination import DEFAULT_PAGE, MAX_PAGE
from aicm.schema.extensions._reject import reject, rejected

__all__ = ["LimitExceeded", "Limits", "Measure", "QueryLimits", "measure"]

MAX_FRAGMENT_NESTING = 64  # fragments spreading fragments; deeper is refused (and keeps recursion bounded)
# One response key selected this often in one selection set (its fragments' fields included): graphql-core's
# check that such fields merge compares every pair, a second of CPU for a thousand ``me { id }`` in a row.
MAX_SAME_FIELD = 50


@dataclass(frozen=True, slots=True)
class Limits:
    max_depth: int
    max_aliases: int
    max_cost: int
    max_tokens: int

    @classmethod
    def from_config(cls, config: GraphQLConfig) -> Limits:
        return cls(config.max_depth, config.max_aliases, config.max_cost, config.max_tokens)


@dataclass(frozen=True, slots=True)
class Measure:
    depth: int = 0
    aliases: int = 0
    cost: int = 0

    def __or__(self, other: Measure) -> Measure:  # two selections side by side
        return Measure(max(self.depth, other.depth), self.aliases + other.aliases, self.cost + other.cost)


class LimitExceeded(Exception):
    def __init__(self, limit: str, maximum: int, message: str) -> None:
        super().__init__(message)
        self.limit, self.maximum, self.message = limit, maximum, message

    def to_app_error(self) -> QueryTooComplex:
        return QueryTooComplex(self.message, limit=self.limit, maximum=self.maximum)


class FragmentCycle(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _Measurer:
    def __init__(
        self, schema: GraphQLSchema, document: DocumentNode, variables: Mapping[str, Any], limits: Limits
    ) -> None:
        self.schema = schema
        self.limits = limits
        self.variables = variables
        self.fragments: dict[str, FragmentDefinitionNode] = {}
        self.variable_defaults: dict[str, Any] = {}
        for definition in document.definitions:
            if isinstance(definition, FragmentDefinitionNode):
                self.fragments.setdefault(definition.name.value, definition)
            elif isinstance(definition, OperationDefinitionNode):
                for variable in definition.variable_definitions or ():
                    if isinstance(variable.default_value, IntValueNode):
                        self.variable_defaults[variable.variable.name.value] = _int(variable.default_value)
        self.memo: dict[str, Measure] = {}
        self.visiting: list[str] = []

    def operation(self, operation: OperationDefinitionNode) -> Measure:
        root = {
            OperationType.QUERY: self.schema.query_type,
            OperationType.MUTATION: self.schema.mutation_type,
            OperationType.SUBSCRIPTION: self.schema.subscription_type,
        }.get(operation.operation)
        self.check_repeats(operation.selection_set)
        return self.check(self.selections(operation.selection_set, root))

    def check_repeats(self, selection_set: SelectionSetNode) -> None:
        """Count the response keys of one selection set, through its inline fragments and (once each) its
        fragment spreads, as graphql-core merges them."""
        counts: Counter[str] = Counter()
        stack, seen = [selection_set], set()
        while stack:
            for selection in stack.pop().selections:
                if isinstance(selection, FieldNode):
                    key = (selection.alias or selection.name).value
                    counts[key] += 1
                    if counts[key] > MAX_SAME_FIELD:
                        message = f"'{key}' is selected more than {MAX_SAME_FIELD} times in one selection set"
                        raise LimitExceeded("repeats", MAX_SAME_FIELD, message)
                elif isinstance(selection, InlineFragmentNode):
                    stack.append(selection.selection_set)
                elif isinstance(selection, FragmentSpreadNode):
                    name = selection.name.value
                    if name not in seen and name in self.fragments:
                        seen.add(name)
                        stack.append(self.fragments[name].selection_set)

    def check(self, measure: Measure) -> Measure:
        limits = self.limits
        if measure.depth > limits.max_depth:
            raise LimitExceeded(
                "depth", limits.max_depth, f"Query is nested deeper than {limits.max_depth} levels"
            )
        if measure.aliases > limits.max_aliases:
            raise LimitExceeded(
                "aliases", limits.max_aliases, f"Query uses more than {limits.max_aliases} aliases"
            )
        if measure.cost > limits.max_cost:
            raise LimitExceeded("cost", limits.max_cost, f"Query cost is over the limit of {limits.max_cost}")
        return measure

    def selections(self, selection_set: SelectionSetNode, parent: GraphQLNamedType | None) -> Measure:
        total = Measure()
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                total |= self.field(selection, parent)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                inner = self.schema.get_type(condition.name.value) if condition else parent
                total |= self.selections(selection.selection_set, inner)
            elif isinstance(selection, FragmentSpreadNode):
                total |= self.fragment(selection.name.value)
            # Checked as it grows: a hostile document is refused without being measured to the end.
            self.check(total)
        return total

    def field(self, node: FieldNode, parent: GraphQLNamedType | None) -> Measure:
        definition = _field_definition(parent, node.name.value)
        alias = 1 if node.alias is not None else 0
        if node.selection_set is None:
            return Measure(1, alias, 1)
        self.check_repeats(node.selection_set)
        child = self.selections(node.selection_set, get_named_type(definition.type) if definition else None)
        own = 0 if node.name.value == "ofType" and parent is not None and parent.name == "__Type" else 1
        multiplier = self.page_size(node, definition)
        return Measure(own + child.depth, alias + child.aliases, 1 + multiplier * child.cost)

    def fragment(self, name: str) -> Measure:
        if name in self.memo:
            return self.memo[name]
        definition = self.fragments.get(name)
        if definition is None:
            return Measure()  # unknown fragment: validation reports it
        if name in self.visiting:
            raise FragmentCycle(name)
        if len(self.visiting) >= MAX_FRAGMENT_NESTING:
            raise LimitExceeded("depth", self.limits.max_depth, "Fragments are nested too deeply")
        self.visiting.append(name)
        try:
            measure = self.selections(
                definition.selection_set, self.schema.get_type(definition.type_condition.name.value)
            )
        finally:
            self.visiting.pop()
        self.memo[name] = measure
        return measure

    def page_size(self, node: FieldNode, definition: GraphQLField | None) -> int:
        """How many items a field taking ``first`` returns at most (1 for every other field)."""
        if definition is None or "first" not in definition.args:
            return 1
        value: Any = None
        argument = next((a.value for a in node.arguments or () if a.name.value == "first"), None)
        if isinstance(argument, IntValueNode):
            value = _int(argument)
        elif isinstance(argument, VariableNode):
            name = argument.name.value
            value = self.variables.get(name, self.variable_defaults.get(name))
        elif argument is None:
            value = definition.args["first"].default_value
        if not isinstance(value, int) or isinstance(value, bool):
            value = DEFAULT_PAGE
        # At least 1, so no part of a document costs more than the whole (limits are checked as it grows).
        return min(max(value, 1), MAX_PAGE)


def _int(node: IntValueNode) -> int | None:
    try:
        return int(node.value)
    except ValueError:  # more digits than Python converts: coercion refuses it later
        return None


def _field_definition(parent: GraphQLNamedType | None, name: str) -> GraphQLField | None:
    if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
        return parent.fields.get(name)
    return None


def measure(
    schema: GraphQLSchema, document: DocumentNode, limits: Limits, variables: Mapping[str, Any] | None = None
) -> Measure:
    """The largest measure of the document's operations; LimitExceeded or FragmentCycle past a limit."""
    measurer = _Measurer(schema, document, variables or {}, limits)
    total = Measure()
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            one = measurer.operation(definition)
            total = Measure(
                max(total.depth, one.depth), max(total.aliases, one.aliases), max(total.cost, one.cost)
            )
    return total


# --------------------------------------------------------------------------- parsing, with a cache

_PARSED: OrderedDict[tuple[str, int], DocumentNode] = OrderedDict()


def _cached(query: str, max_tokens: int) -> DocumentNode | None:
    document = _PARSED.get((query, max_tokens))
    if document is not None:
        _PARSED.move_to_end((query, max_tokens))
    return document


def _remember(query: str, max_tokens: int, document: DocumentNode, maxsize: int) -> None:
    _PARSED[(query, max_tokens)] = document
    while len(_PARSED) > maxsize:
        _PARSED.popitem(last=False)


def _is_parser_abort(error: GraphQLError) -> bool:
    """graphql-core's own limits (tokens, comments, nesting) end their message this way."""
    return error.message.endswith("Parsing aborted.")


class QueryLimits(SchemaExtension):
    """Pass it as a factory: ``lambda: QueryLimits(Limits.from_config(settings.graphql))``."""

    def __init__(self, limits: Limits, *, cache_size: int = 1024) -> None:
        super().__init__()
        self.limits = limits
        self.cache_size = cache_size

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        query, max_tokens = context.query, self.limits.max_tokens
        if query is not None and context.graphql_document is None:
            context.parse_options["max_tokens"] = max_tokens
            context.graphql_document = _cached(query, max_tokens)
        yield
        # Strawberry parsed it (outside this hook, so its syntax errors become a normal error result).
        for error in context.pre_execution_errors or ():
            if _is_parser_abort(error):
                limit, maximum = ("tokens", max_tokens) if "tokens" in error.message else ("depth", None)
                error.original_error = QueryTooComplex(error.message, limit=limit, maximum=maximum)
        if query is not None and context.graphql_document is not None and not context.pre_execution_errors:
            _remember(query, max_tokens, context.graphql_document, self.cache_size)

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if not rejected(context) and context.graphql_document is not None:
            try:
                measure(context.schema._schema, context.graphql_document, self.limits, context.variables)
            except LimitExceeded as exc:
                reject(context, exc.to_app_error())
            except FragmentCycle as exc:
                reject(context, BadUserInput(f"Fragment '{exc.name}' spreads itself", field=None))
            except RecursionError:
                reject(context, QueryTooComplex("Query is nested too deeply", limit="depth"))
        yield
