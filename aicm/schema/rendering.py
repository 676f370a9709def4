"""Render once: subscribers of the same operation share one execution per event.

A subscription's stream yields objects that may carry a ``Rendering``: the source objects they were built
from (the event's payload dict, shared by every local subscriber of the channel, or a log line's dict) and
whether their fields depend on the viewer. The execution context below then keys each event's execution by
(operation, variables, the source objects, and the viewer's user when the fields depend on the viewer): the
first subscriber executes the selection, the others get the same result, whose JSON is encoded once
(``RenderedData.encoded``); ``aicm.http.websocket`` splices each subscriber's own ``id`` into that frame.

Authorization stays per subscriber: the resolver streams decide, for each subscriber on its own, whether an
event is yielded at all and end the stream with FORBIDDEN on access loss; sharing only skips re-executing a
selection whose result cannot differ (same event, same selection, same viewer for viewer-dependent fields).
Entries hold their sources strongly and are checked by identity, so a recycled ``id()`` never matches.

Direct delivery (``aicm.subscriptions.direct``) goes further for an operation whose selection reads only the
event object's own fields (no resolver, a scalar or enum: ``projectEvents { type projectId at }``), which are
the same for every viewer: ``offer_direct`` gives it a ``DirectRendering``, which executes the selection once
per event and operation (document and variables) during the fan-out, for every subscriber of it.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from graphql import (
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLEnumType,
    GraphQLObjectType,
    GraphQLScalarType,
    InlineFragmentNode,
    SelectionSetNode,
    get_named_type,
)
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from aicm.subscriptions.direct import DIRECT
from aicm.subscriptions.subscription import Event

__all__ = ["DirectRendering", "RenderedData", "Rendering", "SharedRenderingContext", "cache", "offer_direct"]

CACHE_SIZE = 4096  # recent (operation, event) renderings kept; a few events' worth at thousands of operations
CACHE_BYTES = 8 * 1024 * 1024  # and at most this much of their JSON and of the sources they keep alive
LARGEST = 64 * 1024  # a rendering weighing more is not kept (each subscriber executes it on its own)


@dataclass(frozen=True, slots=True)
class Rendering:
    """What an event object was built from, for sharing its execution between subscribers."""

    sources: tuple[object, ...]  # compared by identity
    shape: int = 0  # anything else that tells two objects from the same sources apart (a batch's length)
    per_viewer: bool = False  # fields resolved as the viewer sees them: share only with the same user
    weight: int = 0  # bytes the sources hold (a cached rendering keeps them alive)


class RenderedData(dict[str, Any]):
    """The ``data`` of a shared execution; ``encoded`` is the JSON of its ``next`` payload, made once."""

    __slots__ = ("encoded",)

    encoded: str


@dataclass(slots=True)
class _Entry:
    anchors: tuple[object, ...]
    data: RenderedData | asyncio.Future[RenderedData | None]  # a future while the first one executes
    weight: int


class RenderCache:
    """An LRU of shared renderings, bounded in entries and in bytes (their JSON and the sources they keep
    alive). One over ``largest`` is not kept (each subscriber executes it on its own): huge log lines would
    only churn the cache."""

    def __init__(self, size: int = CACHE_SIZE, max_bytes: int = CACHE_BYTES, largest: int = LARGEST) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.largest = largest
        self.bytes = 0
        self._entries: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(
        self, key: tuple[Any, ...], anchors: tuple[object, ...]
    ) -> RenderedData | asyncio.Future[RenderedData | None] | None:
        entry = self._entries.get(key)
        if entry is None or any(a is not b for a, b in zip(entry.anchors, anchors, strict=True)):
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry.data

    def put(
        self,
        key: tuple[Any, ...],
        anchors: tuple[object, ...],
        data: RenderedData | asyncio.Future[RenderedData | None],
        weight: int,
    ) -> None:
        self.discard(key)
        if isinstance(data, RenderedData):
            weight += len(data.encoded)
            if weight > self.largest:
                return
        self._entries[key] = _Entry(anchors, data, weight)
        self.bytes += weight
        while len(self._entries) > self.size or self.bytes > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= dropped.weight

    def discard(self, key: tuple[Any, ...]) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.weight


cache = RenderCache()

_Shared = tuple[tuple[Any, ...], tuple[object, ...], int]  # (cache key, anchors, weight of the sources)


def _variables_key(variables: dict[str, Any] | None) -> str:
    return json.dumps(variables or {}, sort_keys=True, default=str, separators=(",", ":"))


class SharedRenderingContext(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's execution context; per-event executions of events carrying a ``Rendering`` are shared."""

    _shared: _Shared | None = None
    _variables: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        setup = DIRECT.get()
        if setup is not None and setup.direct is not None:  # its stream may deliver directly: offer_direct
            setup.executor = self

    def build_per_event_executor(self, payload: Any) -> Any:
        executor = super().build_per_event_executor(payload)
        rendering = getattr(payload, "rendering", None)
        if not isinstance(rendering, Rendering):
            return executor
        if self._variables is None:
            self._variables = executor._variables = _variables_key(self.variable_values)
        viewer = getattr(self.context_value, "viewer", None) if rendering.per_viewer else None
        viewer_key = getattr(viewer, "user_id", None) if rendering.per_viewer else "*"
        if viewer_key is None:
            return executor  # no user to key on: execute on its own
        anchors = (self.operation, *rendering.sources)
        key = (*map(id, anchors), rendering.shape, self._variables, viewer_key)
        executor._shared = (key, anchors, rendering.weight)
        return executor

    def execute_operation(self, serially: bool | None = None) -> Any:
        shared = self._shared
        if shared is None:
            return super().execute_operation(serially)
        found = cache.get(shared[0], shared[1])
        if isinstance(found, RenderedData):
            return ExecutionResult(found, None)
        if found is not None:
            return self._after_first(found, serially)
        pending: asyncio.Future[RenderedData | None] = asyncio.get_running_loop().create_future()
        cache.put(shared[0], shared[1], pending, shared[2])
        try:
            result = super().execute_operation(serially)
        except BaseException:
            _settle(pending, shared, None)
            raise
        if self.is_awaitable(result):
            return self._remember_later(result, shared, pending)
        return _remember(result, shared, pending)

    async def _after_first(self, first: asyncio.Future[RenderedData | None], serially: bool | None) -> Any:
        """The same event is being executed for another subscriber: take its result, else execute."""
        data = await asyncio.shield(first)
        if data is not None:
            return ExecutionResult(data, None)
        result = super().execute_operation(serially)
        return await result if self.is_awaitable(result) else result

    async def _remember_later(
        self, result: Any, shared: _Shared, pending: asyncio.Future[RenderedData | None]
    ) -> Any:
        try:
            done = await result
        except BaseException:
            _settle(pending, shared, None)
            raise
        return _remember(done, shared, pending)


def _remember(result: Any, shared: _Shared, pending: asyncio.Future[RenderedData | None]) -> Any:
    """Share a clean result with the other subscribers (results with errors are never shared)."""
    if not isinstance(result, ExecutionResult) or result.errors or result.data is None:
        _settle(pending, shared, None)
        return result
    data = RenderedData(result.data)
    data.encoded = orjson.dumps({"data": data}).decode()
    _settle(pending, shared, data)
    return ExecutionResult(data, None)


def _settle(pending: asyncio.Future[RenderedData | None], shared: _Shared, data: RenderedData | None) -> None:
    """Wake the subscribers waiting for this execution; keep its result for later ones."""
    if not pending.done():
        pending.set_result(data)
    if data is None:
        cache.discard(shared[0])
    else:
        cache.put(shared[0], shared[1], data, shared[2])


_INCLUDE_SKIP = frozenset({"include", "skip"})  # their arguments are variables or literals: in the key


class _Memo:
    """The renderings of the event being fanned out, by operation and value (an event may yield several): one
    event fans out at a time (the fan-out is synchronous), so when another comes the previous one's are done
    with."""

    event: Event | None = None
    payloads: dict[tuple[int, str, int], tuple[object, bytes | None]] = {}


_memo = _Memo()


class DirectRendering:
    """Renders what a stream yields, for direct delivery: the operation's selection executed once per event
    and operation; ``None`` for a result with errors (each subscriber then executes it on its own)."""

    __slots__ = ("_build", "_executor", "_key")

    def __init__(self, executor: SharedRenderingContext, build: Callable[[Any], object]) -> None:
        self._executor = executor
        self._build = build
        self._key = (id(executor.operation), _variables_key(executor.variable_values))  # type: ignore[arg-type]

    def __call__(self, event: Event, value: Any) -> bytes | None:
        memo = _memo
        if memo.event is not event:
            memo.event = event
            memo.payloads = {}
        operation = self._executor.operation
        key = (*self._key, id(value))  # the values are the event's own: alive while it is the memo's
        found = memo.payloads.get(key)
        if found is not None and found[0] is operation:
            return found[1]
        payload = self._execute(value)
        memo.payloads[key] = (operation, payload)
        return payload

    def _execute(self, value: Any) -> bytes | None:
        executor = self._executor
        # graphql-core's own per-event copy: this execution is shared by construction, not through the cache
        base = StrawberryGraphQLCoreExecutionContext
        per_event = base.build_per_event_executor(executor, self._build(value))
        result = per_event.execute_operation(False)
        if executor.is_awaitable(result):  # not for the fields offer_direct accepts; never left unawaited
            asyncio.ensure_future(result).add_done_callback(_retrieve)
            return None
        if result.errors or result.data is None:
            return None
        return orjson.dumps({"data": result.data})


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def offer_direct(build: Callable[[Any], object]) -> None:
    """Let this operation's stream deliver directly (``aicm.subscriptions.direct``) when its selection reads
    only the event object's own fields; ``build`` makes that object from what the stream yields."""
    setup = DIRECT.get()
    if setup is None:
        return
    direct, executor, setup.executor = setup.direct, setup.executor, None
    if direct is not None and executor is not None and _reads_event_only(executor):
        direct.render = DirectRendering(executor, build)


def _reads_event_only(executor: SharedRenderingContext) -> bool:
    """Whether the operation's one root field selects only fields without a resolver of their own whose type
    is a scalar or an enum: the event object's own values, the same whoever asks, resolved synchronously."""
    root_type = executor.schema.subscription_type
    selections = executor.operation.selection_set.selections
    if root_type is None or len(selections) != 1:
        return False
    root = selections[0]
    if not isinstance(root, FieldNode) or root.directives or root.selection_set is None:
        return False
    field = root_type.fields.get(root.name.value)
    parent = get_named_type(field.type) if field is not None else None
    if not isinstance(parent, GraphQLObjectType):
        return False
    return _plain(root.selection_set, parent, executor.fragment_definitions, set())


def _plain(
    selection_set: SelectionSetNode,
    parent: GraphQLObjectType,
    fragments: dict[str, FragmentDefinitionNode],
    seen: set[str],
) -> bool:
    for selection in selection_set.selections:
        if any(d.name.value not in _INCLUDE_SKIP for d in selection.directives or ()):
            return False
        if isinstance(selection, FieldNode):
            if selection.arguments or selection.selection_set is not None:
                return False
            if selection.name.value == "__typename":
                continue
            field = parent.fields.get(selection.name.value)
            leaf = get_named_type(field.type) if field is not None else None
            if field is None or not isinstance(leaf, GraphQLScalarType | GraphQLEnumType):
                return False
            definition = (field.extensions or {}).get("strawberry-definition")
            if definition is None or definition.base_resolver is not None or definition.extensions:
                return False
        elif isinstance(selection, InlineFragmentNode):
            condition = selection.type_condition
            if condition is not None and condition.name.value != parent.name:
                return False
            if not _plain(selection.selection_set, parent, fragments, seen):
                return False
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if getattr(selection, "arguments", None) or fragment is None:
                return False
            if fragment.type_condition.name.value != parent.name:
                return False
            if name not in seen:
                seen.add(name)
                if not _plain(fragment.selection_set, parent, fragments, seen):
                    return False
        else:
            return False
    return True
