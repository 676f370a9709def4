"""Resolving a field from a DataLoader now when its batch is already loaded, and seeing what a query selects.

An ``async`` resolver costs graphql-core a coroutine per field and, where siblings or list items are awaitable
too, a Task each (``gather``), and Strawberry its async wrapper: ~140 of them made a page of
``projects { owner members { user role } }`` cost 3-4 times the same answer without GraphQL. A root field that
knows what its page's nested fields will ask for loads those batches first, through the viewer's
``Loaders`` (so what is visible is decided exactly as before), and the nested fields, written with
:func:`from_loader`, return their values synchronously from the loaders' caches. Anywhere else (a field
reached through another parent, an event) the same field still awaits its loader.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, TypeVar

from strawberry.dataloader import DataLoader
from strawberry.types.nodes import FragmentSpread, InlineFragment, Selection

from aicm.schema.context import Info

__all__ = ["MISSING", "from_loader", "once", "peek", "selected"]

R = TypeVar("R")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def peek(loader: DataLoader[K, V], key: K) -> V | Any:
    """The value ``loader`` has already loaded for ``key``; ``MISSING`` when it is not loaded (or failed, or
    is still pending: awaiting it then raises or waits as a plain ``load`` would)."""
    future = loader.cache_map.get(key) if loader.cache else None
    if future is None or not future.done() or future.cancelled() or future.exception() is not None:
        return MISSING
    return future.result()


def from_loader(loader: DataLoader[K, V], key: K, convert: Callable[[V], T]) -> T | Awaitable[T]:
    """``convert`` of the key's value: now when the loader holds it, else a coroutine that loads it."""
    value = peek(loader, key)
    if value is MISSING:
        return _later(loader, key, convert)
    return convert(value)


async def _later(loader: DataLoader[K, V], key: K, convert: Callable[[V], T]) -> T:
    return convert(await loader.load(key))


def once(info: Info, row: R, build: Callable[[R], T]) -> T:
    """``build(row)``, made once per loaded row in this request (or subscription event): a page shows the
    same few users and roles many times (the viewer and the owner in every project)."""
    built = info.context.loaders.built
    found = built.get(id(row))
    if found is not None and found[0] is row:  # the row itself is kept, so its id() cannot be reused
        return found[1]  # type: ignore[return-value]
    value = build(row)
    built[id(row)] = (row, value)
    return value


def selected(selection: list[Selection], *path: str) -> set[str]:
    """The names of the fields selected at ``path`` in ``selection`` (``info.selected_fields``, converted once
    per resolver: it converts the whole subtree), e.g. ``selected(fields, "edges", "node")``; fragments
    included, a field under ``@skip(if: true)`` or ``@include(if: false)`` not. For prefetching only: a name
    too many costs a batch too many, never a wrong answer."""
    fields = _children(s for field in selection for s in field.selections)
    for name in path:
        fields = _children(s for field in fields if field.name == name for s in field.selections)
    return {field.name for field in fields}


def _children(selections: Iterable[Selection]) -> list[Any]:
    """The fields of a selection set, with the fields of its fragments in place."""
    fields: list[Any] = []
    for selection in selections:
        if _skipped(selection.directives):
            continue
        if isinstance(selection, FragmentSpread | InlineFragment):
            fields += _children(selection.selections)
        else:
            fields.append(selection)
    return fields


def _skipped(directives: dict[str, dict[str, Any]]) -> bool:
    return directives.get("skip", {}).get("if") is True or directives.get("include", {}).get("if") is False
