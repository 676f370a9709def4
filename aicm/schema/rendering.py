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
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from graphql import ExecutionResult
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

__all__ = ["RenderedData", "Rendering", "SharedRenderingContext", "cache"]

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
